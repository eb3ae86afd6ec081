//! The node types: their ports, their parameters (which the editor renders as a
//! form, from [`Spec::params_schema`]), how a graph is checked against them, and what
//! each does when it runs.

use super::engine::{Ctx, Data, Img};
use super::graph::{self, Graph, Node, Piece, PortType, Problem};
use crate::config::Capability;
use crate::http::ApiError;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A parameter's kind, which is also the editor's widget.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Text {
        max: usize,
        multiline: bool,
    },
    Choice(&'static [&'static str]),
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    /// `#rrggbb` or `#rrggbbaa`.
    Color,
    /// A catalog model with this capability.
    Model(Capability),
    /// A vision model or `local` (the alt text writer).
    AltModel,
    Tags,
}

/// A parameter's default.
#[derive(Clone, Copy, Debug)]
pub enum Default {
    None,
    Str(&'static str),
    Int(i64),
}

/// One parameter of a node type.
#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub default: Default,
    pub help: &'static str,
}

/// One port of a node type.
#[derive(Debug)]
pub struct Port {
    pub name: &'static str,
    pub ty: PortType,
    pub required: bool,
    /// Takes any number of edges, in the order of the graph's edge list.
    pub many: bool,
}

/// A node type.
#[derive(Debug)]
pub struct Spec {
    pub kind: &'static str,
    pub title: &'static str,
    pub category: &'static str,
    pub description: &'static str,
    pub inputs: &'static [Port],
    pub outputs: &'static [Port],
    pub params: &'static [Param],
    /// Calls a provider (and may cost credits).
    pub paid: bool,
}

const fn port(name: &'static str, ty: PortType) -> Port {
    Port {
        name,
        ty,
        required: true,
        many: false,
    }
}

const fn optional(name: &'static str, ty: PortType) -> Port {
    Port {
        name,
        ty,
        required: false,
        many: false,
    }
}

const fn param(name: &'static str, label: &'static str, kind: Kind, help: &'static str) -> Param {
    Param {
        name,
        label,
        kind,
        required: false,
        default: Default::None,
        help,
    }
}

const fn needed(name: &'static str, label: &'static str, kind: Kind, help: &'static str) -> Param {
    Param {
        required: true,
        ..param(name, label, kind, help)
    }
}

const fn with(mut p: Param, default: Default) -> Param {
    p.default = default;
    p
}

const NAME: Param = needed(
    "name",
    "Name",
    Kind::Text {
        max: graph::MAX_ID,
        multiline: false,
    },
    "The field's name in the skill's interface: lowercase letters, digits and _.",
);
const DESCRIPTION: Param = param(
    "description",
    "Description",
    Kind::Text {
        max: 500,
        multiline: false,
    },
    "What to pass here; agents read it.",
);
const SHORT: Kind = Kind::Text {
    max: 200,
    multiline: false,
};
const LONG: Kind = Kind::Text {
    max: 20_000,
    multiline: true,
};
const SIDE: Kind = Kind::Int { min: 1, max: 8192 };

use PortType::{Any, Image, Images, Json, Number, Text};

/// What image.generate and image.edit both take and give.
const IMAGE_MODEL: &[Param] = &[
    needed("model", "Model", Kind::Model(Capability::Image), ""),
    param("size", "Size", SHORT, "Such as 1024x1024."),
    with(
        param("n", "Images", Kind::Int { min: 1, max: 4 }, ""),
        Default::Int(1),
    ),
];
const IMAGE_OUT: &[Port] = &[port("images", Images), port("image", Image)];

