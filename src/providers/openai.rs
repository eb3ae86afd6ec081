//! `openai` and `openai-compatible`: the request goes through nearly as sent, with
//! the upstream model name and the provider's privacy options.

use super::Whole;
use super::client::Call;
use super::upstream::{ChatOutput, Connection, SseData, StreamEvent, UpstreamError, sse_data};
use super::wire::{ChatRequest, Image, ImageRequest, SourceImage};
use crate::config::ProviderKind;
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::pin::Pin;
use std::task::{Context, Poll};

pub(super) fn auth(conn: &Connection, req: Call) -> Call {
    conn.authorize(req, "authorization")
}

/// The chat request as the provider gets it: the client's fields as sent, the
/// upstream model, usage asked for at the end of a stream, and the privacy options
/// this endpoint understands. Written straight to JSON, with no `Value` in between.
struct Outgoing<'a> {
    req: &'a ChatRequest,
    model: &'a str,
    /// OpenAI's `store: false`.
    no_store: bool,
    /// OpenRouter's routing to endpoints that neither train on nor keep prompts.
    no_retention: bool,
}

impl<'a> Outgoing<'a> {
    fn new(conn: &Connection, model: &'a str, req: &'a ChatRequest) -> Self {
        Outgoing {
            req,
            model,
            no_store: conn.privacy && conn.kind == ProviderKind::Openai,
            no_retention: conn.privacy && conn.base_url.contains("openrouter.ai"),
        }
    }
}

impl serde::Serialize for Outgoing<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.req;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("messages", &r.messages)?;
        if r.stream {
            m.serialize_entry("stream", &true)?;
            // Usage figures at the end of the stream are what the request is charged by.
            m.serialize_entry("stream_options", &json!({"include_usage": true}))?;
        } else if let Some(o) = &r.stream_options {
            m.serialize_entry("stream_options", o)?;
        }
        if let Some(v) = r.max_tokens {
            m.serialize_entry("max_tokens", &v)?;
        }
        if let Some(v) = r.max_completion_tokens {
            m.serialize_entry("max_completion_tokens", &v)?;
        }
        if let Some(v) = r.temperature {
            m.serialize_entry("temperature", &v)?;
        }
        if let Some(v) = r.top_p {
            m.serialize_entry("top_p", &v)?;
        }
        if let Some(v) = &r.stop {
            m.serialize_entry("stop", v)?;
        }
        if let Some(v) = r.n {
            m.serialize_entry("n", &v)?;
        }
        for (k, v) in &r.rest {
            match k.as_str() {
                "store" if self.no_store => {}
                "provider" if self.no_retention => {}
                _ => m.serialize_entry(k, v)?,
            }
        }
        if self.no_store {
            m.serialize_entry("store", &false)?;
        }
        if self.no_retention {
            // Only endpoints that neither train on nor keep prompts; what the client
            // asked of OpenRouter's routing otherwise stays.
            match r.rest.get("provider") {
                Some(Value::Object(asked)) => {
                    let mut p = asked.clone();
                    p.entry("data_collection").or_insert("deny".into());
                    p.entry("zdr").or_insert(true.into());
                    m.serialize_entry("provider", &p)?;
                }
                Some(other) => m.serialize_entry("provider", other)?,
                None => {
                    m.serialize_entry("provider", &json!({"data_collection": "deny", "zdr": true}))?
                }
            }
        }
        m.end()
    }
}

pub(super) async fn chat(
    conn: &Connection,
    model: &str,
    req: &ChatRequest,
) -> Result<ChatOutput, UpstreamError> {
    let body = Outgoing::new(conn, model, req);
    let res = conn.send(auth(conn, conn.post_chat().json(&body))).await?;
    if !req.stream {
        let bytes = conn.read(res).await?;
        let (body, usage) =
            Whole::check(bytes).map_err(|e| UpstreamError::garbage(&conn.name, e))?;
        return Ok(ChatOutput::Full { body, usage });
    }
    let events = Chunks {
        data: sse_data(conn.name.clone(), res),
        name: conn.name.clone(),
        next: None,
        done: false,
    }
    .boxed();
    Ok(ChatOutput::Stream(events))
}

