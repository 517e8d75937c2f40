//! TLS for the HTTP server: the `tls_server_config` section of a web config file (the
//! Prometheus exporter-toolkit format) turned into a rustls `ServerConfig`, and a TLS
//! accept with a handshake deadline.
//!
//! The file speaks Go's crypto/tls; rustls supports less, and we map it like this:
//! - `min_version`/`max_version`: TLS10, TLS11, TLS12, TLS13 (default TLS12..TLS13).
//!   rustls has no TLS 1.0/1.1, so a lower minimum serves 1.2 (strictly safer); a maximum
//!   below 1.2 is an error, since nothing could be served.
//! - `cipher_suites` applies to TLS 1.2 only, as in Go: the ECDHE suites with AES-GCM or
//!   ChaCha20-Poly1305 are honoured in the order given; the other Go names (CBC, RC4,
//!   3DES, static RSA) are legacy suites rustls refuses, dropped with a warning; TLS 1.3
//!   names are accepted and ignored (Go always enables all TLS 1.3 suites, and so do we).
//!   A list that keeps no TLS 1.2 suite while TLS 1.2 is enabled is an error.
//! - `curve_preferences`: CurveP256, CurveP384, X25519 in the order given; CurveP521 and
//!   X25519MLKEM768 are not in rustls' ring provider and are dropped with a warning.
//! - `client_auth_type`: all five Go policies (plus the old alias RequireClientCert).
//!   The two verifying policies need `client_ca_file` (or inline `client_ca`).
//! - `prefer_server_cipher_suites` picks the server's order (rustls `ignore_client_order`).
//! - `client_allowed_sans` is refused: we do not implement the SAN allow-list, and
//!   silently ignoring an access restriction would open the exporter wider than asked.
//!
//! Certificates are read when the config is loaded (and again on each reload); unlike
//! Go's exporter-toolkit they are not re-read on every handshake.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The `tls_server_config` section, field for field as the exporter-toolkit spells it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    cert_file: Option<String>,
    key_file: Option<String>,
    /// Inline PEM, instead of `cert_file`.
    cert: Option<String>,
    /// Inline PEM, instead of `key_file`.
    key: Option<String>,
    client_ca_file: Option<String>,
    /// Inline PEM, instead of `client_ca_file`.
    client_ca: Option<String>,
    client_auth_type: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

