//! Shared support for the integration tests: private network namespaces, socket
//! actors (`tcpstate-scenario`), the exporter as a daemon, an exposition parser, and
//! `ss` as the reference view of the kernel's TCP table.
//!
//! Use it with `mod support;` from a test file of the root package. Functions that
//! need the exporter take its path, so a test passes
//! `env!("CARGO_BIN_EXE_tcpstate-exporter")`.
//!
//! Needs root (to create namespaces) and iproute2 (`ip`, `ss`). Nothing here
//! skips: missing privileges fail the test.

// Each test file uses a different part of this module; what one leaves unused is
// not dead code.
#![allow(dead_code)]

mod actor;
mod daemon;
mod exposition;
mod netns;
mod ss;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Re-exports: any one test file uses only some of them.
#[allow(unused_imports)]
pub use actor::{Actor, port_of, scenario_binary};
#[allow(unused_imports)]
pub use daemon::{Daemon, EXPORTER_ADDRESS, KeepAlive};
#[allow(unused_imports)]
pub use exposition::{Exposition, Labels};
#[allow(unused_imports)]
pub use netns::Netns;
#[allow(unused_imports)]
pub use ss::{SsSocket, SsUser, parse as parse_ss};
#[allow(unused_imports)]
pub use tcpstate_testkit::http::{self, Response, parse_response};

/// A file in the temp dir, removed on drop: a test that fails (panics) leaves none behind
/// either. Whatever sits at its path then goes: the test may have replaced the file (with
/// a FIFO, say).
pub struct TempConfig {
    path: String,
}

impl TempConfig {
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl AsRef<Path> for TempConfig {
    fn as_ref(&self) -> &Path {
        Path::new(&self.path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `tcpstate-test-PID-N.toml` in the temp dir, holding `text`.
pub fn temp_config(text: &str) -> TempConfig {
    write_temp(unique_temp_path(".toml"), text)
}

/// `tcpstate-test-PID-N-NAME` in the temp dir, holding `text`: for a file whose name
/// says what it is (`web.yml`, `reload.toml`).
pub fn temp_file(name: &str, text: &str) -> TempConfig {
    write_temp(unique_temp_path(&format!("-{name}")), text)
}

fn write_temp(path: PathBuf, text: &str) -> TempConfig {
    // The guard first: a failed write removes whatever it left.
    let file = TempConfig {
        path: path.display().to_string(),
    };
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    file
}

/// A directory in the temp dir, removed with everything in it on drop: a test that fails
/// (panics) leaves none behind either.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `tcpstate-test-PID-N-WHAT` in the temp dir, empty.
    pub fn new(what: &str) -> TempDir {
        let dir = TempDir {
            path: unique_temp_path(&format!("-{what}")),
        };
        // What a killed run of a process with the same PID may have left.
        let _ = std::fs::remove_dir_all(&dir.path);
        std::fs::create_dir(&dir.path)
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.path.display()));
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` as `name` in the directory; the file's path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.path.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `tcpstate-test-PID-N` + `suffix` in the temp dir: unique within this process (N
/// counts) and among processes running at once (PID).
fn unique_temp_path(suffix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "tcpstate-test-{}-{}{suffix}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// How many sockets of the namespace `ss` shows in `state` (ss spelling: `CLOSE-WAIT`).
/// Without the holders, so one look takes milliseconds, not most of a second.
pub fn count_state(ns: &Netns, state: &str) -> usize {
    ns.sockets_unowned()
        .iter()
        .filter(|s| s.state == state)
        .count()
}

/// The commonest scenario: `server` listens on 127.0.0.1:`port`, `client` opens
/// `count` connections (sending `send` bytes on each), `server` accepts them and the
/// client closes: `count` inbound CLOSE_WAIT sockets held by `server`. Returns the
/// moment the FINs were sent, once `ss` shows exactly `count` CLOSE_WAIT sockets.
pub fn inbound_close_wait(
    ns: &Netns,
    server: &mut Actor,
    client: &mut Actor,
    port: u16,
    count: usize,
    send: usize,
) -> Instant {
    server.listen("l", &format!("127.0.0.1:{port}"), 64);
    client.cmd(&format!("connect c 127.0.0.1:{port} {count} send={send}"));
    server.cmd(&format!("accept a l {count}"));
    let fin = Instant::now();
    client.cmd("close c");
    assert!(
        wait_until(Duration::from_secs(30), || count_state(ns, "CLOSE-WAIT")
            == count),
        "expected {count} CLOSE_WAIT sockets, ss shows {:?}",
        ns.sockets()
    );
    fin
}

/// Seconds since the epoch, as the daemon stamps its samples.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
/// Use it for anything the kernel or the daemon does asynchronously (a peer's
/// delayed ACK, the next sample), never a fixed sleep.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
