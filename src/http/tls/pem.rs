//! The server's certificate chain and key, from files or inline PEM.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::input::read_bounded;
use crate::http::tls::{KeyError, TlsServerConfig};

impl TlsServerConfig {
    pub(super) fn certificates(
        &self,
        base_dir: &Path,
    ) -> Result<Vec<CertificateDer<'static>>, KeyError> {
        let certs: Result<Vec<_>, _> = match (&self.cert_file, &self.cert) {
            (Some(file), _) if !file.is_empty() => {
                let path = base_dir.join(file);
                let pem = read_bounded(&path).map_err(|e| {
                    (
                        "tls_server_config.cert_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                CertificateDer::pem_slice_iter(&pem).collect()
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

    pub(super) fn private_key(&self, base_dir: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
        match (&self.key_file, &self.key) {
            (Some(file), _) if !file.is_empty() => {
                let path = base_dir.join(file);
                let unreadable = |e: &dyn std::fmt::Display| {
                    (
                        "tls_server_config.key_file",
                        format!("cannot read a PEM private key from {}: {e}", path.display()),
                    )
                };
                let pem = read_bounded(&path).map_err(|e| unreadable(&e))?;
                PrivateKeyDer::from_pem_slice(&pem).map_err(|e| unreadable(&e))
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
}
