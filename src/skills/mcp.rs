//! The MCP endpoint (`/mcp`, streamable HTTP transport): each published skill of the
//! caller is a tool, and so is alt text. Authenticated with Easel API keys (the
//! `skills` scope); requests are checked for Host and Origin so a web page elsewhere
//! cannot reach an Easel on the LAN through DNS rebinding. `POST` carries JSON-RPC
//! (answered as JSON); `GET` opens a server-sent event stream on which the server says
//! `notifications/tools/list_changed` when the caller's published skills change.

use super::Skills;
use super::engine::RunStatus;
use crate::alt_text::{AltText, AltTextRequest};
use crate::auth::{Caller, Scoped, need};
use crate::config::Live;
use crate::http::ApiError;
use actix_web::http::{StatusCode, header};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Protocol versions spoken, newest first.
const VERSIONS: [&str; 3] = ["2025-06-18", "2025-03-26", "2024-11-05"];
/// Sessions idle this long are forgotten.
const SESSION_IDLE_MS: u64 = 24 * 3600 * 1000;
/// The built-in tool's name.
const ALT_TEXT_TOOL: &str = "alt_text";

/// One open MCP session. Dropping it (closed, idle, or Easel stopping) ends its
/// `GET /mcp` streams: their receivers of `ended` see the sender go.
struct Session {
    account: String,
    at_ms: u64,
    ended: watch::Sender<()>,
}

/// Open MCP sessions by id.
#[derive(Default, Clone)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self, account: &str) -> Result<String, ApiError> {
        let id = crate::crypto::random_hex::<16>().map_err(ApiError::internal)?;
        let now = crate::store::now_ms();
        let mut m = self.lock();
        m.retain(|_, s| now.saturating_sub(s.at_ms) < SESSION_IDLE_MS);
        let session = Session {
            account: account.to_string(),
            at_ms: now,
            ended: watch::channel(()).0,
        };
        m.insert(id.clone(), session);
        Ok(id)
    }

    /// A live session of `account` (marked used): a receiver that sees it end.
    fn touch(&self, id: &str, account: &str) -> Option<watch::Receiver<()>> {
        let mut m = self.lock();
        let s = m.get_mut(id).filter(|s| s.account == account)?;
        s.at_ms = crate::store::now_ms();
        Some(s.ended.subscribe())
    }

    fn close(&self, id: &str, account: &str) -> bool {
        let mut m = self.lock();
        if m.get(id).is_some_and(|s| s.account == account) {
            m.remove(id);
            return true;
        }
        false
    }

    /// Ends every session (at shutdown, so open streams do not hold it up).
    pub fn close_all(&self) {
        self.lock().clear();
    }
}

fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

fn forbidden(msg: String) -> ApiError {
    ApiError::forbidden("mcp_origin_refused", msg)
}

/// Refuses a Host that is not an address, `localhost`, the public URL's host or one
/// listed, and an Origin other than this server's own or one listed.
fn check_origin(req: &HttpRequest, live: &Live) -> Result<(), ApiError> {
    let config = live.get();
    let public = config
        .server
        .public_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = host_of(host).to_ascii_lowercase();
    let host_ok = name.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || public
            .as_ref()
            .and_then(|u| u.host_str())
            .is_some_and(|h| h.eq_ignore_ascii_case(&name))
        || config
            .skills
            .mcp_allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&name));
    if !host_ok {
        return Err(forbidden(format!(
            "this Easel does not answer MCP for the host `{}`; add it to [skills] mcp_allowed_hosts",
            name.chars().take(100).collect::<String>()
        )));
    }
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let own = url::Url::parse(origin).ok().is_some_and(|o| {
        let authority = match o.port() {
            Some(p) => format!("{}:{p}", o.host_str().unwrap_or("")),
            None => o.host_str().unwrap_or("").to_string(),
        };
        authority.eq_ignore_ascii_case(host)
            || public.as_ref().is_some_and(|p| p.origin() == o.origin())
    });
    if own
        || config
            .skills
            .mcp_allowed_origins
            .iter()
            .any(|o| o == origin)
    {
        return Ok(());
    }
    Err(forbidden(format!(
        "the web origin `{}` may not call this MCP endpoint; add it to [skills] mcp_allowed_origins",
        origin.chars().take(100).collect::<String>()
    )))
}

