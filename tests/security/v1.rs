//! X.509 v1 client certificates (no extensions at all), which Go's crypto/x509, and so
//! exporter-toolkit, accept. rcgen writes only v3, so these are made with the openssl
//! CLI: `openssl x509 -req` with no extension file writes a v1 certificate.

use std::process::Command;

use super::*;

/// `openssl req -newkey` arguments for the two key kinds tested.
const RSA: &[&str] = &["-newkey", "rsa:2048"];
const P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

/// Runs the openssl CLI in `dir`; its standard output.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A v1 certificate for a new key (`kind`), signed by the CA in `ca`.pem/`ca`.key, valid
/// from now for `days` (-1: it expired yesterday). (certificate PEM, key PEM).
fn v1_leaf(pki: &Pki, name: &str, kind: &[&str], ca: &str, days: i32) -> (String, String) {
    static SERIAL: AtomicUsize = AtomicUsize::new(100);
    let dir = &pki.dir;
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let mut request = vec!["req", "-new", "-nodes", "-subj", "/CN=scraper-v1"];
    request.extend_from_slice(kind);
    request.extend_from_slice(&["-keyout", &key, "-out", &csr]);
    openssl(dir, &request);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed).to_string();
    let (ca_pem, ca_key, days) = (format!("{ca}.pem"), format!("{ca}.key"), days.to_string());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            &days,
            "-sha256",
            "-out",
            &pem,
        ],
    );
    let text = openssl(dir, &["x509", "-in", &pem, "-noout", "-text"]);
    assert!(
        text.contains("Version: 1 (0x0)"),
        "not a v1 certificate:\n{text}"
    );
    (
        std::fs::read_to_string(dir.join(pem)).unwrap(),
        std::fs::read_to_string(dir.join(key)).unwrap(),
    )
}

/// A CA with the same subject name as the test CA but a key of its own: the issuer name
/// alone must prove nothing.
fn impostor_ca(pki: &Pki) -> &'static str {
    let subject = openssl(&pki.dir, &["x509", "-in", "ca.pem", "-noout", "-subject"]);
    let subject = subject.trim().strip_prefix("subject=").unwrap().trim();
    let subject = format!("/{}", subject.replace(" = ", "="));
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2", "-subj", &subject];
    args.extend_from_slice(P256);
    args.extend_from_slice(&["-keyout", "impostor.key", "-out", "impostor.pem"]);
    openssl(&pki.dir, &args);
    let theirs = openssl(
        &pki.dir,
        &["x509", "-in", "impostor.pem", "-noout", "-subject"],
    );
    assert_eq!(
        theirs.trim(),
        format!(
            "subject={}",
            subject.trim_start_matches('/').replace('=', " = ")
        )
    );
    "impostor"
}

/// `identity` is served a scrape (`served`) or refused, over TLS 1.3 and over TLS 1.2.
async fn check(
    address: SocketAddr,
    pki: &Pki,
    identity: &(String, String),
    served: bool,
    what: &str,
) {
    for tls12_only in [false, true] {
        let client = Client {
            identity: Some(identity),
            tls12_only,
            ..Client::trusting(pki)
        };
        let response = get(address, client).await;
        let what = format!("{what} (TLS 1.2 only: {tls12_only})");
        if served {
            let status = response.as_deref().ok().and_then(status);
            assert_eq!(status, Some(200), "{what}: {response:?}");
        } else {
            assert!(refused(&response), "{what}, served: {response:?}");
        }
    }
}

/// The v1 client certificates each test presents, with their keys.
struct V1 {
    rsa: (String, String),
    p256: (String, String),
    expired: (String, String),
    /// Signed by a CA with the test CA's name and a key of its own.
    forged: (String, String),
    /// The RSA certificate with someone else's RSA key: the handshake signature cannot
    /// match the certificate's public key.
    stolen: (String, String),
}

