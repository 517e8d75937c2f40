//! The exporter as a real daemon inside a [`Netns`], scraped from inside the same
//! namespace with the shared HTTP client.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpstate_testkit::http::{self, Response};

use super::exposition::Exposition;
use super::netns::Netns;
use super::wait_until;

/// How long the daemon may take to start answering on its port.
const STARTUP: Duration = Duration::from_secs(30);
/// How long one HTTP exchange may take.
const EXCHANGE: Duration = Duration::from_secs(10);
/// How often [`Daemon::exit_status`] looks: the most it adds to a measured exit time.
const EXIT_POLL: Duration = Duration::from_millis(5);

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
        let mut daemon = Daemon::spawn(binary, ns, addr, args);
        daemon.wait_ready();
        daemon
    }

    /// The package's exporter, as [`Daemon::exporter`], without waiting for it to listen:
    /// for tests that act during its startup (then [`Daemon::wait_ready`]).
    pub fn exporter_starting(ns: &'ns Netns, args: &[&str]) -> Daemon<'ns> {
        let mut all = vec!["--web.listen-address", EXPORTER_ADDRESS];
        all.extend_from_slice(args);
        let address = EXPORTER_ADDRESS.parse().expect("a socket address");
        let binary: &Path = env!("CARGO_BIN_EXE_tcpstate-exporter").as_ref();
        Daemon::spawn(binary, ns, address, &all)
    }

    fn spawn(binary: &Path, ns: &'ns Netns, addr: SocketAddr, args: &[&str]) -> Daemon<'ns> {
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
        Daemon {
            ns,
            addr,
            child,
            output,
            pumps,
        }
    }

    /// Waits (polling, up to 30 s) until the daemon accepts connections on its address.
    /// Panics, with the daemon's output, if it exits or never answers.
    pub fn wait_ready(&mut self) {
        let (ns, addr) = (self.ns, self.addr);
        let up = wait_until(STARTUP, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the exporter exited with {status} before listening on {addr}:\n{}",
                    self.output()
                );
            }
            ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
        });
        assert!(
            up,
            "the exporter did not listen on {addr} within {STARTUP:?}:\n{}",
            self.output()
        );
    }

    /// Sends `signal` (libc::SIGTERM, ...) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of our own child; no memory is touched.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The daemon's exit status once it has exited, waiting up to `timeout`; `None` when
    /// it is still running then. Polled every `EXIT_POLL`, not with [`wait_until`]'s
    /// growing pauses: callers time the exit (`Instant::now()` on return), and a pause of
    /// up to 100 ms would be counted as the daemon's own time.
    pub fn exit_status(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// Names of the daemon's threads (`/proc/PID/task/*/comm`).
    pub fn threads(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                    .map(|comm| comm.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
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

    /// A keep-alive connection to the daemon, opened from inside its namespace: scrapes
    /// over it close no socket, so unlike [`Daemon::scrape`]'s they leave no CLOSE_WAIT
    /// (nor a transition into it) in the namespace for the daemon to see.
    pub fn keep_alive(&self) -> KeepAlive {
        let addr = self.addr;
        let connection = self
            .ns
            .run(|| http::Connection::open(addr, EXCHANGE))
            .unwrap_or_else(|e| panic!("{e}"));
        KeepAlive(connection)
    }

    /// One HTTP/1.1 request with `Connection: close`, sent from inside the namespace.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let addr = self.addr;
        self.ns
            .run(|| http::request(addr, method, path, headers, EXCHANGE))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A keep-alive connection to a [`Daemon`] ([`Daemon::keep_alive`]).
pub struct KeepAlive(http::Connection);

impl KeepAlive {
    /// `GET /metrics` on this connection, parsed; panics unless answered 200.
    pub fn metrics(&mut self) -> Exposition {
        let response = self
            .0
            .request("GET", "/metrics", &[])
            .unwrap_or_else(|e| panic!("keep-alive scrape: {e}"));
        assert_eq!(response.status, 200, "{}", response.text());
        Exposition::parse(&response.text())
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
