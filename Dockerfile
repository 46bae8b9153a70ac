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

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The release profile keeps line tables for profiling; the image does not need them.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p conntrack-reconciler \
    && install -D -m 0755 target/release/conntrack-reconciler /out/conntrack-reconciler

# glibc and libgcc, nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
LABEL org.opencontainers.image.source="https://github.com/conntrack-reconciler/conntrack-reconciler" \
      org.opencontainers.image.description="Deletes stale UDP conntrack entries on Kubernetes nodes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/conntrack-reconciler /usr/local/bin/conntrack-reconciler
# Root; the pod spec grants NET_ADMIN alone (see the note at the top).
USER 0:0
EXPOSE 9795
ENTRYPOINT ["/usr/local/bin/conntrack-reconciler"]
CMD ["run"]
