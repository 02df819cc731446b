# syntax=docker/dockerfile:1
#
# vigil container image.
#
#   docker build -t vigil .                 # the runtime image (the last stage, `release`)
#   docker build --target dev -t vigil:dev .  # plus SoftHSM2, p11-kit server and pkcs11-tool
#
# The runtime image runs as UID/GID 10001 (the Helm chart's runAsUser/runAsGroup) with a
# read-only root filesystem: everything vigil
# writes (journal, checkpoint, the embedded default's demo PKI) lives in the volume
# /var/lib/vigil, and configuration is read from /etc/vigil. See docs/DEPLOY.md.
# tests/deploy.rs checks this file against the binary and the Helm chart.

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

# === builder ===
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so that a change under src/
# rebuilds only vigil itself. Targets declared in Cargo.toml ([[bench]], [[example]], [[test]],
# [[bin]]) get stub files too, or the manifest would not load without their sources; those stay
# for the real build, which compiles only the library and the binary.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo '//! stub' > src/lib.rs \
 && awk -F'"' ' \
      function flush() { if (kind != "") print (path != "" ? path : dir[kind] "/" name ".rs"); kind = "" } \
      BEGIN { dir["bench"] = "benches"; dir["example"] = "examples"; dir["test"] = "tests"; dir["bin"] = "src/bin" } \
      /^\[/ { flush() } \
      /^\[\[(bench|example|test|bin)\]\]/ { kind = $0; gsub(/[][ ]/, "", kind); name = ""; path = ""; next } \
      kind != "" && /^name *=/ { name = $2 } \
      kind != "" && /^path *=/ { path = $2 } \
      END { flush() }' Cargo.toml \
    | while read -r stub; do [ -e "$stub" ] || { mkdir -p "$(dirname "$stub")" && echo 'fn main() {}' > "$stub"; }; done \
 && cargo build --release --locked \
 && rm -rf src target/release/vigil target/release/deps/vigil-* target/release/deps/libvigil-* \
      target/release/.fingerprint/vigil-*

# The real sources. Their modification times may be older than the stub build's, so the
# fingerprints of the stub crate were removed above: cargo rebuilds vigil from these files.
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/vigil /out/vigil \
 && /out/vigil --version

# === runtime ===
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="vigil" \
      org.opencontainers.image.description="Active-active OCSP and CRL validation responder" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/vigil-pki/vigil" \
      org.opencontainers.image.documentation="https://github.com/vigil-pki/vigil/blob/main/docs/DEPLOY.md" \
      org.opencontainers.image.base.name="docker.io/library/debian:${DEBIAN_RELEASE}-slim"

# ca-certificates: roots for rediss:// feeds. p11-kit-modules: p11-kit-client.so, so an HSM
# behind `p11-kit server` (or any PKCS#11 module mounted into the pod) is reachable without a
# rebuild. /usr/local/lib/vigil/p11-kit-client.so points at it whatever the architecture.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates p11-kit-modules \
 && rm -rf /var/lib/apt/lists/* \
 && client="$(find /usr/lib -path '*/pkcs11/p11-kit-client.so' | head -n 1)" \
 && test -n "$client" \
 && install -d /usr/local/lib/vigil \
 && ln -s "$client" /usr/local/lib/vigil/p11-kit-client.so \
 && groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid vigil --home-dir /var/lib/vigil --no-create-home \
      --shell /usr/sbin/nologin vigil \
 && install -d -o vigil -g vigil -m 0750 /var/lib/vigil \
 && install -d -m 0755 /etc/vigil

COPY --from=builder /out/vigil /usr/local/bin/vigil

# The image's defaults; they override the config file's server.listen and data_dir (the Helm
# chart sets both to the values it writes into the config). VIGIL_CONFIG selects a config file;
# without one vigil runs its embedded default (a demo PKI made in the volume).
ENV VIGIL_LISTEN=0.0.0.0:8080 \
    VIGIL_DATA_DIR=/var/lib/vigil

VOLUME ["/var/lib/vigil"]
WORKDIR /var/lib/vigil
USER 10001:10001

# 8080: OCSP, CRLs, /healthz, /readyz, /metrics. 9090: the admin API when [admin] is configured.
EXPOSE 8080/tcp 9090/tcp

# vigil drains on SIGTERM: /readyz turns 503, after server.drain_delay the listener closes and
# in-flight requests get server.shutdown_timeout. `docker stop -t` must exceed their sum.
STOPSIGNAL SIGTERM

# No HTTP client in the image: bash (an Essential package of the base) opens the connection
# itself. The port follows VIGIL_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${VIGIL_LISTEN##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r _ code _ <&3 && [ \"$code\" = 200 ]"]

ENTRYPOINT ["/usr/local/bin/vigil"]
CMD ["serve"]

# === dev ===
# The runtime plus SoftHSM2 (a software PKCS#11 token), `p11-kit server` to put it on a socket
# as a networked HSM stands in, and pkcs11-tool. Never for production: the token's keys are
# files in the volume.
FROM runtime AS dev
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends softhsm2 p11-kit opensc \
 && rm -rf /var/lib/apt/lists/* \
 && printf 'directories.tokendir = /var/lib/vigil/softhsm/tokens\nobjectstore.backend = file\nlog.level = INFO\n' \
      > /etc/vigil/softhsm2.conf
# The token directory is in the volume, so it is made at run time (`mkdir -p` it before
# `softhsm2-util --init-token`): what a build step writes into a declared VOLUME is discarded.
ENV SOFTHSM2_CONF=/etc/vigil/softhsm2.conf
USER 10001:10001

# === release ===
# The last stage is what a plain `docker build .` produces: the runtime, never dev.
FROM runtime AS release
