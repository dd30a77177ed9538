# syntax=docker/dockerfile:1
# 0k-sync relay: build in the Rust image, run in slim Debian as a non-root user.
#   docker build -t 0k-sync-relay .
#   docker run -d -p 4433:4433/udp -p 8080:8080 -v relay-data:/data 0k-sync-relay
# See docs/deploy.md.

FROM rust:1.95-slim-bookworm AS build
# jemalloc (the relay's allocator) is built from C source: the slim image has
# gcc but not make.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace is needed to resolve it; .dockerignore keeps target/ and .git out.
COPY . .
# The `dist` profile is `release` without debug info, stripped (the release
# profile's line tables make a 118 MB binary; see docs/deploy.md for the size).
RUN cargo build --profile dist --locked -p sync-relay \
    && install -m 0755 target/dist/sync-relay /usr/local/bin/sync-relay

FROM debian:bookworm-slim
# The group is created with the same id as the user: USER 10001:10001 then
# runs with a group that exists, and the volume's files belong to it.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /data \
    && chown relay:relay /data \
    && chmod 0700 /data
COPY --from=build /usr/local/bin/sync-relay /usr/local/bin/sync-relay
USER 10001:10001
# Data in the volume; QUIC on all interfaces (set SYNC_RELAY__NETWORK__PUBLIC_ADDR
# to the HOST:PORT devices reach, or the relay warns that it announces 127.0.0.1); HTTP (health + metrics) on all
# interfaces inside the container (publish it only where it should be reachable).
# Storage: SQLite in /data by default; several relays on one PostgreSQL with
# SYNC_RELAY__STORAGE__URL=postgres://… (docs/deploy.md "Storage backends").
# The relay allocates with jemalloc (docs/deploy.md "Allocator"); two glibc
# arenas for what SQLite's C code allocates with malloc.
ENV SYNC_RELAY_DATA_DIR=/data \
    SYNC_RELAY_QUIC_BIND=0.0.0.0:4433 \
    SYNC_RELAY_HTTP_BIND=0.0.0.0:8080 \
    MALLOC_ARENA_MAX=2
VOLUME ["/data"]
EXPOSE 8080/tcp 4433/udp
# No curl in the image: the relay binary probes its own /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["sync-relay", "healthcheck"]
# SIGTERM (docker stop) drains sessions and exits 0; give it more than
# limits.shutdown_grace_s: docker stop --time 20.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sync-relay"]
CMD ["run"]