/// The events of an OpenAI-shaped stream, each checked, up to `[DONE]`. A chunk that
/// reports usage gives two events (the usage first), with no list built per chunk.
struct Chunks {
    data: SseData,
    name: String,
    /// A chunk's second event, given out next.
    next: Option<Result<StreamEvent, UpstreamError>>,
    /// `[DONE]` came.
    done: bool,
}

impl futures_core::Stream for Chunks {
    type Item = Result<StreamEvent, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let s = self.get_mut();
        loop {
            if let Some(event) = s.next.take() {
                return Poll::Ready(Some(event));
            }
            if s.done {
                return Poll::Ready(None);
            }
            let data = match Pin::new(&mut s.data).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(data))) => data,
            };
            if data.trim_ascii() == b"[DONE]" {
                s.done = true;
                return Poll::Ready(None);
            }
            let c = match Whole::check_chunk(data) {
                Ok(c) => c,
                Err(e) => return Poll::Ready(Some(Err(UpstreamError::garbage(&s.name, e)))),
            };
            let chunk = match c.chunk {
                Some(chunk) => Some(Ok(StreamEvent::Chunk(chunk))),
                None if c.error => {
                    Some(Err(UpstreamError::garbage(&s.name, "an error mid-stream")))
                }
                None => None,
            };
            match c.usage {
                Some(u) => {
                    s.next = chunk;
                    return Poll::Ready(Some(Ok(StreamEvent::Usage(u))));
                }
                None if chunk.is_some() => return Poll::Ready(chunk),
                None => {}
            }
        }
    }
}

pub(super) async fn images(
    conn: &Connection,
    model: &str,
    req: &ImageRequest,
) -> Result<Vec<Image>, UpstreamError> {
    let mut body = serde_json::Map::new();
    body.insert("model".into(), model.into());
    body.insert("prompt".into(), req.prompt.clone().into());
    if let Some(n) = req.n {
        body.insert("n".into(), n.into());
    }
    if let Some(s) = &req.size {
        body.insert("size".into(), s.clone().into());
    }
    for (k, v) in &req.rest {
        body.entry(k.clone()).or_insert(v.clone());
    }
    // No privacy fields here: `store` exists only on chat, and OpenAI's image
    // endpoints refuse a parameter they do not know.
    let request = match &req.source {
        None => conn
            .post(&format!("{}/images/generations", conn.base_url))
            .json(&body),
        Some(image) => {
            let mut files = vec![("image", image)];
            if let Some(mask) = &req.mask {
                files.push(("mask", mask));
            }
            let (content_type, form) = multipart(&body, &files);
            conn.post(&format!("{}/images/edits", conn.base_url))
                .body(&content_type, form)
        }
    };
    let res = conn.send(auth(conn, request)).await?;
    let answer = conn.json(res).await?;
    let data = answer
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| UpstreamError::garbage(&conn.name, "no `data` in the answer"))?;
    let mut out = Vec::new();
    for item in data {
        let revised_prompt = item
            .get("revised_prompt")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(b64) = item.get("b64_json").and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| UpstreamError::garbage(&conn.name, e))?;
            out.push(Image {
                media_type: sniff(&bytes).to_string(),
                bytes,
                revised_prompt,
            });
        } else if let Some(url) = item.get("url").and_then(Value::as_str) {
            let (bytes, media_type) = conn.download(url).await?;
            out.push(Image {
                bytes,
                media_type,
                revised_prompt,
            });
        } else {
            return Err(UpstreamError::garbage(&conn.name, "an image with no data"));
        }
    }
    if out.is_empty() {
        return Err(UpstreamError::garbage(
            &conn.name,
            "no images in the answer",
        ));
    }
    Ok(out)
}

