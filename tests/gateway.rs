//! The OpenAI-compatible gateway over real HTTP: an in-process Easel in front of a
//! mock provider (a real HTTP server on 127.0.0.1) that speaks each wire format.

mod common;

use common::api::{Browser, code};
use common::mock::{COMPLETION_TOKENS, Fault, Mock, ORG_KEY, PNG_B64, PROMPT_TOKENS, catalog};
use common::{TestServer, write_config};
use easel::auth::Role;
use easel::ledger::{EntryKind, MICRO, Posting};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

/// A server in front of a mock, one member with an API key and some credits.
struct Setup {
    s: TestServer,
    mock: Mock,
    _keys: tempfile::TempDir,
    account: String,
    key: String,
}

async fn setup(credits: f64) -> Setup {
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start(&catalog(&mock, keys.path())).await;
    let (account, key) = s.member_with_key("ada@example.com", PASSWORD).await;
    if credits > 0.0 {
        grant(&s, &account, credits).await;
    }
    Setup {
        s,
        mock,
        _keys: keys,
        account,
        key,
    }
}

async fn grant(s: &TestServer, account: &str, credits: f64) {
    let ledger = &s.running.as_ref().expect("running").services().ledger;
    ledger
        .post(
            account,
            EntryKind::Grant,
            (credits * MICRO as f64) as i64,
            Posting::default(),
        )
        .await
        .expect("grant");
}

impl Setup {
    fn ledger(&self) -> &easel::ledger::Ledger {
        &self.s.running.as_ref().expect("running").services().ledger
    }

