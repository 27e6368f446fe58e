#!/usr/bin/env bash
# `make test`: what CI runs. The pinned tool groups start building at once, in the
# background, in the order of TOOL_GROUPS; beside them the other prerequisites
# (TEST_PREREQS: install, npm packages, images) run with make -j, then TEST_CHECKS (lint)
# beside pytest with PYTEST_WORKERS workers: the e2e tests on kwok's nodes (their own control plane)
# on one, those on the real node (the main control plane) in three lanes on three more,
# unit and integration tests on the fifth, and then wherever a worker is free. xdist hands out
# the groups in the order tests/conftest.py sorts them (--no-loadscope-reorder: the
# `timing` group last). A test that needs a tool group waits for its build
# (tests/conftest.py), so tests run while the later groups still build; a failed build
# fails the tests that need it, with the build's log. The background build is stopped
# when this script ends. pytest ends with the slowest phases (≥ 10 s), where a warm
# run's time goes. Beside it runs the floor run (below), which `make e2e-floor` runs alone.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TOOL_GROUPS:?}" "${TEST_PREREQS:?}" "${TEST_CHECKS:?}"
MAKE=${MAKE:-make}
BIN=${BIN:-.venv/bin}

status=$PWD/.cache/tools-build
rm -rf "$status"
mkdir -p "$status"
t0=$(date +%s)
# Each test's wait, start and end, by xdist group (qsys_testkit.timeline), summed up below.
export QSYS_TEST_TIMELINE=$status/timeline
timeline() { "$BIN/python" -m qsys_testkit.timeline "$QSYS_TEST_TIMELINE" "$t0" || true; }
# The builder too: a group that fails leaves GROUP.failed and the next groups still build.
export QSYS_TOOLS_STATUS=$status QSYS_TOOL_GROUPS=$TOOL_GROUPS
# setsid: the build's go processes form their own group, stopped together below.
# shellcheck disable=SC2086 # word splitting of the group list is intended
setsid bash -c 'bash hack/tools/build.sh "$@"; rc=$?; echo "$rc" >"$QSYS_TOOLS_STATUS/build.rc"; exit "$rc"' \
	build $TOOL_GROUPS >"$status/log" 2>&1 &
builder=$!
echo "$builder" >"$status/pid"
trap 'kill -TERM -- "-$builder" 2>/dev/null || true' EXIT
echo "test: building the tool groups in the background: $TOOL_GROUPS (log: $status/log)"

export QSYS_NODE_TOOL_GROUPS=${NODE_TOOL_GROUPS:-}
# shellcheck disable=SC2086
"$MAKE" --no-print-directory -j4 --output-sync=target $TEST_PREREQS

# The checks (TEST_CHECKS: lint) need only `install`: they run beside the tests, which start
# about a minute sooner, and fail `make test` at its end.
checks=$status/checks
# shellcheck disable=SC2086
setsid bash -c '"$@" >"$0.log" 2>&1; echo $? >"$0.rc"' "$checks" \
	"$MAKE" --no-print-directory $TEST_CHECKS &
checks_pid=$!
report_checks() {
	wait "$checks_pid" || true
	echo "test: the checks beside the tests (make $TEST_CHECKS):"
	cat "$checks.log"
	[[ $(cat "$checks.rc" 2>/dev/null) == 0 ]]
}
echo "test: the checks (make $TEST_CHECKS) beside the tests (log: $checks.log)"

# The floor run (`make e2e-floor`: the `floor` tests against Kubernetes 1.31, on a plane
# of its own ports) beside the main one; its tests wait for their tool groups as the
# main run's do, and the `timing` tests wait for it to end. SIGINT stops it the way
# Ctrl-C would: its fixtures stop its plane.
# Beside it, the kind smoke test's prerequisites (the node image, once the background
# build has built its groups; then Debian's docker.io: a cold run's last minutes
# otherwise), so that `make kind-smoke` after the main run only runs its test. A failure
# there is logged and left to kind-smoke.
floor=$status/floor side=$status/side
(
	echo "$BASHPID" >"$side.pid"
	# shellcheck disable=SC2086
	QSYS_KUBE_GROUP=kube-floor QSYS_TEST_RUN=floor "$BIN/python" -m pytest -p no:cacheprovider -m floor tests/e2e \
		${PYTEST_ARGS:-} >"$floor.log" 2>&1 &
	floor_pid=$!
	echo "$floor_pid" >"$floor.pid"
	"$MAKE" --no-print-directory kind-node-image kind-deps >"$status/kind-prep.log" 2>&1 ||
		echo "test: preparing the kind smoke test failed (log: $status/kind-prep.log)"
	frc=0
	wait "$floor_pid" || frc=$?
	echo "$frc" >"$floor.rc"
	touch "$side.done"
) &
floor_runner=$!
export QSYS_SIDE_RUN=$side.done
# The builder first: a kind prerequisite waiting for its groups then gives up at once.
trap 'kill -INT "$(cat "$floor.pid" 2>/dev/null)" 2>/dev/null || true; kill -TERM -- "-$builder" 2>/dev/null || true
wait "$floor_runner" || true; kill -TERM -- "-$checks_pid" 2>/dev/null || true' EXIT
echo "test: the floor run beside the main one (log: $floor.log), and the kind smoke test's prerequisites (log: $status/kind-prep.log)"

main=0
# shellcheck disable=SC2086 # PYTEST_ARGS may carry several arguments
"$BIN/python" -m pytest -n "${PYTEST_WORKERS:-5}" --dist loadgroup --no-loadscope-reorder \
	--durations=40 --durations-min=10 ${PYTEST_ARGS:-} || main=$?

echo "test: the main run ended $(($(date +%s) - t0)) s after the start"
if ((main != 0)) && [[ ! -f $side.done ]]; then
	echo "test: the main run failed (exit status $main); stopping the floor run" >&2
	timeline
	report_checks || echo "test: the checks failed too" >&2
	exit 1
fi
wait "$floor_runner" || true
rm -f "$floor.pid"
echo "test: the side run (floor run, kind prerequisites) ended $(($(stat -c %Y "$side.done" 2>/dev/null || date +%s) - t0)) s after the start"
echo "test: the floor run (QSYS_KUBE_GROUP=kube-floor pytest -m floor tests/e2e):"
cat "$floor.log"
frc=$(cat "$floor.rc" 2>/dev/null || echo 1)
timeline
crc=0
report_checks || crc=1
if ((main != 0 || frc != 0 || crc != 0)); then
	echo "test: failed (main run exit status $main, floor run $frc, checks $crc)" >&2
	exit 1
fi

rc=0
wait "$builder" || rc=$?
grep -E '^tools: built ' "$status/log" || true
echo "test: every tool group built $(($(stat -c %Y "$status/build.rc" 2>/dev/null || date +%s) - t0)) s after the start"
if ((rc != 0)); then
	echo "test: a tool build failed:" >&2
	tail -n 30 "$status/log" >&2
	exit 1
fi
