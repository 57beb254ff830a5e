# schedwatch container image.
#
#   docker build -t schedwatch .
#   docker run -v "$PWD/config.toml:/etc/schedwatch/config.toml:ro" \
#              -v schedwatch-state:/var/lib/schedwatch -p 8080:8080 schedwatch
#
# The demo needs no config of yours and no cloud account:
#   docker run --rm schedwatch run --config /etc/schedwatch/examples/demo.toml
#
# scripts/check_dockerfile lints this file (hadolint) and checks it against the repository
# (COPY sources, the release build command of scripts/test, user, entrypoint) without a Docker engine.

# --- Stage 1: builder. The same Rust toolchain major as the machines that run the tests, on
# Debian 12 (bookworm), whose glibc is the one the runtime image below has.
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependencies in their own layer: it is rebuilt only when a manifest or Cargo.lock changes.
# Every target the manifests declare must exist for cargo to read them, so the crate roots and
# the one declared integration test ([[test]] it) are stand-ins here.
COPY Cargo.toml Cargo.lock ./
COPY sinks/Cargo.toml sinks/
RUN mkdir -p src sinks/src tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs sinks/src/lib.rs tests/it/main.rs \
 && cargo build --release --locked --bin schedwatch \
 && rm -rf src sinks/src

# The state folder, owned by the runtime user (65532): the runtime image has no shell to make it.
RUN install -d -o 65532 -g 65532 -m 0750 /out/var/lib/schedwatch

# The real sources. config/ is needed at build time too: the bundled demo is compiled in
# (include_str!). The touch makes cargo see the crate roots as newer than the stand-ins built above.
# The build command is exactly the one scripts/test runs, so the image holds the binary the tests
# checked: target/release/schedwatch.
COPY src src
COPY sinks/src sinks/src
COPY config config
RUN touch src/main.rs src/lib.rs sinks/src/lib.rs \
 && cargo build --release --locked

# --- Stage 2: runtime. Distroless with glibc, libgcc and CA certificates (the binary links nothing
# else: TLS is rustls on aws-lc-rs, built in), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="schedwatch" \
      org.opencontainers.image.description="Finds Cloud Scheduler jobs that fail authentication, names the cause and sends the fix" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /src/target/release/schedwatch /usr/local/bin/schedwatch
# Example configs; demo.toml runs as is (its paths are relative to the config file).
COPY config /etc/schedwatch/examples
COPY --from=builder --chown=65532:65532 /out/var/lib/schedwatch /var/lib/schedwatch

# The durable state (incidents, dedup keys, outbox) on a volume. SCHEDWATCH_STATE_DIR is
# `run --state`: it wins over the config's `[state] dir` (which is relative to the config file,
# /etc/schedwatch, usually a read-only mount). Set it to another path to move the state.
ENV SCHEDWATCH_STATE_DIR=/var/lib/schedwatch
VOLUME /var/lib/schedwatch
WORKDIR /var/lib/schedwatch

# nonroot, numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532

# [server] listen / $PORT: /healthz, /readyz, /metrics, /pubsub/push.
EXPOSE 8080

ENTRYPOINT ["/usr/local/bin/schedwatch"]
CMD ["run", "--config", "/etc/schedwatch/config.toml"]
