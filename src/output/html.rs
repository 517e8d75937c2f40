//! Text for HTML: names that come from outside (process names, namespace and pod names,
//! verdict text built from them) are escaped wherever they go into the page, in text
//! and in double- or single-quoted attribute values alike.

use std::borrow::Cow;

/// `text` with `& < > " '` escaped; borrowed when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` percent-encoded for a URL query value (RFC 3986 unreserved kept).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(escape("/a&b'\"<"), "/a&amp;b&#39;&quot;&lt;");
        assert_eq!(
            escape("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert!(matches!(escape("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(
            query_value("api server/1&x=é"),
            "api%20server%2F1%26x%3D%C3%A9"
        );
    }
}
