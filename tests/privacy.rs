//! The privacy engine over real HTTP with a real redb file: every table has a data
//! class, records stay inside their window and go after it (the clock is moved, not
//! waited for), deletion requests disable at once and erase at the deadline (holds
//! postpone, signing in cancels), and a restart loses nothing and catches up.

mod common;

use common::TestServer;
use common::api::{Browser, code};
use easel::ledger::{EntryKind, MICRO, Posting};
use easel::local_model::fixture::{Store, write_tiny};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";
const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3_600);

/// A server with the tiny local model for alt text, an admin and a member with a key.
struct Setup {
    s: TestServer,
    admin: Browser,
    member: String,
    key: String,
    _model: tempfile::TempDir,
}

async fn setup(extra: &str) -> Setup {
    let model = tempfile::tempdir().expect("tempdir");
    let dir = model.path().join("blip-tiny");
    write_tiny(&dir, Store::Safetensors).expect("tiny model");
    // `extra` follows the `[auth]` section of FAST: plain keys land there.
    let config = format!(
        "{}{extra}\n[alt_text]\nmodel = \"local\"\n[local_model]\ndir = \"{}\"\n",
        common::FAST,
        dir.display().to_string().replace('\\', "/")
    );
    let s = TestServer::start(&config).await;
    s.make_account("root@example.com", easel::auth::Role::Admin, PASSWORD)
        .await;
    let admin = Browser::login(&s, "root@example.com", PASSWORD).await;
    let (member, key) = s.member_with_key("ada@example.com", PASSWORD).await;
    Setup {
        s,
        admin,
        member,
        key,
        _model: model,
    }
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    out
}

impl Setup {
    /// One alt text request on the member's key: a usage and an alt text record.
    async fn alt_text(&self) -> StatusCode {
        self.alt_text_as(&self.key).await
    }

    /// One alt text request on `key`.
    async fn alt_text_as(&self, key: &str) -> StatusCode {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(png());
        common::http()
            .post(self.s.url("/v1/alt-text"))
            .bearer_auth(key)
            .json(&json!({"image_base64": b64, "context": "Ada's shop"}))
            .send()
            .await
            .expect("send")
            .status()
    }

    async fn grant(&self, account: &str, credits: i64) {
        self.s
            .app()
            .services()
            .ledger
            .post(
                account,
                EntryKind::Grant,
                credits * MICRO,
                Posting {
                    note: "welcome".into(),
                    ..Default::default()
                },
            )
            .await
            .expect("grant");
    }

    async fn admin(&self, m: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let a = self.admin.send(&self.s, m, path, body).await;
        (a.status, a.body)
    }

