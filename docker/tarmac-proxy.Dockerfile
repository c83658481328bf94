# tarmac-proxy, the sidecar, as a container image: injected pods run it twice, as
# `tarmac-proxy init` (an init container writing the pod's interception rules with
# iptables-legacy, as root with NET_ADMIN and NET_RAW only) and as the proxy itself (uid
# 2102, the uid those rules exempt). See docs/kubernetes.md, "What injection adds".
#
# NOT BUILT on the machines Tarmac is developed on (they have no container runtime); see
# docs/kubernetes.md for what has and has not been run. Build from the repository's root:
#
#   docker build -f docker/tarmac-proxy.Dockerfile -t tarmac/proxy:0.1.0 .
#
# The image is Debian slim rather than empty because `init` runs the iptables binaries;
# nothing in it is started through a shell (exec-form ENTRYPOINT, injection passes args).

FROM rust:1.92-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tarmac-proxy --bin tarmac-proxy \
 && cp target/release/tarmac-proxy /tarmac-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 2102 tarmac-proxy \
 && useradd --system --uid 2102 --gid 2102 --no-create-home --shell /usr/sbin/nologin tarmac-proxy
COPY --from=build /tarmac-proxy /usr/local/bin/tarmac-proxy
# The sidecar's uid: interception lets its own connections out unredirected. The init
# container overrides it with runAsUser: 0 (docs/kubernetes.md).
USER 2102:2102
# Inbound (4143), transparent outbound (4140), admin (4191: /ready, /live, /metrics).
EXPOSE 4143 4140 4191
ENTRYPOINT ["/usr/local/bin/tarmac-proxy"]
