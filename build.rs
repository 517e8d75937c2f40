//! Builds the eBPF program of the `events` feature (bpf/state_change.bpf.c) from source
//! with clang, into OUT_DIR, where `src/events` embeds it.
//!
//! Needs clang (any version with the BPF target, 14+ tested) and libbpf's headers
//! (Debian: `apt-get install clang libbpf-dev`). Without the feature
//! (`--no-default-features`) nothing is compiled and neither is needed. A missing tool
//! fails the build with one line that names it, never with a compiler backtrace.
//! `CLANG` overrides the compiler's path.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "bpf/state_change.bpf.c";
const HEADER: &str = "bpf/state_change.h";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={HEADER}");
    println!("cargo:rerun-if-env-changed=CLANG");
    if env::var_os("CARGO_FEATURE_EVENTS").is_none() {
        return;
    }
    if let Err(message) = compile() {
        // cargo shows `error: <message>` and stops the build.
        println!("cargo::error={message}");
    }
}

fn compile() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?)
        .join("state_change.bpf.o");
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
        .args(["-c", SOURCE, "-o"])
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
        "events feature: `{clang}` failed to compile {SOURCE}: {first_error}"
    ))
}
