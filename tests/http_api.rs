//! The HTTP surface of the foundation, over real HTTP against an in-process server.

mod common;

use common::TestServer;
use reqwest::StatusCode;

fn client() -> reqwest::Client {
    common::http()
}

async fn get_json(url: String) -> serde_json::Value {
    let res = client().get(&url).send().await.expect("get");
    assert!(res.status().is_success(), "{url}: {}", res.status());
    res.json().await.expect("json body")
}

/// The value of one series on the /metrics page.
async fn metric(s: &TestServer, series: &str) -> u64 {
    s.metric(series)
        .await
        .unwrap_or_else(|| panic!("no {series} on /metrics"))
}

async fn json_error(res: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = res.status();
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "errors are JSON"
    );
    let body: serde_json::Value = res.json().await.expect("json body");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string() && err["code"].is_string(), "{body}");
    (status, body)
}

#[actix_web::test]
async fn health_readiness_and_metrics_answer_over_real_http() {
    let s = TestServer::start("").await;
    let c = client();
    assert_eq!(get_json(s.url("/healthz")).await["status"], "ok");
    // Readiness proves storage is writable with a durable commit of its own.
    let commits_before = metric(&s, "easel_store_commit_batch_size_count").await;
    assert_eq!(get_json(s.url("/readyz")).await["status"], "ready");
    assert_eq!(
        metric(&s, "easel_store_commit_batch_size_count").await,
        commits_before + 1
    );

    let metrics = c.get(s.url("/metrics")).send().await.expect("metrics");
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains(&format!(
            "easel_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains(r#"easel_http_requests_total{method="GET",route="/readyz",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"easel_http_request_duration_seconds_count{route="/healthz"} 1"#),
        "{text}"
    );
    s.stop().await;
}

#[actix_web::test]
async fn every_response_carries_the_security_headers_and_a_request_id() {
    let s = TestServer::start("").await;
    for path in ["/", "/healthz", "/no-such-route"] {
        let res = client().get(s.url(path)).send().await.expect("get");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-request-id"].len(), 24, "{path}");
    }
    let echoed = client()
        .get(s.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .expect("get");
    assert_eq!(echoed.headers()["x-request-id"], "trace-42");
    s.stop().await;
}

#[actix_web::test]
async fn the_ui_shell_is_served_with_etags_and_versioned_assets() {
    let s = TestServer::start("").await;
    let c = client();
    let res = c.get(s.url("/")).send().await.expect("index");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let etag = res.headers()["etag"].to_str().expect("etag").to_string();
    let html = res.text().await.expect("html");
    assert!(
        html.contains("<nav") && html.contains("Alt text") && html.contains("Privacy"),
        "{html}"
    );
    assert!(!html.contains("{{asset:"), "asset links are rendered");
    assert!(
        !html.contains("<script>") && !html.contains("http://") && !html.contains("https://"),
        "no inline script, no external URL"
    );

    let again = c
        .get(s.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("index again");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Every linked asset exists and is cacheable for a year at its versioned URL.
    let links: Vec<&str> = html
        .split("\"/static/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(links.len() >= 3, "{links:?}");
    for link in links {
        let res = c
            .get(s.url(&format!("/static/{link}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(res.status(), 200, "{link}");
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{link}"
        );
        assert!(res.headers().contains_key("etag"), "{link}");
    }
    let plain = c
        .get(s.url("/static/app.js"))
        .send()
        .await
        .expect("unversioned");
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    assert_eq!(plain.headers()["content-type"], "text/javascript");
    let (status, body) = json_error(
        c.get(s.url("/static/../Cargo.toml"))
            .send()
            .await
            .expect("traversal"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    s.stop().await;
}

#[actix_web::test]
async fn a_body_over_the_limit_gets_413_in_the_json_error_shape() {
    let s = TestServer::start_with("", &[("EASEL_SERVER__MAX_BODY_BYTES", "2048")]).await;
    let c = client();
    let report = |len: usize| {
        format!(
            r#"{{"csp-report":{{"blocked-uri":"{}"}}}}"#,
            "a".repeat(len)
        )
    };

    let small = c
        .post(s.url("/api/csp-report"))
        .body(report(1000))
        .send()
        .await
        .expect("small");
    assert_eq!(small.status(), StatusCode::NO_CONTENT);

    // Declared length over the limit: refused before the body is read.
    let (status, body) = json_error(
        c.post(s.url("/api/csp-report"))
            .body(report(5000))
            .send()
            .await
            .expect("big"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "body_too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("2048"),
        "{body}"
    );

    // A chunked body with no length is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'x'; 1024])).collect();
    let stream = reqwest::Body::wrap_stream(futures_util_stream(chunks));
    let (status, body) = json_error(
        c.post(s.url("/api/csp-report"))
            .body(stream)
            .send()
            .await
            .expect("chunked"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    s.stop().await;
}

fn futures_util_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[actix_web::test]
async fn unknown_routes_and_broken_json_get_the_json_error_shape() {
    let s = TestServer::start("").await;
    let c = client();
    let (status, body) =
        json_error(c.get(s.url("/v1/nothing-here")).send().await.expect("404")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["type"], "not_found_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("/v1/nothing-here")
    );

    let (status, body) = json_error(
        c.post(s.url("/api/csp-report"))
            .body("{not json")
            .send()
            .await
            .expect("400"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");
    s.stop().await;
}

#[actix_web::test]
async fn the_openapi_document_is_3_1_and_lists_the_routes() {
    let s = TestServer::start("").await;
    let doc = get_json(s.url("/openapi.json")).await;
    assert!(
        doc["openapi"].as_str().expect("version").starts_with("3.1"),
        "{doc}"
    );
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/api/status",
        "/api/csp-report",
        "/api/auth/login",
        "/api/account",
        "/api/account/sessions",
        "/api/keys",
        "/api/keys/{id}",
        "/api/admin/users",
        "/api/admin/invites",
        "/api/admin/audit",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "missing {path} in {}",
            doc["paths"]
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"], "bearer",
        "the key scheme is declared"
    );
    let status = get_json(s.url("/api/status")).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["ready"], true);
    s.stop().await;
}

#[actix_web::test]
async fn a_csp_violation_report_is_counted() {
    let s = TestServer::start("").await;
    let c = client();
    let res = c
        .post(s.url("/api/csp-report"))
        .header("content-type", "application/csp-report")
        .body(r#"{"csp-report":{"violated-directive":"script-src","blocked-uri":"inline"}}"#)
        .send()
        .await
        .expect("report");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(metric(&s, "easel_csp_violations_total").await, 1);
    s.stop().await;
}
