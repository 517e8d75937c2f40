//! `--web.config.file`: the web configuration file of the Prometheus exporter-toolkit
//! (TLS, basic auth, extra response headers), so existing Prometheus set-ups reuse their
//! files. Parsed and validated whole into a [`WebConfig`] the server uses as is; a reload
//! builds a new one, and a bad file leaves the running one in place.
//!
//! Accepted: `tls_server_config` (see `tls` for how Go's TLS options map onto rustls),
//! `http_server_config` (`headers`, validated like the toolkit; `http2` is accepted and
//! has no effect: we serve HTTP/1.1), `basic_auth_users` (user: bcrypt hash).
//! The toolkit's `rate_limit` and `ip_socket_config` are refused as not supported, and
//! any other key is an error naming the key and its line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::input::read_bounded_text;
use crate::http::auth::BasicAuth;
use crate::http::tls::TlsServerConfig;

/// A web config problem, phrased for the user on one line: file, line, key, what.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WebConfigError(pub String);

/// What the HTTP server needs from the web config file.
#[derive(Clone, Debug, Default)]
pub struct WebConfig {
    /// `Some`: serve TLS only on the listen address.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `Some`: every request needs valid basic-auth credentials.
    pub basic_auth: Option<BasicAuth>,
    /// Added to every response (`http_server_config.headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsServerConfig>,
    http_server_config: Option<HttpServerConfig>,
    basic_auth_users: Option<UniqueMap>,
    // Toolkit keys we know but do not implement: refused by name, never ignored.
    rate_limit: Option<serde_norway::Value>,
    ip_socket_config: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    #[allow(dead_code)] // accepted for compatibility; HTTP/2 is not served
    http2: Option<bool>,
    headers: Option<UniqueMap>,
}

/// A mapping of strings whose keys must be distinct: the toolkit's strict YAML refuses a
/// repeated user or header, and silently keeping the last one would hide a typo.
#[derive(Debug, Default)]
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The headers the toolkit lets a file set, with their allowed values where it pins them.
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

impl WebConfig {
    /// Reads and validates the file; relative certificate paths are taken from its
    /// directory. Call again to reload: on error keep serving the previous config.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let text = read_bounded_text(path).map_err(|e| {
            WebConfigError(format!(
                "web config file {}: cannot read: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<WebConfig, WebConfigError> {
        if let Some(line) = too_deep(text) {
            return Err(WebConfigError(format!(
                "web config file {}: line {line}: collections nested deeper than \
                 {MAX_FLOW_DEPTH} levels",
                path.display()
            )));
        }
        let file: FileConfig = match serde_norway::from_str::<Option<FileConfig>>(text) {
            Ok(file) => file.unwrap_or_default(),
            Err(e) => {
                let line = e
                    .location()
                    .map(|l| format!(" line {}:", l.line()))
                    .unwrap_or_default();
                // serde_norway appends " at line L column C"; we already said the line.
                let message = e.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .replace('\n', " ");
                return Err(WebConfigError(format!(
                    "web config file {}:{line} {message}",
                    path.display()
                )));
            }
        };
        let located = |(key, message): (&str, String)| {
            let line = find_key_line(text, key)
                .map(|n| format!(" line {n}:"))
                .unwrap_or_default();
            WebConfigError(format!(
                "web config file {}:{line} {key}: {message}",
                path.display()
            ))
        };
        if file.rate_limit.is_some() {
            return Err(located((
                "rate_limit",
                "not supported by tcpstate-exporter".into(),
            )));
        }
        if file.ip_socket_config.is_some() {
            return Err(located((
                "ip_socket_config",
                "not supported by tcpstate-exporter".into(),
            )));
        }
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let tls = match &file.tls_server_config {
            Some(section) => section.build(base_dir).map_err(located)?,
            None => None,
        };
        let basic_auth = match file.basic_auth_users {
            Some(users) => BasicAuth::new(users.0).map_err(|(user, message)| {
                let line = find_key_line(text, &format!("basic_auth_users.{user}"))
                    .map(|n| format!(" line {n}:"))
                    .unwrap_or_default();
                WebConfigError(format!(
                    "web config file {}:{line} basic_auth_users: {user}: {message}",
                    path.display()
                ))
            })?,
            None => None,
        };
        let headers = match file.http_server_config.and_then(|h| h.headers) {
            Some(headers) => headers_of(headers.0).map_err(located)?,
            None => Vec::new(),
        };
        Ok(WebConfig {
            tls,
            basic_auth,
            headers,
        })
    }

    /// Adds the configured headers to a response's headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing: the
/// YAML parser's cost grows with the square of the depth (20,000 levels took 9 s), and a
/// web config nests three at most.
const MAX_FLOW_DEPTH: usize = 32;

/// The line where flow collections first nest deeper than `MAX_FLOW_DEPTH`, if they do.
/// Quoted scalars and comments are skipped; a quote only opens a scalar where YAML
/// lets one start (after a space or an indicator), as in `it's` it does not.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<char> = None;
    let (mut escaped, mut comment, mut previous) = (false, false, ' ');
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            comment = false;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if q == '"' && c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '#' if previous.is_whitespace() => comment = true,
                '"' | '\'' if previous.is_whitespace() || "[{,:-".contains(previous) => {
                    quote = Some(c)
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(line);
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        previous = c;
    }
    None
}

fn headers_of(
    headers: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, (&'static str, String)> {
    const KEY: &str = "http_server_config.headers";
    headers
        .into_iter()
        .map(|(name, value)| {
            let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
                return Err((KEY, format!("HTTP header {name:?} can not be configured")));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err((
                    KEY,
                    format!("invalid value for {name}: expected one of {allowed:?}, got {value:?}"),
                ));
            }
            let header_value = HeaderValue::from_str(&value)
                .map_err(|_| (KEY, format!("invalid value for {name}: {value:?}")))?;
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (KEY, format!("invalid header name {name:?}")))?;
            Ok((header_name, header_value))
        })
        .collect()
}

