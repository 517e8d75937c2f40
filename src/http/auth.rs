//! HTTP basic auth against bcrypt hashes (`basic_auth_users` of the web config file),
//! checked the way the Prometheus exporter-toolkit checks it.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), and Prometheus sends the
//! same credentials on every scrape. So a password that passed bcrypt is remembered per
//! user as its SHA-256 digest, and later requests compare digests in constant time.
//! The cache holds at most one entry per configured user, so it cannot grow.
//! bcrypt itself runs one at a time, and few may wait for it: a flood of wrong passwords
//! costs one core at most, and a request beyond the queue is refused at once (401)
//! rather than queued for minutes. One client address holds at most two places in the
//! queue, so a flood from one address leaves room for a scraper elsewhere. An unknown
//! user costs no bcrypt at all (a constant-time compare with a dummy digest): that
//! tells, by timing, which user names exist, which the toolkit's decoy hash would hide,
//! but a flood of made-up users must not be able to keep bcrypt busy.
//! On reload the cache is carried over for every user whose hash did not change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
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

/// bcrypt checks running or waiting at once; past it a check is refused without one.
/// At cost 10 (~50 ms) a good password met with a full queue waits under half a second.
const MAX_BCRYPT_QUEUE: usize = 8;
/// Places in that queue one client address may hold.
const MAX_BCRYPT_QUEUE_PER_ADDRESS: usize = 2;

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
    /// user -> SHA-256 of the password that last passed bcrypt for that user.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Serialises bcrypt runs.
    bcrypt_lock: Mutex<()>,
    /// Keeps async callers waiting here, not on blocking threads, while one bcrypt runs.
    bcrypt_queue: Semaphore,
    /// Checks running or waiting, per client address (and their sum under `None`).
    queued: Mutex<HashMap<Option<IpAddr>, usize>>,
    bcrypt_runs: AtomicU64,
}

/// Compared with an unknown user's password digest, so that the refusal takes the same
/// steps as a known user's cached check.
const DUMMY_DIGEST: [u8; 32] = [0x5a; 32];

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
            // `Basic base64(user:password)` splits at the first colon: such a user could
            // never log in, and an empty name is no name.
            if user.is_empty() || user.contains(':') {
                return Err((
                    user.clone(),
                    "a user name must not be empty nor contain ':' (it could never log in)".into(),
                ));
            }
            bcrypt::HashParts::from_str(hash)
                .map_err(|e| (user.clone(), format!("not a bcrypt hash: {e}")))?;
        }
        if users.is_empty() {
            return Ok(None);
        }
        Ok(Some(BasicAuth {
            inner: Arc::new(Inner {
                users: users.into_iter().collect(),
                verified: Mutex::new(HashMap::new()),
                bcrypt_lock: Mutex::new(()),
                bcrypt_queue: Semaphore::new(1),
                queued: Mutex::new(HashMap::new()),
                bcrypt_runs: AtomicU64::new(0),
            }),
        }))
    }

    /// Takes over what `previous` verified for the users whose hash is unchanged, so a
    /// reload does not make every scraper pay bcrypt again (behind a flood, say).
    pub fn carry_over(&self, previous: &BasicAuth) {
        let old = previous
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut verified = self
            .inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (user, digest) in old.iter() {
            if self.inner.users.get(user) == previous.inner.users.get(user) {
                verified.insert(user.clone(), *digest);
            }
        }
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
    /// slow checks never stall the async workers that serve other scrapes; and when the
    /// queue for it is full (or `client` holds its share), refused at once.
    pub async fn authorize(&self, authorization: Option<&HeaderValue>, client: IpAddr) -> bool {
        let Some(credentials) = authorization.and_then(Credentials::parse) else {
            return false;
        };
        if self.inner.cached(&credentials) {
            return true;
        }
        if !self.inner.users.contains_key(&credentials.user) {
            return false;
        }
        let Some(_place) = QueuePlace::take(&self.inner, client) else {
            tracing::debug!(%client, "bcrypt queue full; refused without a check");
            return false;
        };
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

/// A place in the bcrypt queue, given back on drop.
struct QueuePlace<'a> {
    inner: &'a Inner,
    client: IpAddr,
}

impl<'a> QueuePlace<'a> {
    fn take(inner: &'a Inner, client: IpAddr) -> Option<QueuePlace<'a>> {
        let mut queued = inner.queued.lock().unwrap_or_else(|e| e.into_inner());
        let total = queued.get(&None).copied().unwrap_or(0);
        let mine = queued.get(&Some(client)).copied().unwrap_or(0);
        if total >= MAX_BCRYPT_QUEUE || mine >= MAX_BCRYPT_QUEUE_PER_ADDRESS {
            return None;
        }
        queued.insert(None, total + 1);
        queued.insert(Some(client), mine + 1);
        Some(QueuePlace { inner, client })
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        let mut queued = self.inner.queued.lock().unwrap_or_else(|e| e.into_inner());
        for key in [None, Some(self.client)] {
            if let Some(count) = queued.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    queued.remove(&key);
                }
            }
        }
    }
}