/// A problem with one key: (dotted key, message).
pub type KeyError = (&'static str, String);

/// Go's TLS 1.2 suite names that rustls (ring provider) serves. The CHACHA20 names
/// without `_SHA256` are Go's older aliases.
const TLS12_SUITES: &[(&str, SupportedCipherSuite)] = {
    use ring::cipher_suite::*;
    &[
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
};

/// Go's TLS 1.3 suite names: valid in the file, always enabled.
const TLS13_SUITE_NAMES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Go's remaining (legacy) suite names: valid in the file, not offered by rustls.
const LEGACY_SUITE_NAMES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

const CURVES: &[(&str, &dyn SupportedKxGroup)] = &[
    ("CurveP256", ring::kx_group::SECP256R1),
    ("CurveP384", ring::kx_group::SECP384R1),
    ("X25519", ring::kx_group::X25519),
];
const UNSUPPORTED_CURVES: &[&str] = &["CurveP521", "X25519MLKEM768"];

/// Who must show a client certificate, and whether it is checked against the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuth {
    None,
    /// Asked for, not required, not verified.
    Request,
    /// Required, not verified (only proof that the client holds its key).
    RequireAny,
    /// Not required; verified against the client CA when given.
    VerifyIfGiven,
    RequireAndVerify,
}

impl TlsServerConfig {
    /// The rustls config, or `None` when the section sets nothing that enables TLS
    /// (the exporter-toolkit then serves plain HTTP too). Relative paths are taken from
    /// `base_dir`, the web config file's directory.
    pub fn build(&self, base_dir: &Path) -> Result<Option<Arc<ServerConfig>>, KeyError> {
        let nothing = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if nothing(&self.cert_file)
            && nothing(&self.cert)
            && nothing(&self.key_file)
            && nothing(&self.key)
            && nothing(&self.client_ca_file)
            && nothing(&self.client_ca)
            && nothing(&self.client_auth_type)
        {
            return Ok(None);
        }
        if self.client_allowed_sans.is_some() {
            return Err((
                "tls_server_config.client_allowed_sans",
                "not supported by tcpstate-exporter; use client_auth_type \
                 RequireAndVerifyClientCert with a client CA that issues only allowed clients"
                    .into(),
            ));
        }
        let certs = self.certificates(base_dir)?;
        let key = self.private_key(base_dir)?;
        let (min, max) = self.versions()?;
        let suites = self.cipher_suites(min)?;
        let kx_groups = self.kx_groups()?;
        let provider = Arc::new(CryptoProvider {
            cipher_suites: suites,
            kx_groups,
            ..ring::default_provider()
        });
        let versions: Vec<&'static SupportedProtocolVersion> =
            [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
                .into_iter()
                .filter(|(v, _)| (min..=max).contains(v))
                .map(|(_, version)| version)
                .collect();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&versions)
            .map_err(|e| ("tls_server_config", e.to_string()))?;
        let builder = match self.client_verifier(base_dir, &provider)? {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            (
                "tls_server_config.key_file",
                format!("key does not fit the certificate: {e}"),
            )
        })?;
        // We speak HTTP/1.1 only; `http_server_config.http2` has no effect.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = self.prefer_server_cipher_suites.unwrap_or(true);
        Ok(Some(Arc::new(config)))
    }

    fn certificates(&self, base_dir: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
        let certs: Result<Vec<_>, _> = match (&self.cert_file, &self.cert) {
            (Some(file), _) if !file.is_empty() => {
                let path = base_dir.join(file);
                CertificateDer::pem_file_iter(&path)
                    .map_err(|e| {
                        (
                            "tls_server_config.cert_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .collect()
            }
            (_, Some(pem)) if !pem.is_empty() => {
                CertificateDer::pem_slice_iter(pem.as_bytes()).collect()
            }
            _ => {
                return Err((
                    "tls_server_config",
                    "missing one of cert or cert_file".into(),
                ));
            }
        };
        let key = if self.cert_file.as_deref().is_some_and(|f| !f.is_empty()) {
            "tls_server_config.cert_file"
        } else {
            "tls_server_config.cert"
        };
        match certs {
            Ok(certs) if certs.is_empty() => Err((key, "no PEM certificate found".into())),
            Ok(certs) => Ok(certs),
            Err(e) => Err((key, format!("bad PEM certificate: {e}"))),
        }
    }

    fn private_key(&self, base_dir: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
        match (&self.key_file, &self.key) {
            (Some(file), _) if !file.is_empty() => {
                let path = base_dir.join(file);
                PrivateKeyDer::from_pem_file(&path).map_err(|e| {
                    (
                        "tls_server_config.key_file",
                        format!("cannot read a PEM private key from {}: {e}", path.display()),
                    )
                })
            }
            (_, Some(pem)) if !pem.is_empty() => PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| {
                    (
                        "tls_server_config.key",
                        format!("no PEM private key found: {e}"),
                    )
                }),
            _ => Err(("tls_server_config", "missing one of key or key_file".into())),
        }
    }

    /// (minimum, maximum) as 12 or 13.
    fn versions(&self) -> Result<(u8, u8), KeyError> {
        let parse = |key: &'static str, value: &Option<String>, default: u8| match value.as_deref()
        {
            None => Ok(default),
            Some("TLS10") => Ok(10),
            Some("TLS11") => Ok(11),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(other) => Err((
                key,
                format!("unknown TLS version {other:?} (TLS10, TLS11, TLS12 or TLS13)"),
            )),
        };
        let min = parse("tls_server_config.min_version", &self.min_version, 12)?;
        let max = parse("tls_server_config.max_version", &self.max_version, 13)?;
        if max < 12 {
            return Err((
                "tls_server_config.max_version",
                "TLS 1.0 and 1.1 are not supported; the maximum must be TLS12 or TLS13".into(),
            ));
        }
        if min > max {
            return Err((
                "tls_server_config.min_version",
                "is above max_version".into(),
            ));
        }
        if min < 12 {
            tracing::warn!("web config: min_version below TLS12 serves TLS 1.2 at least");
        }
        Ok((min.max(12), max))
    }

    fn cipher_suites(&self, min_version: u8) -> Result<Vec<SupportedCipherSuite>, KeyError> {
        const KEY: &str = "tls_server_config.cipher_suites";
        let all = ring::default_provider().cipher_suites;
        let Some(names) = &self.cipher_suites else {
            return Ok(all);
        };
        let mut chosen: Vec<SupportedCipherSuite> = all
            .iter()
            .copied()
            .filter(|s| s.tls13().is_some())
            .collect();
        let mut tls12 = 0;
        for name in names {
            if let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| n == name) {
                if !chosen.contains(suite) {
                    chosen.push(*suite);
                    tls12 += 1;
                }
            } else if LEGACY_SUITE_NAMES.contains(&name.as_str()) {
                tracing::warn!(suite = %name, "web config: legacy cipher suite not supported; dropped");
            } else if !TLS13_SUITE_NAMES.contains(&name.as_str()) {
                return Err((KEY, format!("unknown cipher suite {name:?}")));
            }
        }
        if tls12 == 0 && min_version <= 12 && !names.is_empty() {
            return Err((
                KEY,
                "none of the listed TLS 1.2 suites is supported (only ECDHE with AES-GCM or \
                 ChaCha20-Poly1305 are); list one or set min_version: TLS13"
                    .into(),
            ));
        }
        Ok(chosen)
    }

    fn kx_groups(&self) -> Result<Vec<&'static dyn SupportedKxGroup>, KeyError> {
        const KEY: &str = "tls_server_config.curve_preferences";
        let Some(names) = &self.curve_preferences else {
            return Ok(ring::default_provider().kx_groups);
        };
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in names {
            if let Some((_, group)) = CURVES.iter().find(|(n, _)| n == name) {
                if !groups.iter().any(|g| g.name() == group.name()) {
                    groups.push(*group);
                }
            } else if UNSUPPORTED_CURVES.contains(&name.as_str()) {
                tracing::warn!(curve = %name, "web config: curve not supported; dropped");
            } else {
                return Err((KEY, format!("unknown curve {name:?}")));
            }
        }
        if groups.is_empty() {
            return Err((
                KEY,
                "none of the listed curves is supported (CurveP256, CurveP384, X25519)".into(),
            ));
        }
        Ok(groups)
    }

    fn client_auth(&self) -> Result<ClientAuth, KeyError> {
        Ok(match self.client_auth_type.as_deref().unwrap_or("") {
            "" | "NoClientCert" => ClientAuth::None,
            "RequestClientCert" => ClientAuth::Request,
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAny,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
            other => {
                return Err((
                    "tls_server_config.client_auth_type",
                    format!(
                        "unknown client auth type {other:?} (NoClientCert, RequestClientCert, \
                         RequireAnyClientCert, VerifyClientCertIfGiven, \
                         RequireAndVerifyClientCert)"
                    ),
                ));
            }
        })
    }

    fn client_roots(&self, base_dir: &Path) -> Result<Option<RootCertStore>, KeyError> {
        let (key, certs): (&'static str, Result<Vec<_>, _>) =
            match (&self.client_ca_file, &self.client_ca) {
                (Some(file), _) if !file.is_empty() => {
                    let path = base_dir.join(file);
                    let iter = CertificateDer::pem_file_iter(&path).map_err(|e| {
                        (
                            "tls_server_config.client_ca_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    ("tls_server_config.client_ca_file", iter.collect())
                }
                (_, Some(pem)) if !pem.is_empty() => (
                    "tls_server_config.client_ca",
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect(),
                ),
                _ => return Ok(None),
            };
        let certs = certs.map_err(|e| (key, format!("bad PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err((key, "no PEM certificate found".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| (key, format!("unusable CA certificate: {e}")))?;
        }
        Ok(Some(roots))
    }

    fn client_verifier(
        &self,
        base_dir: &Path,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Option<Arc<dyn ClientCertVerifier>>, KeyError> {
        const KEY: &str = "tls_server_config.client_auth_type";
        let policy = self.client_auth()?;
        let roots = self.client_roots(base_dir)?;
        let any = |mandatory| -> Arc<dyn ClientCertVerifier> {
            Arc::new(AnyClientCert {
                mandatory,
                algorithms: provider.signature_verification_algorithms,
            })
        };
        let verified = |roots: Option<RootCertStore>, optional: bool| {
            let Some(roots) = roots else {
                return Err((
                    KEY,
                    "verifying client certificates needs client_ca_file or client_ca".into(),
                ));
            };
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| (KEY, e.to_string()))
        };
        match policy {
            ClientAuth::None if roots.is_some() => Err((
                KEY,
                "a client CA is configured but client_auth_type does not ask for client \
                 certificates"
                    .into(),
            )),
            ClientAuth::None => Ok(None),
            ClientAuth::Request => Ok(Some(any(false))),
            ClientAuth::RequireAny => Ok(Some(any(true))),
            ClientAuth::VerifyIfGiven => verified(roots, true).map(Some),
            ClientAuth::RequireAndVerify => verified(roots, false).map(Some),
        }
    }
}

/// Go's RequestClientCert and RequireAnyClientCert: any certificate is taken without a
/// chain check, but the handshake signature must still prove the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Runs the TLS handshake on an accepted connection. The deadline bounds how long a
/// client that connects and then stalls (or speaks plain HTTP) can hold the connection:
/// the HTTP header-read timeout only starts after the handshake.
pub async fn accept<S>(
    config: Arc<ServerConfig>,
    stream: S,
    deadline: Duration,
) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(deadline, TlsAcceptor::from(config).accept(stream)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        cert: String,
        key: String,
        ca: String,
    }

    /// A CA and a server certificate it signed, as PEM.
    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Pki {
            cert: cert.pem(),
            key: key.serialize_pem(),
            ca: ca.pem(),
        }
    }

    fn base(pki: &Pki) -> TlsServerConfig {
        TlsServerConfig {
            cert: Some(pki.cert.clone()),
            key: Some(pki.key.clone()),
            ..TlsServerConfig::default()
        }
    }

    fn build(config: &TlsServerConfig) -> Result<Arc<ServerConfig>, KeyError> {
        config
            .build(Path::new("/nonexistent"))
            .map(|c| c.expect("TLS enabled"))
    }

    #[test]
    fn builds_from_inline_pem_with_defaults() {
        let pki = pki();
        let config = build(&base(&pki)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(config.ignore_client_order);
        assert!(
            TlsServerConfig::default()
                .build(Path::new("/"))
                .unwrap()
                .is_none(),
            "nothing set: no TLS"
        );
    }

    #[test]
    fn a_key_that_does_not_fit_is_refused() {
        let pki = pki();
        let mut config = base(&pki);
        config.key = Some(rcgen::KeyPair::generate().unwrap().serialize_pem());
        let (key, message) = build(&config).unwrap_err();
        assert_eq!(key, "tls_server_config.key_file");
        assert!(message.contains("does not fit"), "{message}");

        let mut config = base(&pki);
        config.key = None;
        assert!(build(&config).unwrap_err().1.contains("missing one of key"));
        let mut config = base(&pki);
        config.cert = Some("not pem".into());
        assert_eq!(build(&config).unwrap_err().0, "tls_server_config.cert");
    }

    #[test]
    fn versions_map_onto_what_rustls_has() {
        let pki = pki();
        let versions = |min: Option<&str>, max: Option<&str>| {
            let mut config = base(&pki);
            config.min_version = min.map(str::to_string);
            config.max_version = max.map(str::to_string);
            config.versions()
        };
        assert_eq!(versions(None, None), Ok((12, 13)));
        assert_eq!(versions(Some("TLS10"), None), Ok((12, 13)));
        assert_eq!(versions(Some("TLS13"), None), Ok((13, 13)));
        assert_eq!(versions(None, Some("TLS12")), Ok((12, 12)));
        assert!(versions(None, Some("TLS11")).is_err());
        assert!(versions(Some("TLS13"), Some("TLS12")).is_err());
        assert!(versions(Some("SSL3"), None).unwrap_err().1.contains("SSL3"));
    }

    #[test]
    fn cipher_suites_keep_tls13_and_honour_supported_tls12_names() {
        let pki = pki();
        let mut config = base(&pki);
        config.cipher_suites = Some(vec![
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".into(), // legacy: dropped
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
            "TLS_AES_128_GCM_SHA256".into(), // TLS 1.3: always on
        ]);
        let suites = config.cipher_suites(12).unwrap();
        let tls12: Vec<_> = suites.iter().filter(|s| s.tls13().is_none()).collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(
            tls12[0].suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
        assert_eq!(suites.iter().filter(|s| s.tls13().is_some()).count(), 3);
        assert!(build(&config).is_ok());

        config.cipher_suites = Some(vec!["TLS_RSA_WITH_RC4_128_SHA".into()]);
        assert!(config.cipher_suites(12).unwrap_err().1.contains("none"));
        assert!(
            config.cipher_suites(13).is_ok(),
            "TLS 1.3 only needs no 1.2 suite"
        );
        config.cipher_suites = Some(vec!["TLS_MADE_UP".into()]);
        assert!(
            config
                .cipher_suites(12)
                .unwrap_err()
                .1
                .contains("TLS_MADE_UP")
        );
    }

    #[test]
    fn curves_map_and_unknown_ones_fail() {
        let pki = pki();
        let mut config = base(&pki);
        config.curve_preferences = Some(vec!["CurveP521".into(), "CurveP384".into()]);
        let groups = config.kx_groups().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].name(), rustls::NamedGroup::secp384r1);
        config.curve_preferences = Some(vec!["CurveP521".into()]);
        assert!(config.kx_groups().is_err());
        config.curve_preferences = Some(vec!["Curve25519x".into()]);
        assert!(config.kx_groups().unwrap_err().1.contains("Curve25519x"));
    }

    #[test]
    fn client_auth_policies() {
        let pki = pki();
        let with = |policy: &str, ca: bool| {
            let mut config = base(&pki);
            config.client_auth_type = Some(policy.into());
            config.client_ca = ca.then(|| pki.ca.clone());
            build(&config)
        };
        for policy in [
            "NoClientCert",
            "RequestClientCert",
            "RequireAnyClientCert",
            "RequireClientCert",
        ] {
            assert!(with(policy, false).is_ok(), "{policy}");
        }
        for policy in ["VerifyClientCertIfGiven", "RequireAndVerifyClientCert"] {
            assert!(with(policy, true).is_ok(), "{policy}");
            let (key, message) = with(policy, false).unwrap_err();
            assert_eq!(key, "tls_server_config.client_auth_type");
            assert!(message.contains("client_ca_file"), "{message}");
        }
        assert!(
            with("NoClientCert", true)
                .unwrap_err()
                .1
                .contains("client CA")
        );
        assert!(
            with("Sometimes", false)
                .unwrap_err()
                .1
                .contains("Sometimes")
        );

        let mut config = base(&pki);
        config.client_allowed_sans = Some(vec!["scraper".into()]);
        assert_eq!(
            build(&config).unwrap_err().0,
            "tls_server_config.client_allowed_sans"
        );
    }
}
