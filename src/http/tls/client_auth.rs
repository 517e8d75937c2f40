//! Client certificates: Go's five `client_auth_type` policies, the client CA, and the
//! verifier each policy needs.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::input::read_bounded;
use crate::http::tls::v1_certs::{self, V1ClientVerifier};
use crate::http::tls::{KeyError, TlsServerConfig};

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

    /// The client CA certificates, as webpki's trust anchors and as given (for the v1
    /// check, which needs their validity too).
    fn client_roots(
        &self,
        base_dir: &Path,
    ) -> Result<Option<(RootCertStore, Vec<CertificateDer<'static>>)>, KeyError> {
        let (key, certs): (&'static str, Result<Vec<_>, _>) =
            match (&self.client_ca_file, &self.client_ca) {
                (Some(file), _) if !file.is_empty() => {
                    let path = base_dir.join(file);
                    let pem = read_bounded(&path).map_err(|e| {
                        (
                            "tls_server_config.client_ca_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    (
                        "tls_server_config.client_ca_file",
                        CertificateDer::pem_slice_iter(&pem).collect(),
                    )
                }
                (_, Some(pem)) if !pem.is_empty() => (
                    "tls_server_config.client_ca",
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect(),
                ),
                _ => return Ok(None),
            };
        let certs: Vec<CertificateDer<'static>> =
            certs.map_err(|e| (key, format!("bad PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err((key, "no PEM certificate found".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| (key, format!("unusable CA certificate: {e}")))?;
        }
        Ok(Some((roots, certs)))
    }

    pub(super) fn client_verifier(
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
        let verified = |roots: Option<(RootCertStore, _)>, optional: bool| {
            let Some((roots, cas)) = roots else {
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
            let inner = builder.build().map_err(|e| (KEY, e.to_string()))?;
            Ok(Arc::new(V1ClientVerifier {
                inner,
                cas,
                algorithms: provider.signature_verification_algorithms,
            }) as Arc<dyn ClientCertVerifier>)
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
/// chain check, but the handshake signature must still prove the client holds its key
/// (a v1 certificate's too: see v1_certs).
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
        v1_certs::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        v1_certs::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
