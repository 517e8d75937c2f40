#!/bin/bash
# The shipped artifacts, all from one release build of the exporter:
#
#   deploy/release.sh binary   target/release/tcpstate-exporter (cargo build --release)
#   deploy/release.sh deb      + target/debian/tcpstate-exporter_<version>-1_<arch>.deb
#   deploy/release.sh image    + the container image tcpstate-exporter:<version> (podman,
#                                or docker when podman is absent)
#   deploy/release.sh root     + target/image-root/, what the Dockerfile copies (the
#                                binary and the glibc files it links), without building
#
# Needs what the build needs (clang and libbpf-dev for the default events feature). `deb`
# installs cargo-deb (pinned below, from crates.io) into $TCPSTATE_TOOLS (default
# target/tools) unless that version is on PATH, and dpkg-shlibdeps (dpkg-dev) must exist;
# as root it is installed. CARGO_TARGET_DIR is honoured: the package and the image are
# made from the binary the build left there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
CARGO_DEB_VERSION=3.8.0
TOOLS=${TCPSTATE_TOOLS:-$repo/target/tools}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
binary=$target_dir/release/tcpstate-exporter
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)

say() { echo "release.sh: $*" >&2; }
fatal() { say "$*"; exit 1; }

build_binary() {
    cargo build --release --locked --bin tcpstate-exporter
    say "binary: $binary ($(stat -c %s "$binary") bytes)"
}

# target/image-root: the binary as /usr/bin/tcpstate-exporter plus every shared object it
# loads (glibc's libc, libm, libgcc_s and the dynamic loader), at the paths the loader
# looks for them. Nothing else: no shell, no package manager, no users file.
stage_root() {
    local root=$repo/target/image-root lib
    rm -rf "$root"
    install -D -m 0755 "$binary" "$root/usr/bin/tcpstate-exporter"
    # ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
    for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
    say "image root: $(find "$root" -type f | wc -l) files, $(du -sb "$root" | cut -f1) bytes"
}

ensure_cargo_deb() {
    if [ "$(cargo-deb --version 2>/dev/null | awk '{print $NF}')" = "$CARGO_DEB_VERSION" ]; then
        CARGO_DEB=cargo-deb
        return
    fi
    CARGO_DEB=$TOOLS/bin/cargo-deb
    if [ "$("$CARGO_DEB" --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_DEB_VERSION" ]; then
        say "installing cargo-deb $CARGO_DEB_VERSION into $TOOLS"
        # Its own target directory: never the exporter's release build. Unoptimised and
        # without its lzma and elf features (xz-utils' xz compresses, as on every Debian):
        # measured here, 1.8 min of CPU to build against 4.9 for the default release build,
        # and packaging takes the same few seconds.
        CARGO_TARGET_DIR=$TOOLS/build cargo install --quiet --locked --debug \
            --no-default-features --root "$TOOLS" cargo-deb --version "$CARGO_DEB_VERSION"
        rm -rf "$TOOLS/build"
    fi
    if ! command -v dpkg-shlibdeps >/dev/null; then
        [ "$(id -u)" = 0 ] || fatal "dpkg-shlibdeps is missing: apt-get install dpkg-dev"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
    fi
}

build_deb() {
    ensure_cargo_deb
    # --no-build: the binary above. --no-strip: it is already without DWARF, and a full
    # strip would take the symbols that name functions in a backtrace.
    local deb
    deb=$("$CARGO_DEB" --no-build --no-strip --output "$repo/target/debian/" | tail -1)
    say "package: $deb ($(stat -c %s "$deb") bytes)"
}

# TCPSTATE_BUILD_FLAGS: extra words for `podman build` (the tests pass the machine's).
build_image() {
    local tool=podman flags
    command -v podman >/dev/null || tool=docker
    read -ra flags <<<"${TCPSTATE_BUILD_FLAGS:-}"
    "$tool" build "${flags[@]}" --tag "tcpstate-exporter:$version" --file "$repo/Dockerfile" "$repo"
}

case "${1:-}" in
    binary) build_binary ;;
    root) stage_root ;;
    deb) build_binary && build_deb ;;
    image) build_binary && stage_root && build_image ;;
    *) fatal "usage: deploy/release.sh binary|deb|image|root" ;;
esac
