//! Redaction of what a receiver answers: a receiver (or a proxy before it) may echo what it was
//! sent — the webhook URL, a token, the SMTP password — raw or encoded, and its answer is quoted
//! in delivery errors, which reach logs, stderr and the store. A [`Redactor`] knows one sink's
//! secrets and removes every form of them from such text before it goes anywhere.
//!
//! Rather than spelling out every encoding of every secret, the answer is *decoded* for the
//! search: `%2F`/`%2f`, `\/`, `\u002F`, `\x2f`, `&#47;`, `&amp;`… become the byte they stand for
//! (three times over, for an answer that encoded twice), `+` and space count as one (form
//! encoding), and a secret found in that view is redacted in the answer as written, escapes and
//! all. The secrets go through the same decoding, so a secret that holds `%` or `\` is found in
//! the same way. Base64 cannot be found by decoding (it is not an escape), so the base64 forms of
//! every secret and part of one are searched for as well — a whole secret, a URL's token, a
//! bearer token, Basic auth's `user:password`, SMTP AUTH's `\0user\0password`.

use std::fmt;
use std::ops::Range;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// What stands in for a secret (and for a run of secrets next to each other).
pub const REDACTED: &str = "[redacted]";

/// A whole secret shorter than this is not searched for: redacting every `abc` would garble
/// ordinary words in every answer, and a secret of three characters is guessed in a few
/// thousand tries whatever we print.
const MIN_SECRET_LEN: usize = 4;

/// A part of a secret (a path segment or query value of a secret URL, a user name) shorter than
/// this is not searched for: the short parts of webhook URLs are route words (`api`, `v1`,
/// `hooks`) that are no secret and would turn much of an answer into `[redacted]`, while the
/// parts that are secret are longer (Slack's team and bot ids have 9 to 11 characters, its
/// token 24; API keys and tokens 16 and more).
const MIN_PART_LEN: usize = 8;

/// How many layers of escaping are undone: a URL percent-encoded inside a JSON string inside an
/// HTML page is three; more is not something receivers do.
const DECODE_PASSES: usize = 3;

