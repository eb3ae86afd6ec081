//! `anthropic`: the Messages API, with image input, whole and streamed.

use super::client::Call;
use super::upstream::{ChatOutput, Connection, StreamEvent, UpstreamError, sse_data};
use super::wire::{self, ChatRequest, Usage};
use futures_util::StreamExt;
use serde_json::{Value, json};

const VERSION: &str = "2023-06-01";

pub(super) fn auth(conn: &Connection, req: Call) -> Call {
    conn.authorize(req, "x-api-key")
        .header("anthropic-version", VERSION)
}

fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

/// Translates OpenAI messages into a Messages API body.
fn body(model: &str, req: &ChatRequest, max_tokens: u32) -> Value {
    let (system, conversation) = req.split_system();
    let mut messages = Vec::new();
    for m in conversation {
        let role = if m.role == "assistant" {
            "assistant"
        } else {
            "user"
        };
        let mut content = Vec::new();
        for img in m.images() {
            let source = match wire::parse_data_uri(&img.url) {
                Some((media, data)) => json!({"type": "base64", "media_type": media, "data": data}),
                None => json!({"type": "url", "url": img.url}),
            };
            content.push(json!({"type": "image", "source": source}));
        }
        let text = m.text();
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
        messages.push(json!({"role": role, "content": content}));
    }
    let mut body = json!({
        "model": model,
        "max_tokens": max_tokens,
        "messages": messages,
    });
    if let Some(s) = system {
        body["system"] = s.into();
    }
    if let Some(t) = req.temperature {
        body["temperature"] = t.into();
    }
    if let Some(p) = req.top_p {
        body["top_p"] = p.into();
    }
    if let Some(s) = &req.stop {
        body["stop_sequences"] = s.to_vec().into();
    }
    if req.stream {
        body["stream"] = true.into();
    }
    body
}

pub(super) async fn chat(
    conn: &Connection,
    model: &str,
    req: &ChatRequest,
    max_tokens: u32,
) -> Result<ChatOutput, UpstreamError> {
    let url = format!("{}/v1/messages", conn.base_url);
    let call = conn.post(&url).json(&body(model, req, max_tokens));
    let res = conn.send(auth(conn, call)).await?;
    if !req.stream {
        let v = conn.json(res).await?;
        let parts = v
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::garbage(&conn.name, "no `content` in the answer"))?;
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let usage = v.get("usage").map(|u| Usage {
            input_tokens: u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
            output_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
        });
        let id = v.get("id").and_then(Value::as_str).unwrap_or("msg");
        let finish = finish_reason(v.get("stop_reason").and_then(Value::as_str));
        let body = wire::completion(
            &format!("chatcmpl-{id}"),
            model,
            crate::store::now_ms() / 1000,
            &text,
            finish,
            usage.unwrap_or_default(),
        );
        return Ok(ChatOutput::Full {
            body: super::Whole::Built(body),
            usage,
        });
    }
    let name = conn.name.clone();
    let model = model.to_string();
    let created = crate::store::now_ms() / 1000;
    let mut input_tokens = 0;
    let mut id = String::from("chatcmpl-anthropic");
    let events = sse_data(conn.name.clone(), res)
        .flat_map(move |d| {
            let mut out: Vec<Result<StreamEvent, UpstreamError>> = Vec::new();
            let v = match d.map(|t| serde_json::from_slice::<Value>(&t)) {
                Err(e) => return futures_util::stream::iter(vec![Err(e)]),
                Ok(Err(e)) => {
                    return futures_util::stream::iter(vec![Err(UpstreamError::garbage(&name, e))]);
                }
                Ok(Ok(v)) => v,
            };
            match v.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    input_tokens = v
                        .pointer("/message/usage/input_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if let Some(i) = v.pointer("/message/id").and_then(Value::as_str) {
                        id = format!("chatcmpl-{i}");
                    }
                }
                Some("content_block_delta") => {
                    if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                        out.push(Ok(StreamEvent::Chunk(wire::chunk(
                            &id,
                            &model,
                            created,
                            Some(t),
                            None,
                        ))));
                    }
                }
                Some("message_delta") => {
                    let stop = v.pointer("/delta/stop_reason").and_then(Value::as_str);
                    out.push(Ok(StreamEvent::Chunk(wire::chunk(
                        &id,
                        &model,
                        created,
                        None,
                        Some(finish_reason(stop)),
                    ))));
                    if let Some(o) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                        out.push(Ok(StreamEvent::Usage(Usage {
                            input_tokens,
                            output_tokens: o,
                        })));
                    }
                }
                Some("error") => {
                    out.push(Err(UpstreamError::garbage(&name, "an error mid-stream")));
                }
                _ => {}
            }
            futures_util::stream::iter(out)
        })
        .boxed();
    Ok(ChatOutput::Stream(events))
}