    /// An admin asks for the deletion of `id`.
    async fn request_deletion(&self, id: &str) {
        let (status, v) = self
            .admin(
                Method::POST,
                &format!("/api/admin/users/{id}/deletion"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    }

    /// An admin puts a legal hold on `id`.
    async fn hold(&self, id: &str, reason: &str) {
        let (status, v) = self
            .admin(
                Method::PUT,
                &format!("/api/admin/users/{id}/hold"),
                Some(json!({ "reason": reason })),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }

    async fn run(&self, job: &str) -> Value {
        let (status, v) = self
            .admin(Method::POST, &format!("/api/admin/jobs/{job}/run"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["ok"], true, "{v}");
        v
    }

    async fn report(&self) -> Value {
        let (status, v) = self
            .admin(Method::GET, "/api/admin/privacy/report", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    async fn class(&self, name: &str) -> Value {
        let r = self.report().await;
        r["classes"]
            .as_array()
            .expect("classes")
            .iter()
            .find(|c| c["class"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no class {name} in {r}"))
    }

    async fn key_status(&self) -> StatusCode {
        common::http()
            .get(self.s.url("/v1/models"))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("send")
            .status()
    }

    /// Waits for the background commit of usage records and charges.
    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn every_table_in_the_database_has_a_class() {
    let t = setup("").await;
    // A workload that touches every capability: sign-in, keys, credits, alt text,
    // a deletion request and a hold, each job once.
    let _member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    t.grant(&t.member, 5).await;
    assert_eq!(t.alt_text().await, StatusCode::OK);
    t.settle().await;
    let (bob, _) = t.s.member_with_key("bob@example.com", PASSWORD).await;
    t.request_deletion(&bob).await;
    t.hold(&bob, "tax audit 2026").await;
    for job in ["retention_sweep", "expiry", "deletion_requests"] {
        t.run(job).await;
    }

    let declared = easel::privacy::tables();
    let names = easel::store::table_names(t.s.app().store())
        .await
        .expect("tables");
    assert!(names.len() >= 15, "the workload made the tables: {names:?}");
    for name in &names {
        assert!(
            declared.iter().any(|d| d.name == name),
            "table `{name}` has no data class: add it to easel::privacy::tables()"
        );
    }

    // And every table the source declares, whether or not this run made it.
    let mut missing = Vec::new();
    for file in rust_files(std::path::Path::new("src")) {
        let text = std::fs::read_to_string(&file).expect("source");
        let live = text.split("#[cfg(test)]").next().unwrap_or("");
        for marker in ["Table::new(\""] {
            for part in live.split(marker).skip(1) {
                let name = part.split('"').next().unwrap_or("");
                if !declared.iter().any(|d| d.name == name) {
                    missing.push(format!("{name} ({})", file.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "tables without a registered class: {missing:?}"
    );
    t.s.stop().await;
}

fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn records_stay_inside_their_window_and_are_gone_after_it() {
    let t = setup(
        "[retention]\naccess_log = \"1d\"\nusage = \"2d\"\nalt_text = \"3d\"\naudit = \"5d\"\nbilling = \"6d\"\n",
    )
    .await;
    let _member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    t.grant(&t.member, 5).await;
    for _ in 0..2 {
        assert_eq!(t.alt_text().await, StatusCode::OK);
    }
    t.settle().await;
    let count = |v: &Value| v["records"].as_u64().expect("records");
    let before: Vec<(&str, u64)> = {
        let mut out = Vec::new();
        for class in ["access_log", "usage", "alt_text", "audit", "billing"] {
            let c = t.class(class).await;
            assert!(count(&c) > 0, "{class}: {c}");
            assert_eq!(c["within_window"], true, "{c}");
            out.push((class, count(&c)));
        }
        out
    };
    assert_eq!(before[1], ("usage", 2));
    assert_eq!(before[2], ("alt_text", 2));

    // One hour short of each window, a sweep keeps everything; one hour past it, the
    // class is empty (audit keeps only the entries the sweeps themselves wrote, which
    // are inside the window).
    let windows = [
        ("access_log", 1),
        ("usage", 2),
        ("alt_text", 3),
        ("audit", 5),
        ("billing", 6),
    ];
    let mut elapsed = Duration::ZERO;
    let mut swept_in_all = 0;
    for (i, (class, days)) in windows.iter().enumerate() {
        let short = DAY * *days - HOUR;
        t.s.clock.advance(short - elapsed);
        elapsed = short;
        t.run("retention_sweep").await;
        let c = t.class(class).await;
        assert!(
            count(&c) >= before[i].1,
            "{class} kept inside its window: {c}"
        );

        t.s.clock.advance(HOUR * 2);
        elapsed += HOUR * 2;
        let run = t.run("retention_sweep").await;
        let swept = run["counts"][class].as_u64().expect("count");
        swept_in_all += swept;
        assert!(swept > 0, "{class} swept: {run}");
        let c = t.class(class).await;
        assert_eq!(c["within_window"], true, "{c}");
        match *class {
            // Every entry from before went; the sweeps' own entries, written by the
            // moved clock, are inside the window.
            "audit" => {
                assert!(swept >= before[i].1, "{run}");
                assert!(c["oldest_age_seconds"].as_u64() < Some(5 * 86_400), "{c}");
            }
            // The balance stays: it is the account's, not a dated record.
            "billing" => {
                assert_eq!(swept, before[i].1 - 1, "{run}");
                assert_eq!((count(&c), &c["oldest_at"]), (1, &Value::Null), "{c}");
            }
            _ => {
                assert_eq!(swept, before[i].1, "{run}");
                assert_eq!(
                    (count(&c), &c["oldest_at"]),
                    (0, &Value::Null),
                    "{class}: {c}"
                );
            }
        }
    }
    // The sweeps are recorded: in the job history, the audit log and the metrics.
    let r = t.report().await;
    let sweep = r["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["job"] == "retention_sweep")
        .expect("sweep job");
    assert!(
        sweep["last_run_at"].is_string() && sweep["next_run_at"].is_string(),
        "{sweep}"
    );
    let (_, audit) = t
        .admin(Method::GET, "/api/admin/audit?limit=500", None)
        .await;
    assert!(
        audit["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["action"] == "retention_sweep"
                && e["detail"].as_str().unwrap_or("").contains("usage")),
        "{audit}"
    );
    assert!(
        t.s.metric("easel_job_runs_total{job=\"retention_sweep\"}")
            .await
            >= Some(10)
    );
    assert!(
        t.s.metric("easel_job_records_removed_total{job=\"retention_sweep\"}")
            .await
            >= Some(swept_in_all)
    );
    t.s.stop().await;
}

#[tokio::test]
async fn expired_keys_sessions_and_invites_are_removed_by_the_expiry_job() {
    let t = setup("session_idle = \"1h\"\nsession_max = \"2h\"\n").await;
    let member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let (status, v) = member
        .send(
            &t.s,
            Method::POST,
            "/api/keys",
            Some(json!({"name": "short", "expires_days": 1})),
        )
        .await
        .pipe(|a| (a.status, a.body));
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let short = v["secret"].as_str().expect("secret").to_string();
    let (status, v) = t
        .admin(Method::POST, "/api/admin/invites", Some(json!({})))
        .await;
    assert!(status.is_success(), "{v}");

    let mut t = t;
    t.s.clock.advance(DAY + HOUR);
    let run = t.run("expiry").await;
    assert_eq!(run["counts"]["api_keys"], 1, "{run}");
    assert_eq!(
        run["counts"]["sessions"], 2,
        "the admin's and the member's: {run}"
    );
    assert_eq!(run["counts"]["invites"], 0, "{run}");
    t.admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let status = common::http()
        .get(t.s.url("/v1/models"))
        .bearer_auth(&short)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired key is gone");
    assert_eq!(
        t.key_status().await,
        StatusCode::OK,
        "a key without expiry stays"
    );
    let (status, _) = member
        .send(&t.s, Method::GET, "/api/account", None)
        .await
        .pipe(|a| (a.status, a.body));
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an ended session is gone");

    t.s.clock.advance(DAY * 7);
    let run = t.run("expiry").await;
    assert_eq!(run["counts"]["invites"], 1, "{run}");
    t.s.stop().await;
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

#[tokio::test]
async fn a_deletion_request_disables_at_once_and_signing_in_cancels_it() {
    let t = setup("").await;
    let mut member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let wrong = member
        .send(
            &t.s,
            Method::POST,
            "/api/privacy/deletion",
            Some(json!({"password": "not it"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{}", wrong.body);
    assert_eq!(code(&wrong), "wrong_password");

    let me = member
        .send(&t.s, Method::GET, "/api/privacy/me", None)
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["email"], "ada@example.com");
    assert!(me.body["deletion"].is_null());

    let req = member
        .send(
            &t.s,
            Method::POST,
            "/api/privacy/deletion",
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(req.status, StatusCode::ACCEPTED, "{}", req.body);
    assert!(req.body["erase_at"].is_string(), "{}", req.body);
    assert!(
        req.set_cookie
            .as_deref()
            .unwrap_or("")
            .contains("easel_session=;")
    );
    // Disabled at once: the session, the API key and sign-in without cancelling.
    let after = member.send(&t.s, Method::GET, "/api/account", None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.body);
    assert_eq!(t.key_status().await, StatusCode::UNAUTHORIZED);
    let r = t.report().await;
    assert_eq!(r["deletions"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["deletions"][0]["by_admin"], false, "{r}");

    // Signing in within the window cancels the request; the revoked key stays revoked.
    member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let me = member
        .send(&t.s, Method::GET, "/api/privacy/me", None)
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert!(me.body["deletion"].is_null(), "{}", me.body);
    assert_eq!(t.key_status().await, StatusCode::UNAUTHORIZED);
    let r = t.report().await;
    assert_eq!(r["deletions"].as_array().map(Vec::len), Some(0), "{r}");
    t.s.clock.advance(DAY * 31);
    let run = t.run("deletion_requests").await;
    assert!(run["counts"].get("accounts").is_none(), "{run}");

    // An admin asks, then cancels.
    let id = &t.member;
    t.request_deletion(id).await;
    let (status, v) = t
        .admin(
            Method::POST,
            &format!("/api/admin/users/{id}/deletion"),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a second request is refused: {v}"
    );
    let (status, _) = t
        .admin(
            Method::DELETE,
            &format!("/api/admin/users/{id}/deletion"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = t
        .admin(
            Method::DELETE,
            &format!("/api/admin/users/{id}/deletion"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Browser::login(&t.s, "ada@example.com", PASSWORD).await;

    // The only admin cannot ask for their own deletion.
    let (status, v) = t.admin(Method::GET, "/api/account", None).await;
    assert_eq!(status, StatusCode::OK);
    let root = v["account"]["id"].as_str().expect("id").to_string();
    let (status, v) = t
        .admin(
            Method::POST,
            &format!("/api/admin/users/{root}/deletion"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    let (status, v) = t
        .admin(Method::POST, "/api/admin/jobs/nope/run", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = t
        .admin(
            Method::PUT,
            &format!("/api/admin/users/{id}/hold"),
            Some(json!({"reason": " "})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    t.s.stop().await;
}

#[tokio::test]
async fn erasure_at_the_deadline_removes_everything_but_detached_billing() {
    let t = setup("").await;
    let _member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    t.grant(&t.member, 7).await;
    for _ in 0..3 {
        assert_eq!(t.alt_text().await, StatusCode::OK);
    }
    t.settle().await;
    let billing_before = t.class("billing").await["records"].as_u64().expect("n");

    let id = t.member.clone();
    t.request_deletion(&id).await;
    t.hold(&id, "court order 17/2026").await;

    // Past the deadline, the hold postpones erasure and the report says why.
    t.s.clock.advance(DAY * 31);
    let run = t.run("deletion_requests").await;
    assert!(run["counts"].get("accounts").is_none(), "{run}");
    let r = t.report().await;
    assert_eq!(r["deletions"][0]["held"], "court order 17/2026", "{r}");
    assert_eq!(r["holds"][0]["reason"], "court order 17/2026", "{r}");

    let (status, _) = t
        .admin(Method::DELETE, &format!("/api/admin/users/{id}/hold"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let run = t.run("deletion_requests").await;
    assert_eq!(run["counts"]["accounts"], 1, "{run}");
    assert_eq!(run["counts"]["usage"], 3, "{run}");
    assert_eq!(run["counts"]["alt_text"], 3, "{run}");
    // The account, its email and its request, and its data key (crypto-shredding);
    // the client address of its sign-in.
    assert_eq!(run["counts"]["account"], 4, "{run}");
    assert_eq!(run["counts"]["access_log"], 1, "{run}");

    // Gone: the account, its sign-in, its records; billing kept under a pseudonym.
    let (_, users) = t.admin(Method::GET, "/api/admin/users", None).await;
    assert!(!users.to_string().contains("ada@example.com"), "{users}");
    let login = common::api::anonymous_post(
        &t.s,
        "/api/auth/login",
        json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    for class in ["usage", "alt_text"] {
        assert_eq!(t.class(class).await["records"], 0, "{class}");
    }
    assert_eq!(
        t.class("billing").await["records"].as_u64(),
        Some(billing_before)
    );
    let (_, balances) = t.admin(Method::GET, "/api/admin/credits", None).await;
    assert!(!balances.to_string().contains(&id), "{balances}");
    let r = t.report().await;
    assert_eq!(r["deletions"].as_array().map(Vec::len), Some(0), "{r}");

    // The audit entry of the erasure holds counts, no personal data.
    let (_, audit) = t
        .admin(Method::GET, "/api/admin/audit?limit=500", None)
        .await;
    let erased = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "account_erased")
        .cloned()
        .expect("an erasure entry");
    let text = erased.to_string();
    assert!(
        erased["target"].is_null() && !text.contains("ada") && !text.contains(&id),
        "{text}"
    );
    t.s.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_a_pending_deletion_and_catches_up_a_missed_deadline() {
    let mut t = setup("").await;
    let id = t.member.clone();
    t.request_deletion(&id).await;

    // Restarted inside the window: still pending, still disabled.
    t.s.restart().await;
    t.admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let r = t.report().await;
    assert_eq!(r["deletions"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(t.key_status().await, StatusCode::UNAUTHORIZED);

    // Down past the deadline: the start-up catch-up erases it without waiting for
    // the schedule.
    t.s.clock.advance(DAY * 30 + HOUR);
    t.s.restart().await;
    t.admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = t.report().await;
        if r["deletions"].as_array().map(Vec::len) == Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not caught up: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, users) = t.admin(Method::GET, "/api/admin/users", None).await;
    assert!(!users.to_string().contains("ada@example.com"), "{users}");
    t.s.stop().await;
}

#[tokio::test]
async fn the_backup_job_writes_backups_and_keeps_the_newest() {
    let t = setup("[backup]\ndir = \"backups\"\nkeep = 2\n").await;
    let dir = t.s.dir.path().join("backups");
    // The catch-up at start wrote the first one.
    let names = || {
        let mut n: Vec<String> = std::fs::read_dir(&dir)
            .expect("backup dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names().len(), 1, "{:?}", names());
    let first = names()[0].clone();
    for i in 0..2 {
        t.s.clock.advance(DAY);
        let run = t.run("backup").await;
        assert_eq!(run["counts"]["written"], 1, "{run}");
        assert_eq!(run["counts"]["removed"], i, "{run}");
    }
    let kept = names();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!kept.contains(&first), "the oldest went: {kept:?}");
    assert!(
        kept.iter()
            .all(|n| n.starts_with("easel-") && n.ends_with(".redb"))
    );
    t.s.stop().await;
}

/// The files of an export ZIP, by name.
fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, String> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a whole ZIP");
    let mut files = std::collections::BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).expect("entry");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("utf-8 text");
        files.insert(f.name().expect("a name").to_string(), text);
    }
    files
}

fn lines(files: &std::collections::BTreeMap<String, String>, name: &str) -> Vec<Value> {
    files
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in the export"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn ids(v: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = v
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn an_export_holds_every_record_of_the_person_and_nothing_of_anyone_else() {
    let t = setup("").await;
    let ada = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let (bob, bob_key) = t.s.member_with_key("bob@example.com", PASSWORD).await;
    let _bob_browser = Browser::login(&t.s, "bob@example.com", PASSWORD).await;
    t.grant(&t.member, 5).await;
    t.grant(&bob, 5).await;
    for _ in 0..2 {
        assert_eq!(t.alt_text().await, StatusCode::OK);
    }
    let consent = ada
        .send(
            &t.s,
            Method::PUT,
            "/api/privacy/consent",
            Some(json!({"analytics": true})),
        )
        .await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.body);
    // Bob's records share every table with Ada's.
    assert_eq!(t.alt_text_as(&bob_key).await, StatusCode::OK);
    t.settle().await;

    let services = t.s.app().services();
    let truth_usage = services.usage.all(&t.member).await.expect("usage");
    let truth_ledger = services
        .ledger
        .all_entries(&t.member)
        .await
        .expect("ledger");
    let bob_usage = services.usage.all(&bob).await.expect("usage");
    let bob_ledger = services.ledger.all_entries(&bob).await.expect("ledger");
    assert_eq!(truth_usage.len(), 2);
    assert_eq!(bob_usage.len(), 1);

    let (status, zip) = ada.export(&t.s, "/api/privacy/export").await;
    assert_eq!(status, StatusCode::OK);
    let files = unzip(&zip);
    for name in [
        "README.txt",
        "account.json",
        "sessions.jsonl",
        "api_keys.jsonl",
        "provider_keys.jsonl",
        "usage.jsonl",
        "alt_text.jsonl",
        "ledger.jsonl",
        "consent.jsonl",
        "access_log.jsonl",
        "audit.jsonl",
    ] {
        assert!(
            files.contains_key(name),
            "{name} is missing: {:?}",
            files.keys()
        );
    }

    // Every record of Ada's.
    let account: Value = serde_json::from_str(&files["account.json"]).expect("json");
    assert_eq!(account["email"], "ada@example.com");
    assert_eq!(account["id"], t.member.as_str());
    assert!(
        !files["account.json"].contains("argon2"),
        "no password hash"
    );
    let mut want: Vec<String> = truth_usage.iter().map(|u| u.id.clone()).collect();
    want.sort();
    assert_eq!(ids(&lines(&files, "usage.jsonl")), want);
    let alt = lines(&files, "alt_text.jsonl");
    assert_eq!(alt.len(), 2);
    assert!(
        alt.iter()
            .all(|a| !a["alt_text"].as_str().unwrap_or("").is_empty())
    );
    let mut want: Vec<String> = truth_ledger.iter().map(|e| e.id.clone()).collect();
    want.sort();
    assert_eq!(ids(&lines(&files, "ledger.jsonl")), want);
    let keys = lines(&files, "api_keys.jsonl");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(t.key.contains(keys[0]["id"].as_str().expect("key id")));
    assert!(
        !files["api_keys.jsonl"].contains(&t.key),
        "never the secret"
    );
    let consent = lines(&files, "consent.jsonl");
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0]["analytics"], true);
    assert_eq!(lines(&files, "sessions.jsonl").len(), 1);
    let access = lines(&files, "access_log.jsonl");
    assert!(
        access
            .iter()
            .any(|a| a["event"] == "sign_in" && a["account"] == t.member.as_str()),
        "{access:?}"
    );

    // Nothing of anyone else's.
    let everything: String = files.values().cloned().collect();
    // A key token is `easel_sk_<public id>_<secret>`; an export shows only the id.
    let bob_key_id = bob_key
        .strip_prefix("easel_sk_")
        .and_then(|rest| rest.split('_').next())
        .expect("a key token")
        .to_string();
    let mut foreign: Vec<String> = vec![
        "bob@example.com".into(),
        "root@example.com".into(),
        bob.clone(),
        bob_key_id,
    ];
    foreign.extend(bob_usage.iter().map(|u| u.id.clone()));
    foreign.extend(bob_ledger.iter().map(|e| e.id.clone()));
    for f in &foreign {
        assert!(!everything.contains(f.as_str()), "{f} is someone else's");
    }

    // An admin's access request gives the same records and is audited; a member
    // cannot export someone else.
    let (status, zip) = t
        .admin
        .export(&t.s, &format!("/api/admin/users/{}/export", t.member))
        .await;
    assert_eq!(status, StatusCode::OK);
    let by_admin = unzip(&zip);
    assert_eq!(by_admin["usage.jsonl"], files["usage.jsonl"]);
    let (status, _) = ada
        .export(&t.s, &format!("/api/admin/users/{bob}/export"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = t.admin.export(&t.s, "/api/admin/users/0000/export").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = t
        .admin(Method::GET, "/api/admin/audit?limit=500", None)
        .await;
    let exports = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "data_exported" && e["target"] == t.member.as_str())
        .count();
    assert_eq!(exports, 2, "{audit}");

    // And the CLI, through the running server's admin socket (run off this runtime,
    // which serves that socket).
    let out = t.s.dir.path().join("ada.zip");
    let config = t.s.dir.path().join("easel.toml");
    let cli = |out: std::path::PathBuf| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            common::run(
                &[
                    "--config",
                    config.to_str().expect("utf-8"),
                    "export",
                    "--email",
                    "ada@example.com",
                    "--out",
                    out.to_str().expect("utf-8"),
                ],
                &[],
            )
        })
    };
    let (code, stdout, stderr) = cli(out.clone()).await.expect("cli");
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("admin socket") || stdout.contains("admin socket"),
        "{stdout}{stderr}"
    );
    let by_cli = unzip(&std::fs::read(&out).expect("the file"));
    assert_eq!(by_cli["usage.jsonl"], files["usage.jsonl"]);
    // A second run never overwrites the file.
    let (code, _, stderr) = cli(out).await.expect("cli");
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot create"), "{stderr}");
    t.s.stop().await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn erasure_leaves_no_byte_of_the_person_and_old_backups_open_none_of_their_sealed_data() {
    let mut t = setup("[backup]\ndir = \"backups\"\nkeep = 5\n").await;
    let services = t.s.app().services().clone();
    const EMAIL: &str = "grace.hopper@example.com";
    const NAME: &str = "Grace Brewster Hopper";
    const PROVIDER_KEY: &str = "sk-grace-0123456789abcdefXYZ";
    let grace = services
        .accounts
        .create(
            easel::accounts::NewAccount {
                email: EMAIL.into(),
                name: NAME.into(),
                company: Some("Remington Rand".into()),
                password: easel::crypto::Secret::new(PASSWORD.into()),
                role: easel::auth::Role::Member,
                adult: true,
                must_change_password: false,
            },
            easel::accounts::Actor::Cli,
        )
        .await
        .expect("account")
        .id;
    let (_, key) = services
        .keys
        .create(
            &grace,
            easel::auth::Role::Member,
            easel::keys::NewKey {
                name: "grace's key".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("key");
    let browser = Browser::login(&t.s, EMAIL, PASSWORD).await;
    let added = browser
        .send(
            &t.s,
            Method::POST,
            "/api/providers",
            Some(json!({"name": "mine", "kind": "openai", "api_key": PROVIDER_KEY})),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    t.grant(&grace, 5).await;
    for _ in 0..3 {
        assert_eq!(t.alt_text_as(key.expose()).await, StatusCode::OK);
    }
    t.settle().await;
    let history: Value = common::http()
        .get(t.s.url("/api/alt-text"))
        .bearer_auth(key.expose())
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let alt_texts: Vec<String> = history
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["alt_text"].as_str().expect("text").to_string())
        .collect();
    assert_eq!(alt_texts.len(), 3);
    assert!(
        alt_texts.iter().all(|a| a.len() >= 8),
        "long enough to mean something when found: {alt_texts:?}"
    );

    // A backup from before the erasure.
    t.s.clock.advance(HOUR);
    let run = t.run("backup").await;
    assert_eq!(run["counts"]["written"], 1, "{run}");
    let backups = t.s.dir.path().join("backups");
    let mut files: Vec<_> = std::fs::read_dir(&backups)
        .expect("backups")
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    files.sort();
    let before = files.last().expect("a backup").clone();
    let backup_bytes = std::fs::read(&before).expect("backup");
    assert!(
        contains(&backup_bytes, EMAIL.as_bytes()),
        "the backup holds her account"
    );

    t.request_deletion(&grace).await;
    t.s.clock.advance(DAY * 31);
    let run = t.run("deletion_requests").await;
    assert_eq!(run["counts"]["accounts"], 1, "{run}");
    assert_eq!(run["counts"]["provider_keys"], 1, "{run}");

    // After compaction, no byte of her is in the database file.
    drop(services);
    t.s.pause().await;
    let data = t.s.data_dir();
    easel::store::compact(&data).expect("compact");
    let db = std::fs::read(data.join(easel::store::DB_FILE)).expect("database file");
    // (Her random account id stays in the record of erased accounts and in audit
    // entries: with the account gone it names no one.)
    let mut needles: Vec<&str> = vec![EMAIL, NAME, "Remington Rand", PROVIDER_KEY];
    needles.extend(alt_texts.iter().map(String::as_str));
    for n in &needles {
        assert!(
            !contains(&db, n.as_bytes()),
            "`{n}` is still in the database file"
        );
    }

    // The old backup holds her sealed provider key but no data key to open it, and
    // restoring it (which keeps the live data keys) does not bring one back.
    let master_path = t.s.dir.path().join("master.key");
    let restored = easel::store::restore(
        &before,
        &data,
        easel::app::schema_version(),
        &easel::privacy::restore_carry(),
    )
    .expect("restore");
    assert!(restored.previous.is_some());
    {
        let store = easel::store::Store::open(
            &data,
            &easel::store::StoreOptions::default(),
            &easel::app::migrations(),
        )
        .expect("open the restored database");
        let master = easel::crypto::read_key_file(&master_path).expect("master key");
        let ring = easel::crypto::Keyring::unlock(
            &store,
            master,
            easel::crypto::KeySource::File(master_path.clone()),
        )
        .await
        .expect("the live master key opens the restored database");
        let (g, r) = (grace.clone(), ring.clone());
        let (sealed_rows, data_key) = store
            .read(move |tx| {
                Ok::<_, easel::crypto::CryptoError>((
                    easel::providers::count_of(tx, &g)?,
                    r.data_key(tx, &g)?.is_some(),
                ))
            })
            .await
            .expect("read");
        assert_eq!(sealed_rows, 1, "the backup's sealed provider key is there");
        assert!(!data_key, "but nothing can open it");
        store.close().await;
    }

    // The restored backup brought her account back: the next deletion run erases it
    // again, hold or not.
    t.s.resume().await;
    // The restored sessions ended while the clock moved on.
    t.admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let run = t.run("deletion_requests").await;
    let r = t.report().await;
    let (_, users) = t.admin(Method::GET, "/api/admin/users", None).await;
    assert!(
        !users.to_string().contains(EMAIL),
        "erased again after the restore: {run} {users}"
    );
    assert_eq!(r["deletions"].as_array().map(Vec::len), Some(0), "{r}");
    let login = common::api::anonymous_post(
        &t.s,
        "/api/auth/login",
        json!({"email": EMAIL, "password": PASSWORD}),
    )
    .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    t.s.stop().await;
}

/// The sum of the anonymous analytics counters.
async fn counted(t: &Setup) -> u64 {
    let (status, v) = t.admin(Method::GET, "/api/admin/analytics", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v.as_array()
        .expect("counters")
        .iter()
        .map(|c| c["count"].as_u64().expect("count"))
        .sum::<u64>()
}

#[tokio::test]
async fn analytics_are_counted_only_with_consent_and_stop_when_it_is_withdrawn() {
    let mut t = setup("").await;
    let ada = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    t.grant(&t.member, 5).await;
    let consent = |on: bool| {
        ada.send(
            &t.s,
            Method::PUT,
            "/api/privacy/consent",
            Some(json!({ "analytics": on })),
        )
    };

    // Off by default: requests leave no analytics record.
    let c = ada
        .send(&t.s, Method::GET, "/api/privacy/consent", None)
        .await;
    assert_eq!(c.body["analytics"], false, "{}", c.body);
    assert_eq!(t.alt_text().await, StatusCode::OK);
    t.settle().await;
    assert_eq!(counted(&t).await, 0);
    assert_eq!(t.class("analytics").await["records"], 0);

    // With consent, an anonymous counter: a day and a feature, never who.
    assert_eq!(consent(true).await.status, StatusCode::OK);
    assert_eq!(t.alt_text().await, StatusCode::OK);
    t.settle().await;
    assert_eq!(counted(&t).await, 1);
    let (_, counters) = t.admin(Method::GET, "/api/admin/analytics", None).await;
    assert_eq!(counters[0]["feature"], "alt_text", "{counters}");
    assert!(!counters.to_string().contains(&t.member), "{counters}");

    // Withdrawn: nothing more is counted, and the history shows both choices.
    let c = consent(false).await;
    assert_eq!(c.body["analytics"], false);
    assert_eq!(
        c.body["history"].as_array().map(Vec::len),
        Some(2),
        "{}",
        c.body
    );
    assert_eq!(t.alt_text().await, StatusCode::OK);
    t.settle().await;
    assert_eq!(counted(&t).await, 1);

    // A choice survives a restart, and counters go after their window.
    assert_eq!(consent(true).await.status, StatusCode::OK);
    t.s.restart().await;
    assert!(t.s.app().services().analytics.consents(&t.member));
    t.s.clock.advance(DAY * 91);
    t.admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let run = t.run("retention_sweep").await;
    assert_eq!(run["counts"]["analytics"], 1, "{run}");
    assert_eq!(counted(&t).await, 0);
    t.s.stop().await;
}

/// The fields of `struct name { … }` (public or not) in `text`, if it is declared there.
fn struct_fields(text: &str, name: &str) -> Option<Vec<String>> {
    // `struct Name {` or, generic, `struct Name<S = String> {`.
    let start = [format!("struct {name} {{"), format!("struct {name}<")]
        .iter()
        .find_map(|head| text.find(head.as_str()))?;
    let body = &text[start..];
    let body = &body[body.find('{')? + 1..body.find("\n}")?];
    Some(
        body.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
            .filter_map(|l| {
                let l = l.strip_prefix("pub ").unwrap_or(l);
                Some(l.split_once(':')?.0.trim().to_string())
            })
            .collect(),
    )
}

#[test]
fn no_table_has_a_column_for_prompts_request_images_or_outputs() {
    const NEVER: [&str; 18] = [
        "prompt",
        "prompts",
        "revised_prompt",
        "messages",
        "message",
        "content",
        "contents",
        "input",
        "output",
        "outputs",
        "completion",
        "response",
        "body",
        "image",
        "image_base64",
        "image_data",
        "image_bytes",
        "b64_json",
    ];
    let sources: Vec<String> = rust_files(std::path::Path::new("src"))
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("source");
            text.split("#[cfg(test)]").next().unwrap_or("").to_string()
        })
        .collect();
    let all = sources.join("\n");
    // Every record type a table stores: `Table<Key, Record>`.
    let mut records: Vec<String> = all
        .split(": Table<")
        .skip(1)
        .filter_map(|rest| {
            // A declaration: `const NAME: Table<Key, Record> = …`.
            let (decl, _) = rest.split_once("> =")?;
            if decl.contains(';') {
                return None;
            }
            let (_, value) = decl.rsplit_once(", ")?;
            let value = value.trim();
            let named = value.chars().next().is_some_and(char::is_uppercase);
            (named && value != "String" && !value.starts_with("Vec<")).then(|| value.to_string())
        })
        .collect();
    records.sort();
    records.dedup();
    assert!(
        records.len() >= 12,
        "found the stored record types: {records:?}"
    );
    for record in &records {
        let fields = sources
            .iter()
            .find_map(|s| struct_fields(s, record))
            .unwrap_or_else(|| panic!("no `struct {record}` in src/"));
        assert!(!fields.is_empty(), "{record} has fields");
        for f in &fields {
            assert!(
                !NEVER.contains(&f.as_str()),
                "`{record}.{f}` would store a prompt, a request image or an output"
            );
        }
    }
}

async fn page(s: &TestServer, path: &str) -> (StatusCode, String) {
    let res = common::http().get(s.url(path)).send().await.expect("send");
    (res.status(), res.text().await.expect("text"))
}

#[tokio::test]
async fn the_policy_page_follows_the_config_and_a_material_change_is_a_new_version_after_notice() {
    let t = setup("[privacy]\noperator = \"Example Shop GmbH\"\ncontact = \"privacy@example.com\"\nnotice_period = \"14d\"\n").await;
    let policy = || async {
        let res = common::http()
            .get(t.s.url("/api/privacy/policy"))
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<Value>().await.expect("json")
    };

    // The first version, in effect at once, says what the config says.
    let p = policy().await;
    assert_eq!(p["in_effect"]["number"], 1, "{p}");
    assert!(p["upcoming"].is_null(), "{p}");
    let (status, html) = page(&t.s, "/privacy").await;
    assert_eq!(status, StatusCode::OK);
    for text in [
        "Example Shop GmbH",
        "privacy@example.com",
        "Version 1",
        "<td>usage</td>",
        "90 days",
        "1 day",
        "easel_session",
        "Export it all",
        "Have it deleted",
        "30 days",
        "None: no request leaves this server.",
    ] {
        assert!(html.contains(text), "`{text}` is not on the page:\n{html}");
    }

    // Reading again changes nothing.
    assert_eq!(policy().await["versions"].as_array().map(Vec::len), Some(1));

    // A shorter usage window and a new provider: a new version, after notice.
    let config = t.s.dir.path().join("easel.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}\n[retention]\nusage = \"30d\"\n")).expect("write");
    assert!(t.s.app().reload(), "the config reloads");
    let (status, v) = t
        .admin(
            Method::POST,
            "/api/admin/providers",
            Some(json!({"name": "acme", "kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-acme-0000"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let p = policy().await;
    let versions = p["versions"].as_array().expect("versions");
    assert!(versions.len() >= 2, "{p}");
    let newest = &versions[0];
    assert_eq!(
        p["in_effect"]["number"], 1,
        "not before the notice period: {p}"
    );
    assert_eq!(p["upcoming"]["number"], newest["number"], "{p}");
    let changes = p["upcoming"]["changes"].to_string();
    assert!(
        changes.contains("usage: kept 30d (was 90d)")
            || versions.iter().any(|v| v["changes"]
                .to_string()
                .contains("usage: kept 30d (was 90d)")),
        "{p}"
    );
    assert!(
        versions.iter().any(|v| v["changes"]
            .to_string()
            .contains("sub-processor added: acme (127.0.0.1)")),
        "{p}"
    );
    let (_, html) = page(&t.s, "/privacy").await;
    assert!(
        html.contains("Version 1") && html.contains("A new version takes effect on"),
        "{html}"
    );
    let n = newest["number"].as_u64().expect("number");
    let (status, html) = page(&t.s, &format!("/privacy?version={n}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("not yet in effect") && html.contains("acme"),
        "{html}"
    );
    let (status, _) = page(&t.s, "/privacy?version=99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After the notice period the new version is in effect; the first stays readable.
    t.s.clock.advance(DAY * 15);
    let p = policy().await;
    assert_eq!(p["in_effect"]["number"], n, "{p}");
    assert!(p["upcoming"].is_null(), "{p}");
    let (status, html) = page(&t.s, "/privacy?version=1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("an earlier version") && html.contains("90 days"),
        "{html}"
    );
    t.s.stop().await;
}
