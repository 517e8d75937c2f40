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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_io_timeout::TimeoutStream;

use crate::http::api;
use crate::http::auth;
use crate::http::slots::{self, Slots, Trust};
use crate::http::tls;
use crate::http::webconfig::WebConfig;
use crate::output::exposition::{CONTENT_TYPE, Exposition};
use crate::output::page;
use crate::output::published::Published;

/// How long a client may take to send its request head or finish a TLS handshake
/// (slow-client defence). Hyper also applies it to an idle keep-alive connection's next
/// request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may make no progress: a client that asks and never reads would
/// otherwise hold its slot until the connection's lifetime ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper answers 431 beyond it); a scrape needs < 1 KiB.
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// A keep-alive connection is closed after this long, so no client holds a slot forever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// What a request handler needs: the path to serve, the exposition to serve there, the
/// last round for the drill-down, and who may read it. Path and web config are swapped
/// on reload; every request reads them anew, so a user removed by a reload loses access
/// on open connections too.
#[derive(Clone)]
pub struct Site {
    pub telemetry_path: Arc<ArcSwap<String>>,
    pub exposition: Arc<ArcSwap<Exposition>>,
    pub published: Arc<ArcSwap<Published>>,
    pub web: Arc<ArcSwap<WebConfig>>,
}

/// Accepts connections until `shutdown` flips to true.
pub async fn serve(listener: TcpListener, site: Site, mut shutdown: watch::Receiver<bool>) {
    let slots = Slots::new(slots::capacity_for_open_file_limit());
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
        let Some(mut slot) = slots.admit() else {
            tracing::debug!(%peer, "every connection slot is held by a trusted client; closing");
            continue;
        };
        // An exposition past one segment (~64 KiB on loopback) otherwise leaves its tail
        // to Nagle, waiting for the client's delayed ACK: tens of ms on a scrape.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY refused");
        }
        let site = site.clone();
        tokio::spawn(async move {
            let connection = serve_connection(stream, peer, site, slot.trust());
            tokio::select! {
                () = connection => {}
                () = slot.shed() => tracing::debug!(%peer, "connection shed for a newer one"),
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    tracing::debug!(%peer, "connection lifetime reached");
                }
            }
        });
    }
}