fn session_header(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
}

fn rpc_error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn alt_text_tool() -> Value {
    json!({
        "name": ALT_TEXT_TOOL,
        "title": "Alt text",
        "description": "Writes alt text for an image: what a screen reader user needs to know, in the language asked for.",
        "inputSchema": {"type": "object", "properties": {
            "image": {"type": "string", "description": "The image: base64, a data: URI, or an http(s) URL"},
            "language": {"type": "string", "description": "A BCP-47 tag such as en or de"},
            "context": {"type": "string", "description": "Text of the page the image is on"},
            "max_chars": {"type": "integer", "minimum": 20, "maximum": 1000}
        }, "required": ["image"]},
    })
}

async fn tools(skills: &Skills, caller: &Caller) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    if caller.allows(crate::auth::Scope::AltText).is_ok() {
        out.push(alt_text_tool());
    }
    for (s, plan) in skills.published(caller).await? {
        let description = if s.description.is_empty() {
            s.name.clone()
        } else {
            s.description.clone()
        };
        out.push(json!({"name": s.slug, "title": s.name, "description": description, "inputSchema": plan.input_schema()}));
    }
    Ok(out)
}

fn tool_error(message: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": message.into()}], "isError": true})
}

async fn call_alt_text(alt: &AltText, caller: &Caller, args: &Map<String, Value>) -> Value {
    if let Err(e) = caller.allows(crate::auth::Scope::AltText) {
        return tool_error(e.message);
    }
    let image = args.get("image").and_then(Value::as_str).unwrap_or("");
    let is_url = image.starts_with("http://") || image.starts_with("https://");
    let req = AltTextRequest {
        image_base64: (!is_url).then(|| image.to_string()),
        image_url: is_url.then(|| image.to_string()),
        language: args
            .get("language")
            .and_then(Value::as_str)
            .map(str::to_string),
        max_chars: args
            .get("max_chars")
            .and_then(Value::as_u64)
            .map(|n| n as u32),
        context: args
            .get("context")
            .and_then(Value::as_str)
            .map(str::to_string),
        keywords: None,
        style: None,
        model: None,
    };
    let result = match req.source() {
        Ok(source) => alt.describe(caller, &req, source).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => json!({"content": [{"type": "text", "text": r.alt_text}],
            "structuredContent": serde_json::to_value(&r).unwrap_or_default(), "isError": false}),
        Err(e) => tool_error(e.message),
    }
}

async fn call_skill(
    skills: &Skills,
    caller: &Caller,
    slug: &str,
    args: Map<String, Value>,
) -> Option<Value> {
    let req = super::RunRequest {
        inputs: args,
        ..super::RunRequest::default()
    };
    let started = match skills.start(caller, slug, req, "mcp", None).await {
        Ok(s) => s,
        // Only published skills are tools.
        Err(super::SkillsError::NotFound(_) | super::SkillsError::NotPublished(_)) => return None,
        Err(e) => {
            let e = ApiError::from(e);
            return Some(tool_error(e.message));
        }
    };
    let r = started.run.await;
    let mut content = Vec::new();
    let mut structured = Map::new();
    for (name, v) in &r.outputs {
        let image = |v: &Value| -> Option<Value> {
            Some(
                json!({"type": "image", "data": v.get("b64_json")?.as_str()?, "mimeType": v.get("media_type")?.as_str()?}),
            )
        };
        match v {
            Value::Object(_) if v.get("b64_json").is_some() => content.extend(image(v)),
            Value::Array(items)
                if items.iter().all(|i| i.get("b64_json").is_some()) && !items.is_empty() =>
            {
                content.extend(items.iter().filter_map(image));
            }
            Value::String(s) => {
                content.push(json!({"type": "text", "text": format!("{name}: {s}")}));
                structured.insert(name.clone(), v.clone());
            }
            other => {
                content.push(json!({"type": "text", "text": format!("{name}: {other}")}));
                structured.insert(name.clone(), v.clone());
            }
        }
    }
    let failed: Vec<String> = r
        .nodes
        .iter()
        .filter_map(|n| {
            n.error
                .as_ref()
                .map(|e| format!("node `{}` failed: {}", n.id, e.message))
        })
        .collect();
    if r.status != RunStatus::Succeeded {
        let why = match r.status {
            RunStatus::Cancelled => "the run was cancelled".to_string(),
            _ => failed.join("; "),
        };
        content.push(json!({"type": "text", "text": format!("The skill did not finish: {why}")}));
    }
    Some(json!({
        "content": content,
        "structuredContent": {"run": r.id, "status": r.status, "credits": r.credits, "outputs": structured},
        "isError": r.status != RunStatus::Succeeded,
    }))
}

