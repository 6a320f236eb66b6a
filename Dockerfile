# syntax=docker/dockerfile:1.7
#
# photo-pipeline images. One builder stage compiles both binaries once; each service is a
# build target (docs/deploy.md):
#
#   docker build --target processor  -t photo-pipeline/processor  .   # ingest + thumbnail stages
#   docker build --target embed      -t photo-pipeline/embed      .   # processor + ONNX Runtime
#   docker build --target status-api -t photo-pipeline/status-api .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below.
# The last stage (processor) is the default target.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm
# The embed stage loads ONNX Runtime at run time (ORT_DYLIB_PATH); this pins which one.
ARG ONNXRUNTIME_VERSION=1.31.1

# ---------------------------------------------------------------------------------------------
# builder: both release binaries. librdkafka, libjpeg-turbo and libheif (HEIC/AVIF) are compiled
# from their bundled sources (cmake, nasm, g++); OpenSSL and curl headers and libheif's codecs
# (libde265 for HEVC, dav1d for AV1) come from Debian.
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake nasm g++ make pkg-config libssl-dev libcurl4-openssl-dev \
    libde265-dev libdav1d-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace is needed: cargo loads every member's manifest even when building two.
# .dockerignore keeps target/, node_modules/ and local data out of the context.
COPY . .
# Cache mounts keep the registry and target/ between builds, so a source change rebuilds only
# our crates. target/ is a cache mount, so the binaries are copied out of it to /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p processor -p status-api \
 && mkdir -p /out \
 && cp target/release/processor target/release/status-api /out/

# ---------------------------------------------------------------------------------------------
# onnxruntime: the shared library from the official onnxruntime wheel on PyPI (the wheel ships
# capi/libonnxruntime.so.<version>; it does not depend on Python). pip picks the wheel for the
# build platform (x86_64 or aarch64).
FROM python:3.11-slim-${DEBIAN_RELEASE} AS onnxruntime
ARG ONNXRUNTIME_VERSION
RUN pip download --no-deps --only-binary=:all: --dest /tmp/wheel "onnxruntime==${ONNXRUNTIME_VERSION}" \
 && python -m zipfile -e /tmp/wheel/onnxruntime-*.whl /tmp/ort \
 && mkdir -p /opt/onnxruntime/lib \
 && cp "/tmp/ort/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" /opt/onnxruntime/lib/ \
 && rm -rf /tmp/wheel /tmp/ort

# ---------------------------------------------------------------------------------------------
# runtime-base: what every service needs at run time, and a fixed non-root user.
# `ldd` of the processor shows libssl3/libcrypto3, zlib, libde265, libdav1d, libstdc++ and glibc
# (librdkafka, libjpeg-turbo, libheif and littleCMS are linked statically); libstdc++6 is also
# for ONNX Runtime. The numeric UID lets
# Kubernetes verify runAsNonRoot.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libstdc++6 \
    libde265-0 libdav1d6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
ENV RUST_LOG=info \
    LOG_FORMAT=json
USER 10001:10001
WORKDIR /

# ---------------------------------------------------------------------------------------------
FROM runtime-base AS status-api
COPY --from=builder /out/status-api /usr/local/bin/status-api
# Fails the build if the binary needs a shared library this image lacks.
RUN ! ldd /usr/local/bin/status-api | grep 'not found'
ENV STATUS_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/status-api"]

# ---------------------------------------------------------------------------------------------
# embed: the same processor binary, plus ONNX Runtime, running only the embed stage. The face
# models are NOT baked in: they are mounted at MODEL_DIR (a volume filled by an init container
# in Kubernetes, a bind mount in compose) so that a model update needs no image rebuild and the
# image stays small and licence-neutral (docs/deploy.md, "Face models").
FROM runtime-base AS embed
ARG ONNXRUNTIME_VERSION
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=builder /out/processor /usr/local/bin/processor
# Model profiles are small and versioned with the code (the models they name are mounted).
COPY processor/profiles /etc/photo-pipeline/profiles
RUN ! ldd /usr/local/bin/processor | grep 'not found' \
 && ! ldd "/opt/onnxruntime/lib/libonnxruntime.so.${ONNXRUNTIME_VERSION}" | grep 'not found'
ENV PROCESSOR_STAGES=embed \
    EMBED_PROFILE=/etc/photo-pipeline/profiles/arcface112.json \
    PROCESSOR_HTTP_ADDR=0.0.0.0:8081 \
    ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ONNXRUNTIME_VERSION} \
    MODEL_DIR=/models
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/processor"]

# ---------------------------------------------------------------------------------------------
# processor (default target): the ingest (B2 webhook) and thumbnail stages; PROCESSOR_STAGES
# picks which run in a given container.
FROM runtime-base AS processor
COPY --from=builder /out/processor /usr/local/bin/processor
# The thumbnail stage makes the embed stage's input to the profile's size (docs/embed.md,
# "Decode once"); it reads only the profile file, no models.
COPY processor/profiles /etc/photo-pipeline/profiles
RUN ! ldd /usr/local/bin/processor | grep 'not found'
ENV PROCESSOR_STAGES=ingest,thumbnail \
    EMBED_PROFILE=/etc/photo-pipeline/profiles/arcface112.json \
    PROCESSOR_HTTP_ADDR=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/processor"]