/// Every node type, in the editor palette's order.
pub static SPECS: &[Spec] = &[
    Spec {
        kind: "input.text",
        title: "Text input",
        category: "Inputs",
        description: "A text the caller passes in.",
        inputs: &[],
        outputs: &[port("text", Text)],
        params: &[
            NAME,
            DESCRIPTION,
            param(
                "default",
                "Default",
                LONG,
                "Used when the caller passes nothing; without one the input is required.",
            ),
        ],
        paid: false,
    },
    Spec {
        kind: "input.image",
        title: "Image input",
        category: "Inputs",
        description: "An image the caller passes in: base64, a data: URI, an http(s) URL or {\"asset_id\": …} from the library.",
        inputs: &[],
        outputs: &[port("image", Image)],
        params: &[NAME, DESCRIPTION],
        paid: false,
    },
    Spec {
        kind: "input.number",
        title: "Number input",
        category: "Inputs",
        description: "A number the caller passes in.",
        inputs: &[],
        outputs: &[port("number", Number)],
        params: &[
            NAME,
            DESCRIPTION,
            param(
                "default",
                "Default",
                Kind::Float {
                    min: f64::MIN,
                    max: f64::MAX,
                },
                "Used when the caller passes nothing.",
            ),
            param(
                "min",
                "Minimum",
                Kind::Float {
                    min: f64::MIN,
                    max: f64::MAX,
                },
                "",
            ),
            param(
                "max",
                "Maximum",
                Kind::Float {
                    min: f64::MIN,
                    max: f64::MAX,
                },
                "",
            ),
        ],
        paid: false,
    },
    Spec {
        kind: "template",
        title: "Prompt template",
        category: "Text",
        description: "Text with {{variables}}: each variable becomes a text input. Values go in as they are and are never expanded again; write \\{{ for literal braces.",
        inputs: &[],
        outputs: &[port("text", Text)],
        params: &[needed(
            "template",
            "Template",
            LONG,
            "For example: Write an SEO title for {{description}}.",
        )],
        paid: false,
    },
    Spec {
        kind: "chat",
        title: "Chat model",
        category: "Models",
        description: "Asks a chat model; images need a model with vision.",
        inputs: &[
            port("prompt", Text),
            optional("image", Image),
            optional("images", Images),
        ],
        outputs: &[port("text", Text)],
        params: &[
            needed("model", "Model", Kind::Model(Capability::Chat), ""),
            param("system", "System prompt", LONG, ""),
            param(
                "max_tokens",
                "Max tokens",
                Kind::Int {
                    min: 1,
                    max: 200_000,
                },
                "Caps the answer, and so what the node may cost.",
            ),
            param(
                "temperature",
                "Temperature",
                Kind::Float { min: 0.0, max: 2.0 },
                "",
            ),
        ],
        paid: true,
    },
    Spec {
        kind: "vision.alt_text",
        title: "Alt text",
        category: "Models",
        description: "Writes alt text for an image (a vision model, or the local model).",
        inputs: &[port("image", Image), optional("context", Text)],
        outputs: &[port("alt_text", Text), port("result", Json)],
        params: &[
            param(
                "model",
                "Model",
                Kind::AltModel,
                "Default: [alt_text] model.",
            ),
            param(
                "language",
                "Language",
                SHORT,
                "A BCP-47 tag, such as en or de-CH.",
            ),
            param(
                "max_chars",
                "Longest",
                Kind::Int { min: 20, max: 1000 },
                "In characters.",
            ),
        ],
        paid: true,
    },
    Spec {
        kind: "image.generate",
        title: "Generate image",
        category: "Models",
        description: "Makes images from a prompt.",
        inputs: &[port("prompt", Text)],
        outputs: IMAGE_OUT,
        params: IMAGE_MODEL,
        paid: true,
    },
    Spec {
        kind: "image.edit",
        title: "Edit image",
        category: "Models",
        description: "Changes an image as the prompt says, with a provider's image model (OpenAI's images/edits, Gemini or Flux Kontext). A mask (OpenAI only) limits the change to its transparent part.",
        inputs: &[
            port("image", Image),
            port("prompt", Text),
            optional("mask", Image),
        ],
        outputs: IMAGE_OUT,
        params: IMAGE_MODEL,
        paid: true,
    },
    Spec {
        kind: "image.resize",
        title: "Resize",
        category: "Images",
        description: "Scales an image (locally, no provider). Give a width, a height or both.",
        inputs: &[port("image", Image)],
        outputs: &[port("image", Image)],
        params: &[
            param("width", "Width", SIDE, "Pixels."),
            param("height", "Height", SIDE, "Pixels."),
            with(
                param(
                    "fit",
                    "Fit",
                    Kind::Choice(&["contain", "cover", "fill"]),
                    "contain: inside the box; cover: fills it, cropping; fill: stretches.",
                ),
                Default::Str("contain"),
            ),
        ],
        paid: false,
    },
    Spec {
        kind: "image.crop",
        title: "Crop",
        category: "Images",
        description: "Cuts out part of an image: the largest centred region of an aspect ratio, or a box.",
        inputs: &[port("image", Image)],
        outputs: &[port("image", Image)],
        params: &[
            param("aspect", "Aspect ratio", SHORT, "Such as 1:1 or 16:9."),
            param("x", "Left", Kind::Int { min: 0, max: 65535 }, ""),
            param("y", "Top", Kind::Int { min: 0, max: 65535 }, ""),
            param("width", "Width", SIDE, ""),
            param("height", "Height", SIDE, ""),
        ],
        paid: false,
    },
    Spec {
        kind: "image.convert",
        title: "Convert",
        category: "Images",
        description: "Re-encodes an image; transparency is flattened onto the background for JPEG.",
        inputs: &[port("image", Image)],
        outputs: &[port("image", Image)],
        params: &[
            with(
                needed(
                    "format",
                    "Format",
                    Kind::Choice(&["jpeg", "png", "webp"]),
                    "WebP is written lossless.",
                ),
                Default::Str("jpeg"),
            ),
            with(
                param(
                    "quality",
                    "Quality",
                    Kind::Int { min: 1, max: 100 },
                    "JPEG only.",
                ),
                Default::Int(85),
            ),
            with(
                param("background", "Background", Kind::Color, ""),
                Default::Str("#ffffff"),
            ),
        ],
        paid: false,
    },
    Spec {
        kind: "image.compose",
        title: "Compose",
        category: "Images",
        description: "Places an image, scaled to fit and centred, on a canvas of a colour or on a background image.",
        inputs: &[port("image", Image), optional("background", Image)],
        outputs: &[port("image", Image)],
        params: &[
            with(param("width", "Width", SIDE, ""), Default::Int(1024)),
            with(param("height", "Height", SIDE, ""), Default::Int(1024)),
            with(
                param(
                    "color",
                    "Colour",
                    Kind::Color,
                    "The canvas, when no background image is connected.",
                ),
                Default::Str("#ffffff"),
            ),
            with(
                param(
                    "padding",
                    "Padding %",
                    Kind::Int { min: 0, max: 45 },
                    "Space on each side, in percent of the canvas.",
                ),
                Default::Int(8),
            ),
        ],
        paid: false,
    },
    Spec {
        kind: "text.join",
        title: "Join text",
        category: "Text",
        description: "Joins every text connected to it, in edge order.",
        inputs: &[Port {
            name: "text",
            ty: Text,
            required: true,
            many: true,
        }],
        outputs: &[port("text", Text)],
        params: &[with(
            param("separator", "Separator", SHORT, ""),
            Default::Str("\n"),
        )],
        paid: false,
    },
    Spec {
        kind: "json.extract",
        title: "Extract from JSON",
        category: "Text",
        description: "Takes one value out of JSON (text is parsed, ``` fences allowed) by a path such as tags/0 or /title.",
        inputs: &[port("json", Json)],
        outputs: &[port("value", Json), port("text", Text)],
        params: &[needed(
            "path",
            "Path",
            SHORT,
            "Keys and indexes separated by / or ., such as tags/0.",
        )],
        paid: false,
    },
    Spec {
        kind: "library.save",
        title: "Save to library",
        category: "Outputs",
        description: "Keeps images in the caller's asset library (the only way a run stores an output).",
        inputs: &[optional("image", Image), optional("images", Images)],
        outputs: &[port("assets", Json)],
        params: &[
            with(
                param("name", "File name", SHORT, ""),
                Default::Str("skill-output"),
            ),
            param("tags", "Tags", Kind::Tags, ""),
        ],
        paid: false,
    },
    Spec {
        kind: "output",
        title: "Output",
        category: "Outputs",
        description: "A result of the skill, under its name.",
        inputs: &[port("value", Any)],
        outputs: &[],
        params: &[NAME, DESCRIPTION],
        paid: false,
    },
];