    fn usage(&self) -> &easel::usage::Usage {
        &self.s.running.as_ref().expect("running").services().usage
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let res = common::http()
            .post(self.s.url(path))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn chat(&self, model: &str, text: &str) -> (StatusCode, Value) {
        self.post(
            "/v1/chat/completions",
            json!({"model": model, "messages": [{"role": "user", "content": text}]}),
        )
        .await
    }

    /// Waits until `n` usage records exist (they commit just after the response).
    async fn records(&self, n: usize) -> Vec<easel::usage::UsageRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = self.usage().all(&self.account).await.expect("usage");
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Credits held by requests in flight, once they are all done.
    async fn settled(&self) -> (i64, i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (balance, held) = self.ledger().balance(&self.account);
            if held == 0 || Instant::now() > deadline {
                return (balance, held);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The ledger's entries sum to the stored balance, which is never negative.
    async fn assert_balanced(&self) {
        let running = self.s.running.as_ref().expect("running");
        running
            .services()
            .gateway
            .drain(Duration::from_secs(10))
            .await;
        let entries = self
            .ledger()
            .all_entries(&self.account)
            .await
            .expect("entries");
        let sum: i64 = entries.iter().map(|e| e.amount).sum();
        let stored = self
            .ledger()
            .stored_balance(&self.account)
            .await
            .expect("balance");
        assert_eq!(sum, stored, "entries sum to the balance");
        assert!(stored >= 0, "no balance below zero");
        assert_eq!(self.ledger().balance(&self.account), (stored, 0));
    }
}

/// One chat answer: 100 input tokens at $1/M and 20 output at $2/M, 1000 credits a dollar.
const CHAT_COST: i64 = (PROMPT_TOKENS as i64 + COMPLETION_TOKENS as i64 * 2) * 1000;

#[actix_web::test]
async fn chat_completions_are_proxied_metered_and_recorded() {
    let t = setup(10.0).await;
    let (status, body) = t.chat("gpt-test", "hello there").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["model"], "gpt-test",
        "the caller's model name comes back"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello there"
    );
    assert_eq!(body["usage"]["prompt_tokens"], PROMPT_TOKENS);

    let seen = t.mock.seen();
    let call = seen.last().expect("the provider was called");
    assert_eq!(call.path, "/openai/v1/chat/completions");
    assert_eq!(call.body["model"], "gpt-upstream");
    assert_eq!(call.body["store"], false, "OpenAI's privacy option is sent");
    assert_eq!(call.headers["authorization"], format!("Bearer {ORG_KEY}"));

    let records = t.records(1).await;
    let r = &records[0];
    assert_eq!(
        (r.endpoint.as_str(), r.model.as_str(), r.provider.as_str()),
        ("chat.completions", "gpt-test", "openai")
    );
    assert_eq!(
        (r.input_tokens, r.output_tokens, r.status),
        (PROMPT_TOKENS, COMPLETION_TOKENS, 200)
    );
    assert_eq!(r.credits, CHAT_COST);
    assert!(r.key.is_some());
    t.assert_balanced().await;
    assert_eq!(t.ledger().balance(&t.account).0, 10 * MICRO - CHAT_COST);

    // Streaming: chunks are relayed, usage comes at the end when asked for.
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(
            &json!({"model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "stream please"}]}),
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = res.text().await.expect("events");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json event"))
        .collect();
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello");
    assert!(events.iter().all(|e| e["model"] == "gpt-test"));
    let last = events.last().expect("a usage chunk");
    assert_eq!(last["usage"]["completion_tokens"], COMPLETION_TOKENS);
    assert_eq!(
        last["id"], "chatcmpl-mock",
        "the usage chunk takes the stream's id"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let records = t.records(2).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].credits, CHAT_COST, "streamed usage is charged");
    t.assert_balanced().await;

    // A stream without include_usage gets no usage chunk, but is still charged.
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("stream");
    let text = res.text().await.expect("events");
    assert!(!text.contains("\"usage\""), "{text}");
    let records = t.records(3).await;
    assert_eq!(records[2].credits, CHAT_COST);
    assert_eq!(
        t.mock.seen().last().unwrap().body["stream_options"]["include_usage"],
        true,
        "Easel always asks the provider for usage"
    );

    // Models: what the caller can use; a model whose only provider has no key is hidden.
    let res = common::http()
        .get(t.s.url("/v1/models"))
        .bearer_auth(&t.key)
        .send()
        .await
        .expect("models");
    let list: Value = res.json().await.expect("json");
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-test") && ids.contains(&"flux-test"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"hidden"), "{ids:?}");
    let (status, body) = t.chat("hidden", "x").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "no_route")
    );
    t.s.stop().await;
    t.mock.stop().await;
}

fn code_of(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[actix_web::test]
async fn failing_routes_fall_back_and_a_failing_provider_is_skipped() {
    let t = setup(10.0).await;
    // openai fails twice (first try and its retry); the backup route answers.
    t.mock
        .fail("openai", [Fault::Status(500), Fault::Status(503)]);
    let (status, body) = t.chat("gpt-test", "one").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((t.mock.calls("openai"), t.mock.calls("backup")), (2, 1));
    assert_eq!(t.records(1).await[0].provider, "backup");

    // A 429 and a dropped connection are retried the same way.
    t.mock.fail("openai", [Fault::Status(429), Fault::Drop]);
    let (status, _) = t.chat("gpt-test", "two").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((t.mock.calls("openai"), t.mock.calls("backup")), (4, 2));

    // Four failures in a row so far is past breaker_failures = 3: openai is skipped.
    let (status, _) = t.chat("gpt-test", "three").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (t.mock.calls("openai"), t.mock.calls("backup")),
        (4, 3),
        "openai skipped"
    );

    // A 400 from the provider is not retried: another try cannot mend it.
    t.mock.fail("backup", [Fault::Status(400)]);
    let (status, body) = t.chat("gpt-test", "four").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "upstream_rejected")
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("mock failure 400"), "{msg}");
    // The mock quotes the key it got, as some providers do: it is masked.
    assert!(
        msg.contains("[key]") && !msg.contains("sk-backup-key-0001"),
        "{msg}"
    );
    assert_eq!(t.mock.calls("backup"), 4);
    let (balance, held) = t.settled().await;
    assert_eq!(held, 0);
    assert_eq!(
        balance,
        10 * MICRO - 3 * CHAT_COST,
        "failed requests cost nothing"
    );
    let records = t.records(4).await;
    assert_eq!(records.last().unwrap().status, 400);
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn upstream_faults_answer_safe_errors_and_release_every_credit() {
    let t = setup(10.0).await;
    let before = t.ledger().balance(&t.account).0;
    // Garbage on both tries: 502 with a message that holds no part of the body.
    t.mock.fail("openai", [Fault::Garbage, Fault::Garbage]);
    let (status, body) = t.chat("solo", "x").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_GATEWAY, "upstream_error")
    );
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("could not read") && !msg.contains("<html>"),
        "{msg}"
    );
    assert_eq!(body["error"]["type"], "api_error");

    // Rate limited on every try: 429 with Retry-After.
    t.mock
        .fail("openai", [Fault::Status(429), Fault::Status(429)]);
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "solo", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());

    let (balance, held) = t.settled().await;
    assert_eq!(
        (balance, held),
        (before, 0),
        "nothing held, nothing charged"
    );
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;

    // Slower than the provider's 2 s timeout on both tries: 504.
    let t = setup(10.0).await;
    t.mock.fail(
        "openai",
        [
            Fault::Slow(Duration::from_secs(3)),
            Fault::Slow(Duration::from_secs(3)),
        ],
    );
    let (status, body) = t.chat("solo", "x").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        "{body}"
    );
    let (balance, held) = t.settled().await;
    assert_eq!(
        (balance, held),
        (10 * MICRO, 0),
        "nothing held, nothing charged"
    );
    let records = t.records(1).await;
    assert_eq!((records[0].status, records[0].credits), (504, 0));
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn bad_requests_get_clear_openai_shaped_errors_and_store_nothing() {
    let t = setup(0.0).await;
    let send = |body: &'static str, ct: &'static str| {
        let url = t.s.url("/v1/chat/completions");
        let key = t.key.clone();
        async move {
            let res = common::http()
                .post(url)
                .bearer_auth(key)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = send("{not json", "application/json").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let (status, body) = send(
        r#"{"model": "gpt-test", "messages": [{"role": "user", "content": 42}]}"#,
        "application/json",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("messages[0]"), "the field is named: {msg}");
    let (status, body) = send(r#"{"messages": []}"#, "application/json").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("model"),
        "{body}"
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send(r#"{"model": "gpt-test", "messages": []}"#, "text/plain").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, body) = t.chat("no-such-model", "x").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::NOT_FOUND, "model_not_found")
    );
    assert_eq!(body["error"]["type"], "not_found_error");

    // No credits: 402 before any provider is called.
    let (status, body) = t.chat("gpt-test", "x").await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_credits")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("credits")
    );
    assert_eq!(t.mock.seen().len(), 0, "no provider call without credits");

    // A capability the model lacks.
    let (status, body) = t
        .post(
            "/v1/images/generations",
            json!({"model": "gpt-test", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "model_not_capable")
    );
    let (status, body) = t
        .post(
            "/v1/images/generations",
            json!({"model": "flux-test", "prompt": "a cat", "n": 50}),
        )
        .await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );

    // Oversized body: 413.
    let big = format!(
        r#"{{"model": "gpt-test", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "a".repeat(26 * 1024 * 1024)
    );
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A gzip body is decoded before the limit counts it: a small compressed body that
    // unpacks past the limit (25 MiB) is refused, and an ordinary one is read.
    let gzip = |text: &str| {
        use std::io::Write;
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(text.as_bytes()).unwrap();
        z.finish().unwrap()
    };
    let send_gzip = |body: Vec<u8>| {
        common::http()
            .post(t.s.url("/v1/chat/completions"))
            .bearer_auth(&t.key)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
    };
    let bomb = gzip(&format!(
        r#"{{"model": "gpt-test", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "a".repeat(64 * 1024 * 1024)
    ));
    assert!(bomb.len() < 1024 * 1024, "{} bytes compressed", bomb.len());
    let res = send_gzip(bomb).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    let res = send_gzip(gzip(
        r#"{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}"#,
    ))
    .await
    .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::PAYMENT_REQUIRED,
        "decoded and read: it fails only for want of credits"
    );
    let res = send_gzip(gzip("{not json")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // No key: 401 in OpenAI's shape.
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error");

    assert!(
        t.usage().all(&t.account).await.unwrap().is_empty(),
        "nothing recorded"
    );
    assert!(t.ledger().all_entries(&t.account).await.unwrap().is_empty());
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn concurrent_requests_never_spend_more_than_the_balance() {
    // Five images' worth of credits; fifty requests at once.
    let t = setup(5.0 * 40.0).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = t.s.url("/v1/images/generations");
        let key = t.key.clone();
        tasks.push(tokio::spawn(async move {
            common::http()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "dalle-test", "prompt": format!("cat {i}")}))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PAYMENT_REQUIRED => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, refused), (5, 45));
    let (balance, held) = t.settled().await;
    assert_eq!((balance, held), (0, 0));
    t.assert_balanced().await;
    assert_eq!(t.records(5).await.len(), 5);
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn anthropic_gemini_and_bfl_are_spoken_in_their_own_formats() {
    let t = setup(200.0).await;
    let image = format!("data:image/png;base64,{PNG_B64}");
    let vision = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": image}}]}]);

    // Anthropic: system apart, image as a base64 source, the API key header.
    let (status, body) = t
        .post(
            "/v1/chat/completions",
            json!({"model": "claude-test", "messages": vision}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this"
    );
    assert_eq!(body["usage"]["completion_tokens"], COMPLETION_TOKENS);
    let call = t.mock.seen().last().unwrap().clone();
    assert_eq!(call.path, "/anthropic/v1/messages");
    assert_eq!(call.headers["x-api-key"], "sk-ant-test-0002");
    assert_eq!(call.body["system"], "be brief");
    assert_eq!(call.body["model"], "claude-upstream");
    assert!(call.body["max_tokens"].as_u64().unwrap() > 0);
    let content = &call.body["messages"][0]["content"];
    assert_eq!(content[0]["source"]["type"], "base64");
    assert_eq!(content[0]["source"]["data"], PNG_B64);

    // Anthropic streaming becomes OpenAI chunks.
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "claude-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        text.contains("\"content\":\"Hel\"") && text.contains("\"finish_reason\":\"stop\""),
        "{text}"
    );

    // Gemini: contents with inline data, generateContent; streamed too.
    let (status, body) = t
        .post(
            "/v1/chat/completions",
            json!({"model": "gemini-test", "messages": vision}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this"
    );
    let call = t.mock.seen().last().unwrap().clone();
    assert_eq!(
        call.path,
        "/gemini/v1beta/models/gemini-upstream:generateContent"
    );
    assert_eq!(call.headers["x-goog-api-key"], "gm-test-0003");
    assert_eq!(
        call.body["contents"][0]["parts"][0]["inlineData"]["data"],
        PNG_B64
    );
    assert_eq!(
        call.body["systemInstruction"]["parts"][0]["text"],
        "be brief"
    );
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "gemini-test", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let text = res.text().await.unwrap();
    assert!(
        text.contains("\"content\":\"lo\"") && text.contains("\"prompt_tokens\":100"),
        "{text}"
    );
    // Gemini cannot fetch links: a clear 400, not a provider error.
    let (status, body) = t
        .post(
            "/v1/chat/completions",
            json!({"model": "gemini-test", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
        )
        .await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "unsupported")
    );

    // Images: Flux submits then polls; Gemini answers inline; OpenAI b64 or url.
    let (status, body) = t
        .post(
            "/v1/images/generations",
            json!({"model": "flux-test", "prompt": "a cat", "size": "512x512"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["b64_json"], PNG_B64);
    let submit = t
        .mock
        .seen()
        .into_iter()
        .find(|s| s.path == "/bfl/v1/flux-dev")
        .expect("a submitted task");
    assert_eq!(
        (
            submit.body["width"].as_u64(),
            submit.headers["x-key"].as_str()
        ),
        (Some(512), "bfl-test-0004")
    );
    let (status, body) = t
        .post(
            "/v1/images/generations",
            json!({"model": "gemini-test", "prompt": "a cat"}),
        )
        .await;
    assert_eq!(
        (status, body["data"][0]["b64_json"].as_str()),
        (StatusCode::OK, Some(PNG_B64))
    );
    let (status, body) = t
        .post(
            "/v1/images/generations",
            json!({"model": "dalle-test", "prompt": "a cat", "response_format": "url"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["revised_prompt"], "a revised prompt");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&t.s.base), "{url}");
    let res = common::http().get(url).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "image/png");
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().to_vec(), png);
    let missing = common::http()
        .get(t.s.url("/v1/images/files/0000.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Charged by the price list: 3 images at 0.05, 0.04 and 0.04 dollars.
    let records = t.records(8).await;
    let images: i64 = records
        .iter()
        .filter(|r| r.images > 0)
        .map(|r| r.credits)
        .sum();
    assert_eq!(images, (50 + 40 + 40) * MICRO);
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn a_client_leaving_mid_stream_stops_the_upstream_call_and_pays_nothing() {
    let t = setup(10.0).await;
    t.mock.fail("openai", [Fault::Endless]);
    let res = common::http()
        .post(t.s.url("/v1/chat/completions"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "solo", "stream": true, "messages": [{"role": "user", "content": "go"}]}))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let first = body.next().await.expect("a chunk").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("t0"));
    assert!(
        t.ledger().balance(&t.account).1 > 0,
        "credits are held while streaming"
    );
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t
        .mock
        .state
        .closed_streams
        .load(std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, held) = t.settled().await;
    assert_eq!(held, 0, "the hold is released");
    let records = t.records(1).await;
    assert_eq!(records[0].status, 499);
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn personal_keys_are_sealed_shown_by_hint_and_used_before_the_organisations() {
    let t = setup(10.0).await;
    let b = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let personal = "sk-my-own-key-9876";
    let add = b
        .send(
            &t.s,
            Method::POST,
            "/api/providers",
            Some(json!({"name": "openai", "kind": "openai", "base_url": format!("{}/v1", t.mock.url("mine")),
                "api_key": personal})),
        )
        .await;
    // The mock is on 127.0.0.1: a personal connection may not reach private addresses.
    assert_eq!(
        (add.status, code(&add)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    assert!(
        add.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private_hosts")
    );
    t.s.stop().await;

    // An admin allows the host.
    let keys = tempfile::tempdir().unwrap();
    let extra = catalog(&t.mock, keys.path()).replace(
        "[gateway]\n",
        "[gateway]\nprivate_hosts = [\"127.0.0.1\"]\n",
    );
    let s = TestServer::start(&extra).await;
    let account = s
        .make_account("ada@example.com", Role::Member, PASSWORD)
        .await;
    grant(&s, &account, 10.0).await;
    let b = Browser::login(&s, "ada@example.com", PASSWORD).await;
    let body = json!({"name": "openai", "kind": "openai", "base_url": format!("{}/v1", t.mock.url("mine")),
        "api_key": personal});
    let add = b
        .send(&s, Method::POST, "/api/providers", Some(body.clone()))
        .await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.body);
    assert_eq!(add.body["key_hint"], "9876");
    assert_eq!(add.body["source"], "personal");
    let again = b.send(&s, Method::POST, "/api/providers", Some(body)).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let list = b.send(&s, Method::GET, "/api/providers", None).await;
    let text = list.body.to_string();
    assert!(
        !text.contains(personal) && !text.contains(ORG_KEY),
        "keys never come back"
    );
    assert_eq!(
        list.body["organisation"][0]["key_hint"],
        Value::Null,
        "members see no org key hint"
    );
    let test = b
        .send(&s, Method::POST, "/api/providers/openai/test", None)
        .await;
    assert_eq!(test.body["ok"], true, "{}", test.body);

    // The catalog's `openai` route now uses the person's key, at the platform fee (0).
    let chat = || {
        common::http()
            .post(s.url("/v1/chat/completions"))
            .header(
                "cookie",
                format!("easel_session={}", b.cookie.as_deref().unwrap()),
            )
            .header("x-csrf-token", b.csrf.as_deref().unwrap())
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "mine"}]}))
            .send()
    };
    let res = chat().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let call = t.mock.seen().last().unwrap().clone();
    assert_eq!(call.path, "/mine/v1/chat/completions");
    assert_eq!(call.headers["authorization"], format!("Bearer {personal}"));
    // Listing waits for the charge, which commits in the background.
    let records = s
        .running
        .as_ref()
        .unwrap()
        .services()
        .usage
        .all(&account)
        .await
        .unwrap();
    assert!(
        records[0].byok && records[0].credits == 0,
        "{:?}",
        records[0]
    );

    // Sealed at rest: the plaintext key is nowhere in the database file.
    s.running
        .as_ref()
        .unwrap()
        .services()
        .gateway
        .drain(Duration::from_secs(5))
        .await;
    let db = std::fs::read(s.dir.path().join("data/easel.redb")).unwrap();
    assert!(!db.windows(personal.len()).any(|w| w == personal.as_bytes()));

    // The allowance is checked at every new connection, not only when the connection
    // was added: once the admin withdraws it (a reload), the host is refused.
    write_config(s.dir.path(), &catalog(&t.mock, keys.path()));
    assert!(s.app().reload(), "the config reloads");
    // The reload reopens the connections in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat().await.unwrap().status() == StatusCode::OK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = t.mock.seen().len();
    let refused = chat().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("loopback") && message.contains("private_hosts"),
        "{message}"
    );
    assert_eq!(t.mock.seen().len(), calls, "nothing reached the mock");

    let gone = b
        .send(&s, Method::DELETE, "/api/providers/openai", None)
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let again = b
        .send(&s, Method::DELETE, "/api/providers/openai", None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // Members cannot touch the organisation's connections.
    let org = b
        .send(
            &s,
            Method::POST,
            "/api/admin/providers",
            Some(json!({"name": "x", "kind": "openai", "api_key": "k"})),
        )
        .await;
    assert_eq!(org.status, StatusCode::FORBIDDEN);
    s.stop().await;
    t.mock.stop().await;
}

