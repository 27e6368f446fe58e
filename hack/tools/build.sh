#!/usr/bin/env bash
# Builds the pinned Go tools of each GROUP (a directory beside this script with
# go.mod, go.sum and build.env) into $QSYS_TOOLS_CACHE/GROUP-VERSION-KEY/bin,
# where KEY hashes the pins and the Go version. A no-op when already built.
#   build.sh GROUP...        build (if needed) and print nothing else
#   build.sh --dir GROUP     print the bin directory (built or not)
# With QSYS_TOOLS_STATUS=DIR (`make test` builds in the background while other
# work runs) a group that fails leaves DIR/GROUP.failed, the next groups still
# build, and the exit status is 1 at the end; consumers wait for a group's bin
# directory or its .failed file (tests/conftest.py).
# To add a tool: a new GROUP directory (go.mod with a `tool` line, go.sum from
# `go mod tidy`, or from `go build -tags TAGS -mod=mod` when tidy cannot resolve
# the untagged build), build.env with VERSION, BINARIES, LDFLAGS and optional
# TAGS (Go build tags), add it to TOOL_GROUPS in mk/cluster.mk and to a family of
# hack/tool_pins.py, and run `python hack/tool_pins.py align` (one set of module versions,
# so that the groups share compiled packages).
# PATCHES (optional, for what upstream offers no flag for): entries
# "MODULE|FILE|SED-EXPRESSION"; the build compiles a copy of the pinned MODULE with FILE
# as the expression edits it (a directory `replace` in a copy of go.mod passed with
# -modfile; the module cache stays untouched, and go build -overlay refuses files in it).
# A patch that no longer changes its file fails the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${QSYS_TOOLS_CACHE:-$HOME/.cache/qsys-operator}

load() {
	VERSION='' LDFLAGS='' TAGS='' BINARIES=() PATCHES=()
	# shellcheck source=/dev/null
	source "$here/$1/build.env"
}

bin_dir() {
	local key
	key=$({
		cat "$here/$1/go.mod" "$here/$1/go.sum" "$here/$1/build.env"
		# A group may carry its own main package (otelcol): its source is part of the pin.
		find "$here/$1" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 -r cat
		go env GOVERSION
	} |
		sha256sum | cut -c1-12)
	echo "$cache/$1-$VERSION-$key/bin"
}

# go build -o DIR names a binary after the last path element, skipping a
# major-version suffix (go.etcd.io/etcd/server/v3 -> server).
default_name() {
	local p=$1 last
	last=${p##*/}
	if [[ $last =~ ^v[0-9]+$ ]]; then p=${p%/*}; last=${p##*/}; fi
	echo "$last"
}

# Writes the patched module copies and a go.mod replacing the modules by them into $2;
# prints the go build flag (nothing without PATCHES).
patched_modfile() {
	local group=$1 dir=$2 entry module file expr src copy
	((${#PATCHES[@]})) || return 0
	mkdir -p "$dir"
	cp "$here/$group/go.mod" "$here/$group/go.sum" "$dir/"
	for entry in "${PATCHES[@]}"; do
		IFS='|' read -r module file expr <<<"$entry"
		copy=$dir/${module//\//_}
		if [[ ! -d $copy ]]; then
			src=$(cd "$here/$group" && go mod download "$module" && go list -m -f '{{.Dir}}' "$module")
			cp -r "$src" "$copy"
			chmod -R u+w "$copy"
			echo "replace $module => $copy" >>"$dir/go.mod"
		fi
		sed -i.orig "$expr" "$copy/$file"
		if cmp -s "$copy/$file.orig" "$copy/$file"; then
			echo "tools: the patch '$expr' no longer changes $module/$file" >&2
			return 1
		fi
		rm "$copy/$file.orig"
	done
	echo "-modfile=$dir/go.mod"
}

build() {
	local group=$1 out pkgs=() entry name pkg start flags
	load "$group"
	out=$(bin_dir "$group")
	if [[ -f $out/.complete ]]; then return 0; fi
	for entry in "${BINARIES[@]}"; do pkgs+=("${entry#*=}"); done
	mkdir -p "$cache"
	tmp=$(mktemp -d "${out%/bin}.tmp.XXXXXX")
	# RETURN after a build, EXIT when set -e ends it.
	trap 'rm -rf "${tmp:-}"' RETURN EXIT
	start=$(date +%s)
	flags=$(patched_modfile "$group" "$tmp/patched")
	echo "tools: building $group $VERSION into ${out%/bin} (cold builds take minutes)" >&2
	# GOGC=400: the compiler and linker collect garbage less often. Building helm from an
	# empty build cache took 150 CPU-seconds with Go's default (100), 120 with 400, and no
	# less with 1000 or off (docs/testing.md); the largest link then takes a few hundred MB more.
	# shellcheck disable=SC2086 # $flags: nothing or one -modfile flag
	(cd "$here/$group" &&
		GOGC=400 CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=readonly" \
			go build $flags -tags="$TAGS" -gcflags=all=-dwarf=false -ldflags="-s -w $LDFLAGS" -o "$tmp/" "${pkgs[@]}")
	for entry in "${BINARIES[@]}"; do
		name=${entry%%=*} pkg=${entry#*=}
		[[ $(default_name "$pkg") == "$name" ]] || mv "$tmp/$(default_name "$pkg")" "$tmp/$name"
	done
	rm -rf "$tmp/patched"
	touch "$tmp/.complete"
	mkdir -p "${out%/bin}"
	rm -rf "$out"
	mv "$tmp" "$out"
	echo "tools: built $group in $(($(date +%s) - start))s" >&2
}

if [[ ${1:-} == --dir ]]; then
	load "$2"
	bin_dir "$2"
	exit 0
fi
status=${QSYS_TOOLS_STATUS:-}
if [[ -z $status ]]; then
	for group in "$@"; do build "$group"; done
	exit 0
fi
failed=0
for group in "$@"; do
	# A subshell with its own set -e (never in a condition, which would disable
	# it), so that a failure stops this group's build and not the loop.
	set +e
	(
		set -e
		build "$group"
	)
	rc=$?
	set -e
	if ((rc != 0)); then
		echo "tools: building $group failed (exit status $rc)" >"$status/$group.failed"
		failed=1
	fi
done
exit "$failed"
