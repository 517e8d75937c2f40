//! The exporter as a real daemon inside a [`Netns`], and a minimal HTTP/1.1 client
//! to scrape it from inside the same namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// One HTTP response. Header names are lower-cased.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("body is UTF-8")
    }
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
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let raw = self.ns.run(|| {
            let mut stream = TcpStream::connect_timeout(&addr, EXCHANGE)
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            stream.set_read_timeout(Some(EXCHANGE)).expect("timeout");
            stream
                .write_all(request.as_bytes())
                .unwrap_or_else(|e| panic!("send request: {e}"));
            let mut raw = Vec::new();
            stream
                .read_to_end(&mut raw)
                .unwrap_or_else(|e| panic!("read response to {method} {path}: {e}"));
            raw
        });
        parse_response(&raw).unwrap_or_else(|why| {
            panic!(
                "bad HTTP response to {method} {path} ({why}): {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
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

/// Parses a complete HTTP/1.1 response: status line, headers, and a body framed by
/// Content-Length, chunked encoding, or the end of the connection.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .ok_or_else(|| format!("bad header {l:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[end + 4..];
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad content-length")?;
        rest.get(..len)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("unterminated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}