/// One sink's secrets, ready to be found in any form in what its receiver answers.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Each form searched for, decoded as answers are (see [`View`]).
    needles: Vec<Vec<u8>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("forms", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor that knows no secret yet.
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// A secret such as a token, a key or a password, and when it is a header value of the
    /// form `<scheme> <credentials>` (`Bearer …`, `Basic …`), the credentials on their own,
    /// and for `Basic` the `user:password` they encode, its password and its user.
    pub fn secret(&mut self, value: &str) -> &mut Redactor {
        let value = value.trim();
        self.whole(value);
        if let Some((scheme, credentials)) = value.split_once(char::is_whitespace) {
            let credentials = credentials.trim();
            self.whole(credentials);
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = STANDARD_NO_PAD
                    .decode(credentials.trim_end_matches('='))
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                if let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                    self.login(user, true, password);
                }
            }
        }
        self
    }

    /// A secret URL (a webhook's): the whole, and its parts that may carry the token — the path
    /// and each of its segments (Slack's `T…/B…/token`), the query and each value
    /// (`?token=…`), a user and password, the fragment.
    pub fn url(&mut self, value: &str) -> &mut Redactor {
        let value = value.trim();
        self.whole(value);
        let Ok(url) = reqwest::Url::parse(value) else {
            return self;
        };
        let path = url.path();
        self.part(path);
        // Without the leading `/`, as answers quote it relative (`no route for services/…`).
        if let Some(relative) = path.strip_prefix('/') {
            self.part(relative);
        }
        for segment in path.split('/') {
            self.part(segment);
        }
        if let Some(query) = url.query() {
            self.part(query);
            self.part(&format!("{path}?{query}"));
            for pair in query.split(['&', ';']) {
                self.part(pair);
                if let Some((_, v)) = pair.split_once('=') {
                    self.part(v);
                }
            }
        }
        self.part(url.username());
        if let Some(password) = url.password() {
            self.whole(password);
        }
        if let Some(fragment) = url.fragment() {
            self.part(fragment);
        }
        self
    }

    /// A login: the password as a [`secret`](Redactor::secret), the user too when it is one
    /// (an access key id), and the forms they travel in — `user:password` (Basic auth) and the
    /// base64 of SMTP's AUTH PLAIN (`\0user\0password`) and AUTH LOGIN (the user alone).
    pub fn login(&mut self, user: &str, user_is_secret: bool, password: &str) -> &mut Redactor {
        self.secret(password);
        if user_is_secret {
            self.part(user);
        }
        let basic = format!("{user}:{password}");
        self.add(&basic, MIN_SECRET_LEN);
        self.base64(&basic, MIN_SECRET_LEN);
        self.base64(&format!("\0{user}\0{password}"), MIN_SECRET_LEN);
        self
    }

    /// `text` with every form of every secret replaced by [`REDACTED`]. `cut`: the text is the
    /// start of something longer, so a secret may begin at its end and be cut short; such an
    /// unfinished secret is redacted too. Invalid UTF-8 becomes U+FFFD.
    pub fn redact(&self, text: &[u8], cut: bool) -> String {
        if self.needles.is_empty() {
            return String::from_utf8_lossy(text).into_owned();
        }
        let view = View::decode(text);
        let mut hidden = vec![false; text.len()];
        let mut hide = |from: usize, to: usize| {
            let span = view.from[from].start..view.from[to - 1].end;
            hidden[span].fill(true);
        };
        for needle in &self.needles {
            let n = needle.len();
            for at in 0..view.bytes.len().saturating_sub(n - 1) {
                if view.bytes[at..at + n] == needle[..] {
                    hide(at, at + n);
                }
            }
        }
        if cut {
            // The longest end of the text that is the start of a secret.
            let len = view.bytes.len();
            let tail = self
                .needles
                .iter()
                .filter_map(|needle| {
                    (1..needle.len().min(len + 1))
                        .rev()
                        .find(|&k| needle.starts_with(&view.bytes[len - k..]))
                })
                .max();
            if let Some(k) = tail {
                hide(len - k, len);
            }
        }

        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            let end = hidden[at..]
                .iter()
                .position(|&h| h != hidden[at])
                .map_or(text.len(), |p| at + p);
            if hidden[at] {
                out.push_str(REDACTED);
            } else {
                out.push_str(&String::from_utf8_lossy(&text[at..end]));
            }
            at = end;
        }
        out
    }

    /// A whole secret and its base64, if long enough.
    fn whole(&mut self, value: &str) {
        self.add(value, MIN_SECRET_LEN);
        self.base64(value, MIN_SECRET_LEN);
    }

    /// A part of a secret and its base64, if long enough.
    fn part(&mut self, value: &str) {
        self.add(value, MIN_PART_LEN);
        self.base64(value, MIN_PART_LEN);
    }

    /// The base64 of `value` in both alphabets, with and without padding.
    fn base64(&mut self, value: &str, min: usize) {
        if value.len() < min {
            return;
        }
        for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
            self.add(&engine.encode(value), min);
        }
    }

    /// One form to search for, decoded as answers are, if it is at least `min` bytes long then.
    fn add(&mut self, value: &str, min: usize) {
        let needle = View::decode(value.as_bytes()).bytes;
        if needle.len() >= min && !self.needles.contains(&needle) {
            self.needles.push(needle);
        }
    }
}

/// Text as it is searched: escapes undone, `+` as a space, and for each byte of that, the bytes
/// of the original text it came from.
struct View {
    bytes: Vec<u8>,
    from: Vec<Range<usize>>,
}

impl View {
    fn decode(text: &[u8]) -> View {
        let mut view = View {
            bytes: text.to_vec(),
            from: (0..text.len()).map(|i| i..i + 1).collect(),
        };
        for _ in 0..DECODE_PASSES {
            let next = view.unescape();
            // Every escape is longer than what it stands for: no change in length, no escape.
            let done = next.bytes.len() == view.bytes.len();
            view = next;
            if done {
                break;
            }
        }
        for b in &mut view.bytes {
            if *b == b'+' {
                *b = b' ';
            }
        }
        view
    }

    /// One layer of escapes undone.
    fn unescape(&self) -> View {
        let mut out = View {
            bytes: Vec::with_capacity(self.bytes.len()),
            from: Vec::with_capacity(self.bytes.len()),
        };
        let mut at = 0;
        while at < self.bytes.len() {
            match unescape_at(&self.bytes[at..]) {
                Some((decoded, used)) => {
                    let span = self.from[at].start..self.from[at + used - 1].end;
                    for b in decoded.as_bytes() {
                        out.bytes.push(b);
                        out.from.push(span.clone());
                    }
                    at += used;
                }
                None => {
                    out.bytes.push(self.bytes[at]);
                    out.from.push(self.from[at].clone());
                    at += 1;
                }
            }
        }
        out
    }
}

