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
# needs dpkg-deb, dpkg-shlibdeps (dpkg-dev; as root it is installed) and python3 3.11 or
# later (tomllib). CARGO_TARGET_DIR is honoured: the package and the image are made from
# the binary the build left there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
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

# dpkg-shlibdeps' Depends for the binary, as cargo-deb asked it ("$auto" in Cargo.toml's
# depends): libgcc left out (always present), the rest joined with ", ".
shlibs_depends() {
    local dir out
    dir=$(mktemp -d)
    mkdir "$dir/debian" && : > "$dir/debian/control"
    # Its warnings (the binary is not under debian/PACKAGE/) only with a failure.
    if ! out=$(cd "$dir" && dpkg-shlibdeps -xlibgcc -O "$binary" 2>"$dir/err"); then
        cat "$dir/err" >&2
        rm -rf "$dir"
        return 1
    fi
    rm -rf "$dir"
    sed -n 's/^shlibs:Depends=//p' <<<"$out" | tr ',' '\n' | sed 's/^ *//; s/ *$//' |
        grep -v -e '^libgcc-' -e '^libgcc1' | paste -sd, - | sed 's/,/, /g'
}

# The package: deploy/debian/stage.py lays out its tree from Cargo.toml's
# [package.metadata.deb] (assets, unit, copyright, control, conffiles, the maintainer
# scripts of deploy/debian/), and dpkg-deb packs it, every file owned by root: the same
# files, modes, mtimes, control and scripts as cargo-deb 3.8.0 made from that metadata. That
# cargo-deb was built from crates.io on each fresh machine: measured here (2 cores), 52 s
# alone (90 s of CPU), 111 s beside the Debian root's download in tests/deploy/package.sh,
# which it slowed from 35 to 84 s; packing takes ~10 s either way (xz).
build_deb() {
    if ! command -v dpkg-shlibdeps >/dev/null; then
        [ "$(id -u)" = 0 ] || fatal "dpkg-shlibdeps is missing: apt-get install dpkg-dev"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
    fi
    local stage=$repo/target/debian/root arch depends stamp deb
    arch=$(dpkg --print-architecture)
    depends=$(shlibs_depends) && [ -n "$depends" ] || fatal "dpkg-shlibdeps: no dependencies for $binary"
    rm -rf "$stage"
    stamp=$(python3 "$repo/deploy/debian/stage.py" "$repo" "$binary" "$stage" "$depends" "$arch")
    deb=$repo/target/debian/tcpstate-exporter_${version}-1_$arch.deb
    SOURCE_DATE_EPOCH=$stamp dpkg-deb --root-owner-group -Zxz -z6 --build "$stage" "$deb" >/dev/null
    rm -rf "$stage"
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
