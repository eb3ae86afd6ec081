//! A mock AI provider: a real HTTP server on 127.0.0.1 speaking OpenAI's, Anthropic's,
//! Gemini's and Black Forest Labs' wire formats, with faults on demand (error statuses,
//! garbage, slow answers, dropped connections, endless streams).
//!
//! Paths start with a name that plays the role of one provider (`/openai/v1/...`,
//! `/anthropic/v1/messages`, `/gemini/v1beta/...`, `/bfl/v1/...`), so one mock serves
//! many connections and faults can be aimed at one of them.

use actix_web::web::{Bytes, Data};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A 1x1 PNG.
pub const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";
/// The organisation's OpenAI key in [`catalog`].
pub const ORG_KEY: &str = "sk-org-openai-secret-7421";

/// Token counts every chat answer reports.
pub const PROMPT_TOKENS: u64 = 100;
pub const COMPLETION_TOKENS: u64 = 20;

/// What the next call to a provider does instead of answering normally.
#[derive(Clone, Debug)]
pub enum Fault {
    /// An error status with a JSON error body.
    Status(u16),
    /// 200 with a body that is not the provider's format.
    Garbage,
    /// Answers normally after this pause.
    Slow(Duration),
    /// 200, then the connection breaks mid-body.
    Drop,
    /// A stream that never ends (one chunk every 50 ms).
    Endless,
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
pub struct State {
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    seen: Mutex<Vec<Seen>>,
    polls: AtomicUsize,
    /// Streams whose client went away before the end.
    pub closed_streams: AtomicUsize,
}

/// A running mock provider.
pub struct Mock {
    pub base: String,
    pub state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Mock {
    /// Starts the mock on a free port.
    pub async fn start() -> Mock {
        let state = Arc::new(State::default());
        let data = Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let b = base.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(Data::new(b.clone()))
                .app_data(actix_web::web::PayloadConfig::new(64 << 20))
                .default_service(actix_web::web::to(handle))
        })
        .workers(2)
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Mock {
            base,
            state,
            handle,
        }
    }

