//! Go's TLS vocabulary (versions, cipher suite and curve names) mapped onto what rustls'
//! ring provider serves; see the module above for the rules.

use rustls::SupportedCipherSuite;
use rustls::crypto::{SupportedKxGroup, ring};

use crate::http::tls::{KeyError, TlsServerConfig};

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

impl TlsServerConfig {
    /// (minimum, maximum) as 12 or 13.
    pub(super) fn versions(&self) -> Result<(u8, u8), KeyError> {
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

    pub(super) fn cipher_suites(
        &self,
        min_version: u8,
    ) -> Result<Vec<SupportedCipherSuite>, KeyError> {
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
        let mut dropped = Vec::new();
        for name in names {
            if let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| n == name) {
                if !chosen.contains(suite) {
                    chosen.push(*suite);
                    tls12 += 1;
                }
            } else if LEGACY_SUITE_NAMES.contains(&name.as_str()) {
                dropped.push(name.as_str());
            } else if !TLS13_SUITE_NAMES.contains(&name.as_str()) {
                return Err((KEY, format!("unknown cipher suite {name:?}")));
            }
        }
        // A refused list is one error line naming what was dropped; a warning for each
        // dropped suite only when the list is kept.
        if tls12 == 0 && min_version <= 12 && !names.is_empty() {
            return Err((
                KEY,
                format!(
                    "none of the listed TLS 1.2 suites is supported (only ECDHE with AES-GCM \
                     or ChaCha20-Poly1305 are; legacy ones dropped: {}); list one or set \
                     min_version: TLS13",
                    dropped.join(", ")
                ),
            ));
        }
        for name in dropped {
            tracing::warn!(suite = %name, "web config: legacy cipher suite not supported; dropped");
        }
        Ok(chosen)
    }

    pub(super) fn kx_groups(&self) -> Result<Vec<&'static dyn SupportedKxGroup>, KeyError> {
        const KEY: &str = "tls_server_config.curve_preferences";
        let Some(names) = &self.curve_preferences else {
            return Ok(ring::default_provider().kx_groups);
        };
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        let mut dropped = Vec::new();
        for name in names {
            if let Some((_, group)) = CURVES.iter().find(|(n, _)| n == name) {
                if !groups.iter().any(|g| g.name() == group.name()) {
                    groups.push(*group);
                }
            } else if UNSUPPORTED_CURVES.contains(&name.as_str()) {
                dropped.push(name.as_str());
            } else {
                return Err((KEY, format!("unknown curve {name:?}")));
            }
        }
        if groups.is_empty() {
            return Err((
                KEY,
                format!(
                    "none of the listed curves is supported (CurveP256, CurveP384, X25519; \
                     dropped: {})",
                    dropped.join(", ")
                ),
            ));
        }
        for name in dropped {
            tracing::warn!(curve = %name, "web config: curve not supported; dropped");
        }
        Ok(groups)
    }
}