/// The node type called `kind`.
pub fn spec(kind: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.kind == kind)
}

impl Spec {
    /// The parameters as a JSON Schema object, with `x-widget` hints for the editor.
    pub fn params_schema(&self) -> Value {
        let mut props = Map::new();
        let mut required = Vec::new();
        for p in self.params {
            let mut s = match p.kind {
                Kind::Text { max, multiline } => {
                    json!({"type": "string", "maxLength": max, "x-widget": if multiline {"textarea"} else {"text"}})
                }
                Kind::Choice(options) => {
                    json!({"type": "string", "enum": options, "x-widget": "select"})
                }
                Kind::Int { min, max } => {
                    json!({"type": "integer", "minimum": min, "maximum": max, "x-widget": "number"})
                }
                Kind::Float { min, max } => {
                    let mut s = json!({"type": "number", "x-widget": "number"});
                    if min > f64::MIN {
                        s["minimum"] = min.into();
                        s["maximum"] = max.into();
                    }
                    s
                }
                Kind::Color => {
                    json!({"type": "string", "pattern": "^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$", "x-widget": "color"})
                }
                Kind::Model(cap) => {
                    json!({"type": "string", "x-widget": "model", "x-capability": cap})
                }
                Kind::AltModel => {
                    json!({"type": "string", "x-widget": "model", "x-capability": "vision", "x-local": true})
                }
                Kind::Tags => {
                    json!({"type": "array", "items": {"type": "string"}, "x-widget": "tags"})
                }
            };
            s["title"] = p.label.into();
            if !p.help.is_empty() {
                s["description"] = p.help.into();
            }
            match p.default {
                Default::None => {}
                Default::Str(v) => s["default"] = v.into(),
                Default::Int(v) => s["default"] = v.into(),
            }
            if p.required {
                required.push(p.name);
            }
            props.insert(p.name.into(), s);
        }
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
    }

    /// The node type as `GET /api/skills/nodes` shows it.
    pub fn view(&self) -> Value {
        let ports = |ps: &[Port]| -> Vec<Value> {
            ps.iter()
                .map(|p| json!({"name": p.name, "type": p.ty, "required": p.required, "many": p.many}))
                .collect()
        };
        json!({
            "type": self.kind, "title": self.title, "category": self.category,
            "description": self.description, "paid": self.paid,
            "inputs": ports(self.inputs), "outputs": ports(self.outputs),
            "dynamic_inputs": self.kind == "template",
            "params": self.params_schema(),
        })
    }
}

/// An input port of one node in one graph (template variables are made per node).
#[derive(Clone, Debug)]
pub struct InPort {
    pub name: String,
    pub ty: PortType,
    pub required: bool,
    pub many: bool,
}

fn in_ports(node: &Node, spec: &Spec) -> Vec<InPort> {
    if spec.kind == "template" {
        let t = node
            .params
            .get("template")
            .and_then(Value::as_str)
            .unwrap_or("");
        return graph::parse_template(t)
            .map(|p| graph::variables(&p))
            .unwrap_or_default()
            .into_iter()
            .map(|name| InPort {
                name,
                ty: Text,
                required: true,
                many: false,
            })
            .collect();
    }
    spec.inputs
        .iter()
        .map(|p| InPort {
            name: p.name.to_string(),
            ty: p.ty,
            required: p.required,
            many: p.many,
        })
        .collect()
}

/// Checks one parameter's value against its kind.
fn check_value(p: &Param, v: &Value) -> Result<(), String> {
    match p.kind {
        Kind::Text { max, .. } => match v.as_str() {
            Some(s) if s.chars().count() > max => Err(format!("is longer than {max} characters")),
            Some(_) => Ok(()),
            None => Err("must be text".into()),
        },
        Kind::Choice(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            _ => Err(format!("must be one of {}", options.join(", "))),
        },
        Kind::Int { min, max } => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("must be a whole number from {min} to {max}")),
        },
        Kind::Float { min, max } => match v.as_f64() {
            Some(n) if n.is_finite() && (min..=max).contains(&n) => Ok(()),
            _ if min > f64::MIN => Err(format!("must be a number from {min} to {max}")),
            _ => Err("must be a number".into()),
        },
        Kind::Color => v
            .as_str()
            .and_then(parse_color)
            .map(|_| ())
            .ok_or_else(|| "must be a colour like #ffffff".into()),
        Kind::Model(_) | Kind::AltModel => match v.as_str() {
            Some(s) if !s.trim().is_empty() && s.len() <= 200 => Ok(()),
            _ => Err("must name a model".into()),
        },
        Kind::Tags => match v.as_array() {
            Some(a)
                if a.len() <= 20 && a.iter().all(|t| t.as_str().is_some_and(|s| s.len() <= 40)) =>
            {
                Ok(())
            }
            _ => Err("must be a list of up to 20 tags of up to 40 characters".into()),
        },
    }
}

