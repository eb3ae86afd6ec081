//! The web UI in headless Chromium, driven through chromedriver (WebDriver) against the
//! real server. A screenshot of every page is saved under target/browser-screenshots/.
//! Run with: cargo test --features browser-tests --test browser

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Driver {
    async fn start() -> Driver {
        let exe =
            std::env::var("EASEL_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = free_port();
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe} ({e}); install chromium-driver"));
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: common::http(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = d.http.get(format!("{}/status", d.base)).send().await
                && r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                return d;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res: Value = req
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        assert!(res["value"]["error"].is_null(), "webdriver {path}: {res}");
        res["value"].clone()
    }

    async fn session(&self) -> Session<'_> {
        let browser =
            std::env::var("EASEL_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,800",
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v = self
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        Session {
            d: self,
            id: v["sessionId"].as_str().expect("session id").to_string(),
        }
    }
}

struct Session<'a> {
    d: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.d
            .call(
                reqwest::Method::POST,
                &format!("/session/{}{path}", self.id),
                Some(body),
            )
            .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until `script` returns `expected`.
    async fn wait_for(&self, script: &str, expected: Value) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.js(script).await;
            if got == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{script} gave {got}, not {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the app marks `main` ready for `section`.
    async fn wait_ready(&self, section: &str) {
        self.wait_for(
            "return document.querySelector('main').getAttribute('data-ready')",
            json!(section),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Signs in through the sign-in page.
    async fn sign_in(&self, server: &TestServer, email: &str, password: &str) {
        self.goto(&server.url("/#/signin")).await;
        self.wait_ready("signin").await;
        self.type_into("#signin-form [name=email]", email).await;
        self.type_into("#signin-form [name=password]", password)
            .await;
        self.click("#signin-form button[type=submit]").await;
    }

    async fn element(&self, css: &str) -> String {
        let el = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        el.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .expect("element id")
            .to_string()
    }

    /// Types into a field as a person would (WebDriver key events).
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({"text": text}))
            .await;
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self
            .d
            .call(
                reqwest::Method::GET,
                &format!("/session/{}/screenshot", self.id),
                None,
            )
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("png"))
            .expect("base64");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("write png");
    }

    /// Browser console entries at warning level or above.
    async fn console_problems(&self) -> Vec<String> {
        let logs = self.post("/se/log", json!({"type": "browser"})).await;
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
            .map(|e| e["message"].to_string())
            .collect()
    }

    async fn end(self) {
        self.d
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

/// The value of one series on the server's /metrics page (0 when absent).
async fn metric(server: &TestServer, series: &str) -> u64 {
    server.metric(series).await.unwrap_or(0)
}

const FAST: &str = "\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n";
const PASSWORD: &str = "correct horse battery";

async fn make_admin(server: &TestServer, email: &str) {
    server
        .make_account(email, easel::auth::Role::Admin, PASSWORD)
        .await;
}

#[actix_web::test]
async fn the_shell_loads_every_section_without_console_errors_or_csp_violations() {
    let server = TestServer::start(FAST).await;
    make_admin(&server, "admin@example.com").await;
    let driver = Driver::start().await;
    let s = driver.session().await;

    s.goto(&server.url("/")).await;
    s.wait_ready("status").await;
    let ready = s
        .js("return document.getElementById('ready').textContent")
        .await;
    assert_eq!(ready, json!("ready"));
    s.wait_for(
        "return document.getElementById('version').textContent",
        json!(format!("v{}", env!("CARGO_PKG_VERSION"))),
    )
    .await;
    // The page and its header share one /api/status call (each one is a durable write).
    assert_eq!(
        metric(
            &server,
            r#"easel_http_requests_total{method="GET",route="/api/status",status="200"}"#
        )
        .await,
        1
    );
    s.screenshot("status").await;

    // Signed out, every other section leads to the sign-in page.
    s.click("#nav a[data-section='keys']").await;
    s.wait_ready("signin").await;
    s.screenshot("signin").await;
    s.sign_in(&server, "admin@example.com", PASSWORD).await;
    s.wait_ready("keys").await;

    for section in [
        "alt-text",
        "skills",
        "library",
        "usage",
        "keys",
        "providers",
        "privacy",
        "account",
        "admin",
    ] {
        s.click(&format!("#nav a[data-section='{section}']")).await;
        s.wait_ready(section).await;
        let current = s
            .js("return document.querySelector('#nav a[aria-current=page]').dataset.section")
            .await;
        assert_eq!(current, json!(section));
        let heading = s
            .js("return document.querySelector('main h1').textContent")
            .await;
        assert!(
            heading.as_str().is_some_and(|h| !h.is_empty()),
            "{section} has a heading"
        );
        s.screenshot(section).await;
    }
    s.click("#nav a[data-section='status']").await;
    s.wait_ready("status").await;

    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    assert_eq!(
        metric(&server, "easel_csp_violations_total").await,
        0,
        "the browser reported CSP violations"
    );
    s.end().await;
    server.stop().await;
}

async fn status_with_key(server: &TestServer, key: &str) -> u16 {
    common::http()
        .get(server.url("/api/account"))
        .bearer_auth(key)
        .send()
        .await
        .expect("get")
        .status()
        .as_u16()
}

#[actix_web::test]
async fn a_person_signs_in_creates_a_key_sees_it_once_and_revokes_it() {
    let server = TestServer::start(FAST).await;
    make_admin(&server, "admin@example.com").await;
    let driver = Driver::start().await;
    let s = driver.session().await;

    s.sign_in(&server, "admin@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.wait_for(
        "return document.getElementById('who').textContent",
        json!("admin"),
    )
    .await;
    // The session is one HttpOnly cookie: the page can read nothing that grants access.
    let storage = s
        .js("return [document.cookie, localStorage.length, sessionStorage.length]")
        .await;
    assert_eq!(storage, json!(["", 0, 0]));

    s.type_into("#key-form [name=name]", "shop backend").await;
    s.click("#key-form button[type=submit]").await;
    s.wait_for(
        "return !document.getElementById('new-key').hidden",
        json!(true),
    )
    .await;
    let secret = s
        .js("return document.getElementById('secret').value")
        .await
        .as_str()
        .expect("secret")
        .to_string();
    assert!(secret.starts_with("easel_sk_"), "{secret}");
    s.click("#copy-secret").await;
    s.wait_for(
        "return document.getElementById('copy-secret').textContent",
        json!("Copied"),
    )
    .await;
    s.screenshot("key-created").await;
    assert_eq!(
        status_with_key(&server, &secret).await,
        200,
        "the shown key works"
    );

    // After a reload the key is listed, and its secret is nowhere on the page.
    s.post("/refresh", json!({})).await;
    s.wait_ready("keys").await;
    s.wait_for(
        "return document.querySelectorAll('#keys-body tr[data-key]').length",
        json!(1),
    )
    .await;
    let on_page = s
        .js(&format!(
            "return document.documentElement.outerHTML.includes('{}')",
            &secret[26..]
        ))
        .await;
    assert_eq!(on_page, json!(false));

    // Revoking takes a confirming second click; the key stops working at once.
    s.click("#keys-body button[data-revoke]").await;
    s.wait_for(
        "return document.querySelector('#keys-body button[data-revoke]').textContent",
        json!("Confirm revoke"),
    )
    .await;
    s.click("#keys-body button[data-revoke]").await;
    s.wait_for(
        "return document.querySelectorAll('#keys-body tr[data-key]').length",
        json!(0),
    )
    .await;
    assert_eq!(status_with_key(&server, &secret).await, 401);
    s.screenshot("key-revoked").await;

    s.click("#signout").await;
    s.wait_ready("signin").await;
    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    assert_eq!(metric(&server, "easel_csp_violations_total").await, 0);
    s.end().await;
    server.stop().await;
}

#[actix_web::test]
async fn a_csp_violation_is_caught_by_the_harness() {
    // The harness must be able to fail: a page with an inline script breaks the CSP,
    // and both the console check and the report endpoint see it.
    let server = TestServer::start("").await;
    let driver = Driver::start().await;
    let s = driver.session().await;
    s.goto(&server.url("/")).await;
    s.wait_ready("status").await;
    s.js("const x = document.createElement('script'); x.textContent = 'window.bad = 1'; document.body.append(x); return 1").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if metric(&server, "easel_csp_violations_total").await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the violation was not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.js("return window.bad === undefined").await,
        json!(true),
        "the inline script was blocked"
    );
    let problems = s.console_problems().await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Content Security Policy")),
        "{problems:#?}"
    );
    s.end().await;
    server.stop().await;
}