/// Answers one JSON-RPC message (`None` for a notification).
async fn answer(msg: &Value, ctx: &Handler<'_>) -> Result<Option<Value>, ApiError> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response from the client (we send no requests): nothing to say.
        return Ok(None);
    };
    let Some(id) = msg.get("id").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    Ok(Some(match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .copied()
                .unwrap_or(VERSIONS[0]);
            rpc_result(
                id,
                json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": true}},
                    "serverInfo": {"name": "easel", "title": "Easel", "version": env!("CARGO_PKG_VERSION")},
                    "instructions": "Each tool is a skill published in Easel (and alt_text). Images go in as base64, a data: URI or an http(s) URL.",
                }),
            )
        }
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({"tools": tools(ctx.skills, ctx.caller).await?})),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Ok(Some(rpc_error(id, -32602, "tools/call needs a tool name")));
            };
            let args = params
                .get("arguments")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            if name == ALT_TEXT_TOOL {
                rpc_result(id, call_alt_text(ctx.alt_text, ctx.caller, &args).await)
            } else if let Some(r) = call_skill(ctx.skills, ctx.caller, name, args).await {
                rpc_result(id, r)
            } else {
                rpc_error(
                    id,
                    -32602,
                    format!(
                        "no tool `{}`; tools/list names them",
                        name.chars().take(60).collect::<String>()
                    ),
                )
            }
        }
        "resources/list" => rpc_result(id, json!({"resources": []})),
        "prompts/list" => rpc_result(id, json!({"prompts": []})),
        other => rpc_error(
            id,
            -32601,
            format!(
                "method `{}` is not supported",
                other.chars().take(60).collect::<String>()
            ),
        ),
    }))
}

struct Handler<'a> {
    skills: &'a Skills,
    alt_text: &'a AltText,
    caller: &'a Caller,
}

