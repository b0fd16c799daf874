# syntax=docker/dockerfile:1
# One image for every role: `tandem sidecar` (injected next to apps), `tandem operator`, `tandem injector`.
#   docker build -t tandem:dev .
# The binary links glibc dynamically (rusqlite's SQLite is compiled in; rustls uses ring), so the build stage
# (Debian 12) and the runtime (distroless cc, Debian 12) share one glibc.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is copied out of the cached target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tandem \
 && install -D -m 0755 target/release/tandem /out/tandem

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tandem" \
      org.opencontainers.image.description="A lean, Kubernetes-native distributed application runtime, drop-in compatible with Dapr" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tandem /usr/local/bin/tandem
# distroless `nonroot`: uid/gid 65532, the same ids the chart's securityContext asks for.
USER 65532:65532
# Sidecar HTTP, public (health), gRPC, internal gRPC, metrics; operator API and health; injector webhook.
EXPOSE 3500 3501 50001 50002 9090 6500 8080 4000
ENTRYPOINT ["/usr/local/bin/tandem"]
