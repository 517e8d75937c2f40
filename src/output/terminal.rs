//! Text for a terminal: names that come from outside (process names, namespace and pod
//! names, values from a file) are written with their control characters escaped, so
//! that a process named `"\x1b[2J\x1b]0;PWN\x07"` cannot clear the operator's screen,
//! retitle the window or hide lines. Bidirectional-text overrides are escaped too: they
//! can make a line read differently from what it holds.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` with every control character (C0, DEL, C1) and every bidirectional-text
/// control shown as `\xNN` or `\u{NNNN}`, and backslashes kept as they are; borrowed
/// when there is nothing to escape.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_are_shown_not_sent() {
        assert_eq!(
            escape_control("\x1b[2J\x1b]0;PWN\x07"),
            "\\x1b[2J\\x1b]0;PWN\\x07"
        );
        assert_eq!(
            escape_control("a\tb\r\n\u{7f}\u{85}"),
            "a\\x09b\\x0d\\x0a\\x7f\\u{0085}"
        );
        assert_eq!(
            escape_control("evil\u{202e}gnp.exe"),
            "evil\\u{202e}gnp.exe"
        );
        assert!(matches!(escape_control("nginx: worker"), Cow::Borrowed(_)));
        assert_eq!(escape_control("naïve 进程"), "naïve 进程");
    }
}