/// What an escape at the start of `s` stands for, and its length: percent-encoding (`%2F`),
/// JSON and other backslash escapes (`\/`, `\"`, `\u00e9`, a surrogate pair, `\x2f`), HTML
/// character references (`&amp;`, `&#47;`, `&#x2F;`).
fn unescape_at(s: &[u8]) -> Option<(Decoded, usize)> {
    let hex = |b: &[u8]| -> Option<u32> {
        let text = std::str::from_utf8(b).ok()?;
        if text.bytes().all(|c| c.is_ascii_hexdigit()) {
            u32::from_str_radix(text, 16).ok()
        } else {
            None
        }
    };
    match *s.first()? {
        b'%' => Some((Decoded::Byte(hex(s.get(1..3)?)? as u8), 3)),
        b'\\' => match *s.get(1)? {
            b'u' => {
                let unit = hex(s.get(2..6)?)?;
                if (0xD800..0xDC00).contains(&unit) {
                    let low = s.get(6..12).filter(|l| l.starts_with(b"\\u"))?;
                    let low = hex(&low[2..])?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return None;
                    }
                    let c = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
                    Some((Decoded::Char(c), 12))
                } else {
                    Some((Decoded::Char(char::from_u32(unit)?), 6))
                }
            }
            b'x' => Some((Decoded::Byte(hex(s.get(2..4)?)? as u8), 4)),
            c @ (b'"' | b'\\' | b'/' | b'\'') => Some((Decoded::Byte(c), 2)),
            b'n' => Some((Decoded::Byte(b'\n'), 2)),
            b'r' => Some((Decoded::Byte(b'\r'), 2)),
            b't' => Some((Decoded::Byte(b'\t'), 2)),
            b'b' => Some((Decoded::Byte(0x08), 2)),
            b'f' => Some((Decoded::Byte(0x0c), 2)),
            _ => None,
        },
        b'&' => {
            // The longest reference we read: `&#x10FFFF;`.
            let end = s.iter().take(10).position(|&b| b == b';')?;
            let name = std::str::from_utf8(&s[1..end]).ok()?;
            let c = match name {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(h) => hex(h.as_bytes())?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((Decoded::Char(c), end + 1))
        }
        _ => None,
    }
}

/// What one escape stands for: a byte (`%C3`, one byte of a UTF-8 sequence) or a character.
enum Decoded {
    Byte(u8),
    Char(char),
}

