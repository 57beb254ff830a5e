//! Values from logs made safe for an email: one line for a header or a table cell, line feeds
//! kept for a fix, HTML-escaped for the HTML part.

/// One line for a header, a table cell or a paragraph: control and invisible characters
/// (CR, LF, ESC, NEL, bidi overrides…) as visible escapes ([`crate::escape::line`]), runs of
/// other whitespace as one space, trimmed.
pub(super) fn one_line(s: &str) -> String {
    crate::escape::line(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A multi-line text (a fix, the diagnosis's words) for a body: its line feeds stay, every
/// other control or invisible character is a visible escape ([`crate::escape::lines`]).
pub(super) fn multi_line(s: &str) -> String {
    crate::escape::lines(s).into_owned()
}

/// Only the characters that are safe anywhere in a header (for `References`).
pub(super) fn header_token(s: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(128)
        .collect();
    if t.is_empty() {
        "incident".to_owned()
    } else {
        t
    }
}

/// HTML escaping for text and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text with its line breaks kept.
pub(super) fn paragraph(s: &str) -> String {
    esc(s).replace('\n', "<br>\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_strips_every_way_to_a_new_header() {
        assert_eq!(
            one_line("a\r\nBcc: evil@example.com"),
            r"a\r\nBcc: evil@example.com"
        );
        assert_eq!(
            one_line("a\u{85}b\u{2028}c\u{202E}d\x1b[31m"),
            r"a\u{85}b\u{2028}c\u{202e}d\x1b[31m"
        );
        assert_eq!(one_line("  x   y  "), "x y");
        assert_eq!(multi_line("a\r\nb\rc\x07\td"), "a\\r\nb\\rc\\x07\\td");
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(header_token("ab/c d\r\n1"), "abcd1");
        assert_eq!(header_token("\r\n"), "incident");
    }
}
