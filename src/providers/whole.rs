//! A chat completion, or one streamed chunk of one, in OpenAI's shape.
//!
//! An `openai` or `openai-compatible` answer (and each event of its stream) is relayed
//! as the provider's own bytes: checked once (valid JSON with a `choices` list; usage,
//! answer length and where the top-level `model` is read on the way), then sent on with
//! only that `model` changed to the catalog's name. Building a `serde_json::Value` of it
//! and writing it out again cost a proxied request more than any other step of its own.
//! An answer with two top-level `model` members is refused like any other that is not
//! one answer.

use super::wire::Usage;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// A completion or chunk: the provider's checked bytes, or one an adapter built.
#[derive(Clone, Debug)]
pub enum Whole {
    /// OpenAI's shape as the provider sent it.
    Raw {
        body: Bytes,
        /// Bytes of answer text, or of a chunk's delta (for a usage guess when none
        /// is reported).
        output_chars: usize,
        /// Where its top-level `model` is.
        model: ModelAt,
    },
    /// Built by an adapter that translates another format.
    Built(Value),
}

/// What is read of a raw answer while checking it. Nothing of the answer is kept: its
/// text is only measured and its usage only counted, so a check allocates nothing.
#[derive(Deserialize)]
struct Check<'a> {
    choices: Choices,
    #[serde(default)]
    usage: Scalar<UsageCounts>,
    #[serde(default, borrow)]
    model: Placed<'a>,
}

/// What is read of a streamed chunk while checking it.
#[derive(Deserialize)]
struct CheckChunk<'a> {
    #[serde(default)]
    choices: Option<Choices>,
    #[serde(default)]
    usage: Scalar<UsageCounts>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, borrow)]
    model: Placed<'a>,
}

/// Where an answer's top-level `model` value is, so that it is replaced without a
/// second reading of the answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelAt {
    /// There is none: one is added.
    Absent,
    /// A string with no escapes, at this byte range of the text (quotes included).
    At(usize, usize),
    /// Something else (a string with escapes, a number, an object...): found by a scan
    /// of the text when it is replaced.
    Unplaced,
}

/// A `model` member as the check reads it: a string read in place (serde_json lends a
/// slice of the text itself when the string has no escapes), or anything else.
#[derive(Default)]
enum Placed<'a> {
    #[default]
    Absent,
    InPlace(&'a str),
    Elsewhere,
}

impl<'de: 'a, 'a> Deserialize<'de> for Placed<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Reader<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Reader<'a> {
            type Value = Placed<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Placed<'a>, E> {
                Ok(Placed::InPlace(v))
            }
            fn visit_str<E>(self, _: &str) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_unit<E>(self) -> Result<Placed<'a>, E> {
                Ok(Placed::Elsewhere)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Placed<'a>, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Placed::Elsewhere)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Placed<'a>, A::Error> {
                IgnoredAny.visit_map(map).map(|_| Placed::Elsewhere)
            }
        }
        d.deserialize_any(Reader(PhantomData))
    }
}

impl Placed<'_> {
    /// Where the member is in `text`, the JSON text it was read from.
    fn within(&self, text: &[u8]) -> ModelAt {
        match self {
            Placed::Absent => ModelAt::Absent,
            Placed::Elsewhere => ModelAt::Unplaced,
            Placed::InPlace(v) => {
                // The lent slice lies inside `text`, between the string's quotes.
                let start = (v.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
                let end = start.wrapping_add(v.len());
                let quoted =
                    start >= 1 && end < text.len() && text[start - 1] == b'"' && text[end] == b'"';
                if quoted {
                    ModelAt::At(start - 1, end + 1)
                } else {
                    ModelAt::Unplaced
                }
            }
        }
    }
}

/// A `choices` list, counted: how many choices, and the bytes of their text.
#[derive(Default)]
struct Choices {
    count: usize,
    chars: usize,
}

