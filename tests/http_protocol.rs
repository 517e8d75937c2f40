//! HTTP details the attack run found wrong (issue 16, item 8), against the real daemon:
//! gzip refused by a zero or malformed quality, HEAD with the GET's Content-Length,
//! pipelined requests before a half-close all answered.

mod support;

use std::net::Shutdown;
use std::time::Duration;

use support::http::Connection;
use support::{Daemon, Netns};

#[test]
fn gzip_head_and_pipelining() {
    let ns = Netns::new("http-proto");
    let daemon = Daemon::exporter(&ns, &["--sample.interval", "1h"]);
    for refused in ["gzip;q=0", "gzip;q=-1", "gzip;q=nan", "gzip; Q=0", "*;q=0"] {
        let r = daemon.request("GET", "/metrics", &[("Accept-Encoding", refused)]);
        assert_eq!(r.header("content-encoding"), None, "{refused}");
    }
    let r = daemon.request("GET", "/metrics", &[("Accept-Encoding", "gzip;q=0.5")]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));

    let addr = daemon.addr();
    let (get, head) = ns.run(|| {
        let mut c = Connection::open(addr, Duration::from_secs(10)).expect("connect");
        let get = c.request("GET", "/metrics", &[]).expect("GET");
        (get, c.request("HEAD", "/metrics", &[]).expect("HEAD"))
    });
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").map(str::to_string),
        Some(get.body.len().to_string()),
        "HEAD announces the GET's length"
    );

    let answers = ns.run(|| {
        let mut c = Connection::open(addr, Duration::from_secs(10)).expect("connect");
        c.send(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5))
            .expect("send");
        c.stream().shutdown(Shutdown::Write).expect("half-close");
        (0..5)
            .filter(|_| c.read_response(false).is_ok_and(|r| r.status == 200))
            .count()
    });
    assert_eq!(answers, 5, "every pipelined request before the half-close");
}
