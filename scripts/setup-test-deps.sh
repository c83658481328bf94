#!/usr/bin/env bash
# Idempotent installer for everything the Tarmac test suite needs.
#
# - Debian packages: iptables, curl, redis-server, redis-tools, prometheus
#   (promtool, and the server the telemetry tests start), iproute2, util-linux
#   (setpriv), procps, chromium (headless, for the dashboard test), openssl
#   (the independent TLS peer of the identity tests: verify, s_client).
# - Python packages for python3, pinned: grpcio, websockets, h2 (test peers; h2
#   speaks WebSocket over HTTP/2, RFC 8441), kubernetes-validate (Kubernetes
#   manifests against the API's schemas), opentelemetry-proto and the protobuf
#   runtime (the tracing test's OTLP receiver).
# - Makes sure the iptables backend works inside a fresh network namespace,
#   switching between iptables-legacy and iptables-nft if needed.
#
# When everything is already present it does no network access and finishes
# in well under a second. Must run as root.
set -euo pipefail

log() { echo "setup-test-deps: $*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root" >&2
    exit 1
fi

APT_PACKAGES=(iptables curl redis-server redis-tools prometheus iproute2 util-linux procps chromium openssl)
# Commands each package must provide; used together with dpkg status.
declare -A PKG_CMD=(
    [iptables]=iptables
    [curl]=curl
    [redis-server]=redis-server
    [redis-tools]=redis-cli
    [prometheus]=promtool
    [iproute2]=ip
    [util-linux]=setpriv
    [procps]=ps
    [chromium]=chromium
    [openssl]=openssl
)

pkg_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] && command -v "${PKG_CMD[$1]}" >/dev/null 2>&1
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    # Keep package maintainer scripts from starting daemons (redis, prometheus):
    # tests start their own instances. Only add a policy-rc.d if none exists.
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    for p in "${missing[@]}"; do
        if pkg_installed "$p"; then
            log "installed apt package $p"
        else
            log "FAILED to install apt package $p" >&2
            exit 1
        fi
    done
    if ((added_policy)); then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    # Whatever happened above, leave no system daemons running.
    for svc in redis-server prometheus; do
        if [[ " ${missing[*]} " == *" $svc "* ]]; then
            service "$svc" stop >/dev/null 2>&1 || true
            if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
                systemctl disable --now "$svc" >/dev/null 2>&1 || true
            fi
            # pkill -x matches the exact process name only (these daemons).
            pkill -x "$svc" >/dev/null 2>&1 || true
        fi
    done
fi

# --- Python packages -------------------------------------------------------
# Pinned: a test peer that changes under the suite is a test that changes. Bump on purpose.
# kubernetes-validate checks the manifests `tarmac inject` and `tarmac install` write
# against the Kubernetes API's schemas (it ships them; no cluster needed).
# opentelemetry-proto is OTLP's own message definitions: the tracing test's receiver reads
# the proxies' spans with them, not with Tarmac's copy.
PYTHON_PACKAGES=(grpcio==1.85.3 websockets==17.4 h2==4.4.1 kubernetes-validate==1.37.0
    opentelemetry-proto==1.45.2 protobuf==7.36.2)
PYTHON_IMPORTS='import grpc, websockets, h2, kubernetes_validate; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc'
if ! python3 -c "$PYTHON_IMPORTS" >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "${PYTHON_PACKAGES[@]}"
    python3 -c "$PYTHON_IMPORTS" || { log "FAILED to import grpc/websockets/h2/kubernetes_validate/opentelemetry-proto after pip install" >&2; exit 1; }
    log "installed python packages: $(python3 -c 'import grpc, websockets, h2; print(f"grpcio {grpc.__version__}, websockets {websockets.__version__}, h2 {h2.__version__}")'), kubernetes-validate"
fi

# --- iptables backend --------------------------------------------------------
PROBE_NS=tarmac-setup-probe

iptables_probe() {
    ip netns del "$PROBE_NS" >/dev/null 2>&1 || true
    ip netns add "$PROBE_NS" || return 1
    local rc=0
    ip netns exec "$PROBE_NS" iptables -t nat -L -n >/dev/null 2>&1 || rc=$?
    ip netns del "$PROBE_NS" >/dev/null 2>&1 || true
    return "$rc"
}

current_iptables_alt() {
    update-alternatives --query iptables 2>/dev/null | sed -n 's/^Value: //p'
}

if ! iptables_probe; then
    before=$(current_iptables_alt)
    switched=""
    for alt in /usr/sbin/iptables-legacy /usr/sbin/iptables-nft; do
        [[ $alt == "$before" ]] && continue
        [[ -x $alt ]] || continue
        update-alternatives --set iptables "$alt" >/dev/null 2>&1 || continue
        # Keep ip6tables on the same backend when it exists.
        update-alternatives --set ip6tables "${alt/iptables/ip6tables}" >/dev/null 2>&1 || true
        if iptables_probe; then
            switched=$alt
            break
        fi
    done
    if [[ -n $switched ]]; then
        log "iptables backend switched from ${before:-unknown} to $switched"
    else
        # Restore the original choice so we don't leave things worse.
        [[ -n $before ]] && update-alternatives --set iptables "$before" >/dev/null 2>&1 || true
        log "iptables does not work inside a network namespace with any backend" >&2
        exit 1
    fi
fi