/// A colour `#rrggbb` or `#rrggbbaa` as RGBA.
pub fn parse_color(s: &str) -> Option<[u8; 4]> {
    let hex = s.strip_prefix('#')?;
    if !(hex.len() == 6 || hex.len() == 8) || !hex.is_ascii() {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    let a = if hex.len() == 8 { byte(6)? } else { 255 };
    Some([byte(0)?, byte(2)?, byte(4)?, a])
}

fn check_params(node: &Node, spec: &Spec, out: &mut Vec<Problem>) {
    for name in node.params.keys() {
        if !spec.params.iter().any(|p| p.name == name) {
            out.push(
                Problem::node(
                    &node.id,
                    "unknown_param",
                    format!("`{}` has no parameter `{name}`", spec.kind),
                )
                .at_param(name),
            );
        }
    }
    for p in spec.params {
        match node.params.get(p.name) {
            None | Some(Value::Null) if p.required && matches!(p.default, Default::None) => out
                .push(
                    Problem::node(
                        &node.id,
                        "missing_param",
                        format!("{} is required", p.label),
                    )
                    .at_param(p.name),
                ),
            None | Some(Value::Null) => {}
            Some(v) => {
                if let Err(e) = check_value(p, v) {
                    out.push(
                        Problem::node(&node.id, "invalid_param", format!("{} {e}", p.label))
                            .at_param(p.name),
                    );
                }
            }
        }
    }
    let get = |k: &str| node.params.get(k).filter(|v| !v.is_null());
    let problem = |param: &str, msg: &str| {
        Problem::node(&node.id, "invalid_param", msg.to_string()).at_param(param)
    };
    match spec.kind {
        "input.text" | "input.image" | "input.number" | "output" => {
            if let Some(n) = get("name").and_then(Value::as_str)
                && !(n.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            {
                out.push(problem(
                    "name",
                    "Name must be lowercase letters, digits and _, starting with a letter",
                ));
            }
        }
        "template" => {
            if let Some(t) = get("template").and_then(Value::as_str)
                && let Err(e) = graph::parse_template(t)
            {
                out.push(problem("template", &e));
            }
        }
        "image.resize" if get("width").is_none() && get("height").is_none() => {
            out.push(problem("width", "give a width, a height or both"));
        }
        "image.crop" => {
            let boxed = get("width").is_some() && get("height").is_some();
            match get("aspect").and_then(Value::as_str) {
                Some(a) if aspect(a).is_none() => {
                    out.push(problem("aspect", "Aspect ratio must look like 1:1 or 16:9"))
                }
                Some(_) if boxed => out.push(problem(
                    "aspect",
                    "give an aspect ratio or a box (width and height), not both",
                )),
                None if !boxed => out.push(problem(
                    "aspect",
                    "give an aspect ratio, or a box with width and height",
                )),
                _ => {}
            }
        }
        "image.generate" | "image.edit" => {
            if let Some(s) = get("size").and_then(Value::as_str)
                && size(s).is_none()
            {
                out.push(problem("size", "Size must look like 1024x1024"));
            }
        }
        _ => {}
    }
}

fn aspect(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(':')?;
    let (w, h) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0 && w <= 100 && h <= 100).then_some((w, h))
}

fn size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    (w > 0 && h > 0 && w <= 8192 && h <= 8192).then_some((w, h))
}

/// An edge names a port its node does not have: say which ones it has.
fn unknown_port<'a>(
    node: &str,
    kind: &str,
    side: &str,
    port: &str,
    names: impl Iterator<Item = &'a str>,
) -> Problem {
    let names: Vec<&str> = names.collect();
    let has = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    Problem::node(
        node,
        "unknown_port",
        format!("`{kind}` has no {side} `{port}`; it has {has}"),
    )
    .at_port(port)
}

/// One step of a checked graph, ready to run.
#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub kind: &'static str,
    pub op: Op,
    pub slots: Vec<Slot>,
    pub timeout: Option<Duration>,
    pub paid: bool,
}

/// An input port of a step with the outputs that feed it.
#[derive(Debug)]
pub struct Slot {
    pub port: String,
    pub ty: PortType,
    /// (step index, output port, its type), in edge order.
    pub sources: Vec<(usize, String, PortType)>,
}

/// What a step does, with its parameters read once.
#[derive(Debug)]
pub enum Op {
    InputText {
        name: String,
        default: Option<String>,
    },
    InputImage {
        name: String,
    },
    InputNumber {
        name: String,
        default: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    },
    Template(Vec<Piece>),
    Chat {
        model: String,
        system: Option<String>,
        max_tokens: Option<u32>,
        temperature: Option<f64>,
    },
    AltText {
        model: Option<String>,
        language: Option<String>,
        max_chars: Option<u32>,
    },
    Generate {
        model: String,
        size: Option<String>,
        n: u32,
    },
    /// Local image work (moved to a blocking thread when it runs).
    Image(LocalOp),
    Join {
        separator: String,
    },
    Extract {
        path: Vec<String>,
    },
    Save {
        name: String,
        tags: Vec<String>,
    },
    Output {
        name: String,
    },
}

/// A field of the skill's interface.
#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub step: usize,
    pub ty: PortType,
    pub required: bool,
    pub description: String,
}

/// A checked graph.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// For each step, the steps that take its outputs (each once).
    pub dependents: Vec<Vec<usize>>,
    pub inputs: Vec<Field>,
    pub outputs: Vec<Field>,
}

fn text(params: &Map<String, Value>, k: &str) -> Option<String> {
    params.get(k).and_then(Value::as_str).map(str::to_string)
}

fn int(params: &Map<String, Value>, k: &str) -> Option<i64> {
    params.get(k).and_then(Value::as_i64)
}

fn default_of(spec: &Spec, k: &str) -> Default {
    spec.params
        .iter()
        .find(|p| p.name == k)
        .map_or(Default::None, |p| p.default)
}

fn text_or_default(params: &Map<String, Value>, spec: &Spec, k: &str) -> String {
    text(params, k).unwrap_or_else(|| match default_of(spec, k) {
        Default::Str(s) => s.to_string(),
        _ => String::new(),
    })
}

