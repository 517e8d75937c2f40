//! A minimal blocking HTTP/1.1 client: one request per connection (`Connection: close`),
//! the whole response read and parsed (Content-Length, chunked, or to end of stream).
//! Enough to scrape the exporter and query Prometheus without an HTTP stack in the tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One HTTP response. Header names are lower-cased.
#[derive(Clone, Debug)]
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

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `METHOD path` with `headers` from the calling thread (so from its network
/// namespace) and reads the whole response; `timeout` bounds the connect and each read.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, String> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("set read timeout: {e}"))?;
    stream
        .write_all(text.as_bytes())
        .map_err(|e| format!("send {method} {path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read the response to {method} {path}: {e}"))?;
    parse_response(&raw).map_err(|why| {
        format!(
            "bad HTTP response to {method} {path} ({why}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// The value of an `Authorization` header for HTTP basic auth.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

/// A persistent (keep-alive) HTTP/1.1 connection: requests one after another on the same
/// socket, each response read whole by its framing (Content-Length or chunked).
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects from the calling thread (so from its network namespace); `timeout`
    /// bounds the connect and each read.
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Connection, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| format!("set read timeout: {e}"))?;
        Ok(Connection {
            stream,
            buffer: Vec::new(),
        })
    }

    /// The socket, for shutdowns and socket options.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends raw bytes (one request, several pipelined ones, half of one).
    pub fn send(&mut self, raw: &[u8]) -> Result<(), String> {
        self.stream.write_all(raw).map_err(|e| format!("send: {e}"))
    }

    /// One keep-alive request and its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: exporter\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        self.send(text.as_bytes())?;
        self.read_response(method == "HEAD")
    }

    /// Reads exactly one response (`head`: the answer to a HEAD, which has no body
    /// whatever its Content-Length). `Err` when the server closed first or went quiet.
    pub fn read_response(&mut self, head: bool) -> Result<Response, String> {
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head_text = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
        let header = |name: &str| {
            head_text
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_string())
        };
        let length = if head {
            0
        } else if header("transfer-encoding").is_some_and(|te| te == "chunked") {
            loop {
                if let Some(at) = self.buffer[end..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                {
                    break at + 5;
                }
                self.fill()?;
            }
        } else {
            let length = header("content-length").unwrap_or_else(|| "0".into());
            length.parse().map_err(|_| "bad content-length")?
        };
        while self.buffer.len() < end + length {
            self.fill()?;
        }
        let mut raw = self.buffer[..end].to_vec();
        raw.extend_from_slice(&self.buffer[end..end + length]);
        self.buffer.drain(..end + length);
        if head {
            // What the Content-Length announces, for the parser; dropped below.
            let announced: usize = header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            raw.resize(end + announced, 0);
        }
        let mut response = parse_response(&raw)?;
        if head {
            response.body.clear();
        }
        Ok(response)
    }

    /// True once the server has closed the connection (EOF or reset), waiting up to the
    /// read timeout for it.
    pub fn closed_by_server(&mut self) -> bool {
        match self.fill() {
            Err(e) => !e.contains("timed out") && !e.contains("would block"),
            Ok(()) => false,
        }
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("closed by the server".into()),
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err("read timed out".into()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// `GET path` with no extra headers.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    request(addr, "GET", path, &[], timeout)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_framed_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "hi"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x\r\nllo\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.text(), "hello");
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nX-A: b\r\n\r\nrest").unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.text().as_str()),
            (404, Some("b"), "rest")
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
