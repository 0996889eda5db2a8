# Multi-stage build: a Rust toolchain builds the binary; a slim image runs it as a non-root
# user with nothing else. For a distroless runtime, pass its reference as RUNTIME_IMAGE
# (any glibc-based "cc" distroless image works; the binary needs only libc and libgcc).
#   docker build -t egress-gateway:0.1.0 .
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p egress-gateway \
 && cp target/release/egress-gateway /egress-gateway

FROM ${RUNTIME_IMAGE}
COPY --from=build /egress-gateway /usr/local/bin/egress-gateway
USER 65532:65532
EXPOSE 15001 15000
ENTRYPOINT ["/usr/local/bin/egress-gateway"]
CMD ["--listen=0.0.0.0:15001", "--admin=0.0.0.0:15000"]
