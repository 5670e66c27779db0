# Two images from one build:
#   docker build --target operator -t ghcr.io/tributary-dev/tributary-operator .   (the chart runs `run`)
#   docker build --target relay    -t ghcr.io/tributary-dev/tributary-relay .      (the operator runs
#     `outbox` and `dispatch` containers from it; see the chart's relayImage)
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tributary-operator -p tributary-relay

FROM debian:bookworm-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS relay
COPY --from=build /src/target/release/tributary-relay /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/tributary-relay"]

FROM runtime AS operator
COPY --from=build /src/target/release/tributary-operator /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/tributary-operator"]
CMD ["run"]
