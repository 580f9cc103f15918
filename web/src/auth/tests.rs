//! Tokens, cookies, origins and the login limiter.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn token_roundtrip_and_tamper() {
    let s = TokenSigner::new("k", Duration::from_secs(60));
    let t = s.issue();
    assert!(s.verify(&t).is_ok());
    let other = TokenSigner::new("other", Duration::from_secs(60));
    assert!(matches!(other.verify(&t), Err(AuthError::BadSignature)));
    let mut bad = t.clone();
    bad.insert(0, 'x');
    assert!(s.verify(&bad).is_err());
    let old = s.issue_with(1, 2);
    assert!(matches!(s.verify(&old), Err(AuthError::Expired)));
    let claims = s.verify(&t).unwrap();
    s.revoke(&claims);
    assert!(matches!(s.verify(&t), Err(AuthError::Revoked)));
}

#[test]
fn a_new_admin_password_ends_every_session() {
    let ttl = Duration::from_secs(60);
    let old = TokenSigner::for_admin("k".repeat(40).as_str(), "$2b$12$old", ttl);
    let t = old.issue();
    let same = TokenSigner::for_admin("k".repeat(40).as_str(), "$2b$12$old", ttl);
    assert!(same.verify(&t).is_ok(), "a restart keeps sessions");
    let new = TokenSigner::for_admin("k".repeat(40).as_str(), "$2b$12$new", ttl);
    assert!(matches!(new.verify(&t), Err(AuthError::BadSignature)));
    let claims = same.verify(&t).unwrap();
    assert!(same.still_valid(&claims));
    same.revoke(&claims);
    assert!(!same.still_valid(&claims));
}

#[test]
fn revoked_tokens_stay_revoked_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state/revoked_tokens.json");
    let s = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
    let (t, kept) = (s.issue(), s.issue());
    s.revoke(&s.verify(&t).unwrap());
    assert!(file.is_file());
    // A new signer (deployex restarted) with the same key and file.
    let s2 = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
    assert!(matches!(s2.verify(&t), Err(AuthError::Revoked)));
    assert!(s2.verify(&kept).is_ok());
    // A corrupt file fails closed: no token is valid (not even the
    // revoked one coming back), until the file reads again.
    let good = std::fs::read(&file).unwrap();
    std::fs::write(&file, b"{\"trunc").unwrap();
    let s3 = TokenSigner::new("k", Duration::from_secs(60)).with_revocation_file(file.clone());
    assert!(matches!(
        s3.verify(&t),
        Err(AuthError::RevocationUnavailable)
    ));
    assert!(matches!(
        s3.verify(&kept),
        Err(AuthError::RevocationUnavailable)
    ));
    assert!(!s3.available());
    std::fs::write(&file, good).unwrap();
    assert!(s3.verify(&kept).is_ok());
    assert!(matches!(s3.verify(&t), Err(AuthError::Revoked)));
}

#[test]
fn origin_check() {
    let allowed = public_origins(None, "deploy.example.com", 5001).unwrap();
    assert_eq!(allowed, vec!["https://deploy.example.com".to_string()]);
    assert!(origin_allowed(
        Some("https://deploy.example.com"),
        None,
        &allowed
    ));
    assert!(origin_allowed(
        Some("HTTPS://Deploy.Example.com:443"),
        None,
        &allowed
    ));
    assert!(origin_allowed(
        None,
        Some("https://deploy.example.com/x?y"),
        &allowed
    ));
    for bad in [
        "http://deploy.example.com",
        "https://deploy.example.com:8443",
        "https://deploy.example.com.evil",
        "https://evil.example/deploy.example.com",
        "https://x@deploy.example.com",
        "null",
    ] {
        assert!(!origin_allowed(Some(bad), None, &allowed), "{bad}");
    }
    assert!(!origin_allowed(None, None, &allowed));
    let local = public_origins(None, "localhost", 5001).unwrap();
    assert_eq!(
        local,
        vec![
            "http://localhost:5001".to_string(),
            "http://127.0.0.1:5001".to_string()
        ]
    );
    assert!(!origin_allowed(Some("http://localhost:5002"), None, &local));
    let url = public_origins(Some("https://d.example:8443/"), "localhost", 5001).unwrap();
    assert_eq!(url, vec!["https://d.example:8443".to_string()]);
    assert!(public_origins(Some("ftp://x"), "localhost", 1).is_err());
}

#[test]
fn ipv6_clients_are_keyed_per_64() {
    let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(client_key(a), client_key(b));
    assert_ne!(client_key(a), client_key(c));
    let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
    assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    let l = LoginLimiter::default();
    for _ in 0..MAX_FAILURES {
        assert!(l.begin(a).is_some());
    }
    assert!(l.begin(b).is_none(), "same /64");
    assert!(l.begin(c).is_some(), "another /64");
}

#[test]
fn a_successful_attempt_does_not_count() {
    let l = LoginLimiter::default();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    for _ in 0..20 {
        let a = l.begin(ip).unwrap();
        l.succeeded(a);
    }
    assert!(l.begin(ip).is_some());
}

#[test]
fn header_parsing() {
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
    assert_eq!(
        session_cookie("a=b; deployex_session=t1", COOKIE_NAME),
        Some("t1")
    );
    assert_eq!(session_cookie("a=b", COOKIE_NAME), None);
    assert_eq!(
        session_cookie("deployex_session=t1", SECURE_COOKIE_NAME),
        None
    );
}