fn int_or_default(params: &Map<String, Value>, spec: &Spec, k: &str) -> i64 {
    int(params, k).unwrap_or(match default_of(spec, k) {
        Default::Int(n) => n,
        _ => 0,
    })
}

fn op_of(node: &Node, spec: &Spec) -> Op {
    let p = &node.params;
    let t = |k| text(p, k);
    let n = |k| int(p, k);
    match spec.kind {
        "input.text" => Op::InputText {
            name: text_or_default(p, spec, "name"),
            default: t("default"),
        },
        "input.image" => Op::InputImage {
            name: text_or_default(p, spec, "name"),
        },
        "input.number" => Op::InputNumber {
            name: text_or_default(p, spec, "name"),
            default: p.get("default").and_then(Value::as_f64),
            min: p.get("min").and_then(Value::as_f64),
            max: p.get("max").and_then(Value::as_f64),
        },
        "template" => Op::Template(
            graph::parse_template(&t("template").unwrap_or_default()).unwrap_or_default(),
        ),
        "chat" => Op::Chat {
            model: t("model").unwrap_or_default(),
            system: t("system").filter(|s| !s.is_empty()),
            max_tokens: n("max_tokens").map(|v| v as u32),
            temperature: p.get("temperature").and_then(Value::as_f64),
        },
        "vision.alt_text" => Op::AltText {
            model: t("model").filter(|s| !s.is_empty()),
            language: t("language").filter(|s| !s.is_empty()),
            max_chars: n("max_chars").map(|v| v as u32),
        },
        "image.generate" | "image.edit" => Op::Generate {
            model: t("model").unwrap_or_default(),
            size: t("size").filter(|s| !s.is_empty()),
            n: int_or_default(p, spec, "n").clamp(1, 4) as u32,
        },
        "image.resize" => Op::Image(LocalOp::Resize {
            width: n("width").map(|v| v as u32),
            height: n("height").map(|v| v as u32),
            fit: text_or_default(p, spec, "fit"),
        }),
        "image.crop" => Op::Image(LocalOp::Crop {
            aspect: t("aspect").as_deref().and_then(aspect),
            x: n("x").unwrap_or(0) as u32,
            y: n("y").unwrap_or(0) as u32,
            width: n("width").unwrap_or(0) as u32,
            height: n("height").unwrap_or(0) as u32,
        }),
        "image.convert" => Op::Image(LocalOp::Convert {
            format: text_or_default(p, spec, "format"),
            quality: int_or_default(p, spec, "quality") as u8,
            background: parse_color(&text_or_default(p, spec, "background")).unwrap_or([255; 4]),
        }),
        "image.compose" => Op::Image(LocalOp::Compose {
            width: int_or_default(p, spec, "width") as u32,
            height: int_or_default(p, spec, "height") as u32,
            color: parse_color(&text_or_default(p, spec, "color")).unwrap_or([255; 4]),
            padding: int_or_default(p, spec, "padding") as u32,
        }),
        "text.join" => Op::Join {
            separator: text_or_default(p, spec, "separator"),
        },
        "json.extract" => Op::Extract {
            path: text_or_default(p, spec, "path")
                .split(['/', '.'])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        },
        "library.save" => Op::Save {
            name: text_or_default(p, spec, "name"),
            tags: p
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        },
        _ => Op::Output {
            name: text_or_default(p, spec, "name"),
        },
    }
}

/// The models a graph names, with the node, the parameter and what the model must do
/// (`None`: the alt text writer, which may also be `local`).
pub fn models(g: &Graph) -> Vec<(String, &'static str, String, Option<Capability>)> {
    let mut out = Vec::new();
    for n in &g.nodes {
        let Some(spec) = spec(&n.kind) else { continue };
        for p in spec.params {
            let cap = match p.kind {
                Kind::Model(c) => Some(c),
                Kind::AltModel => None,
                _ => continue,
            };
            if let Some(m) = n.params.get(p.name).and_then(Value::as_str) {
                let mut cap = cap;
                if spec.kind == "chat" {
                    let fed = |port: &str| {
                        let to = format!("{}.{port}", n.id);
                        g.edges.iter().any(|e| e.to == to)
                    };
                    if fed("image") || fed("images") {
                        cap = Some(Capability::Vision);
                    }
                }
                out.push((n.id.clone(), p.name, m.to_string(), cap));
            }
        }
    }
    out
}

