//! The example skills shipped with Easel, offered as templates in the editor.

use super::graph::Graph;
use crate::config::Capability;
use serde_json::{Value, json};

/// One template.
pub struct Template {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    graph: fn() -> Value,
}

impl Template {
    /// Its graph, with each model parameter set by `pick` (the first model of the
    /// caller's catalog with the capability), or left as shipped when `pick` has none.
    pub fn graph(&self, pick: &dyn Fn(Capability) -> Option<String>) -> Graph {
        let mut g: Graph = serde_json::from_value((self.graph)()).unwrap_or_default();
        let seeing: Vec<String> = g
            .edges
            .iter()
            .filter_map(|e| {
                e.to.strip_suffix(".image")
                    .or_else(|| e.to.strip_suffix(".images"))
            })
            .map(str::to_string)
            .collect();
        for n in &mut g.nodes {
            let cap = match n.kind.as_str() {
                "chat" if seeing.contains(&n.id) => Capability::Vision,
                "chat" => Capability::Chat,
                "image.generate" | "image.edit" => Capability::Image,
                _ => continue,
            };
            if let Some(m) = pick(cap) {
                n.params.insert("model".into(), m.into());
            }
        }
        g
    }
}

fn node(id: &str, kind: &str, params: Value, x: f64, y: f64) -> Value {
    json!({"id": id, "type": kind, "params": params, "position": {"x": x, "y": y}})
}

fn edge(from: &str, to: &str) -> Value {
    json!({"from": from, "to": to})
}

fn product_alt_seo() -> Value {
    json!({
        "nodes": [
            node("photo", "input.image", json!({"name": "photo", "description": "The product photo"}), 40.0, 60.0),
            node("product", "input.text", json!({"name": "product", "description": "Product name and facts (optional)", "default": ""}), 40.0, 260.0),
            node("alt", "vision.alt_text", json!({}), 320.0, 60.0),
            node("prompt", "template", json!({"template": "Write one SEO title of at most 60 characters for a product page. Answer with the title only.\nProduct: {{product}}\nWhat the photo shows: {{alt}}"}), 600.0, 200.0),
            node("title", "chat", json!({"model": "gpt-4o-mini", "max_tokens": 60}), 880.0, 200.0),
            node("out_alt", "output", json!({"name": "alt_text"}), 880.0, 40.0),
            node("out_title", "output", json!({"name": "seo_title"}), 1160.0, 200.0),
        ],
        "edges": [
            edge("photo.image", "alt.image"),
            edge("alt.alt_text", "prompt.alt"),
            edge("product.text", "prompt.product"),
            edge("prompt.text", "title.prompt"),
            edge("alt.alt_text", "out_alt.value"),
            edge("title.text", "out_title.value"),
        ]
    })
}

fn white_background_sizes() -> Value {
    json!({
        "nodes": [
            node("photo", "input.image", json!({"name": "photo", "description": "The product, ideally cut out (transparent PNG)"}), 40.0, 160.0),
            node("canvas", "image.compose", json!({"width": 2000, "height": 2000, "color": "#ffffff", "padding": 8}), 300.0, 160.0),
            node("jpeg", "image.convert", json!({"format": "jpeg", "quality": 88}), 560.0, 160.0),
            node("large", "image.resize", json!({"width": 1600, "height": 1600, "fit": "contain"}), 820.0, 20.0),
            node("medium", "image.resize", json!({"width": 800, "height": 800, "fit": "contain"}), 820.0, 160.0),
            node("small", "image.resize", json!({"width": 300, "height": 300, "fit": "contain"}), 820.0, 300.0),
            node("out_large", "output", json!({"name": "large"}), 1080.0, 20.0),
            node("out_medium", "output", json!({"name": "medium"}), 1080.0, 160.0),
            node("out_small", "output", json!({"name": "small"}), 1080.0, 300.0),
        ],
        "edges": [
            edge("photo.image", "canvas.image"),
            edge("canvas.image", "jpeg.image"),
            edge("jpeg.image", "large.image"),
            edge("jpeg.image", "medium.image"),
            edge("jpeg.image", "small.image"),
            edge("large.image", "out_large.value"),
            edge("medium.image", "out_medium.value"),
            edge("small.image", "out_small.value"),
        ]
    })
}

fn describe_and_tag() -> Value {
    let system = "Describe the image in one sentence and give up to 8 lowercase tags. Answer with JSON only: {\"description\": \"...\", \"tags\": [\"...\"]}";
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for i in 1..=3 {
        let y = f64::from(i - 1) * 180.0 + 40.0;
        nodes.push(node(
            &format!("image_{i}"),
            "input.image",
            json!({"name": format!("image_{i}")}),
            40.0,
            y,
        ));
        nodes.push(node(
            &format!("ask_{i}"),
            "template",
            json!({"template": "Describe and tag this image."}),
            40.0,
            y + 80.0,
        ));
        nodes.push(node(
            &format!("describe_{i}"),
            "chat",
            json!({"model": "gpt-4o-mini", "system": system, "max_tokens": 300}),
            320.0,
            y,
        ));
        nodes.push(node(
            &format!("out_{i}"),
            "output",
            json!({"name": format!("result_{i}")}),
            600.0,
            y,
        ));
        edges.push(edge(
            &format!("image_{i}.image"),
            &format!("describe_{i}.image"),
        ));
        edges.push(edge(
            &format!("ask_{i}.text"),
            &format!("describe_{i}.prompt"),
        ));
        nodes.push(node(
            &format!("json_{i}"),
            "json.extract",
            json!({"path": ""}),
            600.0,
            y + 60.0,
        ));
        edges.push(edge(
            &format!("describe_{i}.text"),
            &format!("json_{i}.json"),
        ));
        edges.push(edge(&format!("json_{i}.value"), &format!("out_{i}.value")));
    }
    json!({"nodes": nodes, "edges": edges})
}

/// The shipped templates.
pub static TEMPLATES: &[Template] = &[
    Template {
        id: "product-alt-seo",
        name: "Product photo → alt text + SEO title",
        description: "Writes alt text for a product photo, then an SEO title from it and the product's facts.",
        graph: product_alt_seo,
    },
    Template {
        id: "white-background-sizes",
        name: "Product on white background in three sizes",
        description: "Centres a product on a white square canvas and makes large, medium and small JPEGs (no provider needed).",
        graph: white_background_sizes,
    },
    Template {
        id: "describe-and-tag",
        name: "Describe and tag a batch",
        description: "Describes and tags three images at once, each in its own parallel branch, as JSON.",
        graph: describe_and_tag,
    },
];

/// The template called `id`.
pub fn find(id: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.id == id)
}
