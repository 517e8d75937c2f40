//! HTTP basic auth against bcrypt hashes (`basic_auth_users` of the web config file),
//! checked the way the Prometheus exporter-toolkit checks it.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), and Prometheus sends the
//! same credentials on every scrape. So a password that passed bcrypt is remembered per
//! user as its SHA-256 digest, and later requests compare digests in constant time.
//! The cache holds at most one entry per configured user, so it cannot grow.
//! bcrypt itself runs one at a time: a flood of wrong passwords costs one core at most.
//! An unknown user is checked against a real hash anyway, so response time does not
//! tell which user names exist.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use ring::digest;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// bcrypt's input limit.
const MAX_PASSWORD_LEN: usize = 72;

/// The challenge a 401 carries.
pub const CHALLENGE: &str = "Basic realm=\"tcpstate-exporter\"";

/// The configured users and what has already been verified. Cheap to clone (shared).
#[derive(Clone)]
pub struct BasicAuth {
    inner: Arc<Inner>,
}

struct Inner {
    /// user -> bcrypt hash.
    users: HashMap<String, String>,
    /// Checked in place of an unknown user's hash, so unknown users cost the same.
    decoy_hash: String,
    /// user -> SHA-256 of the password that last passed bcrypt for that user.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Serialises bcrypt runs.
    bcrypt_lock: Mutex<()>,
    /// Keeps async callers waiting here, not on blocking threads, while one bcrypt runs.
    bcrypt_queue: Semaphore,
    bcrypt_runs: AtomicU64,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.inner.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("BasicAuth").field("users", &users).finish()
    }
}

impl BasicAuth {
    /// Validates every hash. `None` for an empty user list (no auth, as the
    /// exporter-toolkit does). The error names the user whose hash is bad.
    pub fn new(users: BTreeMap<String, String>) -> Result<Option<Self>, (String, String)> {
        for (user, hash) in &users {
            bcrypt::HashParts::from_str(hash)
                .map_err(|e| (user.clone(), format!("not a bcrypt hash: {e}")))?;
        }
        let Some(decoy_hash) = users.values().next().cloned() else {
            return Ok(None);
        };
        Ok(Some(BasicAuth {
            inner: Arc::new(Inner {
                users: users.into_iter().collect(),
                decoy_hash,
                verified: Mutex::new(HashMap::new()),
                bcrypt_lock: Mutex::new(()),
                bcrypt_queue: Semaphore::new(1),
                bcrypt_runs: AtomicU64::new(0),
            }),
        }))
    }

    /// True when the `Authorization` header carries a configured user and its password.
    /// May run bcrypt on the calling thread; async code should prefer [`Self::authorize`].
    pub fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(credentials) = authorization.and_then(Credentials::parse) else {
            return false;
        };
        self.inner.cached(&credentials) || self.inner.bcrypt(&credentials)
    }

    /// As [`Self::check`], but a bcrypt run goes to the blocking pool, one at a time, so
    /// slow checks never stall the async workers that serve other scrapes.
    pub async fn authorize(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(credentials) = authorization.and_then(Credentials::parse) else {
            return false;
        };
        if self.inner.cached(&credentials) {
            return true;
        }
        let Ok(_permit) = self.inner.bcrypt_queue.acquire().await else {
            return false;
        };
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.bcrypt(&credentials))
            .await
            .unwrap_or(false)
    }

    /// How many times bcrypt ran: what the cache saves is visible (and testable).
    pub fn bcrypt_runs(&self) -> u64 {
        self.inner.bcrypt_runs.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn cached(&self, credentials: &Credentials) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(&credentials.user)
            .is_some_and(|known| bool::from(known.ct_eq(&credentials.digest)))
    }

    fn bcrypt(&self, credentials: &Credentials) -> bool {
        let hash = self.users.get(&credentials.user);
        let ok = {
            let _one_at_a_time = self.bcrypt_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
            let matched = bcrypt::verify(&credentials.password, hash.unwrap_or(&self.decoy_hash))
                .unwrap_or(false);
            // bcrypt reads 72 bytes at most; like Go's bcrypt, a longer password never
            // matches rather than matching on its first 72 bytes.
            matched && credentials.password.len() <= MAX_PASSWORD_LEN
        };
        let ok = ok && hash.is_some();
        if ok {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(credentials.user.clone(), credentials.digest);
        }
        ok
    }
}

/// User and password from `Authorization: Basic base64(user:password)`.
struct Credentials {
    user: String,
    password: Vec<u8>,
    digest: [u8; 32],
}

