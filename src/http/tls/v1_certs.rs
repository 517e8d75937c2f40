//! X.509 v1 client certificates, which Go's crypto/x509 (so exporter-toolkit) accepts
//! and webpki, rustls' verifier, refuses: webpki parses v3 certificates only.
//!
//! Every check here runs only after webpki has refused a certificate that x509-parser
//! reads as v1; v3 certificates keep the webpki path unchanged. The cryptography is the
//! provider's own (`WebPkiSupportedAlgorithms`), so a v1 certificate is held to the same
//! signature algorithms as a v3 one. A v1 leaf is accepted on a chain only when one of
//! the configured client CA certificates issued it directly: no intermediates, since a
//! v1 certificate carries no basic constraints to say it may sign others. Nor from a CA
//! with name constraints: those stay webpki's to apply, to v3 leaves.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, SignatureVerificationAlgorithm, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, PeerMisbehaved,
    SignatureScheme,
};
use x509_parser::asn1_rs::{Any, FromDer as _, Tag};
use x509_parser::prelude::{X509Certificate, X509Version};
use x509_parser::x509::SubjectPublicKeyInfo;

/// `der` read as a v1 certificate; None when it is not one (or not a certificate).
fn parse_v1(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) if cert.version() == X509Version::V1 => Some(cert),
        _ => None,
    }
}

/// The contents of the `n`th element of the DER SEQUENCE `der` (the form
/// `AlgorithmIdentifier` takes in rustls: without its own tag and length).
fn element_contents(der: &[u8], n: usize) -> Option<&[u8]> {
    let (_, sequence) = Any::from_der(der).ok()?;
    if sequence.tag() != Tag::Sequence {
        return None;
    }
    let mut rest = sequence.data;
    for _ in 0..n {
        rest = Any::from_der(rest).ok()?.0;
    }
    Some(Any::from_der(rest).ok()?.1.data)
}

/// Whether `spki` is a key of `algorithm`'s kind (the same check webpki makes).
fn key_fits(spki: &SubjectPublicKeyInfo<'_>, algorithm: AlgorithmIdentifier) -> bool {
    element_contents(spki.raw, 0) == Some(algorithm.as_ref())
}

/// Verifies `signature` over `message` with `spki`, by the first of `candidates` made
/// for that kind of key.
fn verify_with(
    candidates: &[&dyn SignatureVerificationAlgorithm],
    spki: &SubjectPublicKeyInfo<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    let Some(algorithm) = candidates
        .iter()
        .find(|a| key_fits(spki, a.public_key_alg_id()))
    else {
        let first = candidates.first().map(|a| a.signature_alg_id());
        return Err(Error::InvalidCertificate(
            CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext {
                signature_algorithm_id: first.map(|id| id.as_ref().to_vec()).unwrap_or_default(),
                public_key_algorithm_id: element_contents(spki.raw, 0).unwrap_or_default().to_vec(),
            },
        ));
    };
    algorithm
        .verify_signature(spki.subject_public_key.as_ref(), message, signature)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadSignature))
}

/// webpki's verdict on `cert`, unless it refused a v1 certificate: then `v1`'s.
fn webpki_or_v1<T>(
    webpki: Result<T, Error>,
    cert: &CertificateDer<'_>,
    v1: impl FnOnce(X509Certificate<'_>) -> Result<T, Error>,
) -> Result<T, Error> {
    match webpki {
        Err(refused) => parse_v1(cert).map_or(Err(refused), v1),
        accepted => accepted,
    }
}

/// The TLS 1.2 handshake signature, by the certificate's key; a v1 certificate's key is
/// read with x509-parser when webpki refuses it.
pub(super) fn verify_tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error> {
    let webpki = rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms);
    webpki_or_v1(webpki, cert, |leaf| {
        let candidates = algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, candidates)| *candidates)
            .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
        verify_with(candidates, leaf.public_key(), message, dss.signature())
            .map(|()| HandshakeSignatureValid::assertion())
    })
}

/// The TLS 1.3 handshake signature; for a v1 certificate, rustls' raw-public-key check
/// on the key x509-parser reads from it.
pub(super) fn verify_tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error> {
    let webpki = rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms);
    webpki_or_v1(webpki, cert, |leaf| {
        let spki = SubjectPublicKeyInfoDer::from(leaf.public_key().raw);
        rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
    })
}

/// Whether `cert` is valid at `now` (seconds since the epoch).
fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), CertificateError> {
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        Err(CertificateError::Expired)
    } else if now < validity.not_before.timestamp() {
        Err(CertificateError::NotValidYet)
    } else {
        Ok(())
    }
}

/// Whether `ca` signed `leaf`: the leaf's signature algorithm and the CA's key kind
/// pick the provider's algorithm, which checks the signature over the leaf's TBS bytes.
fn signed_by(
    leaf: &X509Certificate<'_>,
    ca: &X509Certificate<'_>,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<(), CertificateError> {
    let signature_alg = element_contents(leaf.as_raw(), 1).ok_or(CertificateError::BadEncoding)?;
    let candidates: Vec<_> = algorithms
        .all
        .iter()
        .copied()
        .filter(|a| a.signature_alg_id().as_ref() == signature_alg)
        .collect();
    if candidates.is_empty() {
        return Err(CertificateError::UnsupportedSignatureAlgorithmContext {
            signature_algorithm_id: signature_alg.to_vec(),
            supported_algorithms: algorithms
                .all
                .iter()
                .map(|a| a.signature_alg_id())
                .collect(),
        });
    }
    let tbs: &[u8] = leaf.tbs_certificate.as_ref();
    verify_with(
        &candidates,
        ca.public_key(),
        tbs,
        leaf.signature_value.as_ref(),
    )
    .map_err(|e| match e {
        Error::InvalidCertificate(e) => e,
        _ => CertificateError::BadSignature,
    })
}

/// The client-certificate verifier for VerifyClientCertIfGiven and
/// RequireAndVerifyClientCert: webpki's (`inner`), and for a v1 leaf that webpki
/// refused, a one-step check against the client CA certificates (`cas`). A v1
/// certificate in the middle of a chain is never accepted.
#[derive(Debug)]
pub(super) struct V1ClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) cas: Vec<CertificateDer<'static>>,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
}

impl V1ClientVerifier {
    /// `leaf` (v1) was issued by one of the client CAs, and both are valid at `now`.
    fn issued_by_a_ca(&self, leaf: &X509Certificate<'_>, now: UnixTime) -> Result<(), Error> {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        check_validity(leaf, now).map_err(Error::InvalidCertificate)?;
        let mut error = CertificateError::UnknownIssuer;
        for der in &self.cas {
            let Ok((_, ca)) = X509Certificate::from_der(der) else {
                continue;
            };
            if ca.subject().as_raw() != leaf.issuer().as_raw() {
                continue;
            }
            // Name constraints are webpki's to apply; a constrained CA issues v3 only.
            if !matches!(ca.name_constraints(), Ok(None)) {
                continue;
            }
            match signed_by(leaf, &ca, &self.algorithms).and_then(|()| check_validity(&ca, now)) {
                Ok(()) => return Ok(()),
                Err(e) => error = e,
            }
        }
        Err(Error::InvalidCertificate(error))
    }
}

impl ClientCertVerifier for V1ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let webpki = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        webpki_or_v1(webpki, end_entity, |leaf| {
            self.issued_by_a_ca(&leaf, now)
                .map(|()| ClientCertVerified::assertion())
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
