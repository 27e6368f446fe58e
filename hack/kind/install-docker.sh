#!/usr/bin/env bash
# Debian's Docker engine (docker.io) for the kind path, installed without starting it:
# hack/kind/docker.sh starts and stops its own dockerd (docs/testing.md, "kind").
# A policy-rc.d that refuses every service start is in place while apt runs (an
# existing one is left as it is). Idempotent; needs root only when docker.io is missing.
set -euo pipefail
if [[ -x /usr/sbin/dockerd && -x /usr/bin/docker ]]; then exit 0; fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod 755 "$policy"
	trap '$sudo rm -f "$policy"' EXIT
fi
echo "installing docker.io (not started)"
$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
	--no-install-recommends docker.io >/dev/null
