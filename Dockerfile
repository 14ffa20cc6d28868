# syntax=docker/dockerfile:1
# The Slipway operator image: `make image` (docker build -t slipway:dev .).
#
# Not built on the project's development machines (they have no Docker engine); `make kind-e2e`
# builds it where Docker is available. Two stages:
#   build: a static binary for x86_64-unknown-linux-musl (Alpine's native Rust target on amd64;
#          musl binaries are statically linked by default), so the runtime image needs no libc;
#   final: scratch + CA certificates (the queue sources and cloud APIs use TLS), running as the
#          non-root user 65532 like the chart's securityContext.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev: the C runtime the `ring` crate's C and assembly parts link against.
RUN apk add --no-cache musl-dev ca-certificates
WORKDIR /src
# Only what `cargo build --bin slipway` reads (Cargo.toml names benches/release.rs).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin slipway \
    && install -D -m 0755 target/release/slipway /out/slipway

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/slipway /usr/local/bin/slipway
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/slipway"]
CMD ["run", "--log-format", "json", "--admin-addr", "0.0.0.0:8080"]
