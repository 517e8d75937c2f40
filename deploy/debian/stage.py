#!/usr/bin/env python3
"""Stage the Debian package's tree for `dpkg-deb --build` (deploy/release.sh deb).

    deploy/debian/stage.py REPO BINARY STAGE DEPENDS_AUTO ARCHITECTURE

Reads Cargo.toml's [package.metadata.deb] (cargo-deb's keys, with cargo-deb's meaning: it
made the package before, and made the same files and control from them) and writes into
STAGE, which must not exist:

- every asset at its destination with its mode; "target/release/X" is BINARY, as it is
  (not stripped: it has no DWARF already, and a full strip would take the symbols that name
  functions in a backtrace);
- the unit of systemd-units.unit-scripts as usr/lib/systemd/system/NAME.service (644);
- usr/share/doc/PACKAGE/copyright, Debian's machine-readable format, from copyright and
  license;
- DEBIAN/control (Installed-Size as cargo-deb counts it: a file's KiB plus one; the
  description folded at 79 columns as cargo-deb folds it), DEBIAN/conffiles (every file
  under etc/), and the maintainer scripts of deploy/debian/ (the systemd snippets cargo-deb
  3.8.0 wrote for enable = true, start = true, kept verbatim);
- every mtime set to SOURCE_DATE_EPOCH, or else to Cargo.toml's, rounded down to the day
  (cargo-deb's rule): the same commit gives the same package on the same day.

DEPENDS_AUTO replaces "$auto" in depends (dpkg-shlibdeps' answer for BINARY);
ARCHITECTURE is dpkg's (amd64). Prints the mtime it gave the files.
"""
import glob
import os
import shutil
import sys
import tomllib


def fold(text, width=79):
    """cargo-deb's folding (util/wordsplit.rs): words joined until the next would make the
    line width long or more; a blank line becomes "."."""
    lines = []
    for line in text.splitlines():
        if not line.strip():
            lines.append(".")
            continue
        current = ""
        for word in line.replace("\t", "  ").split(" "):
            if not current.strip():
                current = f"{current} {word}" if current else word
            elif len(current) + len(word) >= width:
                lines.append(current)
                current = word
            else:
                current = f"{current} {word}"
        lines.append(current)
    return lines


def main(repo, binary, stage, depends_auto, architecture):
    with open(os.path.join(repo, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    package = cargo["package"]
    deb = package["metadata"]["deb"]
    name = package["name"]

    files = []  # (source path, destination relative to STAGE, mode)
    for source, dest, mode in deb["assets"]:
        if source.startswith("target/release/"):
            sources = [os.path.join(os.path.dirname(binary), source[len("target/release/"):])]
        else:
            sources = sorted(glob.glob(os.path.join(repo, source)))
            if not sources:
                sys.exit(f"stage.py: asset {source} matches no file")
        for path in sources:
            target = dest + os.path.basename(path) if dest.endswith("/") else dest
            files.append((path, target, int(mode, 8)))
    units = deb["systemd-units"]
    if (units.get("enable"), units.get("start")) != (True, True):
        sys.exit("stage.py: deploy/debian's maintainer scripts are those of enable = true, "
                 "start = true; make them again for other systemd-units settings")
    for unit in sorted(glob.glob(os.path.join(repo, units["unit-scripts"], "*.service"))):
        files.append((unit, "usr/lib/systemd/system/" + os.path.basename(unit), 0o644))

    os.makedirs(os.path.join(stage, "DEBIAN"))
    for source, target, mode in files:
        path = os.path.join(stage, target)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(source, path)
        os.chmod(path, mode)
    copyright_path = f"usr/share/doc/{name}/copyright"
    copyright_text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {name}\n"
        f"Copyright: {deb['copyright']}\n"
        f"License: {package['license']}\n"
    )
    with open(os.path.join(stage, copyright_path), "w") as f:
        f.write(copyright_text)
    os.chmod(os.path.join(stage, copyright_path), 0o644)

    sizes = [os.path.getsize(os.path.join(stage, t)) for _, t, _ in files]
    sizes.append(len(copyright_text.encode()))
    installed_kib = sum((size + 2047) // 1024 for size in sizes)
    depends = deb["depends"].replace("$auto", depends_auto)
    control = [
        f"Package: {name}",
        f"Version: {package['version']}-1",
        f"Architecture: {architecture}",
        f"Section: {deb['section']}",
        f"Priority: {deb['priority']}",
        f"Maintainer: {deb['maintainer']}",
        f"Installed-Size: {installed_kib}",
        f"Depends: {depends}",
    ]
    description = fold(package["description"]) + fold(deb["extended-description"])
    control.append("Description: " + "\n ".join(description))
    # cargo-deb ended the paragraph with an empty line: so does this.
    write(stage, "DEBIAN/control", "\n".join(control) + "\n\n", 0o644)
    conffiles = [t for _, t, _ in files if t.startswith("etc/")]
    if conffiles:
        write(stage, "DEBIAN/conffiles", "".join(f"/{t}\n" for t in conffiles), 0o644)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        source = os.path.join(repo, "deploy/debian", script)
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(stage, "DEBIAN", script))
            os.chmod(os.path.join(stage, "DEBIAN", script), 0o755)

    if "SOURCE_DATE_EPOCH" in os.environ:
        stamp = int(os.environ["SOURCE_DATE_EPOCH"])
    else:
        stamp = int(os.path.getmtime(os.path.join(repo, "Cargo.toml")))
        stamp -= stamp % 86400
    for top, dirs, names in os.walk(stage):
        os.chmod(top, 0o755)
        for entry in names:
            os.utime(os.path.join(top, entry), (stamp, stamp))
    for top, _, _ in os.walk(stage):
        os.utime(top, (stamp, stamp))
    print(stamp)


def write(stage, target, text, mode):
    path = os.path.join(stage, target)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
