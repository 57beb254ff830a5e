//! Untrusted text made safe to show a person: every control character (C0, DEL, C1: ESC, CR,
//! LF, BEL, NEL…) and every invisible character that reorders or hides text (bidi overrides,
//! zero-width characters, line separators) is written as a visible escape (`\n`, `\x1b`,
//! `\u{202e}`).
//!
//! Values from log entries and job configs (a URL, a status, a service account, an audience)
//! reach terminals, log files, Slack, email and PagerDuty. Raw, an ESC drives the terminal, a
//! newline forges a log line or a paragraph, a bidi override shows text in another order than it
//! is. Every human-facing rendering goes through [`line()`] (a value on one line) or [`lines`]
//! (a multi-line text such as a fix, whose own line breaks stay). The JSON alert does not: JSON
//! escapes on its own, and its values stay exact.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a person raw: a control character or an invisible one.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_invisible(c)
}

/// Characters that are not control characters but reorder or hide text: bidi marks, embeddings,
/// overrides and isolates, zero-width characters, the line and paragraph separators, the BOM.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A value on one line: every unsafe character, line breaks included, as a visible escape.
/// Borrowed when there is nothing to escape, which is almost always.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A multi-line text (a fix): its line feeds stay, every other unsafe character (CR included)
/// is escaped, so each line shows as it is.
pub fn lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    let needs = |c: char| is_unsafe(c) && !(keep_newlines && c == '\n');
    let Some(first) = s.find(needs) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !needs(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisibles_become_visible() {
        assert_eq!(line("https://x.example/a:run"), "https://x.example/a:run");
        assert!(matches!(line("plain"), Cow::Borrowed(_)));
        assert_eq!(
            line("a\r\nb\x1b[2Jc\x07\x00\x7f\u{85}\u{9b}"),
            r"a\r\nb\x1b[2Jc\x07\x00\x7f\u{85}\u{9b}"
        );
        assert_eq!(line("x\u{202e}gpj.exe"), r"x\u{202e}gpj.exe");
        assert_eq!(line("tab\there\u{2028}"), r"tab\there\u{2028}");
        // Printable text outside ASCII stays.
        assert_eq!(line("Zürich ✓ 東京"), "Zürich ✓ 東京");
    }

    #[test]
    fn lines_keep_their_breaks_and_nothing_else() {
        assert_eq!(
            lines("gcloud a \\\n  --x=1\r\n# \x1b]0;title\x07"),
            "gcloud a \\\n  --x=1\\r\n# \\x1b]0;title\\x07"
        );
        for s in ["a\u{1b}b", "\r", "x\u{202e}y", "\u{85}"] {
            assert!(!line(s).contains(is_unsafe), "{s:?}");
            assert!(!lines(s).contains(is_unsafe), "{s:?}");
        }
    }
}