    /// The base URL of the provider called `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Makes the next calls to `name` fail as listed, in order.
    pub fn fail(&self, name: &str, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .faults
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .extend(faults);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests received by `name`.
    pub fn calls(&self, name: &str) -> usize {
        let prefix = format!("/{name}/");
        self.seen()
            .iter()
            .filter(|s| s.path.starts_with(&prefix))
            .count()
    }

    /// Stops the mock.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// A stream as a provider may send it: the first event on its own, then pieces that
/// cut events (and characters) apart or carry several, so that every way an event can
/// arrive is read.
fn sse(events: Vec<String>) -> HttpResponse {
    let first = events.first().map_or(0, String::len);
    let text = Bytes::from(events.concat());
    let mut pieces = vec![text.slice(..first)];
    let (mut at, mut sizes) = (first, [3, 50, 1, 200].into_iter().cycle());
    while at < text.len() {
        let end = (at + sizes.next().unwrap_or(1)).min(text.len());
        pieces.push(text.slice(at..end));
        at = end;
    }
    let body =
        futures_util::stream::iter(pieces.into_iter().map(Ok::<_, std::convert::Infallible>));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn last_user_text(body: &Value) -> String {
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let Some(m) = msgs.last() else {
        return String::new();
    };
    match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The language tag of Easel's alt text prompt, when the request carries one.
fn alt_text_language(body: &Value) -> Option<String> {
    let system = body["messages"][0]["content"].as_str()?;
    if !system.starts_with("You write alt text") {
        return None;
    }
    let at = system.find("BCP-47 tag `")? + "BCP-47 tag `".len();
    let rest = &system[at..];
    Some(rest[..rest.find('`')?].to_string())
}

/// A `multipart/form-data` body as `{"fields": {name: text}, "files": {name:
/// {filename, content_type, bytes, magic_png, magic_jpeg}}}` (Null when unreadable).
fn multipart(req: &HttpRequest, body: &[u8]) -> Value {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = ct.split("boundary=").nth(1) else {
        return Value::Null;
    };
    let delimiter = format!("--{boundary}");
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let (mut fields, mut files) = (serde_json::Map::new(), serde_json::Map::new());
    let mut at = match find(body, delimiter.as_bytes(), 0) {
        Some(i) => i + delimiter.len(),
        None => return Value::Null,
    };
    while body[at..].starts_with(b"\r\n") {
        let Some(head_end) = find(body, b"\r\n\r\n", at) else {
            break;
        };
        let head = String::from_utf8_lossy(&body[at + 2..head_end]).to_string();
        let Some(next) = find(body, format!("\r\n{delimiter}").as_bytes(), head_end) else {
            break;
        };
        let content = &body[head_end + 4..next];
        let attr = |key: &str| {
            head.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        let name = attr("name").unwrap_or_default();
        match attr("filename") {
            Some(filename) => {
                let content_type = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Type: "))
                    .unwrap_or("")
                    .to_string();
                files.insert(
                    name,
                    json!({"filename": filename, "content_type": content_type, "bytes": content.len(),
                        "magic_png": content.starts_with(b"\x89PNG"), "magic_jpeg": content.starts_with(&[0xFF, 0xD8, 0xFF])}),
                );
            }
            None => {
                fields.insert(name, String::from_utf8_lossy(content).into());
            }
        }
        at = next + 2 + delimiter.len();
    }
    json!({"fields": fields, "files": files})
}

/// A stream that breaks after its first chunk.
fn dropping(first: String) -> HttpResponse {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(first)),
        Err(std::io::Error::other("dropped")),
    ];
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(futures_util::stream::iter(chunks))
}

/// Counts a stream as closed early when it is dropped before its end.
struct Endless {
    state: Arc<State>,
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.state.closed_streams.fetch_add(1, Ordering::SeqCst);
    }
}

fn endless(state: Arc<State>) -> HttpResponse {
    let guard = Endless { state };
    let body = futures_util::stream::unfold((guard, 0u64), |(g, i)| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": format!("t{i} ")}, "finish_reason": null}]});
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(data(chunk))),
            (g, i + 1),
        ))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}

