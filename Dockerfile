# syntax=docker/dockerfile:1
# The image of any of our four daemons: a static musl binary on distroless "static" (no shell, no libc),
# run as the numeric nonroot user so the kubelet can verify runAsNonRoot.
# Build from the repository root (the workspace is the context), naming the daemon:
#   docker build --build-arg DAEMON=service-per-pod -t ghcr.io/jitsi-k8s/service-per-pod:0.1.0 .
# or `cargo xtask images` for all four. Each daemon is built alone (`-p`), so it links only what it uses.

FROM docker.io/library/rust:1.95-bookworm AS build
ARG DAEMON
ARG TARGETARCH
RUN case "${DAEMON}" in \
      service-per-pod|jvb-startup|jvb-exporter|prosody-exporter) ;; \
      *) echo "set --build-arg DAEMON to service-per-pod, jvb-startup, jvb-exporter or prosody-exporter" >&2; exit 1 ;; \
    esac
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# The musl target matching the platform being built (BuildKit sets TARGETARCH).
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target "$(cat /rust-target)" -p "${DAEMON}" --bin "${DAEMON}" \
 && install -D "target/$(cat /rust-target)/release/${DAEMON}" "/out/usr/local/bin/${DAEMON}" \
 # The entrypoint cannot name a build argument, so it is a link to the daemon.
 && ln -s "${DAEMON}" /out/usr/local/bin/entrypoint

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/entrypoint"]
