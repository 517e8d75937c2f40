//! Input that can never work, or that would crash or exhaust the daemon, is refused up
//! front with the usual one-line error and exit code 2 (issue 16, items 4, 6 and 7):
//! absurd values, files that are devices, FIFOs or deeply nested, telemetry paths no
//! request can match, user names that can never log in, a refused cipher list.
//! `check-config` runs the same loading code as the daemon's start and its reloads.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::TempDir;

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");

/// Runs `check-config ARGS` with a deadline; its output and how long it took.
fn check_config(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = std::process::Command::new("timeout")
        .args(["20", EXPORTER, "check-config"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let _ = child.stdin.take();
    let output = child.wait_with_output().expect("wait");
    (output, started.elapsed())
}

/// Refused: exit code 2, one line on stderr holding every one of `expect`.
fn assert_refused(args: &[&str], expect: &[&str]) -> Duration {
    let (output, took) = check_config(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    for word in expect {
        assert!(stderr.contains(word), "{args:?}: {word:?} in {stderr}");
    }
    took
}

#[test]
fn absurd_values_and_unbounded_files_are_refused() {
    let dir = TempDir::new("refusals");
    assert_refused(
        &["--sample.interval", "18446744073709551615s"],
        &["--sample.interval", "24h maximum"],
    );
    let ring = dir.file("ring.toml", "\nevents_ring_bytes = 2147483648\n");
    assert_refused(
        &["--config.file", &ring],
        &["events_ring_bytes", "line 2", "64 MiB"],
    );
    let took = assert_refused(&["--config.file", "/dev/zero"], &["a device"]);
    assert!(
        took < Duration::from_secs(5),
        "read without bound: {took:?}"
    );
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let fifo = fifo.display().to_string();
    assert_refused(&["--config.file", &fifo], &["a FIFO"]);
    assert_refused(&["--web.config.file", &fifo], &["a FIFO"]);
    let cert = dir.file(
        "cert.yml",
        "tls_server_config:\n  cert_file: /dev/zero\n  key_file: /dev/zero\n",
    );
    assert_refused(&["--web.config.file", &cert], &["cert_file", "a device"]);
    let deep = dir.file(
        "deep.yml",
        &format!(
            "basic_auth_users: {}{}\n",
            "[".repeat(20_000),
            "]".repeat(20_000)
        ),
    );
    let took = assert_refused(&["--web.config.file", &deep], &["nested", "line 1"]);
    eprintln!("20,000 nested levels refused in {took:?} (9 s to parse before)");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn values_that_can_never_work_are_refused() {
    let dir = TempDir::new("refusals");
    for path in ["/métrics", "/metrics?format=text"] {
        let config = dir.file("path.toml", &format!("[web]\ntelemetry_path = {path:?}\n"));
        assert_refused(
            &["--config.file", &config],
            &["web.telemetry_path", "line 2"],
        );
        assert_refused(&["--web.telemetry-path", path], &["--web.telemetry-path"]);
    }
    for user in ["\"\"", "\"a:b\""] {
        let web = dir.file(
            "users.yml",
            &format!(
                "basic_auth_users:\n  {user}: '$2y$04$0h6ZeJ3jVqOU4D7Sm1Kd7OQt7fJTeGFTgmDShbx/ONRVAJvwTKbWy'\n"
            ),
        );
        assert_refused(&["--web.config.file", &web], &["basic_auth_users", "':'"]);
    }
}

#[test]
fn config_errors_say_where_in_one_line() {
    let dir = TempDir::new("refusals");
    let dotted = dir.file("dotted.toml", "# sampling\nsample.interval = \"15x\"\n");
    assert_refused(&["--config.file", &dotted], &["sample.interval", "line 2"]);
    // Only legacy suites: was a warning line and then the error, now the error alone.
    let pki = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = dir.file("c.pem", &pki.cert.pem());
    let key = dir.file("k.pem", &pki.signing_key.serialize_pem());
    let web = dir.file(
        "ciphers.yml",
        &format!(
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n  cipher_suites:\n    \
             - TLS_RSA_WITH_RC4_128_SHA\n    - TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\n"
        ),
    );
    assert_refused(
        &["--web.config.file", &web],
        &["cipher_suites", "TLS_RSA_WITH_RC4_128_SHA"],
    );
}
