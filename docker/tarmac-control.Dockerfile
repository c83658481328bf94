# tarmac-control, the control plane, as a container image: one static binary (musl), no
# shell, no package manager, run as a non-root user.
#
# NOT BUILT on the machines Tarmac is developed on (they have no container runtime); see
# docs/kubernetes.md for what has and has not been run. Build from the repository's root:
#
#   docker build -f docker/tarmac-control.Dockerfile -t tarmac/control:0.1.0 .
#
# The binary needs no system CA certificates in a cluster: the API server is trusted
# through the ServiceAccount's ca.crt, mounted into every pod.

FROM rust:1.92-alpine AS build
# aws-lc-rs (rustls' provider) builds its C with gcc; musl-dev for the static libc.
RUN apk add --no-cache musl-dev gcc g++ make perl
WORKDIR /src
COPY . .
# musl targets link statically by default: the result runs on an empty image.
RUN cargo build --release --locked -p tarmac-kube --bin tarmac-control \
 && cp target/release/tarmac-control /tarmac-control

FROM scratch
COPY --from=build /tarmac-control /usr/local/bin/tarmac-control
# Numeric, since an empty image has no /etc/passwd to look a name up in; Kubernetes can
# then check `runAsNonRoot` without a name.
USER 65532:65532
# gRPC for proxies (discovery, identity), the HTTP API, the admission webhook.
EXPOSE 4180 4190 8443
ENTRYPOINT ["/usr/local/bin/tarmac-control"]
CMD ["--store", "kubernetes", "--grpc-listen", "0.0.0.0:4180", "--api-listen", "0.0.0.0:4190"]