async fn handle(
    req: HttpRequest,
    body: Bytes,
    state: Data<State>,
    base: Data<String>,
) -> HttpResponse {
    let path = req.path().to_string();
    let json: Value = if path.ends_with("/images/edits") {
        multipart(&req, &body)
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
        body: json.clone(),
    });
    let name = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string();
    let fault = state
        .faults
        .lock()
        .unwrap()
        .get_mut(&name)
        .and_then(VecDeque::pop_front);
    let auth = req
        .headers()
        .get("authorization")
        .or_else(|| req.headers().get("x-api-key"))
        .or_else(|| req.headers().get("x-goog-api-key"))
        .or_else(|| req.headers().get("x-key"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match fault {
        Some(Fault::Status(code)) => {
            let mut res =
                HttpResponse::build(actix_web::http::StatusCode::from_u16(code).expect("status"));
            if code == 429 {
                res.insert_header(("retry-after", "1"));
            }
            return res.json(
                json!({"error": {"message": format!("mock failure {code} (you sent {auth})"), "type": "mock"}}),
            );
        }
        Some(Fault::Garbage) => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("<html>this is not json");
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::Drop) => return dropping("{\"id\": \"half".into()),
        Some(Fault::Endless) => return endless(state.into_inner()),
        None => {}
    }
    if auth.contains("bad") {
        return HttpResponse::Unauthorized()
            .json(json!({"error": {"message": "Incorrect API key provided", "type": "auth"}}));
    }
    let stream = json["stream"].as_bool().unwrap_or(false);
    let text = match alt_text_language(&json) {
        // Easel's alt text prompt: answer as a vision model would, with the filler
        // opening Easel must strip.
        Some(lang) => {
            json!({"alt_text": format!("Image of a red SALE sign in a shop window ({lang})"),
            "decorative": false, "text_in_image": "SALE"})
            .to_string()
        }
        None => format!("echo: {}", last_user_text(&json)),
    };
    if path.ends_with("/chat/completions") {
        if !stream {
            return HttpResponse::Ok().json(json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1,
                "model": json["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
            }));
        }
        let chunk = |content: Option<&str>, finish: Option<&str>| {
            let delta = match content {
                Some(c) => json!({"role": "assistant", "content": c}),
                None => json!({}),
            };
            data(
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
                "model": json["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        };
        let mut events = vec![
            chunk(Some("Hel"), None),
            chunk(Some("lo"), None),
            chunk(None, Some("stop")),
        ];
        if json["stream_options"]["include_usage"].as_bool() == Some(true) {
            events.push(data(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
                "model": json["model"], "choices": [],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": 120}})));
        }
        events.push("data: [DONE]\n\n".into());
        return sse(events);
    }
    if path.ends_with("/images/edits") {
        // OpenAI refuses an edit without an image or a prompt, or with a file that
        // is not an image.
        let image = &json["files"]["image"];
        if image.is_null() || json["fields"]["prompt"].is_null() {
            return HttpResponse::BadRequest().json(json!({"error": {
                "message": "image and prompt are required", "type": "invalid_request_error"}}));
        }
        if image["magic_png"] != true && image["magic_jpeg"] != true {
            return HttpResponse::BadRequest().json(json!({"error": {
                "message": "Invalid image file", "type": "invalid_request_error"}}));
        }
        let n = json["fields"]["n"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": PNG_B64})).collect();
        return HttpResponse::Ok().json(json!({"created": 1, "data": data}));
    }
    if path.ends_with("/images/generations") {
        let n = json["n"].as_u64().unwrap_or(1);
        let data: Vec<Value> = (0..n)
            .map(|_| json!({"b64_json": PNG_B64, "revised_prompt": "a revised prompt"}))
            .collect();
        return HttpResponse::Ok().json(json!({"created": 1, "data": data}));
    }
    if path.ends_with("/models") || path.ends_with("/v1/credits") {
        return HttpResponse::Ok()
            .json(json!({"object": "list", "data": [{"id": "m"}], "credits": 10}));
    }
    if path.ends_with("/v1/messages") {
        if !stream {
            return HttpResponse::Ok().json(json!({
                "id": "msg_1", "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS},
            }));
        }
        let ev = |kind: &str, v: Value| format!("event: {kind}\ndata: {v}\n\n");
        return sse(vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1}}}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            ),
            ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
            ),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": COMPLETION_TOKENS}}),
            ),
            ev("message_stop", json!({"type": "message_stop"})),
        ]);
    }
    if path.contains(":generateContent") || path.contains(":streamGenerateContent") {
        let wants_image = json["generationConfig"]["responseModalities"]
            .as_array()
            .is_some_and(|m| m.iter().any(|x| x == "IMAGE"));
        if wants_image {
            return HttpResponse::Ok().json(json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "here it is"}, {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}]}, "finishReason": "STOP"}]}));
        }
        let user = json["contents"]
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c["parts"].as_array())
            .map(|p| {
                p.iter()
                    .filter_map(|x| x["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let usage =
            json!({"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": COMPLETION_TOKENS});
        if path.contains(":generateContent") {
            return HttpResponse::Ok().json(json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": format!("echo: {user}")}]}, "finishReason": "STOP"}], "usageMetadata": usage}));
        }
        return sse(vec![
            data(
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}]}),
            ),
            data(
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}], "usageMetadata": usage}),
            ),
        ]);
    }
    if path.contains("/v1/get_result") {
        let n = state.polls.fetch_add(1, Ordering::SeqCst);
        if n.is_multiple_of(2) {
            return HttpResponse::Ok().json(json!({"id": "task1", "status": "Pending"}));
        }
        return HttpResponse::Ok().json(json!({"id": "task1", "status": "Ready",
            "result": {"sample": format!("{}/{name}/files/task1.png", base.get_ref())}}));
    }
    if path.contains("/files/") {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(PNG_B64)
            .expect("png");
        return HttpResponse::Ok().content_type("image/png").body(png);
    }
    if name.starts_with("bfl") && req.method() == actix_web::http::Method::POST {
        return HttpResponse::Ok().json(json!({"id": "task1",
            "polling_url": format!("{}/{name}/v1/get_result?id=task1", base.get_ref())}));
    }
    HttpResponse::NotFound().json(json!({"error": {"message": "no such mock route"}}))
}

