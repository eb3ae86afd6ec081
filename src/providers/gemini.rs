//! `gemini`: native `generateContent`, with image input and image output.

use super::client::Call;
use super::upstream::{ChatOutput, Connection, StreamEvent, UpstreamError, sse_data};
use super::wire::{self, ChatRequest, Image, ImageRequest, Usage};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};

pub(super) fn auth(conn: &Connection, req: Call) -> Call {
    conn.authorize(req, "x-goog-api-key")
}

fn contents(req: &ChatRequest) -> Result<(Vec<Value>, Option<String>), UpstreamError> {
    let (system, conversation) = req.split_system();
    let mut contents = Vec::new();
    for m in conversation {
        let role = if m.role == "assistant" {
            "model"
        } else {
            "user"
        };
        let mut parts = Vec::new();
        for img in m.images() {
            let Some((media, data)) = wire::parse_data_uri(&img.url) else {
                return Err(UpstreamError::Unsupported(
                    "gemini takes images as data: URIs (data:image/png;base64,...), not links"
                        .into(),
                ));
            };
            parts.push(json!({"inlineData": {"mimeType": media, "data": data}}));
        }
        let text = m.text();
        if !text.is_empty() {
            parts.push(json!({"text": text}));
        }
        contents.push(json!({"role": role, "parts": parts}));
    }
    Ok((contents, system))
}

fn finish_reason(r: Option<&str>) -> &'static str {
    match r {
        Some("MAX_TOKENS") => "length",
        Some("SAFETY") | Some("RECITATION") | Some("PROHIBITED_CONTENT") => "content_filter",
        _ => "stop",
    }
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata")?;
    Some(Usage {
        input_tokens: u
            .get("promptTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: u
            .get("candidatesTokenCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

fn text_of(v: &Value) -> String {
    v.pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) async fn chat(
    conn: &Connection,
    model: &str,
    req: &ChatRequest,
    max_tokens: u32,
) -> Result<ChatOutput, UpstreamError> {
    let (contents, system) = contents(req)?;
    let mut config = json!({"maxOutputTokens": max_tokens});
    if let Some(t) = req.temperature {
        config["temperature"] = t.into();
    }
    if let Some(p) = req.top_p {
        config["topP"] = p.into();
    }
    if let Some(s) = &req.stop {
        config["stopSequences"] = s.to_vec().into();
    }
    let mut body = json!({"contents": contents, "generationConfig": config});
    if let Some(s) = system {
        body["systemInstruction"] = json!({"parts": [{"text": s}]});
    }
    let url = if req.stream {
        format!(
            "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
            conn.base_url
        )
    } else {
        format!("{}/v1beta/models/{model}:generateContent", conn.base_url)
    };
    let res = conn.send(auth(conn, conn.post(&url).json(&body))).await?;
    let created = crate::store::now_ms() / 1000;
    let id = format!("chatcmpl-gemini-{created}");
    if !req.stream {
        let v = conn.json(res).await?;
        if v.get("candidates").and_then(Value::as_array).is_none() {
            return Err(UpstreamError::garbage(
                &conn.name,
                "no `candidates` in the answer",
            ));
        }
        let usage = usage_of(&v);
        let finish = finish_reason(
            v.pointer("/candidates/0/finishReason")
                .and_then(Value::as_str),
        );
        let body = wire::completion(
            &id,
            model,
            created,
            &text_of(&v),
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
    let events = sse_data(conn.name.clone(), res)
        .flat_map(move |d| {
            let v = match d.map(|t| serde_json::from_slice::<Value>(&t)) {
                Err(e) => return futures_util::stream::iter(vec![Err(e)]),
                Ok(Err(e)) => {
                    return futures_util::stream::iter(vec![Err(UpstreamError::garbage(&name, e))]);
                }
                Ok(Ok(v)) => v,
            };
            let mut out = Vec::new();
            let text = text_of(&v);
            let finish = v
                .pointer("/candidates/0/finishReason")
                .and_then(Value::as_str)
                .map(|r| finish_reason(Some(r)));
            if !text.is_empty() || finish.is_some() {
                let t = (!text.is_empty()).then_some(text.as_str());
                out.push(Ok(StreamEvent::Chunk(wire::chunk(
                    &id, &model, created, t, finish,
                ))));
            }
            if let Some(u) = usage_of(&v) {
                out.push(Ok(StreamEvent::Usage(u)));
            }
            futures_util::stream::iter(out)
        })
        .boxed();
    Ok(ChatOutput::Stream(events))
}

pub(super) async fn images(
    conn: &Connection,
    model: &str,
    req: &ImageRequest,
) -> Result<Vec<Image>, UpstreamError> {
    // An edit sends the image first, then what to do with it.
    let mut parts = Vec::new();
    if let Some(image) = &req.source {
        let data = base64::engine::general_purpose::STANDARD.encode(&image.bytes);
        parts.push(json!({"inlineData": {"mimeType": image.media_type, "data": data}}));
    }
    if req.mask.is_some() {
        return Err(UpstreamError::Unsupported(format!(
            "{} (gemini) takes no mask; describe the area to change in the prompt",
            conn.name
        )));
    }
    parts.push(json!({"text": req.prompt}));
    let body = json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]},
    });
    let url = format!("{}/v1beta/models/{model}:generateContent", conn.base_url);
    let mut out = Vec::new();
    for _ in 0..req.count() {
        let res = conn.send(auth(conn, conn.post(&url).json(&body))).await?;
        let v = conn.json(res).await?;
        let parts = v
            .pointer("/candidates/0/content/parts")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::garbage(&conn.name, "no image in the answer"))?;
        let inline = parts
            .iter()
            .find_map(|p| p.get("inlineData").or_else(|| p.get("inline_data")))
            .ok_or_else(|| UpstreamError::garbage(&conn.name, "no image in the answer"))?;
        let data = inline
            .get("data")
            .and_then(Value::as_str)
            .ok_or_else(|| UpstreamError::garbage(&conn.name, "an image with no data"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| UpstreamError::garbage(&conn.name, e))?;
        let media_type = inline
            .get("mimeType")
            .and_then(Value::as_str)
            .unwrap_or("image/png")
            .to_string();
        out.push(Image {
            bytes,
            media_type,
            revised_prompt: None,
        });
    }
    Ok(out)
}
