//! Who may read the metrics: `--web.config.file` (exporter-toolkit format) with TLS,
//! client certificates and basic auth, checked with a real TLS client (rustls) over
//! loopback. Certificates are made at test time: rcgen, and the openssl CLI for the v1
//! ones (rcgen writes v3 only).
//!
//! The server is the real daemon started with `--web.config.file`.

/// X.509 v1 client certificates, made with the openssl CLI.
#[path = "security/v1.rs"]
mod v1;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tcpstate_exporter::http::webconfig::WebConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every served exposition holds.
const BODY: &str = "tcpstate_sockets{state=\"listen\"}";
/// bcrypt cost for the test users: low so debug builds stay quick; the code path is the
/// same at any cost.
const COST: u32 = 5;
const IO_DEADLINE: Duration = Duration::from_secs(10);

/// A CA, a server certificate and a client certificate it signed, and a client
/// certificate nobody trusts, written as PEM files into a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: String,
    client: (String, String),
    rogue: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);

        let leaf = |names: Vec<String>, signed: bool| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(names).unwrap();
            let cert = if signed {
                params.signed_by(&key, &issuer).unwrap()
            } else {
                params.self_signed(&key).unwrap()
            };
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(vec!["localhost".into(), "127.0.0.1".into()], true);
        let client = leaf(vec!["scraper".into()], true);
        let rogue = leaf(vec!["scraper".into()], false);

        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tcpstate-security-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // The guard (Drop removes the folder) before the first write: a failed write
        // leaves nothing behind.
        let pki = Pki {
            dir,
            ca: ca.pem(),
            client,
            rogue,
        };
        let dir = &pki.dir;
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        // For the v1 certificates, which the openssl CLI signs (mod v1).
        std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("server.pem"), &server.0).unwrap();
        std::fs::write(dir.join("server.key"), &server.1).unwrap();
        pki
    }

    /// Writes `text` as the web config file (relative paths resolve beside it).
    fn web_config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("web.yml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, COST).unwrap()
}

/// Serves `web` on a loopback port until the test's runtime ends.
/// The real exporter, serving with the web config at `path`; killed on drop.
struct Exporter {
    child: std::process::Child,
    address: SocketAddr,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the daemon on a free loopback port with `--web.config.file path`, and waits
/// until it accepts connections. (It samples the host's table once, read-only; no
/// socket scenario is built here.)
async fn start(path: &Path) -> Exporter {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tcpstate-exporter"))
        .args(["--web.listen-address", &address.to_string()])
        .args(["--sample.interval", "1h"])
        .arg("--web.config.file")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the exporter");
    let exporter = Exporter { child, address };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "exporter never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exporter
}

/// What the client brings.
#[derive(Default)]
struct Client<'a> {
    ca: Option<&'a str>,
    identity: Option<&'a (String, String)>,
    credentials: Option<(&'a str, &'a str)>,
    tls12_only: bool,
}

impl<'a> Client<'a> {
    /// A client that trusts the test CA and brings nothing else.
    fn trusting(pki: &'a Pki) -> Self {
        Client {
            ca: Some(&pki.ca),
            ..Client::default()
        }
    }
}