impl Inner {
    /// True when the password is the one last verified for the user. An unknown user
    /// is compared with a dummy digest (and refused), in the same steps.
    fn cached(&self, credentials: &Credentials) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let known = verified.get(&credentials.user);
        let equal = bool::from(known.unwrap_or(&DUMMY_DIGEST).ct_eq(&credentials.digest));
        equal && known.is_some()
    }

    fn bcrypt(&self, credentials: &Credentials) -> bool {
        let Some(hash) = self.users.get(&credentials.user) else {
            return false;
        };
        let ok = {
            let _one_at_a_time = self.bcrypt_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
            let matched = bcrypt::verify(&credentials.password, hash).unwrap_or(false);
            // bcrypt reads 72 bytes at most; like Go's bcrypt, a longer password never
            // matches rather than matching on its first 72 bytes.
            matched && credentials.password.len() <= MAX_PASSWORD_LEN
        };
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
        // Unknown users cost no bcrypt: a flood of made-up names cannot keep it busy.
        assert!(!auth.check(Some(&header("nobody", "s3cret"))));
        assert_eq!(auth.bcrypt_runs(), 3);
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

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn unusable_user_names_are_refused() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        for name in ["", "a:b"] {
            let users = BTreeMap::from([(name.to_string(), hash.clone())]);
            let (user, message) = BasicAuth::new(users).unwrap_err();
            assert_eq!(user, name);
            assert!(message.contains("':'"), "{message}");
        }
    }

    #[test]
    fn the_cache_survives_a_reload_for_unchanged_users() {
        let old = auth();
        assert!(old.check(Some(&header("alice", "s3cret"))));
        assert!(old.check(Some(&header("bob", "hunter2:x"))));
        let users = BTreeMap::from([
            ("alice".to_string(), old.inner.users["alice"].clone()),
            ("bob".to_string(), bcrypt::hash("new", 4).unwrap()),
        ]);
        let new = BasicAuth::new(users).unwrap().unwrap();
        new.carry_over(&old);
        assert!(new.check(Some(&header("alice", "s3cret"))));
        assert_eq!(new.bcrypt_runs(), 0, "alice's hash is unchanged: no bcrypt");
        assert!(
            !new.check(Some(&header("bob", "hunter2:x"))),
            "bob's changed"
        );
    }

    #[tokio::test]
    async fn a_full_bcrypt_queue_refuses_at_once() {
        let auth = auth();
        let places: Vec<_> = (0..MAX_BCRYPT_QUEUE_PER_ADDRESS)
            .map(|_| QueuePlace::take(&auth.inner, CLIENT).unwrap())
            .collect();
        // This address holds its share: refused without a bcrypt run.
        assert!(
            !auth
                .authorize(Some(&header("alice", "s3cret")), CLIENT)
                .await
        );
        assert_eq!(auth.bcrypt_runs(), 0);
        // Another address still gets its check.
        let other = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert!(
            auth.authorize(Some(&header("alice", "s3cret")), other)
                .await
        );
        drop(places);
        assert!(
            auth.inner.queued.lock().unwrap().is_empty(),
            "places given back"
        );
    }

    #[tokio::test]
    async fn authorize_matches_check() {
        let auth = auth();
        assert!(
            auth.authorize(Some(&header("alice", "s3cret")), CLIENT)
                .await
        );
        assert!(!auth.authorize(Some(&header("alice", "nope")), CLIENT).await);
        assert!(!auth.authorize(None, CLIENT).await);
        assert!(
            auth.authorize(Some(&header("alice", "s3cret")), CLIENT)
                .await
        );
        assert_eq!(auth.bcrypt_runs(), 2);
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
    }
}