/// Prices chosen so one chat answer (100 in, 20 out) costs 0.14 credits and one image
/// 40 credits.
pub fn catalog(mock: &Mock, keys: &std::path::Path) -> String {
    let key = |name: &str, value: &str| {
        let p = keys.join(format!("{name}.key"));
        std::fs::write(&p, value).expect("key file");
        p.display().to_string()
    };
    format!(
        r#"{fast}
[credits]
per_usd = 1000.0

[gateway]
retry_backoff_ms = 5
breaker_failures = 3
breaker_cooldown = "60s"

[providers.openai]
kind = "openai"
base_url = "{openai}/v1"
api_key_file = "{k_openai}"
timeout = "2s"

[providers.backup]
kind = "openai-compatible"
base_url = "{backup}/v1"
api_key_file = "{k_backup}"
retries = 0

[providers.anthropic]
kind = "anthropic"
base_url = "{anthropic}"
api_key_file = "{k_anthropic}"

[providers.gemini]
kind = "gemini"
base_url = "{gemini}"
api_key_file = "{k_gemini}"

[providers.bfl]
kind = "bfl"
base_url = "{bfl}"
api_key_file = "{k_bfl}"

[providers.nokey]
kind = "openai"
base_url = "{openai}/v1"
api_key_env = "EASEL_TEST_UNSET_KEY_VARIABLE"

[[models]]
id = "gpt-test"
capabilities = ["chat", "vision"]
routes = [{{ provider = "openai", model = "gpt-upstream" }}, {{ provider = "backup", model = "backup-model" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[[models]]
id = "solo"
capabilities = ["chat"]
routes = [{{ provider = "openai", model = "solo-upstream" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[[models]]
id = "claude-test"
capabilities = ["chat", "vision"]
routes = [{{ provider = "anthropic", model = "claude-upstream" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[[models]]
id = "gemini-test"
capabilities = ["chat", "vision", "image"]
routes = [{{ provider = "gemini", model = "gemini-upstream" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0, per_image = 0.04 }}

[[models]]
id = "flux-test"
capabilities = ["image"]
routes = [{{ provider = "bfl", model = "flux-dev" }}]
price = {{ per_image = 0.05 }}

[[models]]
id = "dalle-test"
capabilities = ["image"]
routes = [{{ provider = "openai", model = "dall-e-up" }}]
price = {{ per_image = 0.04 }}

[[models]]
id = "hidden"
capabilities = ["chat"]
routes = [{{ provider = "nokey", model = "x" }}]
"#,
        fast = super::FAST,
        openai = mock.url("openai"),
        backup = mock.url("backup"),
        anthropic = mock.url("anthropic"),
        gemini = mock.url("gemini"),
        bfl = mock.url("bfl"),
        k_openai = key("openai", ORG_KEY),
        k_backup = key("backup", "sk-backup-key-0001"),
        k_anthropic = key("anthropic", "sk-ant-test-0002"),
        k_gemini = key("gemini", "gm-test-0003"),
        k_bfl = key("bfl", "bfl-test-0004"),
    )
}
