# pixbox container image: built with the pinned toolchain and the wasm target (the default plugins
# are compiled from plugins/ and embedded by the build), run as a non-root user.

FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pixbox --bin pixbox \
 && cp target/release/pixbox /usr/local/bin/pixbox

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/pixbox pixbox
COPY --from=build /usr/local/bin/pixbox /usr/local/bin/pixbox
USER pixbox
WORKDIR /var/lib/pixbox
ENV PIXBOX_LISTEN=0.0.0.0:3000 \
    PIXBOX_DATA_DIR=/var/lib/pixbox
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:3000/health || exit 1
ENTRYPOINT ["pixbox"]
CMD ["serve"]
