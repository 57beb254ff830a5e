use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::token::*;
use super::*;

/// A body that is already here.
fn body(b: &[u8]) -> std::future::Ready<Result<Bytes, BodyError>> {
    std::future::ready(Ok(Bytes::copy_from_slice(b)))
}

fn shared_fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/pubsub")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_envelope_reaches_the_processor_and_is_answered_after_its_ack() {
    let (tx, mut rx) = mpsc::channel(1);
    let push = PushReceiver::new(None, tx, Duration::from_secs(5));
    let envelope = shared_fixture("push_envelope_401.json");
    let processor = tokio::spawn(async move {
        let m = rx.recv().await.unwrap();
        let entry: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(entry["httpRequest"]["status"], 401);
        assert_eq!(m.message_id, "11873264598812345");
        m.ack.ack(&tokio::runtime::Handle::current());
        // Dropped unacked: the request is answered 503 and Pub/Sub sends it again.
        let m = rx.recv().await.unwrap();
        drop(m);
    });
    assert_eq!(push.handle(None, body(&envelope)).await, Answer::Acked);
    assert!(matches!(
        push.handle(None, body(&envelope)).await,
        Answer::Unavailable(_)
    ));
    processor.await.unwrap();
    assert!(matches!(
        push.handle(None, body(b"{}")).await,
        Answer::Skipped(_)
    ));
    assert!(matches!(
        push.handle(None, body(br#"{"message": {"data": "not base64!"}}"#))
            .await,
        Answer::Skipped(_)
    ));
}

#[tokio::test]
async fn unreadable_keys_are_our_fault_not_the_callers() {
    let pem = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/push/signer.pem"),
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("schedwatch-test-1".into());
    let claims = serde_json::json!({"aud": "a", "iss": "https://accounts.google.com", "exp": 4_000_000_000u64});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused.
    let verifier = TokenVerifier::new(PushConfig {
        audience: Some("a".into()),
        service_account: Some("s@p.iam.gserviceaccount.com".into()),
        jwks_url: "http://127.0.0.1:9/certs".into(),
        ..PushConfig::default()
    })
    .unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let push = PushReceiver::new(Some(verifier), tx, Duration::from_secs(1));
    let auth = format!("Bearer {token}");
    // 503: Pub/Sub sends the message again once the keys can be read.
    assert!(matches!(
        push.handle(Some(auth.as_bytes()), body(b"{}")).await,
        Answer::Unavailable(reason) if reason.contains("signing keys")
    ));
    assert!(matches!(
        push.handle(None, body(b"{}")).await,
        Answer::Unauthorized(_)
    ));
}

#[test]
fn token_checks_are_required_unless_explicitly_waived() {
    assert!(PushConfig::default().validate().is_err());
    let waived = PushConfig {
        allow_unauthenticated: true,
        ..PushConfig::default()
    };
    assert!(waived.validate().is_ok());
    let checked = PushConfig {
        audience: Some("https://schedwatch.example/pubsub/push".into()),
        service_account: Some("push@p.iam.gserviceaccount.com".into()),
        ..PushConfig::default()
    };
    assert!(checked.validate().is_ok());
    let no_account = PushConfig {
        service_account: None,
        ..checked
    };
    assert!(no_account.validate().is_err());
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR   abc  "] {
        assert_eq!(bearer(Some(value.as_bytes())).unwrap(), "abc", "{value:?}");
    }
    for value in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc", ""] {
        assert!(
            matches!(bearer(Some(value.as_bytes())), Err(TokenError::Missing(_))),
            "{value:?}"
        );
    }
    assert!(matches!(bearer(None), Err(TokenError::Missing(_))));
    assert!(matches!(
        bearer(Some(b"Bearer \xff\xfe")),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn tokens_from_the_future_or_longer_lived_than_googles_are_refused() {
    let now = 1_770_000_000;
    let claims = |iat: i64, exp: i64, nbf: Option<i64>| Claims {
        email: String::new(),
        email_verified: true,
        exp,
        iat,
        nbf,
    };
    // As Google mints them: an hour from issue; and a minute of clock skew either way.
    for ok in [
        claims(now, now + 3600, None),
        claims(now - 3000, now + 600, Some(now - 3000)),
        claims(now + 50, now + 3650, Some(now + 50)),
        claims(now - 3650, now - 50, None),
    ] {
        assert_eq!(ok.check_times(now), Ok(()), "{ok:?}");
    }
    let day = 86_400;
    for (what, bad) in [
        ("nbf a day ahead", claims(now, now + 3600, Some(now + day))),
        (
            "iat a year ahead",
            claims(now + 365 * day, now + 365 * day + 3600, None),
        ),
        ("exp a century ahead", claims(now, now + 36_500 * day, None)),
        ("a two-hour lifetime", claims(now - 3600, now + 3600, None)),
        ("exp over an hour ahead", claims(now + 60, now + 3700, None)),
        ("expired", claims(now - 7200, now - 3600, None)),
        ("i64 extremes", claims(i64::MIN, i64::MAX, Some(i64::MAX))),
    ] {
        assert!(bad.check_times(now).is_err(), "{what}: {bad:?}");
    }
}

#[test]
fn untrusted_values_are_cut_short_and_escaped_for_the_log() {
    assert_eq!(shown("rotated-away"), "rotated-away");
    assert_eq!(
        shown("a\nFORGED LINE\u{1b}[2J"),
        "a\\nFORGED LINE\\u{1b}[2J"
    );
    let huge = "x".repeat(200_000);
    let cut = shown(&huge);
    assert_eq!(cut.chars().count(), SHOWN_CHARS + 1);
    assert!(cut.ends_with('…'));
    assert!(!shown(&"\n".repeat(1000)).contains('\n'));
    assert_eq!(shown("evil\u{202e}gpj.exe é"), "evil\\u{202e}gpj.exe é");
}

#[test]
fn refusals_are_logged_once_a_window_per_reason_with_their_count() {
    let log = RefusalLog::default();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert_eq!(log.note("invalid token", false, at(0)), Some(1));
    for s in 1..=59 {
        assert_eq!(log.note("invalid token", false, at(s)), None);
    }
    // Another reason has a window of its own.
    assert_eq!(log.note("no bearer token", false, at(30)), Some(1));
    assert_eq!(log.unlogged(), vec![("invalid token", false, 59)]);
    assert_eq!(log.note("invalid token", false, at(60)), Some(60));
    assert_eq!(log.note("invalid token", false, at(61)), None);
    assert_eq!(log.unlogged(), vec![("invalid token", false, 1)]);
}

/// A key set holding `signer.pem`'s public key as `kid`.
fn one_key(kid: &str) -> HashMap<String, DecodingKey> {
    let jwks = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/push/jwks.json"),
    )
    .unwrap();
    let set: JwkSet = serde_json::from_slice(&jwks).unwrap();
    HashMap::from([(kid.to_owned(), DecodingKey::from_jwk(&set.keys[0]).unwrap())])
}

#[test]
fn known_keys_never_wait_and_reads_are_spaced() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let read = |l: Lookup| matches!(l, Lookup::Read);
    let found = |l: Lookup| matches!(l, Lookup::Found { refresh: false, .. });
    let mut keys = Keys::default();
    assert!(read(keys.lookup("k1", at(0))), "nothing read yet");
    keys.store(Err("down".into()), at(0));
    // No key at all and the read failed: our fault, remembered for FAILURE_MEMORY.
    assert!(matches!(
        keys.lookup("k1", at(14)),
        Lookup::Refused(TokenError::Keys(_))
    ));
    assert!(read(keys.lookup("k1", at(15))));
    keys.store(Ok(one_key("k1")), at(15));
    assert!(found(keys.lookup("k1", at(16))));
    // An unknown key id is not a read again within MIN_REFRESH of the last one…
    assert!(matches!(
        keys.lookup("forged", at(24)),
        Lookup::Refused(TokenError::UnknownKey(_))
    ));
    assert!(read(keys.lookup("forged", at(25))));
    // … and after a failed read, not within FAILURE_MEMORY; the known key still works.
    keys.store(Err("hangs".into()), at(35));
    assert!(matches!(
        keys.lookup("forged", at(49)),
        Lookup::Refused(TokenError::UnknownKey(_))
    ));
    assert!(found(keys.lookup("k1", at(49))));
    assert!(read(keys.lookup("forged", at(50))));
    // Old keys are still used, and read again in the background.
    assert!(matches!(
        keys.lookup("k1", at(15 + 3601)),
        Lookup::Found { refresh: true, .. }
    ));
}

#[tokio::test]
async fn the_body_is_not_read_before_the_token_passes() {
    let verifier = TokenVerifier::new(PushConfig {
        audience: Some("a".into()),
        service_account: Some("s@p.iam.gserviceaccount.com".into()),
        jwks_url: "http://127.0.0.1:9/certs".into(),
        ..PushConfig::default()
    })
    .unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let push = PushReceiver::new(Some(verifier), tx, Duration::from_secs(1));
    let huge = format!("Bearer {}", "A".repeat(200_000));
    for authorization in [
        None,
        Some(b"Basic dXNlcjpwYXNz".as_slice()),
        Some(huge.as_bytes()),
    ] {
        let unread = std::future::poll_fn(|_| -> std::task::Poll<Result<Bytes, BodyError>> {
            panic!("the body was read before the token was checked")
        });
        let answer = push.handle(authorization, unread).await;
        let Answer::Unauthorized(reason) = answer else {
            panic!("{answer:?}");
        };
        assert!(reason.len() < 100 && !reason.contains("AAAA"), "{reason}");
    }
}
