# Images for the operator and chat-service, one build stage for both:
#   docker build --target operator -t ghcr.io/ficus-dev/ficus-operator:0.1.0 .
#   docker build --target chat-service -t ghcr.io/ficus-dev/chat-service:0.1.0 .
# The Helm chart (charts/ficus) runs them as user 65532 with a read-only root filesystem.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ficus-operator --bin ficus-operator \
 && cargo build --release --locked -p chat-service --bin chat-service

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /src/target/release/ficus-operator /usr/local/bin/ficus-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ficus-operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS chat-service
COPY --from=build /src/target/release/chat-service /usr/local/bin/chat-service
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/chat-service"]
