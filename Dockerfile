# syntax=docker/dockerfile:1
#
# Images of the three binaries, one target each:
#
#   docker build --target daprd    -t localhost/dapr-rs/daprd:dev .
#   docker build --target sentry   -t localhost/dapr-rs/sentry:dev .
#   docker build --target injector -t localhost/dapr-rs/injector:dev .
#
# Runtime base: distroless/cc (glibc, libgcc, CA certificates, tzdata, /etc/passwd with the
# `nonroot` user 65532; no shell, no package manager). The binaries are built against the same
# Debian release's glibc (bookworm), so glibc and libgcc are their only shared libraries; every
# Rust dependency is linked in ("static-ish"). A fully static musl build on `scratch` would also
# drop the base image, but musl's allocator is markedly slower under a multi-threaded tokio
# server, and it needs a musl C toolchain for ring and the bundled SQLite; distroless/cc is the
# smaller risk for a few MB more.
#
# No ENTRYPOINT, only CMD, as upstream's images: the injector writes the sidecar's command line
# into `args` starting with "/daprd" (and the chart sets `command: ["/sentry"]`, ["/injector"]),
# so an ENTRYPOINT would run "/daprd /daprd --flags...".
#
# USER is numeric so that Kubernetes can verify `runAsNonRoot: true` without a passwd lookup.

ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory across builds (BuildKit).
# scripts/build-release.sh: the three packages together, with daprd/pgo.profdata's profile.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    bash scripts/build-release.sh \
 && mkdir -p /out \
 && for bin in daprd sentry injector; do \
      if [ -f "target/release/$bin" ]; then cp "target/release/$bin" /out/; \
      else echo "note: $bin is not built by this checkout; its target will fail" >&2; fi; \
    done

FROM gcr.io/distroless/cc-debian12:nonroot AS daprd
LABEL org.opencontainers.image.title="daprd" \
      org.opencontainers.image.description="Dapr-compatible sidecar (Rust)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/daprd /daprd
USER 65532:65532
CMD ["/daprd"]

FROM gcr.io/distroless/cc-debian12:nonroot AS sentry
LABEL org.opencontainers.image.title="sentry" \
      org.opencontainers.image.description="Dapr-compatible certificate authority (Rust)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/sentry /sentry
USER 65532:65532
CMD ["/sentry"]

FROM gcr.io/distroless/cc-debian12:nonroot AS injector
LABEL org.opencontainers.image.title="injector" \
      org.opencontainers.image.description="Dapr-compatible sidecar injector (Rust)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/injector /injector
USER 65532:65532
CMD ["/injector"]
