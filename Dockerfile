# syntax=docker/dockerfile:1
# contact-sync in a container: the daemon (`contact-sync run`) as a
# non-root user, its data on a volume, its configuration and secrets from
# outside the image.
#
#   docker build -t contact-sync .
#   docker run -d --name contact-sync \
#     -v contact-sync-data:/var/lib/contact-sync \
#     -v /etc/contact-sync/config.toml:/etc/contact-sync/config.toml:ro \
#     --env-file /etc/contact-sync/contact-sync.env \
#     contact-sync
#
# Secrets (API keys, database passwords) come in through --env-file (or
# your orchestrator's secrets), referenced from the config as
# `{ env = "NAME" }`; never bake them into the image.
# Other commands: `docker run --rm ... contact-sync check`, `... status`.

# ---- build ----
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Only what the build needs (keeps target/ and .git out of the layer).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p contact-sync --bin contact-sync \
    && install -D -m 0755 target/release/contact-sync /out/contact-sync

# ---- run ----
FROM debian:bookworm-slim
# CA certificates for TLS to the stores and the alert webhook; tini as
# PID 1 so SIGTERM reaches contact-sync (it finishes the batch in flight).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 contact-sync \
    && useradd --system --uid 10001 --gid contact-sync \
       --home-dir /var/lib/contact-sync --shell /usr/sbin/nologin contact-sync \
    && install -d -o contact-sync -g contact-sync -m 0700 /var/lib/contact-sync \
    && install -d -m 0755 /etc/contact-sync
COPY --from=builder /out/contact-sync /usr/local/bin/contact-sync

# The data directory (state database, embedded SQLite stores) lives on the
# volume; relative paths in the config resolve against it.
WORKDIR /var/lib/contact-sync
VOLUME ["/var/lib/contact-sync"]
ENV CONTACT_SYNC_CONFIG=/etc/contact-sync/config.toml \
    CONTACT_SYNC_LOG=info
# /health and /metrics. The daemon listens on loopback unless the config
# allows a remote address ([server] listen = "0.0.0.0:9464",
# allow_remote = true), which a container needs for outside scrapes.
EXPOSE 9464
USER contact-sync:contact-sync
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/contact-sync"]
CMD ["run", "--log-format", "json"]
