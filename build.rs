//! Builds the eBPF programs of the `events` feature (bpf/state_change.bpf.c,
//! bpf/socket_fds.bpf.c for the first attribution, bpf/tcp_table.bpf.c for the table) from source with clang, into OUT_DIR,
//! where `src/kernel/events` embeds them.
//!
//! Needs clang (any version with the BPF target, 14+ tested) and libbpf's headers
//! (Debian: `apt-get install clang libbpf-dev`). Without the feature
//! (`--no-default-features`) nothing is compiled and neither is needed. A missing tool
//! fails the build with one line that names it, never with a compiler backtrace.
//! `CLANG` overrides the compiler's path.
//!
//! It also records what `--version` prints beside the package version: the git revision
//! of HEAD (uncommitted changes are not marked: this script does not rerun for them), the
//! build date (`SOURCE_DATE_EPOCH` when
//! set, for reproducible builds) and the rustc version. Outside a git checkout (a
//! crates.io download, a source tarball) the revision is `unknown`. vergen is the crate
//! for this, but vergen 10 compiles a second major version of syn, darling and bon before
//! anything else can start: measured here, 45 s of build dependencies on 2 cores, for
//! what three commands do below.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Each program: its source, its header, and the object's name in OUT_DIR.
const PROGRAMS: [(&str, &str, &str); 3] = [
    (
        "bpf/state_change.bpf.c",
        "bpf/state_change.h",
        "state_change.bpf.o",
    ),
    (
        "bpf/socket_fds.bpf.c",
        "bpf/socket_fds.h",
        "socket_fds.bpf.o",
    ),
    ("bpf/tcp_table.bpf.c", "bpf/tcp_table.h", "tcp_table.bpf.o"),
];

fn main() {
    build_info();
    for (source, header, _) in PROGRAMS {
        println!("cargo:rerun-if-changed={source}");
        println!("cargo:rerun-if-changed={header}");
    }
    // The kernel types every program declares (CO-RE).
    println!("cargo:rerun-if-changed=bpf/kernel_types.h");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var_os("CARGO_FEATURE_EVENTS").is_none() {
        return;
    }
    for (source, _, object) in PROGRAMS {
        if let Err(message) = compile(source, object) {
            // cargo shows `error: <message>` and stops the build.
            println!("cargo::error={message}");
            return;
        }
    }
}

fn compile(source: &str, object: &str) -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?).join(object);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // asm/types.h (pulled in by linux/types.h) lives in the multiarch include directory;
    // bpf_tracing.h wants the target architecture for its register macros.
    let (multiarch, bpf_arch) = match arch.as_str() {
        "x86_64" => ("x86_64-linux-gnu", "x86"),
        "aarch64" => ("aarch64-linux-gnu", "arm64"),
        "riscv64" => ("riscv64-linux-gnu", "riscv"),
        "s390x" => ("s390x-linux-gnu", "s390"),
        "powerpc64" => ("powerpc64le-linux-gnu", "powerpc"),
        other => return Err(format!("events feature: no BPF build settings for {other}")),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let output = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-D__TARGET_ARCH_{bpf_arch}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&out)
        .output()
        .map_err(|e| {
            format!(
                "events feature: cannot run `{clang}` ({e}); install clang and libbpf-dev, \
                 or build with --no-default-features"
            )
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("bpf/bpf_helpers.h") && stderr.contains("not found") {
        return Err(
            "events feature: libbpf headers (bpf/bpf_helpers.h) not found; install libbpf-dev"
                .to_string(),
        );
    }
    if stderr.contains("asm/types.h") && stderr.contains("not found") {
        return Err(format!(
            "events feature: kernel headers (asm/types.h) not found in /usr/include/{multiarch}; \
             install linux-libc-dev"
        ));
    }
    let first_error = stderr
        .lines()
        .find(|line| line.contains("error"))
        .unwrap_or("no message");
    Err(format!(
        "events feature: `{clang}` failed to compile {source}: {first_error}"
    ))
}

/// `cargo:rustc-env` for src/version.rs: TCPSTATE_REVISION, TCPSTATE_BUILD_DATE,
/// TCPSTATE_RUSTC. Never fails the build: what cannot be found is `unknown`.
fn build_info() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let revision = match git(&["rev-parse", "HEAD"]) {
        Some(head) if !head.is_empty() => {
            // Rebuild when HEAD moves: the files git keeps it in (worktrees included).
            let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
            watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            for name in watched {
                if let Some(path) = git(&["rev-parse", "--git-path", &name])
                    && std::path::Path::new(&path).exists()
                {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            head
        }
        _ => "unknown".to_string(),
    };
    let built = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or_else(std::time::SystemTime::now);
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc_version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TCPSTATE_REVISION={revision}");
    println!(
        "cargo:rustc-env=TCPSTATE_BUILD_DATE={}",
        humantime::format_rfc3339_seconds(built)
    );
    println!("cargo:rustc-env=TCPSTATE_RUSTC={rustc_version}");
}