/// One choice: a whole answer's `message` or a chunk's `delta`.
#[derive(Deserialize)]
struct CheckChoice {
    #[serde(default)]
    message: Option<CheckMessage>,
    #[serde(default)]
    delta: Option<CheckMessage>,
}

#[derive(Deserialize)]
struct CheckMessage {
    #[serde(default)]
    content: Scalar,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> Visitor<'de> for Counter {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut all = Choices::default();
                while let Some(c) = seq.next_element::<CheckChoice>()? {
                    all.count += 1;
                    if let Some(Scalar::Text(n)) = c.message.or(c.delta).map(|m| m.content) {
                        all.chars += n;
                    }
                }
                Ok(all)
            }
        }
        d.deserialize_seq(Counter)
    }
}

/// A JSON value read for one fact: a string's length in bytes, a non-negative
/// integer, or an object read as `M`. Anything else (lists, and objects when `M` is
/// [`IgnoredAny`]) is passed over unkept.
#[derive(Default)]
enum Scalar<M = IgnoredAny> {
    Text(usize),
    Count(u64),
    Object(M),
    #[default]
    Other,
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Scalar<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Reader<M>(PhantomData<M>);
        impl<'de, M: Deserialize<'de>> Visitor<'de> for Reader<M> {
            type Value = Scalar<M>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<M>, E> {
                Ok(Scalar::Text(v.len()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<M>, E> {
                Ok(Scalar::Count(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<M>, E> {
                Ok(u64::try_from(v).map_or(Scalar::Other, Scalar::Count))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar<M>, E> {
                Ok(Scalar::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<M>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar<M>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<M>, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<M>, A::Error> {
                M::deserialize(MapAccessDeserializer::new(map)).map(Scalar::Object)
            }
        }
        d.deserialize_any(Reader(PhantomData))
    }
}

/// The token counts of a `usage` object.
#[derive(Deserialize)]
struct UsageCounts {
    #[serde(default)]
    prompt_tokens: Scalar,
    #[serde(default)]
    completion_tokens: Scalar,
}

/// A `usage` member: its token counts when it is an object with a whole
/// `prompt_tokens` (as [`Usage::from_openai_usage`] reads it), otherwise none.
fn reported(usage: Scalar<UsageCounts>) -> Option<Usage> {
    let Scalar::Object(counts) = usage else {
        return None;
    };
    let Scalar::Count(input_tokens) = counts.prompt_tokens else {
        return None;
    };
    let output_tokens = match counts.completion_tokens {
        Scalar::Count(n) => n,
        _ => 0,
    };
    Some(Usage {
        input_tokens,
        output_tokens,
    })
}

/// One streamed event of an OpenAI-shaped stream, checked.
#[derive(Debug)]
pub struct Chunk {
    /// The event to relay, when it has choices.
    pub chunk: Option<Whole>,
    /// Token counts, when it reports them.
    pub usage: Option<Usage>,
    /// It is an error object (a provider failing mid-stream).
    pub error: bool,
}

/// The answer as text, checked once as a whole, so that serde_json reads text already
/// checked instead of checking each key and string of it on its own.
fn utf8(body: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(body).map_err(|e| format!("the answer is not UTF-8 text: {e}"))
}

fn an_object(body: &[u8]) -> Result<(), String> {
    if body.trim_ascii_start().starts_with(b"{") {
        Ok(())
    } else {
        Err("the answer is not a JSON object".into())
    }
}

impl Whole {
    /// Checks a provider's answer: the usage it reports, or why it cannot be read.
    pub fn check(body: Bytes) -> Result<(Whole, Option<Usage>), String> {
        let check: Check = serde_json::from_str(utf8(&body)?).map_err(|e| {
            if e.is_data() && e.to_string().contains("`choices`") {
                "no `choices` in the answer".to_string()
            } else {
                e.to_string()
            }
        })?;
        an_object(&body)?;
        let output_chars = check.choices.chars;
        let model = check.model.within(&body);
        let usage = reported(check.usage);
        Ok((
            Whole::Raw {
                body,
                output_chars,
                model,
            },
            usage,
        ))
    }

    /// Checks one event of a provider's OpenAI-shaped stream (the text after `data:`).
    pub fn check_chunk(body: Bytes) -> Result<Chunk, String> {
        let check: CheckChunk = serde_json::from_str(utf8(&body)?).map_err(|e| e.to_string())?;
        an_object(&body)?;
        let choices = check.choices.unwrap_or_default();
        let model = check.model.within(&body);
        let (usage, error) = (reported(check.usage), check.error.is_some());
        let chunk = (choices.count > 0).then_some(Whole::Raw {
            output_chars: choices.chars,
            body,
            model,
        });
        Ok(Chunk {
            chunk,
            usage,
            error,
        })
    }

    /// The top-level `id`, if it is a string.
    pub fn id(&self) -> Option<String> {
        match self {
            Whole::Raw { body, .. } => {
                let mut first = None;
                top_level_values(body, b"id", |span| {
                    first.get_or_insert(span);
                });
                first.and_then(|span| serde_json::from_slice(&body[span]).ok())
            }
            Whole::Built(v) => v.get("id").and_then(Value::as_str).map(str::to_string),
        }
    }

    /// Writes the chunk to `out` as a server-sent event (`data: …` and a blank line),
    /// with `model` as its top-level model (a built chunk takes it for good).
    pub fn write_sse(&mut self, model: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        match self {
            Whole::Raw {
                body, model: at, ..
            } => write_with_model(body, *at, model, out),
            Whole::Built(v) => {
                v["model"] = model.into();
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, &v);
            }
        }
        out.extend_from_slice(b"\n\n");
    }

    /// Bytes of answer text (a chunk: of its delta).
    pub fn output_chars(&self) -> usize {
        match self {
            Whole::Raw { output_chars, .. } => *output_chars,
            Whole::Built(body) => body
                .get("choices")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("message").or_else(|| c.get("delta")))
                        .filter_map(|m| m.get("content").and_then(Value::as_str))
                        .map(str::len)
                        .sum()
                })
                .unwrap_or(0),
        }
    }

    /// The completion as a JSON value.
    pub fn into_value(self) -> Result<Value, String> {
        match self {
            Whole::Raw { body, .. } => serde_json::from_slice(&body).map_err(|e| e.to_string()),
            Whole::Built(v) => Ok(v),
        }
    }

    /// The completion as JSON text, with `model` as its top-level model.
    pub fn with_model(self, model: &str) -> Bytes {
        match self {
            Whole::Raw {
                body, model: at, ..
            } => {
                let mut out = Vec::with_capacity(body.len() + model.len() + 16);
                write_with_model(&body, at, model, &mut out);
                Bytes::from(out)
            }
            Whole::Built(mut v) => {
                v["model"] = model.into();
                Bytes::from(v.to_string())
            }
        }
    }
}

/// Writes `json` (a JSON object's text, already checked) to `out` with its top-level
/// `model` value (`at`: where the check found it) replaced by `model`, or one added
/// first when there is none.
fn write_with_model(json: &[u8], at: ModelAt, model: &str, out: &mut Vec<u8>) {
    // A string written into a Vec cannot fail.
    let value = |out: &mut Vec<u8>| {
        let _ = serde_json::to_writer(out, model);
    };
    let mut found = false;
    let mut from = 0;
    match at {
        ModelAt::At(start, end) if start <= end && end <= json.len() => {
            out.extend_from_slice(&json[..start]);
            value(out);
            from = end;
            found = true;
        }
        ModelAt::Absent => {}
        _ => top_level_values(json, b"model", |span| {
            out.extend_from_slice(&json[from..span.start]);
            value(out);
            from = span.end;
            found = true;
        }),
    }
    if !found {
        let Some(open) = json.iter().position(|&b| b == b'{') else {
            out.extend_from_slice(json);
            return;
        };
        let empty = json[open + 1..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b'}');
        out.extend_from_slice(&json[..=open]);
        out.extend_from_slice(b"\"model\":");
        value(out);
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(&json[open + 1..]);
        return;
    }
    out.extend_from_slice(&json[from..]);
}

/// Gives `found` the byte range of the value of each top-level member named `key` (as
/// written, with no escapes) of a JSON object's text, in order. Text that is not a
/// well-formed object gives what was found before the fault; it never panics.
fn top_level_values(json: &[u8], key: &[u8], mut found: impl FnMut(std::ops::Range<usize>)) {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        match json.get(i) {
            Some(b'"') => {}
            _ => return,
        }
        let Some(key_end) = string_end(json, i) else {
            return;
        };
        let name = &json[i + 1..key_end - 1];
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return;
        }
        let start = skip_ws(json, i + 1);
        let Some(end) = value_end(json, start) else {
            return;
        };
        if name == key {
            found(start..end);
        }
        i = skip_ws(json, end);
        match json.get(i) {
            Some(b',') => i += 1,
            _ => return,
        }
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The index just past the string that opens at `i` (a `"`). Short strings (names, a
/// streamed token) are read byte by byte; a long one (a whole answer's text) leaps
/// from one `"` or `\` to the next.
fn string_end(json: &[u8], i: usize) -> Option<usize> {
    const SHORT: usize = 16;
    let mut j = i + 1;
    loop {
        let rest = json.get(j..)?;
        j += match rest
            .iter()
            .take(SHORT)
            .position(|&b| b == b'"' || b == b'\\')
        {
            Some(k) => k,
            None if rest.len() <= SHORT => return None,
            None => SHORT + memchr::memchr2(b'"', b'\\', &rest[SHORT..])?,
        };
        match json[j] {
            b'"' => return Some(j + 1),
            // An escape: the next byte is part of it, whatever it is.
            _ => j += 2,
        }
    }
}

/// The index just past the value that starts at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = string_end(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while json
                .get(j)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ModelAt, Whole, top_level_values, write_with_model};
    use serde_json::{Value, json};

    /// `model` written into `json` found by a scan, as for a value the check could not
    /// place.
    fn set_model(json: &[u8], model: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_with_model(json, ModelAt::Unplaced, model, &mut out);
        out
    }

    /// What a relayed answer turns into, with `model` where the check placed it.
    fn relayed(text: &str, model: &str) -> (ModelAt, Vec<u8>) {
        let (whole, _) =
            Whole::check(bytes::Bytes::copy_from_slice(text.as_bytes())).expect("an answer");
        let Whole::Raw { model: at, .. } = &whole else {
            panic!("a provider's answer is relayed raw");
        };
        (*at, whole.with_model(model).to_vec())
    }

    #[test]
    fn the_check_places_a_plain_model_and_the_relay_writes_ours_there() {
        let text = r#"{"id":"x", "model" : "up-1","choices":[{"message":{"model":"in"}}]}"#;
        let (at, out) = relayed(text, "ours");
        let start = text.find("\"up-1\"").expect("there");
        assert_eq!(at, ModelAt::At(start, start + "\"up-1\"".len()));
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            text.replace("\"up-1\"", "\"ours\"")
        );
        // Escapes, or a value that is not a string: found by the scan instead, with the
        // same result.
        for (text, want) in [
            (r#"{"model":"a\"b","choices":[]}"#, ModelAt::Unplaced),
            (r#"{"model":7,"choices":[]}"#, ModelAt::Unplaced),
            (r#"{"model":{"a":["b"]},"choices":[]}"#, ModelAt::Unplaced),
            (r#"{"choices":[]}"#, ModelAt::Absent),
        ] {
            let (at, out) = relayed(text, "ours");
            assert_eq!(at, want, "{text}");
            assert_eq!(out, set_model(text.as_bytes(), "ours"), "{text}");
            let v: Value = serde_json::from_slice(&out).expect("json");
            assert_eq!(v["model"], "ours", "{text}");
        }
        // A chunk is placed the same way.
        let chunk = r#"{"model":"up","choices":[{"delta":{"content":"a"}}]}"#;
        let c = Whole::check_chunk(chunk.into()).expect("a chunk");
        let mut sse = Vec::new();
        c.chunk.expect("choices").write_sse("ours", &mut sse);
        assert_eq!(
            sse,
            format!("data: {}\n\n", chunk.replace("\"up\"", "\"ours\"")).into_bytes()
        );
    }

    #[test]
    fn an_answer_that_is_not_utf8_is_refused_even_where_nothing_is_read() {
        let mut body = br#"{"id":"x","choices":[]}"#.to_vec();
        body[7] = 0xff;
        let err = Whole::check(body.clone().into()).expect_err("not text");
        assert!(err.contains("not UTF-8"), "{err}");
        assert!(Whole::check_chunk(body.into()).is_err());
    }

    #[test]
    fn an_answer_with_two_models_is_refused() {
        let twice = r#"{"model":"a","choices":[],"model":"b"}"#;
        assert!(Whole::check(twice.into()).is_err());
        assert!(Whole::check_chunk(twice.into()).is_err());
    }

    fn relabel(text: &str) -> Value {
        serde_json::from_slice(&set_model(text.as_bytes(), "ours")).expect("still JSON")
    }

    #[test]
    fn only_the_top_level_model_changes() {
        let text = r#" { "id" : "x", "model" : "up-\"q\"-1", "choices": [{"message": {"model": "inner", "content": "a \"model\": b"}}], "usage": {"model": 1} } "#;
        let mut want: Value = serde_json::from_str(text).expect("json");
        want["model"] = "ours".into();
        assert_eq!(relabel(text), want);
    }

    #[test]
    fn a_missing_model_is_added_and_odd_values_are_replaced_whole() {
        assert_eq!(
            relabel(r#"{"choices":[]}"#),
            json!({"model": "ours", "choices": []})
        );
        assert_eq!(relabel("{ }"), json!({"model": "ours"}));
        for v in [
            "null",
            "12.5e3",
            "true",
            r#"{"a":[1,{"b":"}"}]}"#,
            r#"["]",2]"#,
        ] {
            let text = format!(r#"{{"model":{v},"choices":[]}}"#);
            assert_eq!(
                relabel(&text),
                json!({"model": "ours", "choices": []}),
                "{v}"
            );
        }
        // A name with characters JSON must escape stays valid.
        let out = set_model(br#"{"model":"m"}"#, "a\"b\\c");
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["model"], "a\"b\\c");
    }

    #[test]
    fn broken_text_never_panics() {
        let text = br#"{"model":"a","x":[1,{"y":"\""#;
        for end in 0..=text.len() {
            top_level_values(&text[..end], b"model", |_| {});
            let _ = set_model(&text[..end], "m");
        }
        let mut found = Vec::new();
        top_level_values(br#"{"model":"a","#, b"model", |span| found.push(span));
        assert_eq!(found, vec![std::ops::Range { start: 9, end: 12 }]);
        // An escape at the very end, or a quote after escaped backslashes.
        assert_eq!(super::string_end(br#""a\"#, 0), None);
        assert_eq!(super::string_end(br#""a\\""#, 0), Some(5));
        assert_eq!(super::string_end(br#""a\"b"x"#, 0), Some(6));
        // Past the first sixteen bytes too.
        assert_eq!(
            super::string_end(br#""0123456789abcdefghij\"x" y"#, 0),
            Some(25)
        );
        assert_eq!(super::string_end(br#""0123456789abcdef"#, 0), None);
        assert_eq!(super::string_end(br#""0123456789abcdefg\"#, 0), None);
    }

    #[test]
    fn the_check_reads_usage_and_answer_length_and_refuses_what_is_not_an_answer() {
        let body = json!({"choices": [{"message": {"content": "héllo"}}, {"message": {"content": null}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        let (whole, usage) = Whole::check(body.to_string().into()).expect("an answer");
        let usage = usage.expect("usage");
        assert_eq!((usage.input_tokens, usage.output_tokens), (7, 3));
        assert_eq!(whole.output_chars(), "héllo".len());
        assert_eq!(whole.into_value().expect("json"), body);
        let (_, none) = Whole::check(r#"{"choices":[]}"#.into()).expect("an answer");
        assert!(none.is_none());
        for bad in [
            r#"{"id":"x"}"#,
            r#"{"choices":{}}"#,
            "<html>",
            "[]",
            r#"{"choices":[]"#,
        ] {
            assert!(Whole::check(bad.into()).is_err(), "{bad}");
        }
        assert_eq!(
            Whole::check(r#"{"id":"x"}"#.into()).expect_err("no choices"),
            "no `choices` in the answer"
        );
    }

    #[test]
    fn odd_usage_reads_as_none_and_text_is_measured_unescaped() {
        let usage = |u: &str| {
            let body = format!(r#"{{"choices":[],"usage":{u}}}"#);
            Whole::check(body.into())
                .expect("an answer")
                .1
                .map(|u| (u.input_tokens, u.output_tokens))
        };
        assert_eq!(usage(r#"{"prompt_tokens":4}"#), Some((4, 0)));
        assert_eq!(
            usage(r#"{"prompt_tokens":4,"completion_tokens":"x","extra":{"a":[1]}}"#),
            Some((4, 0))
        );
        for none in [
            "null",
            "5",
            r#""x""#,
            "[1,{}]",
            r#"{"prompt_tokens":1.5}"#,
            r#"{"prompt_tokens":-1}"#,
            "{}",
        ] {
            assert_eq!(usage(none), None, "{none}");
        }
        let text = json!({"choices": [
            {"message": {"content": "a\"\u{e9}"}},
            {"message": {"content": [{"type": "text", "text": "parts are not counted"}]}},
            {"message": {"role": "assistant"}}
        ]});
        let (whole, _) = Whole::check(text.to_string().into()).expect("an answer");
        assert_eq!(whole.output_chars(), "a\"é".len());
    }

    #[test]
    fn chunks_are_relayed_relabelled_with_their_id_usage_and_delta_length() {
        let text = json!({"id": "c-1", "model": "up", "choices": [{"delta": {"content": "ab"}}, {"delta": {}}]});
        let c = Whole::check_chunk(text.to_string().into()).expect("a chunk");
        let mut chunk = c.chunk.expect("has choices");
        assert!(c.usage.is_none() && !c.error);
        assert_eq!(chunk.output_chars(), 2, "bytes of the delta's text");
        assert_eq!(chunk.id().as_deref(), Some("c-1"));
        let mut sse = Vec::new();
        chunk.write_sse("ours", &mut sse);
        let data = sse.strip_prefix(b"data: ".as_slice()).expect("data line");
        let data = data.strip_suffix(b"\n\n".as_slice()).expect("blank line");
        let mut want = text.clone();
        want["model"] = "ours".into();
        assert_eq!(serde_json::from_slice::<Value>(data).expect("json"), want);

        let usage = json!({"id": "c-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
        let c = Whole::check_chunk(usage.to_string().into()).expect("a usage chunk");
        assert!(c.chunk.is_none(), "no choices: nothing to relay");
        assert_eq!(
            c.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((5, 2))
        );
        let c = Whole::check_chunk(r#"{"error":{"message":"overloaded"}}"#.into()).expect("json");
        assert!(c.error && c.chunk.is_none());
        for bad in ["{", "[1]", r#"{"choices":3}"#, "data"] {
            assert!(Whole::check_chunk(bad.into()).is_err(), "{bad}");
        }
    }
}