/// Checks a graph's shape, types and parameters (not its models, which depend on the
/// caller): every problem found, or the plan to run it.
pub fn check(g: &Graph, max_nodes: usize) -> Result<Plan, Vec<Problem>> {
    let mut problems = Vec::new();
    if g.nodes.is_empty() {
        problems.push(Problem::graph(
            "empty_graph",
            "the graph has no nodes; add an input, a step and an output",
        ));
    }
    if g.nodes.len() > max_nodes {
        problems.push(Problem::graph(
            "too_many_nodes",
            format!(
                "the graph has {} nodes; at most {max_nodes} are allowed ([skills] max_nodes)",
                g.nodes.len()
            ),
        ));
        return Err(problems);
    }
    if g.edges.len() > max_nodes * 8 {
        problems.push(Problem::graph(
            "too_many_edges",
            format!(
                "the graph has {} edges; at most {} are allowed",
                g.edges.len(),
                max_nodes * 8
            ),
        ));
        return Err(problems);
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut specs: Vec<Option<&'static Spec>> = Vec::with_capacity(g.nodes.len());
    for (i, n) in g.nodes.iter().enumerate() {
        if !graph::valid_id(&n.id) {
            problems.push(Problem::node(
                &n.id,
                "invalid_id",
                format!(
                    "node id `{}` must be 1 to {} letters, digits, _ or -",
                    n.id.chars().take(60).collect::<String>(),
                    graph::MAX_ID
                ),
            ));
        } else if index.insert(&n.id, i).is_some() {
            problems.push(Problem::node(
                &n.id,
                "duplicate_id",
                format!("two nodes are called `{}`", n.id),
            ));
        }
        if let Some(t) = n.timeout_s
            && !(t > 0.0 && t <= 3600.0)
        {
            problems.push(Problem::node(
                &n.id,
                "invalid_timeout",
                "timeout_s must be more than 0 and at most 3600",
            ));
        }
        let spec = spec(&n.kind);
        match spec {
            None => problems.push(Problem::node(
                &n.id,
                "unknown_type",
                format!(
                    "there is no node type `{}`; GET /api/skills/nodes lists them",
                    n.kind.chars().take(60).collect::<String>()
                ),
            )),
            Some(s) => check_params(n, s, &mut problems),
        }
        specs.push(spec);
    }
    let ports: Vec<Vec<InPort>> = g
        .nodes
        .iter()
        .zip(&specs)
        .map(|(n, s)| s.map(|s| in_ports(n, s)).unwrap_or_default())
        .collect();
    let mut slots: Vec<Vec<Slot>> = ports
        .iter()
        .map(|ps| {
            ps.iter()
                .map(|p| Slot {
                    port: p.name.clone(),
                    ty: p.ty,
                    sources: Vec::new(),
                })
                .collect()
        })
        .collect();
    for (e_i, e) in g.edges.iter().enumerate() {
        let (Some((fa, fp)), Some((ta, tp))) = (graph::end(&e.from), graph::end(&e.to)) else {
            problems.push(
                Problem::graph(
                    "invalid_edge",
                    format!("edge {e_i} must join `node.output` to `node.input`"),
                )
                .at_edge(e_i),
            );
            continue;
        };
        let (Some(&from), Some(&to)) = (index.get(fa), index.get(ta)) else {
            let missing = if index.contains_key(fa) { ta } else { fa };
            problems.push(
                Problem::graph(
                    "unknown_node",
                    format!("edge {e_i} names node `{missing}`, which is not in the graph"),
                )
                .at_edge(e_i),
            );
            continue;
        };
        let (Some(fs), Some(_)) = (specs[from], specs[to]) else {
            continue;
        };
        let Some(out) = fs.outputs.iter().find(|p| p.name == fp) else {
            let names = fs.outputs.iter().map(|p| p.name);
            problems.push(unknown_port(fa, fs.kind, "output", fp, names).at_edge(e_i));
            continue;
        };
        let Some(pi) = ports[to].iter().position(|p| p.name == tp) else {
            let names = ports[to].iter().map(|p| p.name.as_str());
            problems.push(unknown_port(ta, &g.nodes[to].kind, "input", tp, names).at_edge(e_i));
            continue;
        };
        let inp = &ports[to][pi];
        if from == to {
            problems.push(
                Problem::node(ta, "cycle", "a node cannot feed itself")
                    .at_port(tp)
                    .at_edge(e_i),
            );
            continue;
        }
        if !inp.ty.accepts(out.ty) {
            problems.push(
                Problem::node(
                    ta,
                    "type_mismatch",
                    format!(
                        "input `{tp}` takes {}, but `{}.{fp}` gives {}",
                        inp.ty.name(),
                        fa,
                        out.ty.name()
                    ),
                )
                .at_port(tp)
                .at_edge(e_i),
            );
            continue;
        }
        let slot = &mut slots[to][pi];
        if !inp.many && !slot.sources.is_empty() {
            problems.push(
                Problem::node(
                    ta,
                    "port_taken",
                    format!("input `{tp}` already has an edge; it takes one"),
                )
                .at_port(tp)
                .at_edge(e_i),
            );
            continue;
        }
        slot.sources.push((from, fp.to_string(), out.ty));
    }
    for (i, n) in g.nodes.iter().enumerate() {
        for (p, s) in ports[i].iter().zip(&slots[i]) {
            if p.required && s.sources.is_empty() {
                problems.push(
                    Problem::node(
                        &n.id,
                        "unconnected",
                        format!("input `{}` ({}) needs an edge", p.name, p.ty.name()),
                    )
                    .at_port(&p.name),
                );
            }
        }
        if n.kind == "library.save" && slots[i].iter().all(|s| s.sources.is_empty()) {
            problems.push(
                Problem::node(&n.id, "unconnected", "connect `image` or `images`").at_port("image"),
            );
        }
    }
    // Kahn's algorithm: what is left over sits on a cycle.
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); g.nodes.len()];
    let mut waiting = vec![0usize; g.nodes.len()];
    for (to, ss) in slots.iter().enumerate() {
        let mut from_set = HashSet::new();
        for s in ss {
            for (from, _, _) in &s.sources {
                if from_set.insert(*from) {
                    dependents[*from].push(to);
                    waiting[to] += 1;
                }
            }
        }
    }
    let mut left = waiting.clone();
    let mut ready: Vec<usize> = (0..g.nodes.len()).filter(|&i| left[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = ready.pop() {
        seen += 1;
        for &d in &dependents[i] {
            left[d] -= 1;
            if left[d] == 0 {
                ready.push(d);
            }
        }
    }
    if seen < g.nodes.len() {
        for (i, n) in g.nodes.iter().enumerate() {
            if left[i] > 0 {
                problems.push(Problem::node(
                    &n.id,
                    "cycle",
                    "this node is on a cycle: a skill's graph must flow one way",
                ));
            }
        }
    }
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    for (i, (n, s)) in g.nodes.iter().zip(&specs).enumerate() {
        let Some(s) = s else { continue };
        let name = n
            .params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let description = n
            .params
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (list, ty, required) = match s.kind {
            "input.text" => (
                &mut inputs,
                Text,
                !n.params.get("default").is_some_and(Value::is_string),
            ),
            "input.image" => (&mut inputs, Image, true),
            "input.number" => (
                &mut inputs,
                Number,
                !n.params.get("default").is_some_and(Value::is_number),
            ),
            "output" => {
                let ty = slots[i]
                    .first()
                    .and_then(|s| s.sources.first())
                    .map_or(Any, |(_, _, t)| *t);
                (&mut outputs, ty, true)
            }
            _ => continue,
        };
        if list.iter().any(|f: &Field| f.name == name) {
            problems.push(
                Problem::node(
                    &n.id,
                    "duplicate_name",
                    format!(
                        "two {} are called `{name}`",
                        if s.kind == "output" {
                            "outputs"
                        } else {
                            "inputs"
                        }
                    ),
                )
                .at_param("name"),
            );
        }
        list.push(Field {
            name,
            step: i,
            ty,
            required,
            description,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let steps = g
        .nodes
        .iter()
        .zip(specs)
        .zip(slots)
        .map(|((n, s), slots)| {
            let s = s.expect("checked above");
            Step {
                id: n.id.clone(),
                kind: s.kind,
                op: op_of(n, s),
                slots,
                timeout: n.timeout_s.map(Duration::from_secs_f64),
                paid: s.paid,
            }
        })
        .collect();
    Ok(Plan {
        steps,
        dependents,
        inputs,
        outputs,
    })
}

impl Plan {
    /// The JSON Schema of the skill's inputs (what `POST /v1/skills/{slug}/run` takes
    /// as `inputs`, and an MCP tool's `inputSchema`).
    pub fn input_schema(&self) -> Value {
        let mut props = Map::new();
        let mut required = Vec::new();
        for f in &self.inputs {
            let mut s = match f.ty {
                Image => json!({"anyOf": [
                    {"type": "string", "description": "base64, a data: URI, or an http(s) URL"},
                    {"type": "object", "properties": {"asset_id": {"type": "string"}}, "required": ["asset_id"]}
                ]}),
                Number => json!({"type": "number"}),
                _ => json!({"type": "string"}),
            };
            if !f.description.is_empty() {
                s["description"] = f.description.clone().into();
            }
            if f.required {
                required.push(f.name.clone());
            }
            props.insert(f.name.clone(), s);
        }
        json!({"type": "object", "properties": props, "required": required})
    }

    /// The JSON Schema of the skill's outputs.
    pub fn output_schema(&self) -> Value {
        let mut props = Map::new();
        for f in &self.outputs {
            let image = json!({"type": "object", "properties": {
                "media_type": {"type": "string"}, "width": {"type": "integer"},
                "height": {"type": "integer"}, "b64_json": {"type": "string"}}});
            let s = match f.ty {
                Text => json!({"type": "string"}),
                Number => json!({"type": "number"}),
                Image => image,
                Images => json!({"type": "array", "items": image}),
                _ => json!({}),
            };
            props.insert(f.name.clone(), s);
        }
        json!({"type": "object", "properties": props})
    }
}

/// The values reaching a step, by input port.
pub struct Inputs(pub Vec<(String, Vec<Data>)>);

impl Inputs {
    fn all(&self, port: &str) -> &[Data] {
        self.0
            .iter()
            .find(|(p, _)| p == port)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    fn one(&self, port: &str) -> Option<&Data> {
        self.all(port).first()
    }

    fn text(&self, port: &str) -> String {
        match self.one(port) {
            Some(Data::Text(t)) => t.clone(),
            _ => String::new(),
        }
    }

    fn image(&self, port: &str) -> Result<&Img, ApiError> {
        match self.one(port) {
            Some(Data::Image(i)) => Ok(i),
            _ => Err(ApiError::internal(format!("input `{port}` holds no image"))),
        }
    }
}

/// What a step gives, by output port.
pub type Outputs = Vec<(&'static str, Data)>;

/// Runs the steps that finish at once (no provider, no image work).
pub fn run_inline(op: &Op, inputs: &Inputs) -> Result<Outputs, ApiError> {
    match op {
        Op::Template(pieces) => {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Var(v) => out.push_str(&inputs.text(v)),
                }
            }
            Ok(vec![("text", Data::Text(out))])
        }
        Op::Join { separator } => {
            let parts: Vec<String> = inputs
                .all("text")
                .iter()
                .map(|d| match d {
                    Data::Text(t) => t.clone(),
                    other => other.as_text(),
                })
                .collect();
            Ok(vec![("text", Data::Text(parts.join(separator)))])
        }
        Op::Extract { path } => {
            let Some(Data::Json(v)) = inputs.one("json") else {
                return Err(ApiError::internal("json.extract got no JSON"));
            };
            let mut at = v;
            for (depth, key) in path.iter().enumerate() {
                let next = match at {
                    Value::Object(m) => m.get(key),
                    Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                };
                at = next.ok_or_else(|| {
                    ApiError::bad_request(
                        "path_not_found",
                        format!("the JSON has nothing at `{}`", path[..=depth].join("/")),
                    )
                })?;
            }
            let text = match at {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(vec![
                ("value", Data::Json(at.clone())),
                ("text", Data::Text(text)),
            ])
        }
        _ => Err(ApiError::internal("not an inline step")),
    }
}

/// Whether a step finishes at once and runs on the scheduler's own task.
pub fn inline(op: &Op) -> bool {
    matches!(op, Op::Template(_) | Op::Join { .. } | Op::Extract { .. })
}

/// Runs a step that calls a provider, does image work or writes to the library.
pub async fn run(op: &Op, inputs: Inputs, ctx: &Ctx) -> Result<Outputs, ApiError> {
    match op {
        Op::Chat {
            model,
            system,
            max_tokens,
            temperature,
        } => {
            use crate::providers::wire::{ChatRequest, Content, ImageUrl, Message, Part};
            let mut parts = vec![Part::Text {
                text: inputs.text("prompt"),
            }];
            let mut images: Vec<&Img> = Vec::new();
            for d in inputs.all("image").iter().chain(inputs.all("images")) {
                match d {
                    Data::Image(i) => images.push(i),
                    Data::Images(list) => images.extend(list.iter()),
                    _ => {}
                }
            }
            for i in images {
                parts.push(Part::ImageUrl {
                    image_url: ImageUrl {
                        url: i.data_uri(),
                        detail: None,
                    },
                });
            }
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message {
                    role: "system".into(),
                    content: Some(Content::Text(s.clone())),
                    rest: Map::new(),
                });
            }
            let content = if parts.len() == 1 {
                Content::Text(inputs.text("prompt"))
            } else {
                Content::Parts(parts)
            };
            messages.push(Message {
                role: "user".into(),
                content: Some(content),
                rest: Map::new(),
            });
            let req = ChatRequest {
                model: model.clone(),
                messages,
                stream: false,
                stream_options: None,
                max_tokens: *max_tokens,
                max_completion_tokens: None,
                temperature: *temperature,
                top_p: None,
                stop: None,
                n: None,
                rest: Map::new(),
            };
            let body = crate::gateway::chat::complete_value(&ctx.gateway, &ctx.caller, req).await?;
            let text = body
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            Ok(vec![("text", Data::Text(text))])
        }
        Op::AltText {
            model,
            language,
            max_chars,
        } => {
            let img = inputs.image("image")?;
            let context = inputs.one("context").map(Data::as_text);
            let req = crate::alt_text::AltTextRequest {
                image_base64: None,
                image_url: None,
                language: language.clone(),
                max_chars: *max_chars,
                context,
                keywords: None,
                style: None,
                model: model.clone(),
            };
            let r = ctx
                .alt_text
                .describe(
                    &ctx.caller,
                    &req,
                    crate::alt_text::Source::Bytes(img.bytes.to_vec()),
                )
                .await?;
            let alt = r.alt_text.clone();
            let result = serde_json::to_value(&r).map_err(ApiError::internal)?;
            Ok(vec![
                ("alt_text", Data::Text(alt)),
                ("result", Data::Json(result)),
            ])
        }
        Op::Generate { model, size, n } => {
            // An image.edit node has an image coming in; image.generate has none.
            let source = |port| match inputs.one(port) {
                Some(Data::Image(i)) => Some(crate::providers::wire::SourceImage {
                    bytes: i.bytes.clone(),
                    media_type: i.media_type.clone(),
                }),
                _ => None,
            };
            let req = crate::providers::wire::ImageRequest {
                model: model.clone(),
                prompt: inputs.text("prompt"),
                n: Some(*n),
                size: size.clone(),
                response_format: None,
                rest: Map::new(),
                source: source("image"),
                mask: source("mask"),
            };
            let (made, _) = crate::gateway::images::make(&ctx.gateway, &ctx.caller, &req).await?;
            let limits = ctx.limits;
            let imgs = tokio::task::spawn_blocking(move || {
                made.into_iter()
                    .map(|m| Img::from_bytes(m.bytes, limits))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(ApiError::internal)??;
            let first = imgs.first().cloned().ok_or_else(|| {
                ApiError::new(
                    actix_web::http::StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "the provider returned no image",
                )
            })?;
            Ok(vec![
                ("images", Data::Images(imgs)),
                ("image", Data::Image(first)),
            ])
        }
        Op::Image(local) => {
            let img = inputs.image("image")?.clone();
            let bg = match inputs.one("background") {
                Some(Data::Image(b)) => Some(b.clone()),
                _ => None,
            };
            let limits = ctx.limits;
            let op = local.clone();
            let out = tokio::task::spawn_blocking(move || {
                super::imageops::apply(&op, &img, bg.as_ref(), limits)
            })
            .await
            .map_err(ApiError::internal)??;
            Ok(vec![("image", Data::Image(out))])
        }
        Op::Save { name, tags } => {
            let mut imgs: Vec<Img> = Vec::new();
            for d in inputs.all("image").iter().chain(inputs.all("images")) {
                match d {
                    Data::Image(i) => imgs.push(i.clone()),
                    Data::Images(list) => imgs.extend(list.iter().cloned()),
                    _ => {}
                }
            }
            let mut saved = Vec::new();
            let many = imgs.len() > 1;
            for (i, img) in imgs.into_iter().enumerate() {
                let ext = img.media_type.rsplit('/').next().unwrap_or("png");
                let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
                let file = if many {
                    format!("{stem}-{}.{ext}", i + 1)
                } else {
                    format!("{stem}.{ext}")
                };
                let source = crate::library::AssetSource::Skill {
                    skill: ctx.skill.clone(),
                    run: ctx.run.clone(),
                };
                let asset = ctx
                    .library
                    .save_bytes(
                        &ctx.caller.account,
                        file,
                        tags.clone(),
                        source,
                        img.bytes.to_vec(),
                    )
                    .await
                    .map_err(ApiError::from)?;
                saved.push(json!({"id": asset.id, "name": asset.name}));
            }
            Ok(vec![("assets", Data::Json(Value::Array(saved)))])
        }
        other => Err(ApiError::internal(format!(
            "{other:?} is not run by a task"
        ))),
    }
}

/// The local image operations, apart from the rest so they can move to a blocking thread.
#[derive(Clone, Debug)]
pub enum LocalOp {
    Resize {
        width: Option<u32>,
        height: Option<u32>,
        fit: String,
    },
    Crop {
        aspect: Option<(u32, u32)>,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    },
    Convert {
        format: String,
        quality: u8,
        background: [u8; 4],
    },
    Compose {
        width: u32,
        height: u32,
        color: [u8; 4],
        padding: u32,
    },
}
