# tcpstate-exporter image: the release binary and the glibc files it links, on nothing else
# (no shell, no package manager): about 9 MB. Like node_exporter's image, it copies a
# binary built outside, so the image, the Debian package and `cargo install` all ship the
# same build:
#
#   deploy/release.sh image     (cargo build --release, stage target/image-root, podman build)
#
# Privileges are the runtime's business, not the image's: as the image's non-root user the
# exporter counts every socket of its network namespace (sock_diag needs no capability);
# naming other users' processes needs CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE, and
# namespaces = "all" adds CAP_SYS_ADMIN and the host's PID namespace. See
# deploy/kubernetes/daemonset.yaml for the why of each.

FROM scratch
# /usr/bin/tcpstate-exporter, libc, libm, libgcc_s and the dynamic loader (deploy/release.sh root).
COPY target/image-root/ /
# nobody:nogroup. Kubernetes overrides this with uid 0 plus a few capabilities, because
# added capabilities do not reach a non-root process there (see the DaemonSet).
USER 65534:65534
EXPOSE 9815
ENTRYPOINT ["/usr/bin/tcpstate-exporter"]
