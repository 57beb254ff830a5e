//! Every human-facing rendering (Slack, email, PagerDuty) shows a log entry's or a job config's
//! control and bidi characters as escapes: a URL, a status, a service account or an audience with
//! ESC, CR, LF, NEL or U+202E can neither drive a terminal, nor add a line or a paragraph, nor
//! reorder what people read. The fixes and the diagnosis's detail keep their own line breaks,
//! and no other.

mod common;

use std::collections::BTreeMap;

use common::{firing, resolved};
use schedwatch_sinks::escape::is_unsafe;
use schedwatch_sinks::{email, pagerduty, slack, Alert};
use serde_json::Value;

/// What an entry's writer or a config's author can put in a value.
const EVIL: &str =
    "https://x.example/\x1b]0;pwned\x07\r\n*FIRING* forged line\u{85}\u{202e}txt.exe\x1b[2J";

fn hostile(mut alert: Alert) -> Alert {
    alert.target.url = EVIL.into();
    alert.failure.status = Some(format!("UNAUTHENTICATED{EVIL}"));
    alert.auth.service_account = Some(format!("sa{EVIL}@p.iam.gserviceaccount.com"));
    alert.auth.audience = Some(EVIL.into());
    // The detail is schedwatch's own prose (its values arrive escaped): its line breaks stay,
    // anything else is escaped.
    alert.diagnosis.detail = "First line\x1b[2J.\nSecond line.".into();
    // So is the fix (its values are shell words, without a raw line break): its line breaks
    // stay, anything else is escaped.
    alert.fix.gcloud = "# about \x1b]0;pwned\x07\ngcloud x \\\n  --y=\u{202e}v\rw".into();
    alert
}

/// Every unsafe character in `text` other than line feeds.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n' && is_unsafe(c))
        .collect()
}

/// Every string in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[test]
fn slack_shows_controls_as_escapes() {
    for alert in [hostile(firing()), hostile(resolved())] {
        let message = slack::render(&alert);
        let mut texts = Vec::new();
        strings(&message, &mut texts);
        for t in &texts {
            assert!(raw_controls(t).is_empty(), "{:?} in {t:?}", raw_controls(t));
            assert!(
                !t.lines().any(|l| l.starts_with("*FIRING* forged")),
                "a forged line in {t:?}"
            );
        }
        let all = texts.join("\n");
        assert!(
            all.contains(r"\x1b]0;pwned\x07\r\n*FIRING* forged line\u{85}\u{202e}txt.exe"),
            "{all}"
        );
    }
    // The fix and the detail keep their own lines, and their values their escapes.
    let message = slack::render(&hostile(firing())).to_string();
    assert!(
        message.contains(r"First line\\x1b[2J.\nSecond line."),
        "{message}"
    );
    assert!(
        message.contains(r"# about \\x1b]0;pwned\\x07\ngcloud x \\\n  --y=\\u{202e}v\\rw"),
        "{message}"
    );
}

#[test]
fn email_shows_controls_as_escapes() {
    for alert in [hostile(firing()), hostile(resolved())] {
        let subject = email::render_subject(&alert);
        let text = email::render_text(&alert);
        let html = email::render_html(&alert);
        for (what, body) in [("subject", &subject), ("text", &text), ("html", &html)] {
            assert!(
                raw_controls(body).is_empty(),
                "{what}: {:?}",
                raw_controls(body)
            );
            assert!(
                !body.lines().any(|l| l.starts_with("*FIRING* forged")),
                "{what}: a forged line:\n{body}"
            );
        }
        assert!(
            text.contains(
                r"https://x.example/\x1b]0;pwned\x07\r\n*FIRING* forged line\u{85}\u{202e}txt.exe"
            ),
            "{text}"
        );
    }
    let text = email::render_text(&hostile(firing()));
    assert!(text.contains("First line\\x1b[2J.\nSecond line."), "{text}");
    assert!(
        text.contains("    # about \\x1b]0;pwned\\x07\n    gcloud x \\\n      --y=\\u{202e}v\\rw"),
        "{text}"
    );
}

#[test]
fn pagerduty_shows_controls_as_escapes_and_keeps_the_fix_lines() {
    let alert = hostile(firing());
    let event = pagerduty::render(&alert, &BTreeMap::new());
    let mut texts = Vec::new();
    strings(&event, &mut texts);
    for t in &texts {
        assert!(raw_controls(t).is_empty(), "{:?} in {t:?}", raw_controls(t));
    }
    let details = &event["payload"]["custom_details"];
    assert_eq!(
        details["target"]["url"],
        r"https://x.example/\x1b]0;pwned\x07\r\n*FIRING* forged line\u{85}\u{202e}txt.exe\x1b[2J"
    );
    assert_eq!(
        details["diagnosis"]["detail"],
        "First line\\x1b[2J.\nSecond line."
    );
    let fix = details["fix"]["gcloud"].as_str().unwrap();
    assert_eq!(
        fix,
        "# about \\x1b]0;pwned\\x07\ngcloud x \\\n  --y=\\u{202e}v\\rw"
    );
    // A clean alert's details are the alert, exactly.
    let clean = firing();
    assert_eq!(
        pagerduty::render(&clean, &BTreeMap::new())["payload"]["custom_details"],
        serde_json::to_value(&clean).unwrap()
    );
}
