# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so editing the code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/export_openapi.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin chat-server \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin chat-server

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home chat
COPY --from=build /src/target/release/chat-server /usr/local/bin/chat-server
USER chat
ENV LISTEN_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/chat-server"]
