# syntax=docker/dockerfile:1
# pixbox container image: built with the pinned toolchain and the wasm target (the default plugins
# are compiled from plugins/ and embedded by the build), run as a non-root user.

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
# The default plugin's C and C++ (libwebp, libjpeg-turbo, libheif with libde265) for the guest:
# the compilers and libc++ for wasm32 from Debian, and libjpeg-turbo's, libheif's and libde265's
# sources (scripts/c-sources).
# Copied first, so a change elsewhere does not install them again.
COPY scripts/c-toolchain scripts/c-sources scripts/
COPY plugins/heif/patches plugins/heif/patches
COPY plugins/jpeg/patches plugins/jpeg/patches
RUN apt-get update && scripts/c-toolchain && rm -rf /var/lib/apt/lists/*
COPY . .
# The crate registry and the target folder are BuildKit cache mounts: after a source change a
# rebuild recompiles pixbox and its plugins, not the ~450 dependencies (a cold build is about
# 16 minutes on 2 cores; see BENCHMARKS.md). The binary is copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pixbox --bin pixbox \
 && cp target/release/pixbox /usr/local/bin/pixbox

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/pixbox pixbox
COPY --from=build /usr/local/bin/pixbox /usr/local/bin/pixbox
USER pixbox
WORKDIR /var/lib/pixbox
# 3000: the api (role api or all). 3001: the admin address every role serves (/health, /ready,
# /metrics; no API key, so publish it only to a private network).
ENV PIXBOX_LISTEN=0.0.0.0:3000 \
    PIXBOX_ADMIN_LISTEN=0.0.0.0:3001 \
    PIXBOX_DATA_DIR=/var/lib/pixbox
EXPOSE 3000 3001
# The same command for every role: GET /health on the admin address (tests/operations.rs runs it
# against an api and a worker process).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["pixbox", "health"]
ENTRYPOINT ["pixbox"]
CMD ["serve"]
