//! OpenAI's chat and image wire format: the lingua franca every adapter translates to
//! and from. Fields Easel does not look at travel on untouched in `rest`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod read;

/// `POST /v1/chat/completions` as a client sends it. It and its parts are read by
/// hand (`read.rs`), each field once; serde's derive would copy the whole request first.
#[derive(Clone, Debug, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `stop`: one string or several.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    /// The stop sequences as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s.clone()],
            Stop::Many(v) => v.clone(),
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A message's content: text, or a list of parts.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

/// An image part: an `https:` URL or a `data:` URI.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Message {
    /// The message's text parts joined.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    Part::ImageUrl { .. } => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// Bytes of the message's text, counted without copying it.
    pub fn text_len(&self) -> usize {
        match &self.content {
            None => 0,
            Some(Content::Text(t)) => t.len(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match p {
                    Part::Text { text } => text.len() + 1,
                    Part::ImageUrl { .. } => 0,
                })
                .sum(),
        }
    }

    /// The message's image parts.
    pub fn images(&self) -> impl Iterator<Item = &ImageUrl> {
        let parts: &[Part] = match &self.content {
            Some(Content::Parts(p)) => p,
            _ => &[],
        };
        parts.iter().filter_map(|p| match p {
            Part::ImageUrl { image_url } => Some(image_url),
            Part::Text { .. } => None,
        })
    }
}

impl ChatRequest {
    /// The output cap the client asked for, if any.
    pub fn output_cap(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// The system (and developer) messages joined, and the conversation without them:
    /// the shape of providers that keep instructions apart.
    pub fn split_system(&self) -> (Option<String>, Vec<&Message>) {
        let (system, rest): (Vec<&Message>, Vec<&Message>) = self
            .messages
            .iter()
            .partition(|m| m.role == "system" || m.role == "developer");
        let text: Vec<String> = system.iter().map(|m| m.text()).collect();
        ((!text.is_empty()).then(|| text.join("\n\n")), rest)
    }

    /// How many images the messages carry.
    pub fn image_count(&self) -> usize {
        self.messages.iter().map(|m| m.images().count()).sum()
    }
}

/// Token counts reported by a provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    /// Reads OpenAI's `usage` object.
    pub fn from_openai(v: &Value) -> Option<Usage> {
        Usage::from_openai_usage(v.get("usage")?)
    }

    /// Token counts from OpenAI's `usage` object itself.
    pub fn from_openai_usage(u: &Value) -> Option<Usage> {
        Some(Usage {
            input_tokens: u.get("prompt_tokens")?.as_u64()?,
            output_tokens: u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }
}

/// A `data:` URI split into its media type and base64 payload.
pub fn parse_data_uri(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media = meta.strip_suffix(";base64")?;
    Some((if media.is_empty() { "image/png" } else { media }, data))
}

/// A whole (not streamed) chat completion in OpenAI's shape.
pub fn completion(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    finish: &str,
    usage: Usage,
) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
        }],
        "usage": usage.to_json(),
    })
}

/// One streamed chunk in OpenAI's shape (`text` and `finish` may be absent).
pub fn chunk(
    id: &str,
    model: &str,
    created: u64,
    text: Option<&str>,
    finish: Option<&str>,
) -> super::Whole {
    let mut delta = Map::new();
    if let Some(t) = text {
        delta.insert("role".into(), "assistant".into());
        delta.insert("content".into(), t.into());
    }
    super::Whole::Built(serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }))
}

/// `POST /v1/images/generations` as a client sends it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ImageRequest {
    pub model: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `b64_json` or `url`; Easel always fetches the bytes and answers as asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
    /// The image to edit (`/v1/images/edits`); none makes a new image.
    #[serde(skip)]
    pub source: Option<SourceImage>,
    /// Where to edit: the transparent part of this image (OpenAI's `mask`).
    #[serde(skip)]
    pub mask: Option<SourceImage>,
}

/// An image sent to a provider to work on, already decoded once by Easel.
#[derive(Clone)]
pub struct SourceImage {
    pub bytes: bytes::Bytes,
    pub media_type: String,
}

impl std::fmt::Debug for SourceImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SourceImage({}, {} bytes)",
            self.media_type,
            self.bytes.len()
        )
    }
}

impl SourceImage {
    /// A file name with the extension of its media type, for a multipart part.
    pub fn file_name(&self, stem: &str) -> String {
        let ext = match self.media_type.as_str() {
            "image/jpeg" => "jpg",
            "image/webp" => "webp",
            "image/gif" => "gif",
            _ => "png",
        };
        format!("{stem}.{ext}")
    }
}

impl ImageRequest {
    /// Images asked for.
    pub fn count(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    /// `size` as width and height.
    pub fn dimensions(&self) -> Option<(u32, u32)> {
        let (w, h) = self.size.as_deref()?.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    }
}

/// One generated image, as bytes.
#[derive(Clone, Debug)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub revised_prompt: Option<String>,
}