/// One connection: TLS if configured, then HTTP/1.1 with auth before routing.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, site: Site, trust: Trust) {
    // TLS is settled by the handshake, with the web config of that moment; everything
    // per request (auth, headers) is read again for each request.
    let tls = site.web.load().tls.clone();
    let mut stream = TimeoutStream::new(stream);
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let stream = Box::pin(stream);
    let service = service_fn(move |request: Request<Incoming>| {
        let (site, trust) = (site.clone(), trust.clone());
        async move { Ok::<_, Infallible>(handle(&site, &request, peer, &trust).await) }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        // Pipelined requests followed by a half-close all get their answer.
        .half_close(true);
    let result = match tls {
        Some(config) => match tls::accept(config, stream, HEADER_READ_TIMEOUT).await {
            Ok(tls_stream) => {
                http.serve_connection(TokioIo::new(tls_stream), service)
                    .await
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
        },
        None => http.serve_connection(TokioIo::new(stream), service).await,
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Authenticates one request against the web config of this moment, then routes it.
/// A refused request closes its connection: a client without credentials gets no
/// keep-alive connection to hold.
async fn handle(
    site: &Site,
    request: &Request<Incoming>,
    peer: SocketAddr,
    trust: &Trust,
) -> Response<Full<Bytes>> {
    let web = site.web.load_full();
    let authorized = match &web.basic_auth {
        Some(basic) => {
            basic
                .authorize(request.headers().get(header::AUTHORIZATION), peer.ip())
                .await
        }
        None => true,
    };
    let mut response = if authorized {
        // Only credentials make a client worth keeping over a newcomer; without basic
        // auth every connection may be shed, the oldest first.
        if web.basic_auth.is_some() {
            trust.grant();
        }
        respond(site, request)
    } else {
        let mut response = auth::unauthorized();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    web.apply_headers(response.headers_mut());
    response
}

/// Routes one request.
pub fn respond(site: &Site, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let encodings = request.headers().get_all(header::ACCEPT_ENCODING);
    respond_to(
        site,
        request.method(),
        request.uri().path(),
        request.uri().query(),
        accepts_gzip(encodings.iter()),
    )
}

fn respond_to(
    site: &Site,
    method: &Method,
    path: &str,
    query: Option<&str>,
    gzip: bool,
) -> Response<Full<Bytes>> {
    let telemetry_path = site.telemetry_path.load();
    let is_metrics = path == telemetry_path.as_str();
    let is_landing = path == "/";
    let is_sockets = path == api::SOCKETS_PATH && !is_metrics;
    if !is_metrics && !is_landing && !is_sockets {
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
        metrics(&site.exposition.load(), gzip)
    } else if is_sockets {
        api::sockets(&site.published.load(), query)
    } else {
        live_page(&site.published.load())
    };
    if method == Method::HEAD {
        // The GET's length, as HEAD promises; hyper sends no body for a HEAD.
        let length = hyper::body::Body::size_hint(response.body()).exact();
        if let Some(length) = length {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
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

/// The live page of the last published round (rendered once per round, by the first
/// request), with a policy that lets only its own inline script and style run.
fn live_page(published: &Published) -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_SECURITY_POLICY, page_policy())
        .body(Full::new(published.page(page::render)))
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response error\n"))
}

/// `default-src 'none'`, and the page's script and style allowed by their SHA-256: a
/// name that slipped past escaping still could not run anything.
fn page_policy() -> HeaderValue {
    static POLICY: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| {
            use base64::Engine as _;
            let hash = |text: &str| {
                let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            };
            let policy = format!(
                "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
                 connect-src 'self'; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
                hash(page::SCRIPT),
                hash(page::STYLE)
            );
            HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'none'"))
        })
        .clone()
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

/// True when the `Accept-Encoding` headers give gzip a quality above zero: gzip's own
/// entry when listed, else `*`'s. A quality that is not an RFC 9110 qvalue (`q=-1`,
/// `q=nan`, `q=2`) makes its entry unacceptable rather than preferred.
fn accepts_gzip<'a>(headers: impl Iterator<Item = &'a HeaderValue>) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in headers.filter_map(|h| h.to_str().ok()) {
        for item in value.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let mut quality = 1.0;
            for parameter in parts {
                if let Some((name, value)) = parameter.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    quality = qvalue(value.trim()).unwrap_or(0.0);
                }
            }
            if coding.eq_ignore_ascii_case("gzip") {
                gzip = Some(quality);
            } else if coding == "*" {
                any = Some(quality);
            }
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// An RFC 9110 qvalue: `0`, `1`, or either with up to three decimals, in 0..=1.
fn qvalue(text: &str) -> Option<f32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let well_formed = matches!(whole, "0" | "1")
        && fraction.len() <= 3
        && fraction.bytes().all(|b| b.is_ascii_digit());
    let value: f32 = text.parse().ok()?;
    (well_formed && value <= 1.0).then_some(value)
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
            published: Arc::new(ArcSwap::from_pointee(Published::new(
                &[],
                0.0,
                &crate::config::Settings::default(),
            ))),
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
        let get = respond_to(&site, &Method::GET, "/metrics", None, false);
        assert_eq!(get.status(), StatusCode::OK);
        assert_eq!(get.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(body(get).await, Bytes::from_static(b"m 1\n"));

        let zipped = respond_to(&site, &Method::GET, "/metrics", None, true);
        assert_eq!(zipped.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(body(zipped).await, Bytes::from_static(b"GZ"));

        assert_eq!(
            respond_to(&site, &Method::GET, "/nope", None, false).status(),
            StatusCode::NOT_FOUND
        );
        let post = respond_to(&site, &Method::POST, "/metrics", None, false);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        let head = respond_to(&site, &Method::HEAD, "/metrics", None, false);
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(
            head.headers()[header::CONTENT_LENGTH],
            "4",
            "the GET's length"
        );
        assert!(body(head).await.is_empty());
        let api = respond_to(&site, &Method::GET, "/api/v1/sockets", None, false);
        assert_eq!(api.status(), StatusCode::OK);
        assert_eq!(api.headers()[header::CONTENT_TYPE], "application/json");
        let refused = respond_to(
            &site,
            &Method::GET,
            "/api/v1/sockets",
            Some("limit=0"),
            false,
        );
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let page = respond_to(&site, &Method::GET, "/", None, false);
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|p| p.starts_with("default-src 'none'; script-src 'sha256-"))
        );
        assert!(String::from_utf8_lossy(&body(page).await).contains("href=\"/metrics\""));
    }

    #[test]
    fn gzip_only_with_a_quality_above_zero() {
        let accepts = |values: &[&'static str]| {
            let values: Vec<HeaderValue> =
                values.iter().map(|v| HeaderValue::from_static(v)).collect();
            accepts_gzip(values.iter())
        };
        for yes in [
            &["gzip"][..],
            &["deflate, gzip;q=0.8"],
            &["*"],
            &["GZIP; Q=1.000"],
        ] {
            assert!(accepts(yes), "{yes:?}");
        }
        for no in [
            &["gzip;q=0"][..],
            &["gzip;q=-1"],
            &["gzip;q=nan"],
            &["gzip;q=2"],
            &["gzip;q=0.0001"],
            &["gzip; Q=0"],
            &["gzip;q=0, *"],
            &["*;q=0"],
            &["identity"],
            &[],
            &["deflate", "gzip;q=0"],
        ] {
            assert!(!accepts(no), "{no:?}");
        }
    }
}