/// Line of `leaf:` (the last dotted part of `key`) below its parent's line, for messages
/// about a value that parsed but does not validate.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    let mut found = None;
    for part in key.split('.') {
        let (index, _) = text.lines().enumerate().skip(from).find(|(_, line)| {
            let line = line.trim_start().trim_start_matches("- ");
            let line = line.trim_start_matches(['"', '\'']);
            line.strip_prefix(part).is_some_and(|rest| {
                rest.trim_start_matches(['"', '\''])
                    .trim_start()
                    .starts_with(':')
            })
        })?;
        from = index + 1;
        found = Some(index + 1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/nonexistent/web.yml")).map_err(|e| e.0)
    }

    #[test]
    fn empty_and_comment_only_files_mean_nothing_to_do() {
        for text in ["", "# nothing\n", "---\n"] {
            let config = parse(text).unwrap();
            assert!(config.tls.is_none() && config.basic_auth.is_none());
        }
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let error = parse("basic_auth_users: {}\ntls_server_confg:\n  cert_file: x\n").unwrap_err();
        assert!(error.contains("tls_server_confg"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");

        let error = parse("tls_server_config:\n  cert_file: a\n  keyfile: b\n").unwrap_err();
        assert!(
            error.contains("keyfile") && error.contains("line 3"),
            "{error}"
        );

        let error = parse("http_server_config:\n  http3: true\n").unwrap_err();
        assert!(
            error.contains("http3") && error.contains("line 2"),
            "{error}"
        );
    }

    #[test]
    fn unsupported_toolkit_keys_are_refused_by_name() {
        let error = parse("basic_auth_users: {}\nrate_limit:\n  burst: 5\n").unwrap_err();
        assert!(
            error.contains("rate_limit") && error.contains("line 2"),
            "{error}"
        );
        assert!(error.contains("not supported"), "{error}");
        let error = parse("ip_socket_config:\n  dscp: 1\n").unwrap_err();
        assert!(error.contains("ip_socket_config"), "{error}");
    }

    #[test]
    fn basic_auth_users_are_validated() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let config = parse(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        assert!(config.basic_auth.is_some());
        assert!(
            parse("basic_auth_users: {}\n")
                .unwrap()
                .basic_auth
                .is_none()
        );

        let error = parse(&format!(
            "basic_auth_users:\n  alice: '{hash}'\n  bob: secret\n"
        ))
        .unwrap_err();
        assert!(error.contains("bob") && error.contains("line 3"), "{error}");
        assert!(error.contains("bcrypt"), "{error}");
    }

    #[test]
    fn headers_follow_the_toolkit_allow_list() {
        let config = parse(
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n",
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        config.apply_headers(&mut headers);
        assert_eq!(headers["x-frame-options"], "deny");
        assert_eq!(headers["strict-transport-security"], "max-age=31536000");

        let error =
            parse("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").unwrap_err();
        assert!(
            error.contains("X-Frame-Options") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("http_server_config:\n  headers:\n    Server: me\n").unwrap_err();
        assert!(error.contains("can not be configured"), "{error}");
    }

    #[test]
    fn wrong_types_name_the_line() {
        let error = parse("basic_auth_users:\n  - alice\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let error = parse("basic_auth_users: {}\nbasic_auth_users: {}\n").unwrap_err();
        assert!(error.contains("basic_auth_users"), "{error}");
        let hash = bcrypt::hash("pw", 4).unwrap();
        let error = parse(&format!(
            "basic_auth_users:\n  alice: '{hash}'\n  bob: '{hash}'\n  alice: '{hash}'\n"
        ))
        .unwrap_err();
        assert!(error.contains("duplicate key \"alice\""), "{error}");
        assert!(error.contains("line 2: basic_auth_users"), "{error}");
    }

    #[test]
    fn tls_section_without_material_serves_plain_http() {
        let config = parse("tls_server_config:\n  min_version: TLS13\n").unwrap();
        assert!(config.tls.is_none());
    }

    #[test]
    fn missing_files_name_the_key_and_path() {
        let error =
            parse("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n").unwrap_err();
        assert!(error.contains("tls_server_config.cert_file"), "{error}");
        assert!(
            error.contains("/nonexistent/c.pem"),
            "relative to the file: {error}"
        );
        assert!(error.contains("line 2"), "{error}");
        let error = parse("tls_server_config:\n  cert_file: c.pem\n").unwrap_err();
        assert!(error.contains("missing one of key or key_file") || error.contains("cert_file"));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let started = std::time::Instant::now();
        let deep = format!(
            "# [[[[ in a comment\nbasic_auth_users: {}{}\n",
            "[".repeat(20_000),
            "]".repeat(20_000)
        );
        let error = parse(&deep).unwrap_err();
        assert!(
            error.contains("line 2") && error.contains("nested"),
            "{error}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let quoted = format!(
            "http_server_config:\n  headers:\n    X-XSS-Protection: \"{}\"\n",
            "[".repeat(100)
        );
        assert!(
            parse(&quoted).is_ok(),
            "brackets in a quoted scalar are text"
        );
        assert_eq!(too_deep("a: [[1], {b: [2]}]\n"), None);
    }

    #[test]
    fn finds_nested_key_lines() {
        let text = "a:\n  cert_file: x\nb:\n  cert_file: y\n";
        assert_eq!(find_key_line(text, "b.cert_file"), Some(4));
        assert_eq!(find_key_line(text, "a.cert_file"), Some(2));
        assert_eq!(find_key_line(text, "c"), None);
    }
}
