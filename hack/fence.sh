#!/usr/bin/env bash
# Keeps 198.18.0.0/15 on this machine while a cluster of it uses the range: an address
# with no interface behind it (the real node's bridge between its teardown and the next
# start, a kind network after its engine stopped) would otherwise follow the default
# route off the machine, where whatever answers is not ours. An unreachable route for
# the whole range sits below every real one (longer prefixes win), so such a dial fails
# at once with "no route to host".
#   fence.sh up METRIC     add the route (idempotent)
#   fence.sh down METRIC   remove it (idempotent)
# Each owner has its own METRIC, so one owner's teardown leaves another's fence.
set -euo pipefail
RANGE=198.18.0.0/15
case ${1:-} in
up) ip route replace unreachable "$RANGE" metric "$2" ;;
down) ip route del unreachable "$RANGE" metric "$2" 2>/dev/null || true ;;
*)
	echo "usage: fence.sh up|down METRIC" >&2
	exit 2
	;;
esac
