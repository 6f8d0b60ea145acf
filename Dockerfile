# syntax=docker/dockerfile:1
#
# NEVER BUILT: there is no Docker engine where this was written, so this file has not been
# built or run. It is the intended recipe; expect to fix it the first time it meets a
# builder. Build with BuildKit (for the cache mounts):
#
#   docker build -t ghcr.io/gaia-fleet/gaia:0.1.0 .
#
# The one image of Gaia Fleet: the `gaia` binary (package `gaia`, cli/), whose subcommands
# are every component: `gaia allocator`, `gaia controller`, `gaia fleet-autoscaler`,
# `gaia gameserver`, ... The Kubernetes manifests (manifests/) run it with those arguments.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The target directory is a cache mount, so the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gaia --bin gaia \
    && install -D -m 0755 target/release/gaia /out/gaia

# glibc and libgcc (the binary is dynamically linked against them; the build stage is the
# same Debian 12), CA certificates, no shell; user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gaia" \
      org.opencontainers.image.description="Gaia Fleet: allocator, controller, fleet autoscaler and game server in one binary" \
      org.opencontainers.image.source="https://github.com/gaia-fleet/gaia-fleet" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin:/usr/bin:/bin
COPY --from=build /out/gaia /usr/local/bin/gaia
# Numeric, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
USER 65532:65532
# allocator API + SDK, controller admin, fleet-autoscaler admin, game server.
EXPOSE 7700 7710 7720 7777
ENTRYPOINT ["gaia"]