impl V1 {
    fn new(pki: &Pki) -> V1 {
        let rsa = v1_leaf(pki, "v1-rsa", RSA, "ca", 1);
        let other = v1_leaf(pki, "v1-other", RSA, "ca", 1);
        let impostor = impostor_ca(pki);
        V1 {
            p256: v1_leaf(pki, "v1-p256", P256, "ca", 1),
            expired: v1_leaf(pki, "v1-expired", P256, "ca", -1),
            forged: v1_leaf(pki, "v1-forged", P256, impostor, 1),
            stolen: (rsa.0.clone(), other.1),
            rsa,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_client_certificates_verified_against_the_client_ca() {
    let pki = Pki::new();
    let v1 = V1::new(&pki);
    for policy in ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"] {
        let exporter = serve_tls(
            &pki,
            &format!("  client_auth_type: {policy}\n  client_ca_file: ca.pem\n"),
        )
        .await;
        for (identity, served, what) in [
            (&v1.rsa, true, "v1 RSA client cert"),
            (&v1.p256, true, "v1 P-256 client cert"),
            (&v1.forged, false, "v1 cert from a CA with the same name"),
            (&v1.expired, false, "expired v1 cert"),
            (&v1.stolen, false, "v1 cert without its key"),
            (&pki.client, true, "v3 client cert"),
        ] {
            let what = format!("{policy}: {what}");
            check(exporter.address, &pki, identity, served, &what).await;
        }
        let anonymous = get(exporter.address, Client::trusting(&pki)).await;
        let served = anonymous.as_deref().ok().and_then(status) == Some(200);
        assert_eq!(served, policy == "VerifyClientCertIfGiven", "{anonymous:?}");
    }
}

/// RequireAnyClientCert checks no chain and no dates (as Go), only that the client holds
/// the certificate's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_client_certificate_taken_unverified_with_proof_of_key() {
    let pki = Pki::new();
    let v1 = V1::new(&pki);
    let exporter = serve_tls(&pki, "  client_auth_type: RequireAnyClientCert\n").await;
    for (identity, served, what) in [
        (&v1.rsa, true, "v1 RSA client cert"),
        (&v1.p256, true, "v1 P-256 client cert"),
        (&v1.forged, true, "v1 cert from an unknown CA"),
        (&v1.expired, true, "expired v1 cert"),
        (&v1.stolen, false, "v1 cert without its key"),
    ] {
        check(exporter.address, &pki, identity, served, what).await;
    }
}

/// The limits of the v1 path: a v1 leaf only straight from a configured client CA, and
/// not from a CA with name constraints (those stay webpki's, on v3 leaves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_client_certificates_only_straight_from_an_unconstrained_ca() {
    let pki = Pki::new();
    let dir = &pki.dir;
    // A v3 intermediate CA under the client CA, and a v1 leaf it signed, sent with it.
    std::fs::write(dir.join("ca.ext"), "basicConstraints=critical,CA:TRUE\n").unwrap();
    let mut request = vec!["req", "-new", "-nodes", "-subj", "/CN=intermediate"];
    request.extend_from_slice(P256);
    request.extend_from_slice(&["-keyout", "inter.key", "-out", "inter.csr"]);
    openssl(dir, &request);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "9",
            "-days",
            "2",
            "-extfile",
            "ca.ext",
            "-out",
            "inter.pem",
        ],
    );
    let (leaf, key) = v1_leaf(&pki, "v1-under-inter", P256, "inter", 1);
    let chained = (
        leaf + &std::fs::read_to_string(dir.join("inter.pem")).unwrap(),
        key,
    );
    // A name-constrained client CA, and a v1 leaf it signed.
    let mut args = vec![
        "req",
        "-x509",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=constrained",
    ];
    args.extend_from_slice(P256);
    args.extend_from_slice(&[
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "nameConstraints=critical,permitted;DNS:example.com",
        "-keyout",
        "constrained.key",
        "-out",
        "constrained.pem",
    ]);
    openssl(dir, &args);
    let constrained = v1_leaf(&pki, "v1-constrained", P256, "constrained", 1);
    let cas = format!(
        "{}{}",
        pki.ca,
        std::fs::read_to_string(dir.join("constrained.pem")).unwrap()
    );
    std::fs::write(dir.join("cas.pem"), cas).unwrap();

    let exporter = serve_tls(
        &pki,
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: cas.pem\n",
    )
    .await;
    let address = exporter.address;
    check(
        address,
        &pki,
        &chained,
        false,
        "v1 leaf under an intermediate",
    )
    .await;
    check(
        address,
        &pki,
        &constrained,
        false,
        "v1 leaf of a constrained CA",
    )
    .await;
    let v1 = v1_leaf(&pki, "v1-p256", P256, "ca", 1);
    check(address, &pki, &v1, true, "v1 leaf of the unconstrained CA").await;
}
