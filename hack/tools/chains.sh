#!/usr/bin/env bash
# `make test`'s background build in two chains: FIRST's groups one after the other, and
# SECOND's one after the other beside them once FIRST's first group (the control plane,
# which every e2e test waits for) is built, so nothing competes with that one. A Go build
# keeps about one of the two cores busy; the second chain uses the other while tests
# mostly wait. Same status files and exit status as build.sh.
#   chains.sh "FIRST GROUPS" "SECOND GROUPS"
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${QSYS_TOOLS_STATUS:?}"
read -ra first <<<"$1"
read -ra second <<<"${2:-}"
bash "$here/build.sh" "${first[@]}" &
one=$!
rc=0
if ((${#second[@]})); then
	(
		gate=$(bash "$here/build.sh" --dir "${first[0]}")/.complete
		while [[ ! -f $gate && ! -f $QSYS_TOOLS_STATUS/${first[0]}.failed ]] && kill -0 "$one" 2>/dev/null; do
			sleep 2
		done
		exec bash "$here/build.sh" "${second[@]}"
	) &
	wait "$!" || rc=1
fi
wait "$one" || rc=1
exit "$rc"
