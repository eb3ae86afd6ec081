//! Reading a chat request without serde's buffering.
//!
//! serde's derive reads a struct with a `#[serde(flatten)]` field, an untagged enum or an
//! internally tagged one by first copying the whole value into a generic tree and then
//! reading the type out of that copy. A chat request has all three, so every request
//! (and every data-URI image in it) was parsed twice. These visitors read each field
//! once, straight into its place; unknown fields still travel on in `rest`.

use super::{ChatRequest, Content, ImageUrl, Message, Part, Stop, StreamOptions};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A field name: the index of a known one, or any other as sent.
enum Field {
    Known(usize),
    Other(String),
}

/// Reads a field name against a list of known ones.
struct Fields(&'static [&'static str]);

impl Fields {
    fn find(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|k| *k == name)
    }
}

impl<'de> DeserializeSeed<'de> for Fields {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for Fields {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(self
            .find(v)
            .map_or_else(|| Field::Other(v.to_owned()), Field::Known))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Field, E> {
        Ok(self.find(&v).map_or(Field::Other(v), Field::Known))
    }
}

/// Fills a field's slot, refusing a second value for it.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

const CHAT: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
];

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ChatRequest;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chat completion request (a JSON object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest, A::Error> {
                let mut model = None;
                let mut messages = None;
                let mut stream = None;
                let mut stream_options = None;
                let mut max_tokens = None;
                let mut max_completion_tokens = None;
                let mut temperature = None;
                let mut top_p = None;
                let mut stop = None;
                let mut n = None;
                let mut rest = Map::new();
                while let Some(field) = map.next_key_seed(Fields(CHAT))? {
                    let i = match field {
                        Field::Known(i) => i,
                        Field::Other(name) => {
                            rest.insert(name, map.next_value::<Value>()?);
                            continue;
                        }
                    };
                    let name = CHAT[i];
                    match i {
                        0 => once(&mut model, map.next_value()?, name)?,
                        1 => once(&mut messages, map.next_value()?, name)?,
                        2 => once(&mut stream, map.next_value()?, name)?,
                        3 => once(&mut stream_options, map.next_value()?, name)?,
                        4 => once(&mut max_tokens, map.next_value()?, name)?,
                        5 => once(&mut max_completion_tokens, map.next_value()?, name)?,
                        6 => once(&mut temperature, map.next_value()?, name)?,
                        7 => once(&mut top_p, map.next_value()?, name)?,
                        8 => once(&mut stop, map.next_value()?, name)?,
                        _ => once(&mut n, map.next_value()?, name)?,
                    }
                }
                Ok(ChatRequest {
                    model: model.ok_or_else(|| de::Error::missing_field("model"))?,
                    messages: messages.ok_or_else(|| de::Error::missing_field("messages"))?,
                    stream: stream.unwrap_or(false),
                    stream_options: stream_options.flatten(),
                    max_tokens: max_tokens.flatten(),
                    max_completion_tokens: max_completion_tokens.flatten(),
                    temperature: temperature.flatten(),
                    top_p: top_p.flatten(),
                    stop: stop.flatten(),
                    n: n.flatten(),
                    rest,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stream options (a JSON object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StreamOptions, A::Error> {
                let mut include_usage = None;
                let mut rest = Map::new();
                while let Some(field) = map.next_key_seed(Fields(&["include_usage"]))? {
                    match field {
                        Field::Known(_) => {
                            once(&mut include_usage, map.next_value()?, "include_usage")?;
                        }
                        Field::Other(name) => {
                            rest.insert(name, map.next_value::<Value>()?);
                        }
                    }
                }
                Ok(StreamOptions {
                    include_usage: include_usage.unwrap_or(false),
                    rest,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message (a JSON object with `role` and `content`)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut role = None;
                let mut content = None;
                let mut rest = Map::new();
                while let Some(field) = map.next_key_seed(Fields(&["role", "content"]))? {
                    match field {
                        Field::Known(0) => once(&mut role, map.next_value()?, "role")?,
                        Field::Known(_) => once(&mut content, map.next_value()?, "content")?,
                        Field::Other(name) => {
                            rest.insert(name, map.next_value::<Value>()?);
                        }
                    }
                }
                Ok(Message {
                    role: role.ok_or_else(|| de::Error::missing_field("role"))?,
                    content: content.flatten(),
                    rest,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// A value sent either as one string or as a list (`content`, `stop`).
enum OneOrList<T> {
    One(String),
    List(Vec<T>),
}

/// Reads a [`OneOrList`], saying `expecting` when the value is neither.
struct OneOrListOf<T> {
    expecting: &'static str,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T> OneOrListOf<T> {
    fn new(expecting: &'static str) -> Self {
        OneOrListOf {
            expecting,
            _item: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for OneOrListOf<T> {
    type Value = OneOrList<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OneOrList<T>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrListOf<T> {
    type Value = OneOrList<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrList<T>, E> {
        Ok(OneOrList::One(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<OneOrList<T>, E> {
        Ok(OneOrList::One(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrList<T>, A::Error> {
        let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            all.push(item);
        }
        Ok(OneOrList::List(all))
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match OneOrListOf::new("a string or a list of content parts").deserialize(d)? {
                OneOrList::One(text) => Content::Text(text),
                OneOrList::List(parts) => Content::Parts(parts),
            },
        )
    }
}

const PART_TYPES: &[&str] = &["text", "image_url"];

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a content part (a JSON object with `type`)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
                let mut kind: Option<String> = None;
                let mut text: Option<String> = None;
                let mut image_url: Option<ImageUrl> = None;
                while let Some(field) = map.next_key_seed(Fields(&["type", "text", "image_url"]))? {
                    match field {
                        Field::Known(0) => once(&mut kind, map.next_value()?, "type")?,
                        Field::Known(1) => once(&mut text, map.next_value()?, "text")?,
                        Field::Known(_) => once(&mut image_url, map.next_value()?, "image_url")?,
                        // Other fields of a part are not sent on.
                        Field::Other(_) => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                match kind.as_deref() {
                    Some("text") => Ok(Part::Text {
                        text: text.ok_or_else(|| de::Error::missing_field("text"))?,
                    }),
                    Some("image_url") => Ok(Part::ImageUrl {
                        image_url: image_url
                            .ok_or_else(|| de::Error::missing_field("image_url"))?,
                    }),
                    Some(other) => Err(de::Error::unknown_variant(other, PART_TYPES)),
                    None => Err(de::Error::missing_field("type")),
                }
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(
            match OneOrListOf::new("a string or a list of strings").deserialize(d)? {
                OneOrList::One(s) => Stop::One(s),
                OneOrList::List(all) => Stop::Many(all),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ChatRequest, Content, Part, Stop};
    use serde_json::json;

    fn read(v: serde_json::Value) -> Result<ChatRequest, String> {
        serde_json::from_slice(v.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_field_lands_in_its_place_and_the_rest_travels_on() {
        let req = read(json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true, "x": 1},
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9,
            "stop": ["a", "b"], "n": 2, "user": "u1", "tools": [{"type": "function"}],
            "messages": [
                {"role": "system", "content": "be brief", "name": "s"},
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}, "type": "image_url"}
                ]},
                {"role": "assistant", "content": null, "tool_calls": []}
            ]
        }))
        .unwrap();
        assert_eq!(req.model, "m");
        assert!(req.stream);
        let so = req.stream_options.as_ref().unwrap();
        assert!(so.include_usage);
        assert_eq!(so.rest["x"], 1);
        assert_eq!(
            (req.max_tokens, req.max_completion_tokens),
            (Some(5), Some(7))
        );
        assert_eq!(
            (req.temperature, req.top_p, req.n),
            (Some(0.5), Some(0.9), Some(2))
        );
        assert!(matches!(&req.stop, Some(Stop::Many(v)) if v == &["a", "b"]));
        assert_eq!(req.rest["user"], "u1");
        assert_eq!(req.rest["tools"][0]["type"], "function");
        assert_eq!(req.rest.len(), 2);
        assert_eq!(req.messages.len(), 3);
        assert!(matches!(&req.messages[0].content, Some(Content::Text(t)) if t == "be brief"));
        assert_eq!(req.messages[0].rest["name"], "s");
        let Some(Content::Parts(parts)) = &req.messages[1].content else {
            panic!("parts expected")
        };
        assert!(matches!(&parts[0], Part::Text { text } if text == "what is this?"));
        assert!(matches!(&parts[1], Part::ImageUrl { image_url }
            if image_url.url == "data:image/png;base64,AAAA" && image_url.detail.as_deref() == Some("low")));
        assert!(req.messages[2].content.is_none());
        assert!(req.messages[2].rest.contains_key("tool_calls"));
        // Written out again, it is what came in (less the null content).
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["tools"][0]["type"], "function");
        assert_eq!(
            back["messages"][1]["content"][1]["image_url"]["detail"],
            "low"
        );
    }

    #[test]
    fn omitted_and_null_options_are_absent() {
        let req = read(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": null, "stop": "x"}),
        )
        .unwrap();
        assert!(!req.stream);
        assert!(req.stream_options.is_none() && req.max_tokens.is_none() && req.n.is_none());
        assert!(matches!(&req.stop, Some(Stop::One(s)) if s == "x"));
        assert!(req.rest.is_empty());
    }

    #[test]
    fn wrong_shapes_are_refused_with_what_was_expected() {
        let cases = [
            (r#"{"messages": []}"#, "missing field `model`"),
            (r#"{"model": "m"}"#, "missing field `messages`"),
            (
                r#"{"model": "m", "model": "n", "messages": []}"#,
                "duplicate field `model`",
            ),
            (r#"[1, 2]"#, "a chat completion request"),
            (r#"{"model": 3, "messages": []}"#, "expected a string"),
            (
                r#"{"model": "m", "messages": [{"content": "x"}]}"#,
                "missing field `role`",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#,
                "a string or a list of content parts",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}"#,
                "missing field `type`",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}"#,
                "unknown variant `audio`",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "missing field `image_url`",
            ),
            (
                r#"{"model": "m", "messages": [], "stream": "yes"}"#,
                "expected a boolean",
            ),
            (
                r#"{"model": "m", "messages": [], "stop": 1}"#,
                "a string or a list of strings",
            ),
        ];
        for (body, want) in cases {
            let err = serde_json::from_str::<ChatRequest>(body)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
