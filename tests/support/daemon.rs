//! The exporter as a real daemon inside a [`Netns`], scraped from inside the same
//! namespace with the shared HTTP client.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tcpstate_testkit::http::{self, Response};

use super::netns::Netns;
use super::wait_until;

/// How long the daemon may take to start answering on its port.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take.
const EXCHANGE: Duration = Duration::from_secs(10);

/// A running exporter; killed on drop, its stderr printed if the test is failing.
pub struct Daemon<'ns> {
    ns: &'ns Netns,
    addr: SocketAddr,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<JoinHandle<()>>,
}

/// Where the tests run the exporter, inside their own namespace.
pub const EXPORTER_ADDRESS: &str = "127.0.0.1:9815";

impl<'ns> Daemon<'ns> {
    /// The package's exporter binary listening on `EXPORTER_ADDRESS` in `ns`, with
    /// `args` after `--web.listen-address`.
    pub fn exporter(ns: &'ns Netns, args: &[&str]) -> Daemon<'ns> {
        let mut all = vec!["--web.listen-address", EXPORTER_ADDRESS];
        all.extend_from_slice(args);
        let address = EXPORTER_ADDRESS.parse().expect("a socket address");
        Daemon::start(
            env!("CARGO_BIN_EXE_tcpstate-exporter").as_ref(),
            ns,
            address,
            &all,
        )
    }

    /// Starts `binary args` inside `ns` and waits (polling, up to 30 s) until `addr`
    /// accepts connections there. `args` must make it listen on `addr`, e.g.
    /// `["--web.listen-address", "127.0.0.1:9477", "--sample.interval", "1s"]`.
    /// Panics, with the daemon's output, if it exits or never answers.
    pub fn start(binary: &Path, ns: &'ns Netns, addr: SocketAddr, args: &[&str]) -> Daemon<'ns> {
        let mut child = ns
            .command(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, Arc::clone(&output)));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, Arc::clone(&output)));
        }
        let mut daemon = Daemon {
            ns,
            addr,
            child,
            output,
            pumps,
        };
        let up = wait_until(STARTUP, || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "{} exited with {status} before listening on {addr}:\n{}",
                    binary.display(),
                    daemon.output()
                );
            }
            ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        assert!(
            up,
            "{} did not listen on {addr} within {STARTUP:?}:\n{}",
            binary.display(),
            daemon.output()
        );
        daemon
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pid of the process started (`ip netns exec` execs the binary in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output lock")).into_owned()
    }

    /// `GET path`: (status, headers, body as text).
    pub fn scrape(&self, path: &str) -> (u16, Vec<(String, String)>, String) {
        let r = self.request("GET", path, &[]);
        let body = r.text();
        (r.status, r.headers, body)
    }

    /// One HTTP/1.1 request with `Connection: close`, sent from inside the namespace.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let addr = self.addr;
        self.ns
            .run(|| http::request(addr, method, path, headers, EXCHANGE))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- exporter output (pid {}) ----\n{}---- end ----",
                self.child.id(),
                self.output()
            );
        }
    }
}

/// Copies a pipe into the shared buffer until it closes.
fn pump(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut out) = into.lock() {
                out.extend_from_slice(&buf[..n]);
            }
        }
    })
}