#[actix_web::test]
async fn a_person_adds_their_own_provider_key_and_sees_usage_after_a_request() {
    use common::mock::{Mock, catalog};
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().unwrap();
    let extra = catalog(&mock, keys.path()).replace(
        "[gateway]\n",
        "[gateway]\nprivate_hosts = [\"127.0.0.1\"]\n",
    );
    let server = TestServer::start(&extra).await;
    let services = server.running.as_ref().unwrap().services();
    let account = server
        .make_account("ada@example.com", easel::auth::Role::Member, PASSWORD)
        .await;
    services
        .ledger
        .post(
            &account,
            easel::ledger::EntryKind::Grant,
            10 * easel::ledger::MICRO,
            easel::ledger::Posting::default(),
        )
        .await
        .unwrap();
    let driver = Driver::start().await;
    let s = driver.session().await;
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.wait_for(
        "return document.getElementById('balance').textContent",
        json!("10 credits"),
    )
    .await;

    // Add a personal key: sealed, shown only by its last four characters.
    let personal = "sk-browser-key-5555";
    s.goto(&server.url("/#/providers")).await;
    s.wait_ready("providers").await;
    s.type_into("#personal-form [name=name]", "openai").await;
    s.type_into(
        "#personal-form [name=base_url]",
        &format!("{}/v1", mock.url("mine")),
    )
    .await;
    s.type_into("#personal-form [name=api_key]", personal).await;
    s.click("#personal-form button[type=submit]").await;
    let row = "document.querySelector('#personal-body tr[data-provider=\"openai\"]')";
    s.wait_for(
        &format!("return !!{row} && {row}.textContent.includes('…5555')"),
        json!(true),
    )
    .await;
    s.click("#personal-body button[data-test=\"openai\"]").await;
    s.wait_for(
        "return document.querySelector('[data-test-result=\"openai\"]').textContent.startsWith('✓')",
        json!(true),
    )
    .await;
    let on_page = s
        .js(&format!(
            "return document.documentElement.outerHTML.includes('{personal}')"
        ))
        .await;
    assert_eq!(on_page, json!(false), "the key is not on the page");
    s.screenshot("providers").await;

    // A request through the catalog's `openai` route uses the person's key...
    let (_, key) = services
        .keys
        .create(
            &account,
            easel::auth::Role::Member,
            easel::keys::NewKey {
                name: "sdk".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let res = common::http()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(key.expose())
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        mock.calls("mine"),
        2,
        "the test call and the chat went to the person's endpoint"
    );
    services.gateway.drain(Duration::from_secs(5)).await;

    // ...and shows up under Usage, with the daily chart.
    s.goto(&server.url("/#/usage")).await;
    s.wait_ready("usage").await;
    s.wait_for(
        "return document.querySelectorAll('#usage-body tr[data-usage]').length",
        json!(1),
    )
    .await;
    let text = s
        .js("return document.querySelector('#usage-body tr[data-usage]').textContent")
        .await;
    let text = text.as_str().unwrap_or("");
    assert!(
        text.contains("gpt-test") && text.contains("(your key)"),
        "{text}"
    );
    assert_eq!(
        s.js("return document.querySelectorAll('#daily rect').length")
            .await,
        json!(1)
    );
    s.screenshot("usage").await;
    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    assert_eq!(metric(&server, "easel_csp_violations_total").await, 0);
    s.end().await;
    server.stop().await;
    mock.stop().await;
}

#[tokio::test]
async fn a_person_gets_alt_text_for_dropped_images_from_the_local_model() {
    use easel::local_model::fixture::{Store, TINY_CAPTION, write_tiny};
    let files = tempfile::tempdir().unwrap();
    let model = files.path().join("blip-tiny");
    write_tiny(&model, Store::Safetensors).unwrap();
    let server = TestServer::start(&format!(
        "\n[alt_text]\nmodel = \"local\"\n[local_model]\ndir = \"{}\"\n",
        model.display()
    ))
    .await;
    server
        .make_account("ada@example.com", easel::auth::Role::Member, PASSWORD)
        .await;
    let mut paths = Vec::new();
    for (i, (w, h)) in [(64u32, 48u32), (30, 90)].iter().enumerate() {
        let p = files.path().join(format!("photo-{i}.png"));
        image::RgbImage::from_fn(*w, *h, |x, y| image::Rgb([x as u8 * 3, y as u8 * 2, 90]))
            .save(&p)
            .unwrap();
        paths.push(p.display().to_string());
    }
    let driver = Driver::start().await;
    let s = driver.session().await;
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/alt-text")).await;
    s.wait_ready("alt-text").await;

    // Two files chosen (as a drop or the file picker gives them), plus a URL Easel
    // must refuse.
    let input = s.element("#alt-files").await;
    s.post(
        &format!("/element/{input}/value"),
        json!({"text": paths.join("\n")}),
    )
    .await;
    s.wait_for(
        "return document.getElementById('alt-chosen').textContent",
        json!("2 images: photo-0.png, photo-1.png"),
    )
    .await;
    s.type_into("#alt-urls", "http://127.0.0.1/private.png")
        .await;
    s.click("#alt-submit").await;
    s.wait_for(
        "return [...document.querySelectorAll('#alt-results [data-state]')].map(e => e.dataset.state).join(',')",
        json!("done,done,error"),
    )
    .await;
    let mut want = TINY_CAPTION.to_string();
    want[..1].make_ascii_uppercase();
    let texts = s
        .js("return [...document.querySelectorAll('#alt-results textarea')].map(t => t.value)")
        .await;
    assert_eq!(texts, json!([want, want, ""]));
    let problem = s
        .js("return document.querySelector('#alt-results li[data-index=\"2\"] .meta').textContent")
        .await;
    assert!(
        problem.as_str().unwrap_or("").contains("loopback"),
        "{problem}"
    );
    let copy_enabled = s
        .js("return [...document.querySelectorAll('#alt-results button.copy')].map(b => !b.disabled)")
        .await;
    assert_eq!(copy_enabled, json!([true, true, false]));
    // What was kept is listed, without the images.
    s.wait_for(
        "return document.querySelectorAll('#alt-history tbody tr').length",
        json!(2),
    )
    .await;
    s.js("document.getElementById('alt-results').scrollIntoView(); return true")
        .await;
    s.screenshot("alt-text").await;
    let problems = s.console_problems().await;
    // The refused URL is an expected 400 in the console; nothing else may appear.
    let unexpected: Vec<_> = problems
        .iter()
        .filter(|p| !p.contains("/v1/alt-text") || !p.contains("400"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    s.end().await;
    server.stop().await;
}

#[actix_web::test]
async fn a_person_requests_deletion_in_the_privacy_centre_and_cancels_it_by_signing_in() {
    let server = TestServer::start(FAST).await;
    make_admin(&server, "admin@example.com").await;
    let ada = server
        .make_account("ada@example.com", easel::auth::Role::Member, PASSWORD)
        .await;
    let driver = Driver::start().await;
    let s = driver.session().await;

    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/privacy")).await;
    s.wait_ready("privacy").await;
    s.wait_for(
        "return document.querySelectorAll('#held tbody tr').length > 0",
        json!(true),
    )
    .await;
    let export = s
        .js("return document.getElementById('export-link').getAttribute('href')")
        .await;
    assert_eq!(export, json!("/api/privacy/export"));

    // Consent: off by default; turning it on is stored.
    assert_eq!(
        s.js("return document.getElementById('f-analytics').checked")
            .await,
        json!(false)
    );
    s.click("#f-analytics").await;
    s.wait_for(
        "return document.getElementById('consent-history').textContent.startsWith('Last changed')",
        json!(true),
    )
    .await;
    assert!(server.app().services().analytics.consents(&ada));
    s.screenshot("privacy-centre").await;

    // Requesting deletion signs the person out and says how to cancel.
    s.type_into("#deletion-form [name=password]", PASSWORD)
        .await;
    s.click("#deletion-form button[type=submit]").await;
    s.wait_ready("signin").await;
    s.wait_for(
        "return ((document.getElementById('flash') || {}).textContent || '').startsWith('Deletion requested')",
        json!(true),
    )
    .await;
    s.screenshot("deletion-requested").await;
    let pending = server
        .app()
        .services()
        .accounts
        .deletion_request(&ada)
        .await
        .expect("read");
    assert!(pending.is_some(), "the request is stored");

    // Signing in again cancels it, and the page says so.
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.wait_for(
        "return ((document.getElementById('flash') || {}).textContent || '').includes('cancelled your deletion request')",
        json!(true),
    )
    .await;
    let pending = server
        .app()
        .services()
        .accounts
        .deletion_request(&ada)
        .await
        .expect("read");
    assert!(pending.is_none(), "cancelled");
    s.goto(&server.url("/#/privacy")).await;
    s.wait_ready("privacy").await;
    assert_eq!(
        s.js("return !!document.getElementById('deletion-form')")
            .await,
        json!(true)
    );
    s.click("#signout").await;
    s.wait_ready("signin").await;

    // An admin sees the report, and cancels a deletion an admin asked for.
    server
        .app()
        .privacy()
        .request_deletion(&ada, easel::accounts::Actor::Cli)
        .await
        .expect("request");
    s.sign_in(&server, "admin@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/admin")).await;
    s.wait_ready("admin").await;
    s.wait_for(
        &format!(
            "return !!document.querySelector('#privacy-report button[data-cancel=\"{ada}\"]')"
        ),
        json!(true),
    )
    .await;
    s.screenshot("privacy-report").await;
    s.click(&format!("#privacy-report button[data-cancel=\"{ada}\"]"))
        .await;
    s.wait_for(
        &format!(
            "return !!document.querySelector('#privacy-report button[data-cancel=\"{ada}\"]')"
        ),
        json!(false),
    )
    .await;
    assert!(
        server
            .app()
            .services()
            .accounts
            .deletion_request(&ada)
            .await
            .expect("read")
            .is_none()
    );

    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "console problems: {problems:#?}");
    assert_eq!(metric(&server, "easel_csp_violations_total").await, 0);
    s.end().await;
    server.stop().await;
}

#[tokio::test]
async fn a_person_uploads_tags_and_deletes_images_in_the_library() {
    let files = tempfile::tempdir().unwrap();
    let server = TestServer::start("").await;
    server
        .make_account("ada@example.com", easel::auth::Role::Member, PASSWORD)
        .await;
    let mut paths = Vec::new();
    for (i, (w, h)) in [(300u32, 200u32), (120, 240)].iter().enumerate() {
        let p = files.path().join(format!("shoe-{i}.png"));
        image::RgbImage::from_fn(*w, *h, |x, y| image::Rgb([x as u8, y as u8, 40 * i as u8]))
            .save(&p)
            .unwrap();
        paths.push(p.display().to_string());
    }
    let driver = Driver::start().await;
    let s = driver.session().await;
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/library")).await;
    s.wait_ready("library").await;
    s.wait_for("return !!document.getElementById('lib-empty')", json!(true))
        .await;

    // Two files chosen with a tag for the upload; each gets its own progress row.
    s.type_into("#lib-upload-tags", "Summer").await;
    let input = s.element("#lib-files").await;
    s.post(
        &format!("/element/{input}/value"),
        json!({"text": paths.join("\n")}),
    )
    .await;
    s.wait_for(
        "return [...document.querySelectorAll('#lib-progress [data-state]')].map(e => e.dataset.state).join(',')",
        json!("done,done"),
    )
    .await;
    s.wait_for(
        "return document.querySelectorAll('#lib-grid .lib-item').length",
        json!(2),
    )
    .await;
    // The thumbnails load (decoded by the browser from the server's sealed store).
    s.wait_for(
        "return [...document.querySelectorAll('#lib-grid img')].every(i => i.complete && i.naturalWidth > 0)",
        json!(true),
    )
    .await;
    let tags = s
        .js("return [...document.querySelectorAll('#lib-grid .lib-tags')].map(t => t.textContent)")
        .await;
    assert_eq!(tags, json!(["summer", "summer"]));

    // Open one, tag it and name it in the detail view.
    s.click("#lib-grid .lib-item:last-child .lib-open").await;
    s.wait_for(
        "return document.getElementById('lib-detail').hidden",
        json!(false),
    )
    .await;
    s.type_into("#lib-d-tags", "summer, red").await;
    s.type_into("#lib-d-name", "red shoe.png").await;
    s.click("#lib-d-save").await;
    s.wait_for(
        "return [...document.querySelectorAll('#lib-grid .lib-name')].map(n => n.textContent).includes('red shoe.png')",
        json!(true),
    )
    .await;
    s.type_into("#lib-tag", "red").await;
    s.click("#lib-filters button[type=submit]").await;
    s.wait_for(
        "return [...document.querySelectorAll('#lib-grid .lib-name')].map(n => n.textContent).join(',')",
        json!("red shoe.png"),
    )
    .await;
    s.screenshot("library").await;

    // Select it and delete it (the button asks once more before it deletes).
    s.click("#lib-grid .lib-item input[type=checkbox]").await;
    s.wait_for(
        "return document.getElementById('lib-count').textContent",
        json!("1 selected"),
    )
    .await;
    s.click("#lib-delete").await;
    s.click("#lib-delete").await;
    s.wait_for("return !!document.getElementById('lib-empty')", json!(true))
        .await;
    let a = server
        .app()
        .services()
        .library
        .list(
            &server
                .app()
                .services()
                .accounts
                .find_by_email("ada@example.com")
                .await
                .unwrap()
                .id,
            easel::library::Query {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.total, 1, "the other image stays");
    assert_eq!(a.items[0].tags, ["summer"]);
    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
    s.end().await;
    server.stop().await;
}

/// Clicks the element matching `css` through the page (for elements WebDriver would
/// refuse as covered, such as a port under a wire's hit area).
async fn press(s: &Session<'_>, css: &str) {
    let got = s
        .js(&format!(
            "const e = document.querySelector({css:?}); if (!e) return false; e.click(); return true"
        ))
        .await;
    assert_eq!(got, json!(true), "nothing matches {css}");
}

#[tokio::test]
async fn a_person_builds_a_skill_in_the_editor_runs_it_and_sees_the_output() {
    let server = TestServer::start(FAST).await;
    let (_, key) = server.member_with_key("ada@example.com", PASSWORD).await;
    let driver = Driver::start().await;
    let s = driver.session().await;
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/skills")).await;
    s.wait_ready("skills").await;
    s.wait_for("return !!document.getElementById('sk-none')", json!(true))
        .await;
    // The three example skills are offered.
    let templates = s
        .js("return [...document.querySelectorAll('#sk-templates [data-template]')].map(b => b.dataset.template)")
        .await;
    assert_eq!(
        templates,
        json!([
            "product-alt-seo",
            "white-background-sizes",
            "describe-and-tag"
        ])
    );

    s.type_into("#sk-new-name", "Greeter").await;
    s.click("#sk-new button[type=submit]").await;
    s.wait_for(
        "return document.querySelector('main').dataset.ready === 'skills' && !!document.getElementById('sk-board')",
        json!(true),
    )
    .await;
    // An empty graph has problems (no output); they are listed.
    s.wait_for(
        "return [...document.querySelectorAll('#sk-problems li')].some(l => l.dataset.code)",
        json!(true),
    )
    .await;

    // Text input → template → output, from the palette.
    s.click("#sk-palette [data-add='input.text']").await;
    s.click("#sk-palette [data-add='template']").await;
    s.click("#sk-palette [data-add='output']").await;
    let ids = s
        .js("return [...document.querySelectorAll('#sk-board .sk-node')].map(n => n.dataset.node)")
        .await;
    assert_eq!(ids, json!(["text", "template", "output"]));
    // The output node is selected: name its field.
    s.type_into("#sk-p-name", "greeting").await;
    // The template's variables become its input ports.
    s.click("#sk-board .sk-node[data-node='template'] .sk-head")
        .await;
    s.type_into("#sk-p-template", "Hello, {{who}}!").await;
    s.wait_for(
        "return [...document.querySelectorAll(\"#sk-board .sk-node[data-node='template'] .sk-port.in\")].map(p => p.dataset.port).join()",
        json!("who"),
    )
    .await;
    // Arming an output port marks the input ports that take its type.
    press(
        &s,
        "#sk-board .sk-node[data-node='text'] .sk-port.out[data-port='text']",
    )
    .await;
    let marks = s
        .js("return document.querySelector(\"#sk-board .sk-node[data-node='template'] .sk-port.in\").className")
        .await;
    assert!(marks.as_str().unwrap().contains("can"), "{marks}");
    press(
        &s,
        "#sk-board .sk-node[data-node='template'] .sk-port.in[data-port='who']",
    )
    .await;
    press(
        &s,
        "#sk-board .sk-node[data-node='template'] .sk-port.out[data-port='text']",
    )
    .await;
    press(
        &s,
        "#sk-board .sk-node[data-node='output'] .sk-port.in[data-port='value']",
    )
    .await;
    s.wait_for(
        "return document.querySelectorAll('#sk-board path.sk-wire').length",
        json!(2),
    )
    .await;
    s.wait_for(
        "return !!document.getElementById('sk-no-problems') && document.getElementById('sk-no-problems').textContent.startsWith('None')",
        json!(true),
    )
    .await;
    // A node is dragged by its title (real pointer events through WebDriver).
    let before = s
        .js("return parseInt(document.querySelector(\"#sk-board .sk-node[data-node='output']\").style.left)")
        .await;
    let grip = s
        .element("#sk-board .sk-node[data-node='output'] .sk-head")
        .await;
    s.post(
        "/actions",
        json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
            {"type": "pointerMove", "origin": {"element-6066-11e4-a52e-4f735466cecf": grip}, "x": 0, "y": 0},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerMove", "origin": "pointer", "x": 60, "y": 40, "duration": 100},
            {"type": "pointerUp", "button": 0},
        ]}]}),
    )
    .await;
    let after = s
        .js("return parseInt(document.querySelector(\"#sk-board .sk-node[data-node='output']\").style.left)")
        .await;
    assert_eq!(
        after.as_i64().unwrap() - before.as_i64().unwrap(),
        60,
        "{before} → {after}"
    );
    assert_eq!(
        s.js("return !!document.getElementById('sk-unsaved')").await,
        json!(true)
    );
    s.screenshot("skill-editor").await;

    // Run it: the graph is saved first, progress shows on the nodes, the output below.
    s.wait_for(
        "return !!document.getElementById('sk-in-text')",
        json!(true),
    )
    .await;
    s.type_into("#sk-in-text", "Ada <b>Lovelace</b>").await;
    s.click("#sk-run-go").await;
    s.wait_for(
        "const d = document.querySelector('#sk-run-outputs [data-output=greeting]'); return d ? d.textContent : null",
        json!("Hello, Ada <b>Lovelace</b>!"),
    )
    .await;
    let status = s
        .js("return document.querySelector('#sk-run-status [data-status]').dataset.status")
        .await;
    assert_eq!(status, json!("succeeded"));
    let states = s
        .js("return [...document.querySelectorAll('#sk-board .sk-node')].map(n => n.classList.contains('succeeded'))")
        .await;
    assert_eq!(states, json!([true, true, true]));
    assert_eq!(
        s.js("return document.querySelectorAll('#sk-run-outputs b').length")
            .await,
        json!(0),
        "the output is text, not markup"
    );
    s.wait_for(
        "return [...document.querySelectorAll('#sk-version-list tr')].map(r => r.dataset.version).join()",
        json!("2,1"),
    )
    .await;
    // The run is listed as metadata: from the editor, succeeded, no input or output.
    s.wait_for(
        "const r = document.querySelector('#sk-run-list tr'); return r ? [...r.cells].slice(1, 4).map(c => c.textContent).join() : null",
        json!("v2,editor,succeeded"),
    )
    .await;
    let runs = s
        .js("return document.getElementById('sk-runs').textContent")
        .await;
    assert!(!runs.as_str().unwrap().contains("Lovelace"), "{runs}");
    // The wide editor page still fits the window: no sideways scrolling.
    assert_eq!(
        s.js("return document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true)
    );
    s.screenshot("skill-run").await;

    // Publish: agents see it.
    s.click("#sk-publish").await;
    s.wait_for(
        "return !!document.querySelector('#sk-version-list tr[data-version=\"2\"] .pill.ok')",
        json!(true),
    )
    .await;
    let agents: Value = common::http()
        .get(server.url("/v1/skills"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(agents["data"][0]["slug"], "greeter");
    assert_eq!(agents["data"][0]["version"], 2);
    assert_eq!(
        agents["data"][0]["input_schema"]["required"],
        json!(["text"])
    );

    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(metric(&server, "easel_csp_violations_total").await, 0);
    s.end().await;
    server.stop().await;
}

#[tokio::test]
async fn an_imported_skill_with_hostile_strings_stays_text_in_the_editor() {
    let files = tempfile::tempdir().unwrap();
    let server = TestServer::start(FAST).await;
    server
        .make_account("ada@example.com", easel::auth::Role::Member, PASSWORD)
        .await;
    let evil = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>";
    let file = files.path().join("evil.skill.json");
    let skill = json!({
        "easel_skill": 1, "slug": "evil", "name": format!("Evil {evil}"), "description": evil,
        "graph": {"nodes": [
            {"id": format!("in{evil}"), "type": "input.text", "params": {"name": "x", "description": evil, "default": evil}, "position": {"x": 20, "y": 20}},
            {"id": "ask", "type": "chat", "params": {"model": evil, "system": evil}, "position": {"x": 300, "y": 20}},
            {"id": "odd", "type": evil, "params": {}, "position": {"x": 300, "y": 220}},
            {"id": "out", "type": "output", "params": {"name": evil}, "position": {"x": 600, "y": 20}}
        ], "edges": [
            {"from": format!("in{evil}.text"), "to": "ask.prompt"},
            {"from": "ask.text", "to": format!("out.{evil}")}
        ]}
    });
    std::fs::write(&file, skill.to_string()).unwrap();

    let driver = Driver::start().await;
    let s = driver.session().await;
    s.sign_in(&server, "ada@example.com", PASSWORD).await;
    s.wait_ready("keys").await;
    s.goto(&server.url("/#/skills")).await;
    s.wait_ready("skills").await;
    let input = s.element("#sk-import-file").await;
    s.post(
        &format!("/element/{input}/value"),
        json!({"text": file.display().to_string()}),
    )
    .await;
    s.wait_for(
        "return location.hash === '#/skills/evil' && !!document.getElementById('sk-board') && document.querySelectorAll('#sk-problems li[data-code]').length > 0",
        json!(true),
    )
    .await;
    // Every hostile string is on the page as text: in the title, the node ids, the
    // problems drawn on the nodes (the unknown model and type are named in them).
    let title = s
        .js("return document.getElementById('sk-title').textContent")
        .await;
    assert_eq!(title, json!(format!("Evil {evil}")));
    let ids = s
        .js("return [...document.querySelectorAll('#sk-board .sk-node')].map(n => n.dataset.node)")
        .await;
    assert_eq!(ids, json!([format!("in{evil}"), "ask", "odd", "out"]));
    let on_nodes = s
        .js("return document.getElementById('sk-board').textContent")
        .await;
    assert!(on_nodes.as_str().unwrap().contains(evil), "{on_nodes}");
    // The test-run form shows the input's description as text too.
    let run_form = s
        .js("return document.getElementById('sk-run-inputs').textContent")
        .await;
    assert!(run_form.as_str().unwrap().contains(evil));
    // Selecting the nodes draws their params in the side panel, as values.
    s.click("#sk-board .sk-node[data-node='ask'] .sk-head")
        .await;
    let system = s
        .js("return document.getElementById('sk-p-system').value")
        .await;
    assert_eq!(system, json!(evil));
    press(&s, "#sk-board div.sk-node:first-of-type .sk-head").await;
    let id = s
        .js("return document.getElementById('sk-p-id').value")
        .await;
    assert_eq!(id, json!(format!("in{evil}")));
    // Nothing ran and no markup was made from the file.
    assert_eq!(
        s.js("return window.__pwned === undefined").await,
        json!(true)
    );
    assert_eq!(
        s.js("return document.querySelectorAll('main img, main script, #sk-board b').length")
            .await,
        json!(0)
    );
    s.screenshot("skill-hostile").await;
    let problems = s.console_problems().await;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(metric(&server, "easel_csp_violations_total").await, 0);
    s.end().await;
    server.stop().await;
}
