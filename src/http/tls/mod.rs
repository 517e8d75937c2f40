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

use rustls::crypto::{CryptoProvider, ring};
use rustls::{ServerConfig, SupportedProtocolVersion};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

mod algorithms;
mod client_auth;
mod pem;
mod v1_certs;

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
