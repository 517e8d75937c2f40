//! `GET /api/v1/sockets`: the per-socket drill-down as JSON, from the last published
//! round. A request never touches the kernel: it filters the bounded view the sampler
//! published. A bad parameter is a 400 with one line saying which and why.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::output::published::Published;
use crate::output::sockets::{self, SocketQuery};

pub const SOCKETS_PATH: &str = "/api/v1/sockets";

/// The answer to `GET /api/v1/sockets?<query>`.
pub fn sockets(published: &Published, query: Option<&str>) -> Response<Full<Bytes>> {
    let parsed = decode_query(query.unwrap_or("")).and_then(|pairs| {
        SocketQuery::from_pairs(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &published.kept_states,
        )
    });
    match parsed {
        Ok(query) => json(StatusCode::OK, sockets::json(published, &query)),
        Err(reason) => bad_request(&reason),
    }
}

/// A 400 whose body is the reason, on one line.
pub fn bad_request(reason: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "400 bad request: {}\n",
        reason.replace(['\r', '\n'], " ")
    ))));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `a=1&b=x%20y+z` -> [("a", "1"), ("b", "x y z")]; `Err` for a bad escape or text that
/// is not UTF-8 once decoded.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a bad %-escape in the query")?;
                out.push(hex);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the query is not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_like_forms() {
        assert_eq!(
            decode_query("port=8080&process=api%20server+2&&flag").expect("valid"),
            vec![
                ("port".to_string(), "8080".to_string()),
                ("process".to_string(), "api server 2".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        assert_eq!(decode_query("").expect("valid"), vec![]);
        assert!(decode_query("a=%zz").is_err());
        assert!(decode_query("a=%4").is_err());
        assert!(decode_query("a=%+1").is_err());
        assert!(decode_query("a=%ff").is_err(), "not UTF-8");
    }
}
