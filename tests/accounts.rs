//! Accounts, sessions, API keys and roles over real HTTP against an in-process server.

mod common;

use common::TestServer;
use common::api::{Answer, Browser, anonymous_post, call, code};
use easel::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Cheap hashing keeps these tests quick; one test checks the production settings.
use common::FAST;
const PASSWORD: &str = "correct horse battery";

fn open_signup() -> String {
    format!("{FAST}\n[signup]\nmode = \"open\"\n")
}

async fn make_account(s: &TestServer, email: &str, role: Role) -> String {
    s.make_account(email, role, PASSWORD).await
}

async fn new_key(b: &Browser, s: &TestServer, body: Value) -> (String, String) {
    let a = b.send(s, Method::POST, "/api/keys", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    (
        a.body["secret"].as_str().expect("secret").to_string(),
        a.body["key"]["id"].as_str().expect("id").to_string(),
    )
}

async fn with_key(s: &TestServer, m: Method, path: &str, key: &str) -> Answer {
    call(s, m, path, None, None, Some(key), None).await
}

#[actix_web::test]
async fn a_person_signs_up_and_manages_their_account_over_real_http() {
    let s = TestServer::start(&open_signup()).await;
    let form = json!({"email": "  Ada@Example.COM ", "name": "Ada", "password": PASSWORD});
    let a = anonymous_post(&s, "/api/auth/signup", form.clone()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        code(&a),
        "adult_required",
        "the 18+ confirmation is required"
    );

    let mut weak = form.clone();
    weak["adult"] = json!(true);
    weak["password"] = json!("Password2026!");
    let a = anonymous_post(&s, "/api/auth/signup", weak).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::BAD_REQUEST, "weak_password")
    );

    let mut ok = form.clone();
    ok["adult"] = json!(true);
    let a = anonymous_post(&s, "/api/auth/signup", ok.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["account"]["email"], "ada@example.com", "normalised");
    assert!(a.body["account"]["adult_attested_at"].is_string());
    assert!(a.body["account"].get("password_hash").is_none());
    let flags = a.set_cookie.clone().expect("a session cookie");
    for f in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(flags.contains(f), "{f} missing in {flags}");
    }
    assert!(!flags.contains("Secure"), "plain HTTP: no Secure flag");
    let mut ada = Browser::default();
    ada.adopt(&a);

    let again = anonymous_post(&s, "/api/auth/signup", ok).await;
    assert_eq!(
        (again.status, code(&again)),
        (StatusCode::CONFLICT, "email_taken")
    );

    let me = ada.send(&s, Method::GET, "/api/account", None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["account"]["name"], "Ada");

    // A state change without the page's CSRF token is refused, and changes nothing.
    let forged = Browser {
        cookie: ada.cookie.clone(),
        csrf: None,
    };
    let a = forged
        .send(
            &s,
            Method::PATCH,
            "/api/account",
            Some(json!({"name": "Mallory"})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (StatusCode::FORBIDDEN, "csrf_failed"));
    let a = ada
        .send(
            &s,
            Method::PATCH,
            "/api/account",
            Some(json!({"name": "Ada L.", "company": "Analytical"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["name"], "Ada L.");
    assert_eq!(a.body["company"], "Analytical");

    // Changing the email needs the password.
    let a = ada
        .send(
            &s,
            Method::POST,
            "/api/account/email",
            Some(json!({"email": "ada@new.example", "password": "wrong horse battery"})),
        )
        .await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "wrong_password")
    );
    let a = ada
        .send(
            &s,
            Method::POST,
            "/api/account/email",
            Some(json!({"email": "ada@new.example", "password": PASSWORD})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["email"], "ada@new.example");

    // A second browser; the list shows both, and marks the current one.
    let other = Browser::login(&s, "ada@new.example", PASSWORD).await;
    let list = ada
        .send(&s, Method::GET, "/api/account/sessions", None)
        .await;
    let sessions = list.body.as_array().expect("list").clone();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|x| x["current"] == true).count(), 1);

    // A password change ends every session; this browser gets a fresh one.
    let a = ada
        .send(
            &s,
            Method::POST,
            "/api/account/password",
            Some(json!({"current_password": PASSWORD, "new_password": "purple giraffe orbit"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let old = ada.clone();
    ada.adopt(&a);
    assert_ne!(old.cookie, ada.cookie);
    for gone in [&old, &other] {
        let r = gone.send(&s, Method::GET, "/api/account", None).await;
        assert_eq!(
            (r.status, code(&r)),
            (StatusCode::UNAUTHORIZED, "session_ended")
        );
    }
    assert_eq!(
        ada.send(&s, Method::GET, "/api/account", None).await.status,
        StatusCode::OK
    );

    // Sign out everywhere.
    let third = Browser::login(&s, "ada@new.example", "purple giraffe orbit").await;
    let a = ada
        .send(&s, Method::DELETE, "/api/account/sessions", None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(
        a.set_cookie.is_some_and(|c| c.contains("easel_session=;")),
        "the cookie is cleared"
    );
    for gone in [&ada, &third] {
        let r = gone.send(&s, Method::GET, "/api/account", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    s.stop().await;
}

#[actix_web::test]
async fn sign_up_follows_the_configured_mode_and_invites_work_once() {
    let closed = TestServer::start(FAST).await;
    let form = json!({"email": "b@example.com", "name": "B", "password": PASSWORD, "adult": true});
    let a = anonymous_post(&closed, "/api/auth/signup", form.clone()).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "signup_closed")
    );
    let opts = Browser::default()
        .send(&closed, Method::GET, "/api/auth/options", None)
        .await;
    assert_eq!(opts.body, json!({"signup": "closed", "setup_needed": true}));
    closed.stop().await;

    let s = TestServer::start(&format!(
        "{FAST}\n[signup]\nmode = \"invite\"\ninvite_ttl = \"1h\"\n"
    ))
    .await;
    make_account(&s, "root@example.com", Role::Admin).await;
    let admin = Browser::login(&s, "root@example.com", PASSWORD).await;
    let a = anonymous_post(&s, "/api/auth/signup", form.clone()).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "invite_required")
    );

    let inv = admin
        .send(
            &s,
            Method::POST,
            "/api/admin/invites",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(inv.status, StatusCode::CREATED, "{}", inv.body);
    let token = inv.body["token"].as_str().expect("token").to_string();
    assert!(
        inv.body["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("#/signup?invite={token}")))
    );
    let listed = admin
        .send(&s, Method::GET, "/api/admin/invites", None)
        .await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    assert!(
        !listed.body.to_string().contains(&token),
        "the list never shows the link again"
    );

    let mut with = form.clone();
    with["invite"] = json!(token);
    let a = anonymous_post(&s, "/api/auth/signup", with.clone()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["account"]["role"], "admin", "the invite's role");
    with["email"] = json!("c@example.com");
    let a = anonymous_post(&s, "/api/auth/signup", with).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::BAD_REQUEST, "invite_invalid"),
        "single use"
    );

    let pinned = admin
        .send(
            &s,
            Method::POST,
            "/api/admin/invites",
            Some(json!({"email": "d@example.com"})),
        )
        .await;
    let mut wrong = form.clone();
    wrong["email"] = json!("e@example.com");
    wrong["invite"] = pinned.body["token"].clone();
    let a = anonymous_post(&s, "/api/auth/signup", wrong).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::BAD_REQUEST, "invite_email_mismatch")
    );
    let id = pinned.body["invite"]["id"].as_str().expect("id");
    let a = admin
        .send(
            &s,
            Method::DELETE,
            &format!("/api/admin/invites/{id}"),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[actix_web::test]
async fn api_keys_authenticate_and_bad_keys_are_refused_with_clear_reasons() {
    let s = TestServer::start(FAST).await;
    make_account(&s, "admin@example.com", Role::Admin).await;
    make_account(&s, "m@example.com", Role::Member).await;
    let admin = Browser::login(&s, "admin@example.com", PASSWORD).await;
    let member = Browser::login(&s, "m@example.com", PASSWORD).await;

    let (key, id) = new_key(&member, &s, json!({"name": "ci"})).await;
    assert!(key.starts_with(&format!("easel_sk_{id}_")), "{key}");
    let me = with_key(&s, Method::GET, "/api/account", &key).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["account"]["email"], "m@example.com");
    assert!(me.body["csrf_token"].is_null(), "keys need no CSRF token");

    let listed = member.send(&s, Method::GET, "/api/keys", None).await;
    assert_eq!(listed.body[0]["id"], id.as_str());
    assert_eq!(
        listed.body[0]["scopes"],
        json!(["alt_text", "chat", "images", "skills", "assets"])
    );
    assert!(
        listed.body[0]["last_used_at"].is_string(),
        "last use is shown"
    );
    assert!(
        !listed.body.to_string().contains(&key[26..]),
        "the secret is never shown again"
    );

    // Malformed, mistyped and unknown keys.
    let last = if key.ends_with('0') { '1' } else { '0' };
    let mistyped = format!("{}{last}", &key[..key.len() - 1]);
    for bad in [
        "nope",
        "easel_sk_",
        &mistyped,
        "easel_sk_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let a = with_key(&s, Method::GET, "/api/account", bad).await;
        assert_eq!(
            (a.status, code(&a)),
            (StatusCode::UNAUTHORIZED, "invalid_api_key"),
            "{bad}"
        );
    }
    // API keys cannot manage keys or accounts.
    let a = with_key(&s, Method::POST, "/api/keys", &key).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "session_required")
    );

    // Scopes: admin reads need admin_read, named in the refusal.
    let a = member
        .send(
            &s,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "x", "scopes": ["admin_read"]})),
        )
        .await;
    assert_eq!((a.status, code(&a)), (StatusCode::FORBIDDEN, "admin_only"));
    let (plain, _) = new_key(&admin, &s, json!({"name": "plain"})).await;
    let a = with_key(&s, Method::GET, "/api/admin/users", &plain).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::FORBIDDEN, "missing_scope")
    );
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("admin_read")),
        "{}",
        a.body
    );
    let (reader, _) = new_key(
        &admin,
        &s,
        json!({"name": "audit", "scopes": ["admin_read"]}),
    )
    .await;
    let a = with_key(&s, Method::GET, "/api/admin/users", &reader).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.as_array().map(Vec::len), Some(2));

    // Requests-per-minute limit.
    let (limited, _) = new_key(&member, &s, json!({"name": "slow", "rpm": 2})).await;
    for _ in 0..2 {
        assert_eq!(
            with_key(&s, Method::GET, "/api/account", &limited)
                .await
                .status,
            StatusCode::OK
        );
    }
    let a = with_key(&s, Method::GET, "/api/account", &limited).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(a.retry_after.is_some(), "Retry-After is sent");

    // Expiry.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let at = soon
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let (expiring, _) = new_key(&member, &s, json!({"name": "brief", "expires_at": at})).await;
    assert_eq!(
        with_key(&s, Method::GET, "/api/account", &expiring)
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let a = with_key(&s, Method::GET, "/api/account", &expiring).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::UNAUTHORIZED, "expired_api_key")
    );
    let a = member
        .send(
            &s,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "past", "expires_at": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    // Revocation works at once.
    let a = member
        .send(&s, Method::DELETE, &format!("/api/keys/{id}"), None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = with_key(&s, Method::GET, "/api/account", &key).await;
    assert_eq!(
        (a.status, code(&a)),
        (StatusCode::UNAUTHORIZED, "invalid_api_key")
    );
    s.stop().await;
}

#[actix_web::test]
async fn members_reach_only_their_own_objects_and_no_admin_endpoint() {
    let s = TestServer::start(FAST).await;
    make_account(&s, "admin@example.com", Role::Admin).await;
    let b_id = make_account(&s, "b@example.com", Role::Member).await;
    make_account(&s, "a@example.com", Role::Member).await;
    let a = Browser::login(&s, "a@example.com", PASSWORD).await;
    let b = Browser::login(&s, "b@example.com", PASSWORD).await;
    let (a_key, _) = new_key(&a, &s, json!({"name": "a"})).await;
    let (b_key, b_key_id) = new_key(&b, &s, json!({"name": "b"})).await;
    let b_sessions = b.send(&s, Method::GET, "/api/account/sessions", None).await;
    let b_session = b_sessions.body[0]["id"].as_str().expect("id").to_string();

    // B's objects, from A: not found, and still there afterwards.
    for (m, path) in [
        (Method::DELETE, format!("/api/keys/{b_key_id}")),
        (Method::DELETE, format!("/api/account/sessions/{b_session}")),
    ] {
        let r = a.send(&s, m.clone(), &path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {path}: {}", r.body);
    }
    assert_eq!(
        with_key(&s, Method::GET, "/api/account", &b_key)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        b.send(&s, Method::GET, "/api/account", None).await.status,
        StatusCode::OK
    );
    let listed = a.send(&s, Method::GET, "/api/keys", None).await;
    assert!(
        !listed.body.to_string().contains(&b_key_id),
        "A's list holds only A's keys"
    );

    // Admin endpoints, by session and by key: refused, nothing changed.
    let admin_calls = [
        (Method::GET, "/api/admin/users".to_string(), None),
        (
            Method::POST,
            "/api/admin/users".into(),
            Some(json!({"email": "x@example.com", "name": "X", "password": PASSWORD})),
        ),
        (
            Method::PATCH,
            format!("/api/admin/users/{b_id}"),
            Some(json!({"role": "admin"})),
        ),
        (
            Method::POST,
            format!("/api/admin/users/{b_id}/password"),
            Some(json!({"password": "some other secret"})),
        ),
        (Method::GET, "/api/admin/invites".into(), None),
        (Method::POST, "/api/admin/invites".into(), Some(json!({}))),
        (
            Method::DELETE,
            "/api/admin/invites/0011223344556677".into(),
            None,
        ),
        (Method::GET, "/api/admin/audit".into(), None),
        (Method::GET, "/api/admin/access-log".into(), None),
    ];
    for (m, path, body) in admin_calls {
        let r = a.send(&s, m.clone(), &path, body.clone()).await;
        assert_eq!(
            (r.status, code(&r)),
            (StatusCode::FORBIDDEN, "admin_only"),
            "{m} {path}"
        );
        let r = call(&s, m.clone(), &path, None, None, Some(&a_key), body).await;
        assert!(
            matches!(r.status, StatusCode::FORBIDDEN),
            "{m} {path} by key: {}",
            r.status
        );
    }
    let b_me = b.send(&s, Method::GET, "/api/account", None).await;
    assert_eq!(b_me.body["account"]["role"], "member");
    // No credentials at all.
    let r = call(&s, Method::GET, "/api/keys", None, None, None, None).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    s.stop().await;
}

#[actix_web::test]
async fn admins_manage_users_and_a_reset_forces_a_new_password() {
    let s = TestServer::start(FAST).await;
    let admin_id = make_account(&s, "admin@example.com", Role::Admin).await;
    let admin = Browser::login(&s, "admin@example.com", PASSWORD).await;
    let a = admin
        .send(
            &s,
            Method::POST,
            "/api/admin/users",
            Some(
                json!({"email": "new@example.com", "name": "New", "password": "temporary pass 1"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["must_change_password"], true);
    let id = a.body["id"].as_str().expect("id").to_string();

    // First sign-in: a new password (and the 18+ confirmation) come before anything else.
    let mut user = Browser::login(&s, "new@example.com", "temporary pass 1").await;
    let r = user.send(&s, Method::GET, "/api/keys", None).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::FORBIDDEN, "password_change_required")
    );
    let change =
        json!({"current_password": "temporary pass 1", "new_password": "my own long secret"});
    let r = user
        .send(
            &s,
            Method::POST,
            "/api/account/password",
            Some(change.clone()),
        )
        .await;
    assert_eq!(code(&r), "adult_required");
    let mut change = change;
    change["adult"] = json!(true);
    let r = user
        .send(&s, Method::POST, "/api/account/password", Some(change))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    user.adopt(&r);
    assert_eq!(
        user.send(&s, Method::GET, "/api/keys", None).await.status,
        StatusCode::OK
    );
    let (key, _) = new_key(&user, &s, json!({"name": "k"})).await;

    // An admin reset ends the sessions and asks for a change again.
    let r = admin
        .send(
            &s,
            Method::POST,
            &format!("/api/admin/users/{id}/password"),
            Some(json!({"password": "reset by admin 2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        user.send(&s, Method::GET, "/api/account", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let again = Browser::login(&s, "new@example.com", "reset by admin 2").await;
    let me = again.send(&s, Method::GET, "/api/account", None).await;
    assert_eq!(me.body["account"]["must_change_password"], true);

    // Role change, then disabling: keys stop at once, sessions end, sign-in refused.
    let r = admin
        .send(
            &s,
            Method::PATCH,
            &format!("/api/admin/users/{id}"),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.body["role"], "admin");
    let r = admin
        .send(
            &s,
            Method::PATCH,
            &format!("/api/admin/users/{id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = with_key(&s, Method::GET, "/api/account", &key).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::FORBIDDEN, "account_disabled")
    );
    assert_eq!(
        again
            .send(&s, Method::GET, "/api/account", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = anonymous_post(
        &s,
        "/api/auth/login",
        json!({"email": "new@example.com", "password": "reset by admin 2"}),
    )
    .await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::FORBIDDEN, "account_disabled")
    );

    // The last active admin cannot step down.
    let r = admin
        .send(
            &s,
            Method::PATCH,
            &format!("/api/admin/users/{admin_id}"),
            Some(json!({"role": "member"})),
        )
        .await;
    assert_eq!((r.status, code(&r)), (StatusCode::CONFLICT, "last_admin"));

    let audit = admin.send(&s, Method::GET, "/api/admin/audit", None).await;
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for expected in [
        "account_created",
        "sign_in",
        "password_changed",
        "key_created",
        "password_reset",
        "role_changed",
        "account_disabled",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert!(
        !audit.body.to_string().contains("127.0.0.1"),
        "no client address in the audit log"
    );
    s.stop().await;
}

#[actix_web::test]
async fn failed_sign_ins_slow_down_then_lock_and_never_tell_which_emails_exist() {
    let s = TestServer::start(&format!(
        "{FAST}lock_after = 5\nip_lock_after = 50\nlock_for = \"1m\"\n"
    ))
    .await;
    make_account(&s, "known@example.com", Role::Admin).await;
    let attempt = |email: &'static str, password: &'static str| {
        let s = &s;
        async move {
            anonymous_post(
                s,
                "/api/auth/login",
                json!({"email": email, "password": password}),
            )
            .await
        }
    };
    let unknown = attempt("ghost@example.com", "wrong horse battery").await;
    let wrong = attempt("known@example.com", "wrong horse battery").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        (unknown.status, &unknown.body),
        (wrong.status, &wrong.body),
        "same status and body"
    );
    assert_eq!(code(&wrong), "invalid_credentials");

    attempt("known@example.com", "wrong horse battery").await;
    attempt("known@example.com", "wrong horse battery").await;
    // Three failures: now each try must wait, even with the right password.
    let r = attempt("known@example.com", PASSWORD).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    attempt("known@example.com", "wrong horse battery").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = attempt("known@example.com", "wrong horse battery").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the fifth failure");
    let r = attempt("known@example.com", PASSWORD).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::TOO_MANY_REQUESTS, "sign_in_locked")
    );
    assert!(
        r.retry_after
            .as_deref()
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s > 50))
    );

    // The same for an email without an account: same answers, same lock.
    for _ in 0..2 {
        attempt("ghost@example.com", "wrong horse battery").await;
    }
    let r = attempt("ghost@example.com", "wrong horse battery").await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
    );

    // The lock is audited, without the client address.
    let services = s.running.as_ref().expect("running").services();
    let admin_id = services
        .accounts
        .find_by_email("known@example.com")
        .await
        .expect("admin")
        .id;
    let scopes = Some(vec![easel::auth::Scope::AdminRead]);
    let new = easel::keys::NewKey {
        name: "audit".into(),
        scopes,
        ..Default::default()
    };
    let (_, reader) = services
        .keys
        .create(&admin_id, Role::Admin, new, None)
        .await
        .expect("key");
    let audit = with_key(&s, Method::GET, "/api/admin/audit", reader.expose()).await;
    let locks: Vec<&Value> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "sign_in_locked")
        .collect();
    assert_eq!(locks.len(), 1, "{}", audit.body);
    assert_eq!(locks[0]["target"], admin_id.as_str());
    assert!(!audit.body.to_string().contains("127.0.0.1"));
    // The client address is in the access log instead.
    let access = with_key(&s, Method::GET, "/api/admin/access-log", reader.expose()).await;
    let failed: Vec<&Value> = access
        .body
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "sign_in_failed")
        .collect();
    assert_eq!(
        failed.len(),
        8,
        "one per refused password, none for throttled tries: {}",
        access.body
    );
    assert!(failed.iter().all(|e| e["ip"] == "127.0.0.1"));
    assert!(failed.iter().any(|e| e["account"] == admin_id.as_str()));
    assert!(
        failed.iter().any(|e| e["account"].is_null()),
        "unknown emails too"
    );
    s.stop().await;
}

#[actix_web::test]
async fn an_unknown_email_takes_as_long_as_a_wrong_password() {
    // Production hashing settings, so the hash dominates the time of a sign-in.
    let s = TestServer::start("\n[auth]\nlock_after = 100\nip_lock_after = 1000\n").await;
    const ROUNDS: usize = 5;
    for i in 0..ROUNDS {
        make_account(&s, &format!("known{i}@example.com"), Role::Member).await;
    }
    let time_of = |email: String| {
        let s = &s;
        async move {
            let started = Instant::now();
            let r = anonymous_post(
                s,
                "/api/auth/login",
                json!({"email": email, "password": "wrong horse battery"}),
            )
            .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            started.elapsed()
        }
    };
    time_of("warm@example.com".into()).await;
    // Interleaved, one try per email (so no throttling delay), compared by their
    // fastest run: the floor is the work done, and other tests' load only adds to it.
    let mut unknown = Vec::new();
    let mut known = Vec::new();
    for i in 0..ROUNDS {
        unknown.push(time_of(format!("ghost{i}@example.com")).await);
        known.push(time_of(format!("known{i}@example.com")).await);
    }
    let fastest = |v: &[Duration]| v.iter().min().copied().unwrap_or_default().as_secs_f64();
    let (u, k) = (fastest(&unknown), fastest(&known));
    assert!(
        u > k * 0.5 && k > u * 0.5,
        "fastest unknown email {u:.4}s vs fastest wrong password {k:.4}s"
    );
    s.stop().await;
}

#[actix_web::test]
async fn a_session_ends_after_the_idle_time_but_use_keeps_it_alive() {
    let s = TestServer::start(&format!(
        "{FAST}session_idle = \"3s\"\nsession_max = \"1h\"\n"
    ))
    .await;
    make_account(&s, "idle@example.com", Role::Member).await;
    let b = Browser::login(&s, "idle@example.com", PASSWORD).await;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = b.send(&s, Method::GET, "/api/account", None).await;
        assert_eq!(r.status, StatusCode::OK, "used within the idle time");
    }
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let r = b.send(&s, Method::GET, "/api/account", None).await;
    assert_eq!(
        (r.status, code(&r)),
        (StatusCode::UNAUTHORIZED, "session_ended")
    );
    s.stop().await;
}