fn check_version(req: &HttpRequest) -> Result<(), ApiError> {
    match req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
    {
        Some(v) if !VERSIONS.contains(&v) => Err(ApiError::bad_request(
            "unsupported_protocol_version",
            format!(
                "MCP protocol version `{}` is not spoken here; these are: {}",
                v.chars().take(40).collect::<String>(),
                VERSIONS.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

fn unknown_session() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "mcp_session_unknown",
        "this MCP session is over or unknown; initialize again",
    )
}

/// JSON-RPC messages from the client.
#[utoipa::path(tag = "skills", request_body(content = Object), responses((status = 200, description = "JSON-RPC answer"), (status = 202, description = "Notification taken")))]
#[post("/mcp")]
pub async fn mcp_post(
    req: HttpRequest,
    body: Bytes,
    caller: Scoped<need::Skills>,
    skills: web::Data<Skills>,
    alt_text: web::Data<AltText>,
    live: web::Data<Live>,
    sessions: web::Data<Sessions>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &live)?;
    check_version(&req)?;
    let caller = caller.0;
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(HttpResponse::BadRequest().json(rpc_error(
                &Value::Null,
                -32700,
                format!("the body is not JSON: {e}"),
            )));
        }
    };
    let batch = parsed.is_array();
    let msgs: Vec<Value> = match parsed {
        Value::Array(a) => a,
        v => vec![v],
    };
    let initializing = msgs
        .iter()
        .any(|m| m.get("method").and_then(Value::as_str) == Some("initialize"));
    let mut new_session = None;
    if initializing {
        new_session = Some(sessions.open(&caller.account)?);
    } else if let Some(id) = session_header(&req)
        && sessions.touch(id, &caller.account).is_none()
    {
        return Err(unknown_session());
    }
    let ctx = Handler {
        skills: &skills,
        alt_text: &alt_text,
        caller: &caller,
    };
    let mut answers = Vec::new();
    for m in &msgs {
        if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            answers.push(rpc_error(
                m.get("id").unwrap_or(&Value::Null),
                -32600,
                "not a JSON-RPC 2.0 message",
            ));
            continue;
        }
        if let Some(a) = answer(m, &ctx).await? {
            answers.push(a);
        }
    }
    let mut res = if answers.is_empty() {
        HttpResponse::Accepted()
    } else {
        HttpResponse::Ok()
    };
    if let Some(id) = new_session {
        res.insert_header(("mcp-session-id", id));
    }
    Ok(match (answers.len(), batch) {
        (0, _) => res.finish(),
        (1, false) => res.json(&answers[0]),
        _ => res.json(Value::Array(answers)),
    })
}

/// The server-to-client stream: `notifications/tools/list_changed` when the caller's
/// published skills change (and a comment every 25 s to keep proxies from closing it).
#[utoipa::path(tag = "skills", responses((status = 200, description = "Server-sent events")))]
#[get("/mcp")]
pub async fn mcp_get(
    req: HttpRequest,
    caller: Scoped<need::Skills>,
    skills: web::Data<Skills>,
    live: web::Data<Live>,
    sessions: web::Data<Sessions>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &live)?;
    check_version(&req)?;
    let accepts = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !accepts {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "GET /mcp is a server-sent event stream: send Accept: text/event-stream",
        ));
    }
    let account = caller.0.account.clone();
    let ended = match session_header(&req) {
        Some(id) => sessions.touch(id, &account).ok_or_else(unknown_session)?,
        None => {
            return Err(ApiError::bad_request(
                "mcp_session_required",
                "initialize first, then send its Mcp-Session-Id",
            ));
        }
    };
    let every = Duration::from_secs(25);
    let state = Listener {
        changes: skills.changes(),
        ended,
        account,
        tick: tokio::time::interval_at(tokio::time::Instant::now() + every, every),
    };
    let body = futures_util::stream::unfold(state, |mut l| async move {
        let bytes = l.next().await?;
        Some((Ok::<_, std::convert::Infallible>(bytes), l))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// A `GET /mcp` stream's state.
struct Listener {
    changes: tokio::sync::broadcast::Receiver<String>,
    ended: watch::Receiver<()>,
    account: String,
    tick: tokio::time::Interval,
}

impl Listener {
    /// The next event: a keep-alive comment, or `list_changed` when this account's
    /// skills changed (or when some changes were missed); `None` once the session or
    /// the service is gone.
    async fn next(&mut self) -> Option<Bytes> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                _ = self.tick.tick() => return Some(Bytes::from_static(b": keep-alive\n\n")),
                _ = self.ended.changed() => return None,
                got = self.changes.recv() => match got {
                    Ok(a) if a != self.account => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
                        return Some(Bytes::from(format!("event: message\ndata: {note}\n\n")));
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// Ends a session.
#[utoipa::path(tag = "skills", responses((status = 204, description = "Ended")))]
#[delete("/mcp")]
pub async fn mcp_delete(
    req: HttpRequest,
    caller: Scoped<need::Skills>,
    live: web::Data<Live>,
    sessions: web::Data<Sessions>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &live)?;
    match session_header(&req) {
        Some(id) if sessions.close(id, &caller.0.account) => Ok(HttpResponse::NoContent().finish()),
        _ => Err(unknown_session()),
    }
}
