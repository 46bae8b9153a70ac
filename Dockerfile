# syntax=docker/dockerfile:1
#
# The conntrack-reconciler node agent: `make image` (cargo xtask image [--tag T]).
#
# Runs as root on purpose, with every capability dropped but NET_ADMIN (the DaemonSet's
# securityContext does that; see docs/operations.md). A non-root process only keeps NET_ADMIN
# through exec if it is an *ambient* capability or a file capability on the binary: Kubernetes
# has no field for ambient capabilities, and file capabilities depend on the runtime, the
# storage driver preserving xattrs and no_new_privs. Root with one capability is the form every
# runtime enforces the same way.

# Base images are pinned by digest (multi-platform index), so a re-pushed tag cannot change what
# is built or shipped; the tag says which release the digest is. To update, take both from
# `docker buildx imagetools inspect <image>:<tag>` and change them together
# (`cargo test -p xtask manifests::` checks every FROM is pinned this way).
FROM rust:1.98.1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling; the image does not need them.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p conntrack-reconciler \
    && install -D -m 0755 target/release/conntrack-reconciler /out/conntrack-reconciler

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:latest@sha256:6e1871c34683dc9ee996d13084497783fd98ac0200213d0826625f4e9d4be1d0
LABEL org.opencontainers.image.source="https://github.com/conntrack-reconciler/conntrack-reconciler" \
      org.opencontainers.image.description="Deletes stale UDP conntrack entries on Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/conntrack-reconciler /usr/local/bin/conntrack-reconciler
# Root; the pod spec grants NET_ADMIN alone (see the note at the top).
USER 0:0
EXPOSE 9795
ENTRYPOINT ["/usr/local/bin/conntrack-reconciler"]
CMD ["run"]
