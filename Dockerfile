# Images for the operator and chat-service, one Dockerfile for both:
#   docker build --target operator -t ghcr.io/ficus-dev/ficus-operator:0.1.0 .
#   docker build --target chat-service -t ghcr.io/ficus-dev/chat-service:0.1.0 .
# The Helm chart (charts/ficus) runs them as user 65532 with a read-only root filesystem.
#
# Base images are build arguments; the defaults are the upstream ones. Where no registry is
# reachable, scripts/build-images.sh makes a local runtime base from Debian packages and passes
# BINARIES=prebuilt, which copies binaries built on a Debian 12 host (cargo build --release,
# placed under target/release/ of the build context) instead of compiling in BUILDER_IMAGE.
# Needs BuildKit (DOCKER_BUILDKIT=1 on Docker 20.10), which builds only the stages used.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ficus-operator --bin ficus-operator \
 && cargo build --release --locked -p chat-service --bin chat-service \
 && mkdir -p /out \
 && cp target/release/ficus-operator target/release/chat-service /out/

FROM scratch AS prebuilt
COPY target/release/ficus-operator target/release/chat-service /out/

# The stage the binaries come from: `build` or `prebuilt`.
FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=binaries /out/ficus-operator /usr/local/bin/ficus-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ficus-operator"]

FROM ${RUNTIME_IMAGE} AS chat-service
COPY --from=binaries /out/chat-service /usr/local/bin/chat-service
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/chat-service"]
