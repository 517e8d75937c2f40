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

use std::time::{Duration, Instant};

// Re-exports: any one test file uses only some of them.
#[allow(unused_imports)]
pub use actor::{Actor, port_of, scenario_binary};
#[allow(unused_imports)]
pub use daemon::{Daemon, Response, parse_response};
#[allow(unused_imports)]
pub use exposition::{Exposition, Labels};
#[allow(unused_imports)]
pub use netns::{Netns, enter};
#[allow(unused_imports)]
pub use ss::{SsSocket, SsUser, parse as parse_ss};

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