/// A `multipart/form-data` body: each field of `fields` as a text part (strings as
/// they are, other scalars as JSON; objects and arrays have no form shape and are
/// left out), then each file. Returns the content type (with its boundary) and the body.
fn multipart(
    fields: &serde_json::Map<String, Value>,
    files: &[(&str, &SourceImage)],
) -> (String, Vec<u8>) {
    // Random, so it cannot occur in the image bytes by design of whoever sent them.
    let boundary = format!(
        "easel-{}",
        crate::crypto::random_hex::<16>().unwrap_or_else(|_| format!(
            "{:x}",
            crate::store::now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ))
    );
    let mut out = Vec::new();
    for (name, value) in fields {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Object(_) | Value::Array(_) | Value::Null => continue,
            other => other.to_string(),
        };
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{text}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, image) in files {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                image.file_name(name),
                image.media_type
            )
            .as_bytes(),
        );
        out.extend_from_slice(&image.bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), out)
}

/// The media type of image bytes, from their magic numbers.
pub fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "image/jpeg"
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::upstream::Owner;
    use std::time::Duration;

    fn conn(kind: ProviderKind, base_url: &str, privacy: bool) -> Connection {
        let clients = super::super::client::Clients::new(Duration::from_secs(1), None).unwrap();
        Connection::new(
            "up".into(),
            kind,
            base_url.into(),
            None,
            privacy,
            Duration::from_secs(1),
            0,
            Owner::Config,
            clients,
            Default::default(),
        )
    }

    fn sent(conn: &Connection, request: Value) -> Value {
        let req: ChatRequest = serde_json::from_value(request).unwrap();
        serde_json::to_value(Outgoing::new(conn, "upstream-model", &req)).unwrap()
    }

    #[test]
    fn the_request_goes_as_sent_with_the_upstream_model_usage_and_no_storing() {
        let openai = conn(ProviderKind::Openai, "https://api.openai.com/v1", true);
        let body = sent(
            &openai,
            json!({"model": "catalog-id", "messages": [{"role": "user", "content": "hi"}],
                "stream": true, "stream_options": {"include_usage": false, "x": 1},
                "temperature": 0.5, "max_tokens": 9, "stop": ["\n"], "store": true,
                "seed": 7, "response_format": {"type": "json_object"}}),
        );
        assert_eq!(
            body,
            json!({"model": "upstream-model",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true, "stream_options": {"include_usage": true},
                "temperature": 0.5, "max_tokens": 9, "stop": ["\n"], "store": false,
                "seed": 7, "response_format": {"type": "json_object"}})
        );
        // Not streamed: the client's own stream options, if any, go as they are.
        let whole = sent(
            &openai,
            json!({"model": "m", "messages": [], "stream_options": {"include_usage": false}}),
        );
        assert_eq!(whole["stream_options"], json!({"include_usage": false}));
        assert!(whole.get("stream").is_none());
    }

    #[test]
    fn openrouter_is_asked_for_endpoints_that_keep_nothing_and_the_switch_turns_it_off() {
        let router = conn(
            ProviderKind::OpenaiCompatible,
            "https://openrouter.ai/api/v1",
            true,
        );
        let plain = sent(&router, json!({"model": "m", "messages": []}));
        assert_eq!(
            plain["provider"],
            json!({"data_collection": "deny", "zdr": true})
        );
        assert!(plain.get("store").is_none(), "store is OpenAI's own field");
        let asked = sent(
            &router,
            json!({"model": "m", "messages": [], "provider": {"order": ["a"], "zdr": false}}),
        );
        assert_eq!(
            asked["provider"],
            json!({"order": ["a"], "zdr": false, "data_collection": "deny"})
        );
        let off = conn(ProviderKind::Openai, "https://openrouter.ai/api/v1", false);
        let body = sent(
            &off,
            json!({"model": "m", "messages": [], "store": true, "provider": {"order": ["a"]}}),
        );
        assert_eq!(body["store"], true);
        assert_eq!(body["provider"], json!({"order": ["a"]}));
    }
}