impl Decoded {
    fn as_bytes(&self) -> Vec<u8> {
        match self {
            Decoded::Byte(b) => vec![*b],
            Decoded::Char(c) => c.to_string().into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "xoxb-S3cr3t/T0k+n with space&more";

    fn redacted(r: &Redactor, text: &str) -> String {
        r.redact(text.as_bytes(), false)
    }

    fn percent(s: &str, lower: bool, plus_for_space: bool) -> String {
        s.bytes()
            .map(|b| match b {
                b' ' if plus_for_space => "+".to_owned(),
                b if b.is_ascii_alphanumeric() => char::from(b).to_string(),
                b if lower => format!("%{b:02x}"),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn every_encoding_of_a_secret_is_found() {
        let mut r = Redactor::new();
        r.secret(TOKEN);
        let json = serde_json::to_string(TOKEN).unwrap();
        let json = json[1..json.len() - 1].to_owned();
        let json_u: String = TOKEN
            .chars()
            .map(|c| format!("\\u{:04x}", u32::from(c)))
            .collect();
        let forms = [
            TOKEN.to_owned(),
            percent(TOKEN, false, false),
            percent(TOKEN, true, false),
            percent(TOKEN, false, true),
            percent(&percent(TOKEN, false, false), false, false),
            json.clone(),
            json.replace('/', "\\/"),
            json_u,
            TOKEN.replace('&', "&amp;").replace('/', "&#x2F;"),
            STANDARD_NO_PAD.encode(TOKEN),
            STANDARD.encode(TOKEN),
            URL_SAFE_NO_PAD.encode(TOKEN),
        ];
        for form in forms {
            let text = format!("error: got <{form}> from you");
            assert_eq!(
                redacted(&r, &text),
                "error: got <[redacted]> from you",
                "{form}"
            );
        }
    }

    #[test]
    fn bearer_and_basic_credentials_are_found_on_their_own() {
        let mut r = Redactor::new();
        r.secret("Bearer tok-0123456789abcdef");
        assert_eq!(
            redacted(&r, "bad token tok-0123456789abcdef"),
            "bad token [redacted]"
        );
        let b64 = STANDARD_NO_PAD.encode("tok-0123456789abcdef");
        assert_eq!(redacted(&r, &format!("({b64})")), "([redacted])");

        let basic = STANDARD.encode("svc-user-01:pa55word");
        let mut r = Redactor::new();
        r.secret(&format!("Basic {basic}"));
        for text in [
            format!("Authorization: Basic {basic}"),
            "user svc-user-01:pa55word".to_owned(),
            "password pa55word".to_owned(),
            "user svc-user-01".to_owned(),
        ] {
            let out = redacted(&r, &text);
            assert!(out.ends_with(REDACTED), "{text} -> {out}");
            for s in ["pa55word", "svc-user-01", &basic] {
                assert!(!out.contains(s), "{text} -> {out}");
            }
        }
    }

    #[test]
    fn the_parts_of_a_secret_url_are_found_but_not_short_route_words() {
        let mut r = Redactor::new();
        r.url("https://hooks.slack.com/services/T01ABCDEFGH/B02ABCDEFGH/abcdefGHIJKLmnopQRSTuvwx");
        assert_eq!(
            redacted(&r, "no_team for T01ABCDEFGH"),
            "no_team for [redacted]"
        );
        assert_eq!(
            redacted(&r, "invalid_token abcdefGHIJKLmnopQRSTuvwx"),
            "invalid_token [redacted]"
        );
        assert_eq!(
            redacted(
                &r,
                "POST /services/T01ABCDEFGH/B02ABCDEFGH/abcdefGHIJKLmnopQRSTuvwx failed"
            ),
            "POST [redacted] failed"
        );

        let mut r = Redactor::new();
        r.url("http://127.0.0.1:8080/api/v1/hook?token=q-0123456789&team=a");
        assert_eq!(
            redacted(&r, "api v1 hook team=a token%3Dq-0123456789"),
            "api v1 hook team=a [redacted]"
        );
        assert_eq!(
            redacted(
                &r,
                "https://hooks.example.com/api/v1/hook?token=q-0123456789&team=a"
            ),
            "https://hooks.example.com[redacted]"
        );
    }

    #[test]
    fn smtp_auth_forms_are_found() {
        let mut r = Redactor::new();
        r.login("AKIAEXAMPLEKEY", true, "hunter22");
        let plain = STANDARD.encode("\0AKIAEXAMPLEKEY\0hunter22");
        let login_user = STANDARD_NO_PAD.encode("AKIAEXAMPLEKEY");
        let login_password = STANDARD_NO_PAD.encode("hunter22");
        for form in [
            "hunter22",
            "AKIAEXAMPLEKEY",
            &plain,
            &login_user,
            &login_password,
        ] {
            assert_eq!(redacted(&r, &format!("535 {form}")), "535 [redacted]");
        }
        // A user written in the config is no secret.
        let mut r = Redactor::new();
        r.login("alerts@example.com", false, "hunter22");
        assert_eq!(
            redacted(&r, "535 alerts@example.com hunter22"),
            "535 alerts@example.com [redacted]"
        );
    }

    #[test]
    fn short_secrets_and_text_without_secrets_are_left_alone() {
        let mut r = Redactor::new();
        r.secret("abc");
        assert!(r.needles.is_empty(), "{r:?}");
        r.url("http://h/a/v1/x");
        assert_eq!(redacted(&r, "abc /a/v1/x v1 x a"), "abc /a/v1/x v1 x a");
        let mut r = Redactor::new();
        r.secret("s3cr3t-value");
        let text = "nothing %zz \\q &bogus; &#xZZ; \\ud800 here";
        assert_eq!(redacted(&r, text), text);
        assert_eq!(r.redact(b"bad \xff utf8", false), "bad \u{fffd} utf8");
    }

    #[test]
    fn a_secret_cut_short_at_the_end_is_redacted_too() {
        let mut r = Redactor::new();
        r.secret("s3cr3t-value");
        assert_eq!(r.redact(b"echo: s3cr3t-v", true), "echo: [redacted]");
        assert_eq!(r.redact(b"echo: s3cr3t-v", false), "echo: s3cr3t-v");
        assert_eq!(r.redact(b"echo: %73%33cr", true), "echo: [redacted]");
        assert_eq!(r.redact(b"echo: done", true), "echo: done");
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut r = Redactor::new();
        r.secret("s3cr3t-value");
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }
}
