use super::*;

#[test]
fn shell_words_are_quoted_only_when_needed() {
    assert_eq!(sh("https://x.example/a:run"), "https://x.example/a:run");
    assert_eq!(sh("a b"), "'a b'");
    assert_eq!(sh("it's"), r"'it'\''s'");
    assert_eq!(sh("x;rm -rf /"), "'x;rm -rf /'");
    assert_eq!(sh(""), "''");
    // zsh would expand `=ls` to /bin/ls.
    assert_eq!(sh("=ls"), "'=ls'");
}

#[test]
fn shell_words_never_carry_a_control_or_bidi_character_raw() {
    assert_eq!(sh("a\nb"), r"$'a\x0ab'");
    assert_eq!(sh("it's\x1b!"), r"$'it\x27s\x1b\x21'");
    assert_eq!(sh("\\\u{202e}"), r"$'\\\xe2\x80\xae'");
    assert_eq!(sh("\u{85}"), r"$'\xc2\x85'");
    for s in ["x\n# c\ntouch pwned", "\r", "\u{2028}", "\x1b[201~"] {
        assert!(!sh(s).contains(escape::is_unsafe), "{s:?}");
    }
}

#[test]
fn a_flag_like_resource_goes_after_the_end_of_flags() {
    let flags = [flag("project", "acme-prod"), flag("location", "us-east1")];
    assert_eq!(
        command("scheduler jobs describe", "j", &flags, ONE_LINE),
        "gcloud scheduler jobs describe j --project=acme-prod --location=us-east1"
    );
    assert_eq!(
        command("scheduler jobs describe", "--impersonate-service-account", &flags, ONE_LINE),
        "gcloud scheduler jobs describe --project=acme-prod --location=us-east1 -- --impersonate-service-account"
    );
    assert_eq!(flag("member", "-x y"), "--member='-x y'");
}

#[test]
fn hcl_strings_escape_templates_and_quotes() {
    assert_eq!(hcl(r#"a"b\c"#), r#""a\"b\\c""#);
    assert_eq!(hcl("${x} %{y} $z"), r#""$${x} %%{y} $z""#);
    assert_eq!(tf_name("1-job.x"), "_1-job_x");
}

#[test]
fn the_seed_case_gets_the_oauth_switch_and_nothing_else() {
    let key = JobKey::new("acme-prod", "us-east1", "commit-worker").unwrap();
    let auth = AuthFacts {
        source: crate::correlate::AuthSource::Inventory,
        token: "oidc".into(),
        service_account: Some("sa@acme-prod.iam.gserviceaccount.com".into()),
        audience: None,
        scope: None,
    };
    let uri = "https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-prod/jobs/commit-worker:run";
    let fix = render(
        Code::OidcTokenForGoogleApi,
        &Facts::new(&key, None, uri, TargetKind::GoogleApi, &auth),
    );
    assert!(fix.gcloud.starts_with("gcloud scheduler jobs update http commit-worker \\\n  --project=acme-prod \\\n  --location=us-east1"));
    assert!(fix
        .gcloud
        .contains("--oauth-service-account-email=sa@acme-prod.iam.gserviceaccount.com"));
    assert!(fix
        .gcloud
        .contains("--oauth-token-scope=https://www.googleapis.com/auth/cloud-platform"));
    for never in ["audience", "add-iam-policy-binding", "keys create", "oidc"] {
        assert!(!fix.gcloud.contains(never), "{never} in {}", fix.gcloud);
    }
    assert!(fix.terraform.contains("oauth_token {") && !fix.terraform.contains("oidc_token"));
}