impl Credentials {
    fn parse(header: &HeaderValue) -> Option<Self> {
        let value = header.as_bytes();
        let (scheme, rest) = value.split_at_checked(6)?;
        if !scheme.eq_ignore_ascii_case(b"Basic ") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
        let password = decoded[colon + 1..].to_vec();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(digest::digest(&digest::SHA256, &password).as_ref());
        Some(Credentials {
            user,
            password,
            digest,
        })
    }
}

/// 401 with the Basic challenge.
pub fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"401 Unauthorized\n")));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    /// Cost 4 (the minimum) keeps the tests fast; the logic is the same at any cost.
    fn auth() -> BasicAuth {
        let users = BTreeMap::from([
            ("alice".to_string(), bcrypt::hash("s3cret", 4).unwrap()),
            ("bob".to_string(), bcrypt::hash("hunter2:x", 4).unwrap()),
        ]);
        BasicAuth::new(users).unwrap().unwrap()
    }

    #[test]
    fn accepts_only_the_right_password() {
        let auth = auth();
        assert!(auth.check(Some(&header("alice", "s3cret"))));
        assert!(
            auth.check(Some(&header("bob", "hunter2:x"))),
            "colon in password"
        );
        assert!(!auth.check(Some(&header("alice", "wrong"))));
        assert!(
            !auth.check(Some(&header("alice", "hunter2:x"))),
            "bob's password"
        );
        assert!(
            !auth.check(Some(&header("mallory", "s3cret"))),
            "unknown user"
        );
        assert!(!auth.check(Some(&header("alice", ""))));
        assert!(!auth.check(None));
    }

    #[test]
    fn rejects_malformed_headers() {
        let auth = auth();
        for bad in [
            "Bearer czNjcmV0",
            "Basic",
            "Basic !!!notbase64",
            "Basic YWxpY2U=", // "alice", no colon
            "Digest username=alice",
        ] {
            assert!(!auth.check(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        let lower = header("alice", "s3cret")
            .to_str()
            .unwrap()
            .replace("Basic", "basic");
        assert!(auth.check(Some(&HeaderValue::from_str(&lower).unwrap())));
    }

    #[test]
    fn caches_success_not_failure() {
        let auth = auth();
        let good = header("alice", "s3cret");
        assert!(auth.check(Some(&good)));
        assert_eq!(auth.bcrypt_runs(), 1);
        for _ in 0..5 {
            assert!(auth.check(Some(&good)));
        }
        assert_eq!(auth.bcrypt_runs(), 1, "repeat scrapes skip bcrypt");
        // A wrong password is never served from the cache of a right one.
        assert!(!auth.check(Some(&header("alice", "s3cretX"))));
        assert!(!auth.check(Some(&header("alice", "s3cretX"))));
        assert_eq!(auth.bcrypt_runs(), 3, "failures are not cached");
        // Unknown users go through bcrypt too (no timing shortcut).
        assert!(!auth.check(Some(&header("nobody", "s3cret"))));
        assert_eq!(auth.bcrypt_runs(), 4);
    }

    #[test]
    fn passwords_over_72_bytes_never_match() {
        let max = "a".repeat(72);
        let users = BTreeMap::from([("u".to_string(), bcrypt::hash(&max, 4).unwrap())]);
        let auth = BasicAuth::new(users).unwrap().unwrap();
        assert!(auth.check(Some(&header("u", &max))));
        // bcrypt sees only 72 bytes: a truncating check would let this one through.
        assert!(!auth.check(Some(&header("u", &format!("{max}b")))));
    }

    #[test]
    fn validates_hashes_and_empty_lists() {
        assert!(BasicAuth::new(BTreeMap::new()).unwrap().is_none());
        let bad = BTreeMap::from([("eve".to_string(), "plaintext".to_string())]);
        let (user, message) = BasicAuth::new(bad).unwrap_err();
        assert_eq!(user, "eve");
        assert!(message.contains("bcrypt"), "{message}");
    }

    #[tokio::test]
    async fn authorize_matches_check() {
        let auth = auth();
        assert!(auth.authorize(Some(&header("alice", "s3cret"))).await);
        assert!(!auth.authorize(Some(&header("alice", "nope"))).await);
        assert!(!auth.authorize(None).await);
        assert!(auth.authorize(Some(&header("alice", "s3cret"))).await);
        assert_eq!(auth.bcrypt_runs(), 2);
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
    }
}
