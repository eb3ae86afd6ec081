//! Accounts and keys from the command line, with the server stopped and running, and
//! the promise that secrets stay out of logs, answers and the database file.

mod common;

use common::{Process, run_with_stdin, write_config};
use serde_json::{Value, json};
use std::path::Path;

const ARGON2: &str =
    "\n[auth]\nargon2_memory_kib = 8192\nargon2_iterations = 1\nargon2_parallelism = 1\n";

/// Runs `easel --config CFG ARGS...` with `stdin`.
fn cli(cfg: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    run_with_stdin(&all, stdin)
}

fn secret_part(key: &str) -> String {
    key.rsplit('_').next().expect("secret").to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

async fn get(url: &str, bearer: &str) -> (u16, Value) {
    let res = common::http()
        .get(url)
        .bearer_auth(bearer)
        .send()
        .await
        .expect("get");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn login(url: &str, email: &str, password: &str) -> (u16, Value) {
    let res = common::http()
        .post(url)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("post");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn users_and_keys_are_made_from_the_cli_with_the_server_stopped_and_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), ARGON2);
    let cfg = s(&config);
    let admin_pw = "first admin passphrase";

    // Stopped: the CLI opens the database itself (and makes the master key).
    let (code, out, err) = cli(
        cfg,
        &[
            "user",
            "create",
            "--email",
            "Root@Example.com",
            "--admin",
            "--password-stdin",
        ],
        &format!("{admin_pw}\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("created admin account root@example.com"),
        "{out}"
    );
    assert!(out.contains("opened the database directly"), "{out}");

    let (code, _, err) = cli(
        cfg,
        &[
            "user",
            "create",
            "--email",
            "root@example.com",
            "--password-stdin",
        ],
        "another passphrase\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = cli(
        cfg,
        &[
            "user",
            "create",
            "--email",
            "weak@example.com",
            "--password-stdin",
        ],
        "password1234\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("attackers try"), "{err}");

    let (code, stopped_key, err) = cli(
        cfg,
        &[
            "key",
            "create",
            "--email",
            "root@example.com",
            "--name",
            "deploy",
            "--expires-days",
            "30",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let stopped_key = stopped_key
        .strip_suffix('\n')
        .expect("one line")
        .to_string();
    assert!(
        stopped_key.starts_with("easel_sk_") && !stopped_key.contains(' '),
        "only the key on stdout: {stopped_key:?}"
    );

    // Running: the same commands go through the admin socket and act at once.
    let server = Process::serve(&config, &[("EASEL_LOG__LEVEL", "debug")]);
    let (status, me) = get(&server.url("/api/account"), &stopped_key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["account"]["role"], "admin");

    let member_pw = "member passphrase one";
    let (code, out, err) = cli(
        cfg,
        &[
            "user",
            "create",
            "--email",
            "m@example.com",
            "--name",
            "Mia",
            "--password-stdin",
        ],
        &format!("{member_pw}\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("via the running server's admin socket"),
        "{out}"
    );
    let (code, running_key, err) = cli(
        cfg,
        &[
            "key",
            "create",
            "--email",
            "m@example.com",
            "--name",
            "laptop",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let running_key = running_key.trim_end().to_string();
    let (status, me) = get(&server.url("/api/account"), &running_key).await;
    assert_eq!(
        status, 200,
        "a key made through the socket works at once: {me}"
    );
    assert_eq!(me["account"]["name"], "Mia");

    let reset_pw = "reset by the admin cli";
    let (code, out, err) = cli(
        cfg,
        &[
            "user",
            "reset-password",
            "--email",
            "m@example.com",
            "--password-stdin",
        ],
        &format!("{reset_pw}\n"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("new password is due"), "{out}");
    let (status, _) = login(&server.url("/api/auth/login"), "m@example.com", member_pw).await;
    assert_eq!(status, 401, "the old password is gone");
    let (status, body) = login(&server.url("/api/auth/login"), "m@example.com", reset_pw).await;
    assert_eq!(status, 200);
    assert_eq!(body["account"]["must_change_password"], true);

    let (status, keys) = {
        let res = common::http()
            .get(server.url("/api/admin/users"))
            .bearer_auth(&stopped_key)
            .send()
            .await
            .expect("get");
        (res.status().as_u16(), res.text().await.expect("text"))
    };
    assert_eq!(status, 403, "a default key lacks admin_read: {keys}");

    // A key made in the browser: its secret is in the creating answer and nowhere after.
    let client = common::http();
    let res = client
        .post(server.url("/api/auth/login"))
        .json(&json!({"email": "root@example.com", "password": admin_pw}))
        .send()
        .await
        .expect("login");
    let cookie = res
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("cookie")
        .to_string();
    let session: Value = res.json().await.expect("json");
    let csrf = session["csrf_token"].as_str().expect("csrf").to_string();
    let created: Value = client
        .post(server.url("/api/keys"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "web"}))
        .send()
        .await
        .expect("create key")
        .json()
        .await
        .expect("json");
    let web_key = created["secret"].as_str().expect("secret").to_string();
    assert_eq!(get(&server.url("/api/account"), &web_key).await.0, 200);
    let mut later = String::new();
    for path in [
        "/api/keys",
        "/api/account",
        "/api/account/sessions",
        "/api/admin/audit",
        "/api/admin/users",
    ] {
        let text = client
            .get(server.url(path))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        later.push_str(&text);
    }
    assert!(later.contains("\"web\""), "the key is listed: {later}");
    for k in [&web_key, &stopped_key, &running_key] {
        assert!(
            !later.contains(&secret_part(k)),
            "a key secret came back in a later answer"
        );
    }

    let (status, log) = server.stop_with_log();
    assert!(status.success());

    // Secrets appear nowhere: not in the log, not in the database file.
    let db = std::fs::read(dir.path().join("data").join("easel.redb")).expect("db file");
    let db = String::from_utf8_lossy(&db);
    for secret in [
        admin_pw.to_string(),
        member_pw.to_string(),
        reset_pw.to_string(),
        secret_part(&stopped_key),
        secret_part(&running_key),
        secret_part(&web_key),
        cookie.trim_start_matches("easel_session=").to_string(),
    ] {
        assert!(
            !log.contains(&secret),
            "a secret leaked into the server log"
        );
        assert!(!db.contains(&secret), "a secret is stored in plain text");
    }
    // Password hashes are Argon2id with the configured settings. (redb is
    // copy-on-write, so a replaced hash may linger in a free page: count them all.)
    let configured = db.matches("$argon2id$v=19$m=8192,t=1,p=1$").count();
    assert!(configured >= 2, "one per account at least");
    assert_eq!(
        db.matches("$argon2").count(),
        configured,
        "no other kind of hash"
    );

    // After a restart the session still holds, and last use (kept in memory while
    // running) was saved at shutdown.
    let server = Process::serve(&config, &[]);
    let text = client
        .get(server.url("/api/keys"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    let keys: Value = serde_json::from_str(&text).expect("a key list, so the session held");
    let keys = keys.as_array().expect("list").clone();
    assert_eq!(keys.len(), 2, "{text}");
    assert!(
        keys.iter().all(|k| k["last_used_at"].is_string()),
        "last use survived the restart: {text}"
    );
    assert!(server.stop().success());
}
