//! HTTP: serves the last encoded exposition. A scrape never samples, never waits for a
//! sample and takes no lock: it loads an `Arc` and writes its bytes.
//!
//! Who may read it is the web config's business (TLS, client certificates, basic auth;
//! checked before routing, so even a 404 needs credentials). Slow or hostile clients
//! are bounded: a deadline on the TLS handshake and on each request head, a cap on the
//! request head's size, on concurrent connections and on a connection's lifetime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::auth;
use crate::http::tls;
use crate::http::webconfig::WebConfig;
use crate::output::exposition::{CONTENT_TYPE, Exposition};

/// How long a client may take to send its request head or finish a TLS handshake
/// (slow-client defence).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper answers 431 beyond it); a scrape needs < 1 KiB.
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// Concurrent connections served; further ones are closed at once. Prometheus needs one
/// per server, so this only bites a flood.
pub const MAX_CONNECTIONS: usize = 256;
/// A keep-alive connection is closed after this long, so no client holds a slot forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// What a request handler needs: the path to serve, the exposition to serve there and
/// who may read it. Path and web config are swapped on reload.
#[derive(Clone)]
pub struct Site {
    pub telemetry_path: Arc<ArcSwap<String>>,
    pub exposition: Arc<ArcSwap<Exposition>>,
    pub web: Arc<ArcSwap<WebConfig>>,
}

/// Binds the first address of `candidates` that works.
pub async fn bind(candidates: &[SocketAddr]) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in candidates {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no listen address")))
}

/// Accepts connections until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, site: Site, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "connection limit reached; closing");
            continue;
        };
        // An exposition past one segment (~64 KiB on loopback) otherwise leaves its tail
        // to Nagle, waiting for the client's delayed ACK: tens of ms on a scrape.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY refused");
        }
        let site = site.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let connection = serve_connection(stream, site);
            if tokio::time::timeout(CONNECTION_LIFETIME, connection)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "connection lifetime reached");
            }
        });
    }
}

/// One connection: TLS if configured, then HTTP/1.1 with auth before routing.
async fn serve_connection(stream: tokio::net::TcpStream, site: Site) {
    let peer = stream.peer_addr().ok();
    // One web config per connection: a reload applies to the next connection.
    let web = site.web.load_full();
    let handler_web = Arc::clone(&web);
    let service = service_fn(move |request: Request<Incoming>| {
        let (site, web) = (site.clone(), Arc::clone(&handler_web));
        async move {
            let authorized = match &web.basic_auth {
                Some(basic) => {
                    basic
                        .authorize(request.headers().get(header::AUTHORIZATION))
                        .await
                }
                None => true,
            };
            if !authorized {
                let mut response = auth::unauthorized();
                web.apply_headers(response.headers_mut());
                return Ok::<_, Infallible>(response);
            }
            let mut response = respond(&site, &request);
            web.apply_headers(response.headers_mut());
            Ok(response)
        }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let result = match &web.tls {
        Some(config) => match tls::accept(Arc::clone(config), stream, HEADER_READ_TIMEOUT).await {
            Ok(tls_stream) => {
                http.serve_connection(TokioIo::new(tls_stream), service)
                    .await
            }
            Err(e) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        None => http.serve_connection(TokioIo::new(stream), service).await,
    };
    if let Err(e) = result {
        tracing::debug!(?peer, error = %e, "connection ended with an error");
    }
}

/// Routes one request.
pub fn respond(site: &Site, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    respond_to(
        site,
        request.method(),
        request.uri().path(),
        request.headers().get(header::ACCEPT_ENCODING),
    )
}

fn respond_to(
    site: &Site,
    method: &Method,
    path: &str,
    accept_encoding: Option<&HeaderValue>,
) -> Response<Full<Bytes>> {
    let telemetry_path = site.telemetry_path.load();
    let is_metrics = path == telemetry_path.as_str();
    let is_landing = path == "/";
    if !is_metrics && !is_landing {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n");
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = if is_metrics {
        metrics(&site.exposition.load(), accepts_gzip(accept_encoding))
    } else {
        landing(&telemetry_path)
    };
    if method == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn metrics(exposition: &Exposition, gzip: bool) -> Response<Full<Bytes>> {
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::VARY, "Accept-Encoding");
    let body = if gzip && !exposition.gzip.is_empty() {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
        exposition.gzip.clone()
    } else {
        exposition.text.clone()
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response error\n"))
}

fn landing(telemetry_path: &str) -> Response<Full<Bytes>> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>tcpstate-exporter</title></head><body>\n\
         <h1>tcpstate-exporter</h1>\n\
         <p>TCP sockets stuck in CLOSE_WAIT: which port, which process, how long.</p>\n\
         <p><a href=\"{telemetry_path}\">Metrics</a></p>\n\
         <p>Version {}</p>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(page)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response error\n"))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// True when the client lists gzip with a non-zero quality.
fn accepts_gzip(header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let zero_quality = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !zero_quality
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            telemetry_path: Arc::new(ArcSwap::from_pointee("/metrics".to_string())),
            exposition: Arc::new(ArcSwap::from_pointee(Exposition {
                text: Bytes::from_static(b"m 1\n"),
                gzip: Bytes::from_static(b"GZ"),
            })),
            web: Arc::new(ArcSwap::from_pointee(WebConfig::default())),
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt;
        match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        }
    }

    #[tokio::test]
    async fn routes_methods_and_encodings() {
        let site = site();
        let get = respond_to(&site, &Method::GET, "/metrics", None);
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(body(get).await, Bytes::from_static(b"m 1\n"));

        let gzip = HeaderValue::from_static("deflate, gzip;q=0.8");
        let zipped = respond_to(&site, &Method::GET, "/metrics", Some(&gzip));
        assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(body(zipped).await, Bytes::from_static(b"GZ"));

        let refused = HeaderValue::from_static("gzip;q=0");
        let plain_again = respond_to(&site, &Method::GET, "/metrics", Some(&refused));
        assert!(
            plain_again
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_none()
        );

        assert_eq!(
            respond_to(&site, &Method::GET, "/nope", None).status(),
            StatusCode::NOT_FOUND
        );
        let post = respond_to(&site, &Method::POST, "/metrics", None);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let head = respond_to(&site, &Method::HEAD, "/metrics", None);
        assert_eq!(head.status(), StatusCode::OK);
        assert!(body(head).await.is_empty());
        let landing = respond_to(&site, &Method::GET, "/", None);
        assert!(String::from_utf8_lossy(&body(landing).await).contains("href=\"/metrics\""));
    }
}