#[actix_web::test]
async fn key_budgets_and_admin_grants_control_spending() {
    let t = setup(0.0).await;
    let services = t.s.running.as_ref().unwrap().services();
    // A key that may spend 40 credits: one image, then 402.
    let (_, capped) = services
        .keys
        .create(
            &t.account,
            Role::Member,
            easel::keys::NewKey {
                name: "capped".into(),
                credit_budget: Some(40),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    let admin_id =
        t.s.make_account("root@example.com", Role::Admin, PASSWORD)
            .await;
    let admin = Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let grant = admin
        .send(
            &t.s,
            Method::POST,
            "/api/admin/credits",
            Some(json!({"account": t.account, "amount": 100, "note": "welcome"})),
        )
        .await;
    assert_eq!(grant.status, StatusCode::OK, "{}", grant.body);
    assert_eq!(
        (
            grant.body["kind"].as_str(),
            grant.body["balance_after"].as_f64()
        ),
        (Some("grant"), Some(100.0))
    );
    let image = |key: String| {
        let url = t.s.url("/v1/images/generations");
        async move {
            let res = common::http()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "dalle-test", "prompt": "cat"}))
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(image(capped.expose().clone()).await.0, StatusCode::OK);
    let (status, body) = image(capped.expose().clone()).await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::PAYMENT_REQUIRED, "key_budget_exhausted")
    );
    assert_eq!(
        image(t.key.clone()).await.0,
        StatusCode::OK,
        "other keys still spend"
    );
    // Each charge's entry is dated like its usage record, by when the request was
    // answered, however long its commit was held (listing ends the wait; the pause
    // puts the write time well after the answer).
    tokio::time::sleep(Duration::from_millis(30)).await;
    let services = t.s.running.as_ref().unwrap().services();
    let records = services.usage.all(&t.account).await.unwrap();
    let entries = services.ledger.all_entries(&t.account).await.unwrap();
    let charges: Vec<_> = entries.iter().filter(|e| e.usage.is_some()).collect();
    assert_eq!(charges.len(), 2, "{entries:?}");
    for e in charges {
        let record = records
            .iter()
            .find(|r| Some(&r.id) == e.usage.as_ref())
            .expect("the entry's usage record");
        assert_eq!(e.at_ms, record.at_ms, "{e:?}");
    }

    // Only an adjustment may go negative, and never below what is available.
    let take = admin
        .send(
            &t.s,
            Method::POST,
            "/api/admin/credits",
            Some(json!({"account": t.account, "amount": -500, "kind": "adjustment"})),
        )
        .await;
    assert_eq!(take.status, StatusCode::PAYMENT_REQUIRED);
    let bad = admin
        .send(
            &t.s,
            Method::POST,
            "/api/admin/credits",
            Some(json!({"account": t.account, "amount": -5})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let take = admin
        .send(&t.s, Method::POST, "/api/admin/credits",
            Some(json!({"account": t.account, "amount": -5, "kind": "adjustment", "note": "correction"})))
        .await;
    assert_eq!(take.status, StatusCode::OK, "{}", take.body);
    let unknown = admin
        .send(
            &t.s,
            Method::POST,
            "/api/admin/credits",
            Some(json!({"account": "nobody", "amount": 1})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // The member sees their ledger; they cannot grant.
    let member = Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let mine = member.send(&t.s, Method::GET, "/api/credits", None).await;
    assert_eq!(
        mine.body["balance"]["balance"].as_f64(),
        Some(100.0 - 80.0 - 5.0)
    );
    let kinds: Vec<&str> = mine.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["adjustment", "usage", "usage", "grant"]);
    let denied = member
        .send(
            &t.s,
            Method::POST,
            "/api/admin/credits",
            Some(json!({"account": t.account, "amount": 5})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let audit = admin
        .send(&t.s, Method::GET, "/api/admin/audit", None)
        .await;
    let posted = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "credits_posted")
        .count();
    assert_eq!(posted, 2);
    assert!(audit.body.to_string().contains(&admin_id));

    // Usage: filter by model, CSV export, daily totals.
    t.records(2).await;
    let usage = member
        .send(&t.s, Method::GET, "/api/usage?model=dalle-test", None)
        .await;
    assert_eq!(usage.body["records"].as_array().unwrap().len(), 2);
    let none = member
        .send(&t.s, Method::GET, "/api/usage?model=gpt-test", None)
        .await;
    assert_eq!(none.body["records"].as_array().unwrap().len(), 0);
    let csv = common::http()
        .get(t.s.url("/api/usage?format=csv"))
        .header(
            "cookie",
            format!("easel_session={}", member.cookie.as_deref().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .contains(",dalle-test,openai,false,0,0,1,40,200,"),
        "{csv}"
    );
    let daily = member
        .send(&t.s, Method::GET, "/api/usage/daily", None)
        .await;
    assert_eq!(daily.body[0]["model"], "dalle-test");
    assert_eq!(
        (
            daily.body[0]["requests"].as_u64(),
            daily.body[0]["credits"].as_f64()
        ),
        (Some(2), Some(80.0))
    );
    let other = member
        .send(
            &t.s,
            Method::GET,
            &format!("/api/usage?account={admin_id}"),
            None,
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

/// The crash guarantee (docs/architecture.md, "Credits"): a usage record and its ledger
/// entry commit together or not at all, grants are durable once acknowledged, and the
/// entries of an account always sum to its balance, even after `kill -9` in the middle
/// of a burst. Keys never reach the log.
#[actix_web::test]
async fn a_crash_mid_burst_leaves_the_ledger_balanced_and_keys_out_of_the_log() {
    use common::{Process, run, run_with_stdin, write_config};
    let mock = Mock::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &catalog(&mock, dir.path()));
    let cfg = config.to_str().unwrap();
    let p = Process::serve(&config, &[]);
    let (rc, out, err) = run_with_stdin(
        &[
            "--config",
            cfg,
            "user",
            "create",
            "--email",
            "ada@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert_eq!(rc, 0, "{out}{err}");
    let account = out
        .split("(id ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .expect("the new account's id")
        .to_string();
    let key = common::cli_key(cfg, "ada@example.com");
    let (rc, out, err) = run(
        &[
            "--config",
            cfg,
            "credits",
            "grant",
            "--email",
            "ada@example.com",
            "--amount",
            "2000",
            "--note",
            "start",
        ],
        &[],
    );
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("granted 2000 credits") && out.contains("admin socket"),
        "{out}"
    );
    let (rc, _, err) = run(
        &[
            "--config",
            cfg,
            "credits",
            "grant",
            "--email",
            "nobody@example.com",
            "--amount",
            "5",
        ],
        &[],
    );
    assert_ne!(rc, 0);
    assert!(
        err.contains("no account") || err.contains("not found") || err.contains("cannot grant"),
        "{err}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let url = p.url(if i % 4 == 0 {
            "/v1/images/generations"
        } else {
            "/v1/chat/completions"
        });
        let body = if i % 4 == 0 {
            json!({"model": "dalle-test", "prompt": "x"})
        } else {
            json!({"model": "gpt-test", "messages": [{"role": "user", "content": format!("n{i}")}]})
        };
        let key = key.clone();
        tasks.spawn(async move {
            common::http()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .map(|r| r.status())
        });
    }
    // Power cut in the middle of the burst, with charges still on their way to disk:
    // no drain, no flush.
    let mut answered = 0;
    while answered < 20 {
        let status = tasks.join_next().await.expect("a task").unwrap();
        assert_eq!(status.ok(), Some(StatusCode::OK));
        answered += 1;
    }
    let mut p = p;
    p.signal(libc::SIGKILL);
    let _ = p.child.wait();
    tasks.shutdown().await;
    let log = p.log_text();
    for secret in [ORG_KEY, "sk-backup-key-0001", key.as_str(), PASSWORD] {
        assert!(!log.contains(secret), "a secret reached the log");
    }

    let loaded = easel::config::load_from(Some(&config), Vec::<(String, String)>::new()).unwrap();
    let store = easel::app::open_store(&loaded.config).await.unwrap();
    let ledger = easel::ledger::Ledger::new(store.clone());
    let usage = easel::usage::Usage::new(store.clone());
    let entries = ledger.all_entries(&account).await.unwrap();
    let records = usage.all(&account).await.unwrap();
    let stored = ledger.stored_balance(&account).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.amount).sum::<i64>(),
        stored,
        "the ledger balances"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.kind == EntryKind::Grant && e.amount == 2000 * MICRO),
        "the acknowledged grant survived"
    );
    // Every charge has its record and every paid record its charge: never half-written.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Usage) {
        let r = records
            .iter()
            .find(|r| Some(&r.id) == e.usage.as_ref())
            .expect("record of a charge");
        assert_eq!(r.credits, -e.amount);
    }
    for r in records.iter().filter(|r| r.credits > 0) {
        assert!(
            entries.iter().any(|e| e.usage.as_ref() == Some(&r.id)),
            "charge of a record"
        );
    }
    assert_eq!(
        stored,
        2000 * MICRO - records.iter().map(|r| r.credits).sum::<i64>()
    );
    assert!(records.len() <= 40);
    store.close().await;
    mock.stop().await;
}

/// The official `openai` Python package (installed by `.ci/run`) lists models,
/// completes a chat with and without streaming, sends an image and generates images
/// through Easel. Without Python and the package the test says so and passes, unless
/// `EASEL_REQUIRE_CLIENTS` is set, as in CI.
#[actix_web::test]
async fn the_official_openai_python_package_works_against_easel() {
    let t = setup(200.0).await;
    let env = vec![
        ("EASEL_BASE", t.s.base.clone()),
        ("EASEL_KEY", t.key.clone()),
    ];
    if !common::python_client("openai", "openai_client.py", env).await {
        return;
    }
    assert_eq!(
        t.records(6).await.len(),
        6,
        "every paid SDK call was metered"
    );
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[actix_web::test]
async fn no_prompt_request_image_or_output_is_found_on_disk_after_a_run_of_requests() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut t = setup(1000.0).await;
    const PROMPT: &str = "a prompt nobody may keep 5f2c9e";
    const IMAGE_PROMPT: &str = "an image prompt nobody may keep 77ab01";
    // A request image with pixels no other file has.
    let img = image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, (x * y) as u8 ^ 0x5a])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    let data_uri = format!("data:image/png;base64,{}", b64.encode(&png));
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (status, body) = t
            .post(
                "/v1/chat/completions",
                json!({"model": "gpt-test", "messages": [{"role": "user", "content": [
                    {"type": "text", "text": PROMPT},
                    {"type": "image_url", "image_url": {"url": data_uri}},
                ]}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .expect("an answer")
                .to_string(),
        );
        let (status, body) = t
            .post(
                "/v1/images/generations",
                json!({"model": "dalle-test", "prompt": IMAGE_PROMPT, "response_format": "b64_json"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"][0]["b64_json"], PNG_B64);
    }
    assert_eq!(t.records(10).await.len(), 10, "every request was metered");
    let generated = b64.decode(PNG_B64).expect("the output image");
    t.s.pause().await;

    let raw_rows: Vec<u8> = img.as_raw()[..40 * 3 * 2].to_vec();
    let mut needles: Vec<(&str, Vec<u8>)> = vec![
        ("the prompt", PROMPT.as_bytes().to_vec()),
        ("the image prompt", IMAGE_PROMPT.as_bytes().to_vec()),
        ("the request image", png.clone()),
        (
            "the request image as base64",
            data_uri.as_bytes()[22..86].to_vec(),
        ),
        ("the request image's pixels", raw_rows),
        ("the generated image", generated.clone()),
        (
            "the generated image as base64",
            PNG_B64.as_bytes()[..64].to_vec(),
        ),
    ];
    for a in &answers {
        needles.push(("the answer", a.as_bytes().to_vec()));
    }
    let files = files_under(t.s.dir.path());
    assert!(
        files
            .iter()
            .any(|(p, _)| p.ends_with(easel::store::DB_FILE)),
        "the database is among the files searched"
    );
    for (path, bytes) in &files {
        for (what, needle) in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} is in {}",
                path.display()
            );
        }
    }
    t.s.resume().await;
    t.s.stop().await;
}

/// A refused edit: what it is, its fields and files, the status and code it gets.
type EditCase<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<(&'a str, Vec<u8>)>,
    StatusCode,
    &'a str,
);

/// A PNG's bytes with its header claiming `w`×`h` (the header's checksum made right).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    use base64::Engine;
    let mut png = base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .unwrap();
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = 0xFFFF_FFFFu32;
    for &b in &png[12..29] {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    png[29..33].copy_from_slice(&(!crc).to_be_bytes());
    png
}

impl Setup {
    /// `POST /v1/images/edits` with these text fields and files (name, bytes).
    async fn edit(
        &self,
        fields: &[(&str, &str)],
        files: Vec<(&str, Vec<u8>)>,
    ) -> (StatusCode, Value) {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        for (k, bytes) in files {
            form = form.part(
                k.to_string(),
                reqwest::multipart::Part::bytes(bytes)
                    .file_name("shoe.png")
                    .mime_str("image/png")
                    .unwrap(),
            );
        }
        let res = common::http()
            .post(self.s.url("/v1/images/edits"))
            .bearer_auth(&self.key)
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

#[actix_web::test]
async fn image_edits_are_sent_to_each_provider_in_its_format_and_bad_images_cost_nothing() {
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(PNG_B64)
        .unwrap();
    // Just enough for the three edits below: 2 × 40 (OpenAI), 40 (Gemini), 50 (Flux).
    let t = setup(170.0).await;

    // OpenAI: multipart to images/edits, the upstream model name, the image and mask as
    // files; two images back, metered as images.edits.
    let (status, body) = t
        .edit(
            &[
                ("model", "dalle-test"),
                ("prompt", "the shoe on white"),
                ("n", "2"),
                ("size", "256x256"),
            ],
            vec![("image", png.clone()), ("mask", png.clone())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["b64_json"], PNG_B64);
    let call = t.mock.seen().last().unwrap().clone();
    assert_eq!(call.path, "/openai/v1/images/edits");
    assert_eq!(call.headers["authorization"], format!("Bearer {ORG_KEY}"));
    assert_eq!(call.body["fields"]["model"], "dall-e-up");
    assert_eq!(call.body["fields"]["prompt"], "the shoe on white");
    assert_eq!(call.body["fields"]["n"], "2");
    assert_eq!(call.body["fields"]["size"], "256x256");
    assert!(
        call.body["fields"].get("store").is_none(),
        "chat's store option is not sent to an image endpoint"
    );
    for file in ["image", "mask"] {
        let f = &call.body["files"][file];
        assert_eq!(
            (f["content_type"].as_str(), f["magic_png"].as_bool()),
            (Some("image/png"), Some(true)),
            "{file}: {f}"
        );
        assert_eq!(f["bytes"].as_u64(), Some(png.len() as u64));
    }
    let records = t.records(1).await;
    assert_eq!(records[0].endpoint, "images.edits");

    // Gemini: the image as inline data before the prompt.
    let (status, body) = t
        .edit(
            &[("model", "gemini-test"), ("prompt", "make it red")],
            vec![("image", png.clone())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let call = t.mock.seen().last().unwrap().clone();
    assert_eq!(
        call.path,
        "/gemini/v1beta/models/gemini-upstream:generateContent"
    );
    let parts = &call.body["contents"][0]["parts"];
    assert_eq!(parts[0]["inlineData"]["data"], PNG_B64);
    assert_eq!(parts[0]["inlineData"]["mimeType"], "image/png");
    assert_eq!(parts[1]["text"], "make it red");

    // Gemini takes no mask: refused unsent, with its hold released.
    let (calls, spent) = (t.mock.seen().len(), t.ledger().balance(&t.account).0);
    let (status, body) = t
        .edit(
            &[("model", "gemini-test"), ("prompt", "x")],
            vec![("image", png.clone()), ("mask", png.clone())],
        )
        .await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::BAD_REQUEST, "unsupported"),
        "{body}"
    );
    assert_eq!(t.mock.seen().len(), calls);
    assert_eq!(t.settled().await.0, spent);

    // Flux (Kontext): the image as input_image in the submitted task.
    let (status, body) = t
        .edit(
            &[("model", "flux-test"), ("prompt", "make it blue")],
            vec![("image[]", png.clone())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let submit = t
        .mock
        .seen()
        .into_iter()
        .rfind(|s| s.path == "/bfl/v1/flux-dev")
        .expect("a submitted task");
    assert_eq!(submit.body["input_image"], PNG_B64);
    assert_eq!(submit.body["prompt"], "make it blue");

    // Bad requests: refused before any provider is called, nothing charged.
    let calls = t.mock.seen().len();
    let spent = t.ledger().balance(&t.account).0;
    let cases: Vec<EditCase> = vec![
        (
            "no image",
            vec![("model", "dalle-test"), ("prompt", "x")],
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "no prompt",
            vec![("model", "dalle-test")],
            vec![("image", png.clone())],
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "not an image",
            vec![("model", "dalle-test"), ("prompt", "x")],
            vec![("image", b"<html>not an image".to_vec())],
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "a truncated PNG",
            vec![("model", "dalle-test"), ("prompt", "x")],
            vec![("image", png[..30].to_vec())],
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "a pixel bomb",
            vec![("model", "dalle-test"), ("prompt", "x")],
            vec![("image", png_claiming(60_000, 60_000))],
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "a broken mask",
            vec![("model", "dalle-test"), ("prompt", "x")],
            vec![("image", png.clone()), ("mask", b"GIF8 junk".to_vec())],
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            "a chat model",
            vec![("model", "gpt-test"), ("prompt", "x")],
            vec![("image", png.clone())],
            StatusCode::BAD_REQUEST,
            "model_not_capable",
        ),
        (
            "a field name that is not plain (it goes on in a multipart header)",
            vec![
                ("model", "dalle-test"),
                ("prompt", "x"),
                ("x;filename=evil.sh", "y"),
            ],
            vec![("image", png.clone())],
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "an unknown model",
            vec![("model", "no-such"), ("prompt", "x")],
            vec![("image", png.clone())],
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
    ];
    for (what, fields, files, want, code) in cases {
        let (status, body) = t.edit(&fields, files).await;
        assert_eq!((status, code_of(&body)), (want, code), "{what}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}"
        );
    }
    let res = common::http()
        .post(t.s.url("/v1/images/edits"))
        .bearer_auth(&t.key)
        .json(&json!({"model": "dalle-test", "prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (_, held) = t.settled().await;
    assert_eq!(held, 0);
    assert_eq!(
        t.ledger().balance(&t.account).0,
        spent,
        "nothing charged for refusals"
    );
    assert_eq!(
        t.mock.seen().len(),
        calls,
        "no refused edit reached a provider"
    );

    // The credits run out: 402 before the provider.
    let (status, body) = t
        .edit(
            &[("model", "dalle-test"), ("prompt", "x")],
            vec![("image", png.clone())],
        )
        .await;
    assert_eq!(
        (status, code_of(&body)),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_credits"),
        "{body}"
    );
    t.assert_balanced().await;
    t.s.stop().await;
    t.mock.stop().await;
}
