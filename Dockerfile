# The operator and relay image: `docker build -t ghcr.io/tributary-dev/tributary-operator .`
# (one image, two binaries; the chart runs `tributary-operator run`).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tributary-operator -p tributary-relay

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tributary-operator /src/target/release/tributary-relay /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tributary-operator"]
CMD ["run"]
