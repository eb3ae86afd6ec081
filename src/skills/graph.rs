//! A skill's graph: nodes joined by edges over typed ports, and the problems a check
//! finds in one, each pointing at its node, port, parameter or edge.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The longest node id.
pub const MAX_ID: usize = 40;

/// What flows along an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortType {
    Image,
    Images,
    Text,
    Number,
    Json,
    /// Only the `output` node's input: it takes whatever reaches it.
    Any,
}

impl PortType {
    /// Every port type.
    pub const ALL: [PortType; 6] = [
        PortType::Image,
        PortType::Images,
        PortType::Text,
        PortType::Number,
        PortType::Json,
        PortType::Any,
    ];

    /// For each input type, the output types it takes (for the editor).
    pub fn accepted() -> serde_json::Map<String, serde_json::Value> {
        Self::ALL
            .iter()
            .map(|to| {
                let from: Vec<&str> = Self::ALL
                    .iter()
                    .filter(|f| **f != PortType::Any && to.accepts(**f))
                    .map(|f| f.name())
                    .collect();
                (to.name().to_string(), from.into())
            })
            .collect()
    }

    /// The name used in graphs and messages.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Image => "image",
            PortType::Images => "images",
            PortType::Text => "text",
            PortType::Number => "number",
            PortType::Json => "json",
            PortType::Any => "any",
        }
    }

    /// Whether a value of type `from` may flow into a port of this type. Besides equal
    /// types, these convert: image → images (a list of one), number → text, json →
    /// text (a JSON string as itself, anything else as compact JSON), text → json
    /// (parsed when the run gets there), number → json.
    pub fn accepts(self, from: PortType) -> bool {
        use PortType::*;
        self == from
            || self == Any
            || matches!(
                (from, self),
                (Image, Images) | (Number, Text) | (Json, Text) | (Text, Json) | (Number, Json)
            )
    }
}

/// A node graph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
}

/// One node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique in its graph: letters, digits, `_` and `-`.
    pub id: String,
    /// The node type (`GET /api/skills/nodes` lists them).
    #[serde(rename = "type")]
    pub kind: String,
    /// The node type's parameters.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Where the editor draws it.
    #[serde(default)]
    pub position: Position,
    /// Seconds this node may run (default: `[skills] node_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

/// A node's place on the editor's canvas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Position {
    #[serde(default)]
    pub x: f64,
    #[serde(default)]
    pub y: f64,
}

/// An edge from `node.output` to `node.input`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub from: String,
    pub to: String,
}

/// One end of an edge: a node id and a port name.
pub fn end(s: &str) -> Option<(&str, &str)> {
    let (node, port) = s.rsplit_once('.')?;
    (!node.is_empty() && !port.is_empty()).then_some((node, port))
}

/// Something wrong with a graph, pointing at where it is.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// The edge's index in `edges`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<usize>,
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    /// A problem of the whole graph.
    pub fn graph(code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            node: None,
            port: None,
            param: None,
            edge: None,
            code,
            message: message.into(),
        }
    }

    /// A problem of one node.
    pub fn node(node: &str, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            node: Some(node.to_string()),
            ..Problem::graph(code, message)
        }
    }

    /// The same problem, at a port.
    pub fn at_port(mut self, port: &str) -> Problem {
        self.port = Some(port.to_string());
        self
    }

    /// The same problem, at a parameter.
    pub fn at_param(mut self, param: &str) -> Problem {
        self.param = Some(param.to_string());
        self
    }

    /// The same problem, at an edge.
    pub fn at_edge(mut self, edge: usize) -> Problem {
        self.edge = Some(edge);
        self
    }
}

/// Whether `id` may name a node.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One piece of a prompt template.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Var(String),
}

/// Reads a template: `{{name}}` (spaces inside the braces allowed) is replaced by the
/// input `name`; `\{{` writes `{{` itself. Values are put in as they are and never
/// read as templates again, so a value holding `{{x}}` stays literal text.
pub fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(at) = rest.find("{{") {
        if rest[..at].ends_with('\\') {
            text.push_str(&rest[..at - 1]);
            text.push_str("{{");
            rest = &rest[at + 2..];
            continue;
        }
        text.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "a `{{{{` at character {} is never closed with `}}}}`; write `\\{{{{` for literal braces",
                t.len() - rest.len() + at
            ));
        };
        let name = after[..close].trim();
        let ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.len() <= MAX_ID
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(format!(
                "`{{{{{}}}}}` is not a variable: names are letters, digits and `_`, starting with a letter",
                &after[..close]
            ));
        }
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        out.push(Piece::Var(name.to_string()));
        rest = &after[close + 2..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// The variables of a parsed template, each once, in order of first use.
pub fn variables(pieces: &[Piece]) -> Vec<String> {
    let mut vars: Vec<String> = Vec::new();
    for p in pieces {
        if let Piece::Var(v) = p
            && !vars.contains(v)
        {
            vars.push(v.clone());
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_substitute_variables_and_escape_braces() {
        let p = parse_template("Hi {{ name }}, \\{{literal}} {{name}}{{x_1}}").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("Hi ".into()),
                Piece::Var("name".into()),
                Piece::Text(", {{literal}} ".into()),
                Piece::Var("name".into()),
                Piece::Var("x_1".into()),
            ]
        );
        assert_eq!(variables(&p), ["name", "x_1"]);
        assert!(
            parse_template("open {{ never")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(
            parse_template("{{ two words }}")
                .unwrap_err()
                .contains("not a variable")
        );
        assert!(parse_template("{{}}").is_err());
    }

    #[test]
    fn ports_accept_their_own_type_and_the_documented_conversions() {
        use PortType::*;
        assert!(Text.accepts(Text));
        assert!(Images.accepts(Image));
        assert!(!Image.accepts(Images));
        assert!(Text.accepts(Number));
        assert!(!Number.accepts(Text));
        assert!(!Image.accepts(Text));
        assert!(Any.accepts(Images));
    }

    #[test]
    fn edge_ends_split_at_the_last_dot() {
        assert_eq!(end("alt.image"), Some(("alt", "image")));
        assert_eq!(end("noport"), None);
        assert_eq!(end(".x"), None);
    }
}