/// One GET over TLS; the raw response text, or the error that refused it.
async fn get(address: SocketAddr, client: Client<'_>) -> io::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client.ca.unwrap_or_default().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if client.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client.identity {
        // CertifiedKey::new, not with_client_auth_cert: that one parses the certificate
        // with webpki (which refuses v1) to check the key against it, and the tests
        // present v1 certificates and certificates with someone else's key.
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            let key = provider
                .key_provider
                .load_private_key(PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
                .unwrap();
            let certified = rustls::sign::CertifiedKey::new(chain, key);
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = TcpStream::connect(address).await?;
        let mut stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        let mut request = String::from("GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
        if let Some((user, password)) = client.credentials {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        request.push_str("Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(IO_DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")))
}

fn status(response: &str) -> Option<u16> {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Refused: the TLS layer failed, or whatever came back is not an HTTP response.
fn refused(result: &io::Result<String>) -> bool {
    match result {
        Err(_) => true,
        Ok(text) => !text.starts_with("HTTP/"),
    }
}

fn load(path: &Path) -> WebConfig {
    WebConfig::load(path).unwrap_or_else(|e| panic!("{e}"))
}

const TLS_SECTION: &str = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n";

/// Serves the test certificates, with `extra` lines added to `tls_server_config`.
async fn serve_tls(pki: &Pki, extra: &str) -> Exporter {
    start(&pki.web_config(&format!("{TLS_SECTION}{extra}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_over_tls() {
    let pki = Pki::new();
    let path = pki.web_config(&format!(
        "{TLS_SECTION}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  prometheus: '{}'\n  other: '{}'\n",
        hash("right horse battery"),
        hash("other secret"),
    ));
    let exporter = start(&path).await;
    let address = exporter.address;
    let with = |credentials| Client {
        credentials,
        ..Client::trusting(&pki)
    };

    let ok = get(address, with(Some(("prometheus", "right horse battery"))))
        .await
        .unwrap();
    assert_eq!(status(&ok), Some(200), "{ok}");
    assert!(ok.contains(BODY), "{ok}");
    assert_eq!(header(&ok, "x-content-type-options"), Some("nosniff"));

    for (credentials, what) in [
        (None, "no password"),
        (Some(("prometheus", "wrong")), "wrong password"),
        (
            Some(("prometheus", "other secret")),
            "another user's password",
        ),
        (Some(("nobody", "right horse battery")), "unknown user"),
        (Some(("prometheus", "")), "empty password"),
    ] {
        let response = get(address, with(credentials)).await.unwrap();
        assert_eq!(status(&response), Some(401), "{what}: {response}");
        assert_eq!(
            header(&response, "www-authenticate"),
            Some("Basic realm=\"tcpstate-exporter\""),
            "{what}"
        );
        assert!(!response.contains(BODY), "{what}: metrics leaked");
    }

    // Scrapes after the first skip bcrypt (the cache) and still succeed.
    let again = get(address, with(Some(("prometheus", "right horse battery"))))
        .await
        .unwrap();
    assert_eq!(status(&again), Some(200), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_not_served() {
    let pki = Pki::new();
    let exporter = serve_tls(&pki, "").await;
    let address = exporter.address;

    let exchange = async {
        let mut tcp = TcpStream::connect(address).await?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(IO_DEADLINE, exchange)
        .await
        .expect("the server closes a plain-HTTP connection instead of waiting");
    // Either a reset or a TLS alert record (content type 21) and a close: never HTTP.
    if let Ok(answer) = answer {
        assert!(!answer.starts_with(b"HTTP/"), "served over plain HTTP");
        assert!(
            answer.is_empty() || answer[0] == 21,
            "expected a TLS alert, got {:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // The same port still serves a TLS client.
    let ok = get(address, Client::trusting(&pki)).await.unwrap();
    assert_eq!(status(&ok), Some(200), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_required_and_verified() {
    let pki = Pki::new();
    let exporter = serve_tls(
        &pki,
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
    )
    .await;
    let address = exporter.address;
    let with = |identity| Client {
        identity,
        ..Client::trusting(&pki)
    };

    let ok = get(address, with(Some(&pki.client))).await.unwrap();
    assert_eq!(status(&ok), Some(200), "{ok}");
    let anonymous = get(address, with(None)).await;
    assert!(refused(&anonymous), "no client cert, served: {anonymous:?}");
    let rogue = get(address, with(Some(&pki.rogue))).await;
    assert!(refused(&rogue), "untrusted client cert, served: {rogue:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_any_client_cert_takes_an_unverified_one() {
    let pki = Pki::new();
    let exporter = serve_tls(&pki, "  client_auth_type: RequireAnyClientCert\n").await;
    let address = exporter.address;
    let with = |identity| Client {
        identity,
        ..Client::trusting(&pki)
    };
    let rogue = get(address, with(Some(&pki.rogue))).await.unwrap();
    assert_eq!(status(&rogue), Some(200), "{rogue}");
    assert!(refused(&get(address, with(None)).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_is_enforced() {
    let pki = Pki::new();
    let exporter = serve_tls(&pki, "  min_version: TLS13\n").await;
    let address = exporter.address;
    let client = |tls12_only| Client {
        tls12_only,
        ..Client::trusting(&pki)
    };
    let old = get(address, client(true)).await;
    assert!(refused(&old), "TLS 1.2 accepted: {old:?}");
    let ok = get(address, client(false)).await.unwrap();
    assert_eq!(status(&ok), Some(200), "{ok}");
}

#[test]
fn a_bad_file_is_an_error_to_keep_the_old_config_on() {
    let pki = Pki::new();
    let path = pki.web_config(TLS_SECTION);
    assert!(load(&path).tls.is_some());

    for (text, expect) in [
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: missing.key\n",
            "line 3",
        ),
        (&format!("{TLS_SECTION}  bogus: 1\n"), "bogus"),
        ("basic_auth_users:\n  prometheus: plaintext\n", "prometheus"),
    ] {
        std::fs::write(&path, text).unwrap();
        let error = WebConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains(expect), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }
    assert!(WebConfig::load(&pki.dir.join("absent.yml")).is_err());
}
