//! Skills over real HTTP: an in-process Easel in front of the mock provider. Runs end
//! to end (models, local image nodes, the shipped templates), parallel branches,
//! cancellation, the budget stop, partial results, validation that points at nodes
//! and ports, versions, import and export, bad input, and MCP with the official
//! Python client.

mod common;

use base64::Engine as _;
use common::TestServer;
use common::mock::{Fault, Mock, catalog};
use easel::ledger::{EntryKind, MICRO, Posting};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery";

struct Setup {
    s: TestServer,
    mock: Mock,
    _keys: tempfile::TempDir,
    account: String,
    key: String,
}

async fn setup() -> Setup {
    let mock = Mock::start().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let extra = format!(
        "{}\n[alt_text]\nmodel = \"gpt-test\"\n",
        catalog(&mock, keys.path())
    );
    let s = TestServer::start(&extra).await;
    let (account, key) = s.member_with_key("ada@example.com", PASSWORD).await;
    let ledger = &s.running.as_ref().expect("running").services().ledger;
    ledger
        .post(&account, EntryKind::Grant, 100 * MICRO, Posting::default())
        .await
        .expect("grant");
    Setup {
        s,
        mock,
        _keys: keys,
        account,
        key,
    }
}

impl Setup {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = common::http()
            .request(method, self.s.url(path))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Creates and publishes a skill; panics with the answer when either fails.
    async fn publish(&self, slug: &str, graph: Value) {
        let (st, body) = self
            .post(
                "/api/skills",
                json!({"slug": slug, "name": slug, "description": "a test skill", "graph": graph}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        let (st, body) = self
            .post(&format!("/api/skills/{slug}/publish"), json!({}))
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }

    async fn run(&self, slug: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/v1/skills/{slug}/run"), body).await
    }

    async fn balance(&self) -> i64 {
        let ledger = &self.s.running.as_ref().expect("running").services().ledger;
        ledger.balance(&self.account).0
    }

    /// Runs with progress events; returns each (event, data) as it came.
    async fn run_streamed(&self, slug: &str, body: Value) -> Vec<(String, Value)> {
        let res = common::http()
            .post(self.s.url(&format!("/v1/skills/{slug}/run")))
            .bearer_auth(&self.key)
            .header("accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::OK);
        events(&res.text().await.expect("body"))
    }

    async fn stop(self) {
        self.s.stop().await;
        self.mock.stop().await;
    }
}

fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((
                name.to_string(),
                serde_json::from_str(data).expect("event data is JSON"),
            ))
        })
        .collect()
}

fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| {
        let a = if alpha && (x < w / 4 || x > 3 * w / 4) {
            0
        } else {
            255
        };
        image::Rgba([(x * 7) as u8, (y * 3) as u8, 90, a])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn node(id: &str, kind: &str, params: Value) -> Value {
    json!({"id": id, "type": kind, "params": params})
}

fn edge(from: &str, to: &str) -> Value {
    json!({"from": from, "to": to})
}

/// topic → template → chat → answer.
fn ask_graph() -> Value {
    json!({"nodes": [
        node("topic", "input.text", json!({"name": "topic", "description": "What to ask about"})),
        node("prompt", "template", json!({"template": "Tell me about {{topic}}"})),
        node("ask", "chat", json!({"model": "gpt-test", "max_tokens": 50})),
        node("answer", "output", json!({"name": "answer"})),
    ], "edges": [
        edge("topic.text", "prompt.topic"), edge("prompt.text", "ask.prompt"), edge("ask.text", "answer.value"),
    ]})
}

#[actix_web::test]
async fn a_skill_runs_end_to_end_with_a_model_and_local_image_nodes() {
    let t = setup().await;
    let mut g = ask_graph();
    let nodes = g["nodes"].as_array_mut().unwrap();
    nodes.push(node("photo", "input.image", json!({"name": "photo"})));
    nodes.push(node("shrink", "image.resize", json!({"width": 50})));
    nodes.push(node("small", "output", json!({"name": "small"})));
    let edges = g["edges"].as_array_mut().unwrap();
    edges.push(edge("photo.image", "shrink.image"));
    edges.push(edge("shrink.image", "small.value"));
    t.publish("ask", g).await;

    let (st, list) = t.get("/v1/skills").await;
    assert_eq!(st, StatusCode::OK);
    let listed = &list["data"][0];
    assert_eq!(listed["slug"], "ask");
    assert_eq!(
        listed["input_schema"]["properties"]["topic"]["description"],
        "What to ask about"
    );
    assert_eq!(
        listed["input_schema"]["required"],
        json!(["topic", "photo"])
    );

    let before = t.balance().await;
    let (st, r) = t
        .run(
            "ask",
            json!({"inputs": {"topic": "cats", "photo": b64(&png(100, 80, false))}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["outputs"]["answer"], "echo: Tell me about cats");
    assert_eq!(r["outputs"]["small"]["width"], 50);
    assert_eq!(r["outputs"]["small"]["height"], 40);
    let small = base64::engine::general_purpose::STANDARD
        .decode(r["outputs"]["small"]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::load_from_memory(&small).unwrap().width(),
        50,
        "a real, decodable image"
    );
    assert!(r["credits"].as_f64().unwrap() > 0.0, "{r}");
    let asked = t
        .mock
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/chat/completions"))
        .expect("the provider was asked");
    assert_eq!(asked.body["max_tokens"], 50);

    // The charge was taken, and the run is recorded as metadata only.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.balance().await < before);
    let (_, runs) = t.get("/api/skills/ask/runs").await;
    let run = &runs["data"][0];
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["nodes"].as_array().unwrap().len(), 7);
    let stored = runs.to_string();
    assert!(
        !stored.contains("cats") && !stored.contains("echo"),
        "no input or output is kept: {stored}"
    );
    t.stop().await;
}

#[actix_web::test]
async fn parallel_branches_overlap_in_time() {
    let t = setup().await;
    t.publish(
        "two",
        json!({"nodes": [
            node("topic", "input.text", json!({"name": "topic"})),
            node("a", "chat", json!({"model": "gpt-test", "max_tokens": 10})),
            node("b", "chat", json!({"model": "gpt-test", "max_tokens": 10})),
            node("out_a", "output", json!({"name": "a"})),
            node("out_b", "output", json!({"name": "b"})),
        ], "edges": [
            edge("topic.text", "a.prompt"), edge("topic.text", "b.prompt"),
            edge("a.text", "out_a.value"), edge("b.text", "out_b.value"),
        ]}),
    )
    .await;
    t.mock.fail(
        "openai",
        [
            Fault::Slow(Duration::from_millis(500)),
            Fault::Slow(Duration::from_millis(500)),
        ],
    );
    let evs = t
        .run_streamed("two", json!({"inputs": {"topic": "x"}}))
        .await;
    let at = |name: &str, node: &str| {
        evs.iter()
            .position(|(n, d)| n == name && d["node"] == node)
            .unwrap_or_else(|| panic!("no {name} for {node}: {evs:?}"))
    };
    let first_finish = at("node_finished", "a").min(at("node_finished", "b"));
    assert!(
        at("node_started", "a") < first_finish && at("node_started", "b") < first_finish,
        "both branches were under way together: {evs:?}"
    );
    let (name, result) = evs.last().unwrap();
    assert_eq!(name, "run_finished");
    assert_eq!(result["status"], "succeeded");
    assert!(
        result["ms"].as_u64().unwrap() < 1000,
        "two 500 ms calls overlapped: {result}"
    );
    t.stop().await;
}

#[actix_web::test]
async fn a_failing_node_returns_the_outputs_that_could_be_made() {
    let t = setup().await;
    t.publish(
        "half",
        json!({"nodes": [
            node("topic", "input.text", json!({"name": "topic"})),
            node("ask", "chat", json!({"model": "solo", "max_tokens": 10})),
            node("echo", "template", json!({"template": "you said {{topic}}"})),
            node("out_a", "output", json!({"name": "a"})),
            node("out_b", "output", json!({"name": "b"})),
        ], "edges": [
            edge("topic.text", "ask.prompt"), edge("topic.text", "echo.topic"),
            edge("ask.text", "out_a.value"), edge("echo.text", "out_b.value"),
        ]}),
    )
    .await;
    t.mock.fail("openai", [Fault::Status(400)]);
    let (st, r) = t.run("half", json!({"inputs": {"topic": "hi"}})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(
        r["outputs"],
        json!({"b": "you said hi"}),
        "the branch that worked is there"
    );
    let node = |id: &str| {
        r["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node("ask")["status"], "failed");
    assert_eq!(node("ask")["error"]["code"], "upstream_rejected");
    assert_eq!(node("out_a")["status"], "skipped");
    assert_eq!(node("out_b")["status"], "succeeded");
    t.stop().await;
}

#[actix_web::test]
async fn the_budget_stops_a_run_before_a_paid_node_and_nothing_is_charged() {
    let t = setup().await;
    t.publish("ask", ask_graph()).await;
    let before = t.balance().await;
    let (st, r) = t
        .run(
            "ask",
            json!({"inputs": {"topic": "x"}, "max_credits": 0.00001}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["status"], "budget_exceeded", "{r}");
    let ask = r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "ask")
        .unwrap();
    assert_eq!(ask["error"]["code"], "budget_exceeded");
    assert!(
        ask["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_credits")
    );
    assert_eq!(t.mock.calls("openai"), 0, "the provider was never called");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.balance().await, before);
    // With room in the budget the same run goes through.
    let (_, r) = t
        .run("ask", json!({"inputs": {"topic": "x"}, "max_credits": 5}))
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    t.stop().await;
}

#[actix_web::test]
async fn cancelling_a_run_stops_its_steps() {
    let t = setup().await;
    t.publish("ask", ask_graph()).await;
    t.mock.fail("openai", [Fault::Slow(Duration::from_secs(8))]);
    let started = Instant::now();
    let res = common::http()
        .post(t.s.url("/v1/skills/ask/run"))
        .bearer_auth(&t.key)
        .json(&json!({"inputs": {"topic": "x"}, "stream": true}))
        .send()
        .await
        .expect("request");
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut cancelled = false;
    while let Some(chunk) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if !cancelled && text.contains("\"node\":\"ask\"") {
            let run = events(&text)[0].1["run"].as_str().unwrap().to_string();
            let (st, _) = t
                .post(&format!("/v1/skills/runs/{run}/cancel"), json!({}))
                .await;
            assert_eq!(st, StatusCode::ACCEPTED);
            cancelled = true;
        }
    }
    assert!(cancelled, "{text}");
    let evs = events(&text);
    let (name, result) = evs.last().unwrap();
    assert_eq!(name, "run_finished");
    assert_eq!(result["status"], "cancelled", "{result}");
    let ask = result["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "ask")
        .unwrap();
    assert_eq!(ask["status"], "cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the slow call did not hold the run"
    );
    let (st, _) = t.post("/v1/skills/runs/nope/cancel", json!({})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    t.stop().await;
}

#[actix_web::test]
async fn validation_points_at_the_node_and_port() {
    let t = setup().await;
    let graph = json!({"nodes": [
        node("photo", "input.image", json!({"name": "photo"})),
        node("prompt", "template", json!({"template": "Say {{thing}}"})),
        node("ask", "chat", json!({"model": "no-such-model"})),
        node("loop_a", "template", json!({"template": "{{x}}"})),
        node("loop_b", "template", json!({"template": "{{y}}"})),
        node("odd", "no.such.type", json!({})),
        node("shrink", "image.resize", json!({"width": "big"})),
    ], "edges": [
        edge("photo.image", "prompt.thing"),
        edge("loop_a.text", "loop_b.y"), edge("loop_b.text", "loop_a.x"),
        edge("photo.image", "shrink.image"),
    ]});
    let (st, r) = t.post("/api/skills/check", json!({"graph": graph})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["ok"], false);
    let problems = r["problems"].as_array().unwrap();
    let has = |node: &str, code: &str, port: Option<&str>, param: Option<&str>| {
        problems.iter().any(|p| {
            p["node"] == node
                && p["code"] == code
                && port.is_none_or(|x| p["port"] == x)
                && param.is_none_or(|x| p["param"] == x)
        })
    };
    assert!(has("prompt", "type_mismatch", Some("thing"), None), "{r}");
    assert!(has("ask", "unconnected", Some("prompt"), None), "{r}");
    assert!(has("ask", "unknown_model", None, Some("model")), "{r}");
    assert!(
        has("loop_a", "cycle", None, None) && has("loop_b", "cycle", None, None),
        "{r}"
    );
    assert!(has("odd", "unknown_type", None, None), "{r}");
    assert!(has("shrink", "invalid_param", None, Some("width")), "{r}");

    // A draft may be saved as it is, but not published.
    let (st, _) = t
        .post(
            "/api/skills",
            json!({"slug": "draft", "name": "Draft", "graph": graph}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, e) = t.post("/api/skills/draft/publish", json!({})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["error"]["code"], "invalid_graph");
    assert!(e["error"]["problems"].as_array().unwrap().len() >= 6, "{e}");
    let (st, e) = t
        .run("draft", json!({"version": "latest", "inputs": {}}))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    // The editor gets the node types and the port conversions from the server.
    let (st, types) = t.get("/api/skills/nodes").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(types["accepts"]["text"], json!(["text", "number", "json"]));
    assert_eq!(types["accepts"]["images"], json!(["image", "images"]));
    assert_eq!(types["accepts"]["image"], json!(["image"]));
    assert_eq!(
        types["accepts"]["any"],
        json!(["image", "images", "text", "number", "json"])
    );
    let edit = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "image.edit")
        .expect("image.edit is listed");
    assert_eq!(
        edit["params"]["properties"]["model"]["x-capability"],
        "image"
    );
    // An edge to or from a port the node lacks names the ports it has.
    let (_, r) = t.post("/api/skills/check", json!({"graph": {"nodes": [
        node("photo", "input.image", json!({"name": "photo"})),
        node("shrink", "image.resize", json!({"width": 10})),
        node("o", "output", json!({"name": "o"})),
    ], "edges": [edge("photo.picture", "shrink.image"), edge("photo.image", "shrink.img"), edge("shrink.image", "o.value")]}})).await;
    let problems = r["problems"].as_array().unwrap();
    let at = |node: &str, port: &str| {
        problems
            .iter()
            .find(|p| p["node"] == node && p["port"] == port && p["code"] == "unknown_port")
            .unwrap_or_else(|| panic!("no unknown_port at {node}.{port}: {r}"))
    };
    assert_eq!(
        at("photo", "picture")["message"],
        "`input.image` has no output `picture`; it has image"
    );
    assert_eq!(at("photo", "picture")["edge"], 0);
    assert_eq!(
        at("shrink", "img")["message"],
        "`image.resize` has no input `img`; it has image"
    );
    assert_eq!(at("shrink", "img")["edge"], 1);
    // A model that cannot see is refused for a chat node given an image.
    let (_, r) = t.post("/api/skills/check", json!({"graph": {"nodes": [
        node("photo", "input.image", json!({"name": "photo"})),
        node("p", "template", json!({"template": "what is it?"})),
        node("ask", "chat", json!({"model": "solo"})),
        node("o", "output", json!({"name": "o"})),
    ], "edges": [edge("photo.image", "ask.image"), edge("p.text", "ask.prompt"), edge("ask.text", "o.value")]}})).await;
    assert_eq!(r["problems"][0]["code"], "model_not_capable", "{r}");
    assert_eq!(r["problems"][0]["param"], "model", "{r}");
    t.stop().await;
}

#[actix_web::test]
async fn versions_are_kept_published_restored_exported_and_imported() {
    let t = setup().await;
    t.publish("ask", ask_graph()).await;
    let mut v2 = ask_graph();
    v2["nodes"][1]["params"]["template"] = json!("Explain {{topic}}");
    let (st, s) = t
        .send(
            reqwest::Method::PUT,
            "/api/skills/ask",
            Some(json!({"graph": v2, "note": "reworded"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{s}");
    assert_eq!(s["latest_version"], 2);
    assert_eq!(s["published_version"], 1);
    // Saving the same graph again makes no new version.
    let (_, s) = t
        .send(
            reqwest::Method::PUT,
            "/api/skills/ask",
            Some(json!({"graph": v2, "name": "Asker"})),
        )
        .await;
    assert_eq!(s["latest_version"], 2);
    assert_eq!(s["name"], "Asker");
    let (_, vs) = t.get("/api/skills/ask/versions").await;
    assert_eq!(vs["data"].as_array().unwrap().len(), 2);
    assert_eq!(vs["data"][0]["note"], "reworded");
    assert_eq!(vs["data"][1]["published"], true);

    let (_, r) = t.run("ask", json!({"inputs": {"topic": "owls"}})).await;
    assert_eq!(
        r["outputs"]["answer"], "echo: Tell me about owls",
        "the published version runs"
    );
    let (_, r) = t
        .run(
            "ask",
            json!({"version": "latest", "inputs": {"topic": "owls"}}),
        )
        .await;
    assert_eq!(r["outputs"]["answer"], "echo: Explain owls");

    let (st, s) = t
        .post("/api/skills/ask/versions/1/restore", json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s["latest_version"], 3);
    assert_eq!(
        s["graph"]["nodes"][1]["params"]["template"],
        "Tell me about {{topic}}"
    );

    let (st, file) = t.get("/api/skills/ask/export").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(file["easel_skill"], 1);
    let (st, e) = t.post("/api/skills/import", file.clone()).await;
    assert_eq!(st, StatusCode::CONFLICT, "the slug is taken: {e}");
    let mut copy = file.clone();
    copy["slug"] = json!("ask-copy");
    let (st, imported) = t.post("/api/skills/import", copy).await;
    assert_eq!(st, StatusCode::CREATED, "{imported}");
    assert_eq!(imported["graph"], file["graph"]);

    let (st, _) = t
        .send(reqwest::Method::DELETE, "/api/skills/ask", None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = t.get("/api/skills/ask").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    t.stop().await;
}

#[actix_web::test]
async fn the_white_background_template_makes_three_jpeg_sizes() {
    let t = setup().await;
    let (_, list) = t.get("/api/skills/templates").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    for id in [
        "product-alt-seo",
        "describe-and-tag",
        "white-background-sizes",
    ] {
        let (st, s) = t
            .post(&format!("/api/skills/templates/{id}"), json!({}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{s}");
        let (st, e) = t
            .post(&format!("/api/skills/{id}/publish"), json!({}))
            .await;
        assert_eq!(
            st,
            StatusCode::OK,
            "template {id} passes every check with the caller's models: {e}"
        );
    }
    let (st, r) = t
        .run(
            "white-background-sizes",
            json!({"inputs": {"photo": b64(&png(300, 200, true))}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "succeeded", "{r}");
    for (name, side) in [("large", 1600), ("medium", 800), ("small", 300)] {
        let o = &r["outputs"][name];
        assert_eq!(o["media_type"], "image/jpeg", "{name}");
        assert_eq!(
            (o["width"].clone(), o["height"].clone()),
            (json!(side), json!(side)),
            "{name}"
        );
    }
    let small = base64::engine::general_purpose::STANDARD
        .decode(r["outputs"]["small"]["b64_json"].as_str().unwrap())
        .unwrap();
    let img = image::load_from_memory(&small).unwrap().to_rgb8();
    let corner = img.get_pixel(2, 2).0;
    assert!(
        corner.iter().all(|c| *c > 240),
        "the canvas is white: {corner:?}"
    );

    let (_, r) = t
        .run(
            "product-alt-seo",
            json!({"inputs": {"photo": b64(&png(64, 64, false)), "product": "red shoe"}}),
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(
        r["outputs"]["alt_text"].as_str().unwrap().contains("SALE"),
        "{r}"
    );
    assert!(
        r["outputs"]["seo_title"]
            .as_str()
            .unwrap()
            .contains("Product: red shoe"),
        "{r}"
    );
    t.stop().await;
}

#[actix_web::test]
async fn bad_input_is_refused_clearly_and_no_run_is_recorded() {
    let t = setup().await;
    let mut g = ask_graph();
    g["nodes"]
        .as_array_mut()
        .unwrap()
        .push(node("photo", "input.image", json!({"name": "photo"})));
    g["nodes"]
        .as_array_mut()
        .unwrap()
        .push(node("p2", "output", json!({"name": "p2"})));
    g["edges"]
        .as_array_mut()
        .unwrap()
        .push(edge("photo.image", "p2.value"));
    t.publish("ask", g).await;
    let ok_png = b64(&png(8, 8, false));
    let loopback_png = format!("{}/files/x.png", t.mock.url("openai"));
    let cases = [
        (
            json!({"inputs": {"topic": "x", "photo": ok_png, "extra": 1}}),
            StatusCode::BAD_REQUEST,
            "unknown_input",
        ),
        (
            json!({"inputs": {"photo": ok_png}}),
            StatusCode::BAD_REQUEST,
            "missing_input",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": "%%%not base64"}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": b64(b"GIF89a broken")}}),
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": b64(&common::png_bomb(30000, 30000))}}),
            StatusCode::BAD_REQUEST,
            "invalid_image",
        ),
        (
            // A real PNG on 127.0.0.1: only the address guard keeps it out.
            json!({"inputs": {"topic": "x", "photo": loopback_png}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": {"asset_id": "nope"}}}),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": ok_png}, "max_credits": -1}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            json!({"inputs": {"topic": "x", "photo": ok_png}, "version": 9}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"inputs": {"topic": "x"}, "bogus": true}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (body, status, code) in cases {
        let (st, e) = t.run("ask", body.clone()).await;
        assert_eq!(
            (st, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {e}"
        );
    }
    let res = common::http()
        .post(t.s.url("/v1/skills/ask/run"))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (st, e) = t.run("nope", json!({})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (st, _) = t
        .post(
            "/api/skills",
            json!({"slug": "draft", "name": "D", "graph": ask_graph()}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, e) = t.run("draft", json!({"inputs": {"topic": "x"}})).await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("not_published"))
    );
    let (st, e) = t
        .post("/api/skills", json!({"slug": "Bad Slug", "name": "x"}))
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_field"))
    );
    let (_, runs) = t.get("/api/skills/ask/runs").await;
    assert_eq!(
        runs["data"],
        json!([]),
        "refused requests leave no run behind"
    );
    assert_eq!(
        t.mock.calls("openai"),
        0,
        "neither the model nor the loopback image was reached"
    );
    // Another account sees none of it.
    let (_, other) = t.s.member_with_key("bob@example.com", PASSWORD).await;
    let res = common::http()
        .get(t.s.url("/api/skills/ask"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    t.stop().await;
}

#[actix_web::test]
async fn mcp_refuses_foreign_hosts_and_origins_and_announces_tool_changes() {
    let t = setup().await;
    let rpc =
        |id: u32, method: &str| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}});
    let post = |headers: Vec<(&'static str, &'static str)>, body: Value| {
        let mut req = common::http()
            .post(t.s.url("/mcp"))
            .bearer_auth(&t.key)
            .json(&body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let res = post(vec![("origin", "http://evil.example")], rpc(1, "ping"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = post(vec![("host", "evil.example")], rpc(1, "ping"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = common::http()
        .post(t.s.url("/mcp"))
        .json(&rpc(1, "ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "an API key is needed"
    );

    let res = post(vec![], json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let session = res.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let init: Value = res.json().await.unwrap();
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    let stream = common::http()
        .get(t.s.url("/mcp"))
        .bearer_auth(&t.key)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let mut stream = stream.bytes_stream();
    t.publish("ask", ask_graph()).await;
    let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a notification came")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&got).contains("notifications/tools/list_changed"),
        "{got:?}"
    );
    let res = common::http()
        .post(t.s.url("/mcp"))
        .bearer_auth(&t.key)
        .header("mcp-session-id", "not-a-session")
        .json(&rpc(2, "tools/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "an unknown session must initialize again"
    );
    // Only published skills are tools.
    let (st, _) = t
        .post(
            "/api/skills",
            json!({"slug": "draft", "name": "Draft", "graph": ask_graph()}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    for name in ["draft", "nope"] {
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": name, "arguments": {"topic": "x"}}});
        let res = common::http()
            .post(t.s.url("/mcp"))
            .bearer_auth(&t.key)
            .header("mcp-session-id", &session)
            .json(&call)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], -32602, "{name}: {body}");
    }
    // Ending the session ends its event stream.
    let res = common::http()
        .delete(t.s.url("/mcp"))
        .bearer_auth(&t.key)
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ended");
    assert!(end.is_none(), "{end:?}");
    t.stop().await;
}

/// The official `mcp` Python package (installed by `.ci/run`) initializes, lists the
/// tools and calls a skill and alt text. Without it the test says so and passes,
/// unless `EASEL_REQUIRE_CLIENTS` is set, as in CI.
#[actix_web::test]
async fn the_official_mcp_python_client_lists_and_calls_skills() {
    let t = setup().await;
    let mut g = ask_graph();
    g["nodes"][0]["params"]["description"] = json!("What to ask about");
    t.publish("ask", g).await;
    let env = vec![
        ("EASEL_BASE", t.s.base.clone()),
        ("EASEL_KEY", t.key.clone()),
        ("EASEL_SKILL", "ask".to_string()),
        ("EASEL_PNG", b64(&png(32, 32, false))),
    ];
    if !common::python_client("mcp", "mcp_client.py", env).await {
        return;
    }
    let (_, runs) = t.get("/api/skills/ask/runs").await;
    assert_eq!(runs["data"][0]["via"], "mcp", "{runs}");
    t.stop().await;
}

#[actix_web::test]
async fn the_export_holds_skills_and_runs_and_erasure_removes_them() {
    use std::io::Read;
    let t = setup().await;
    t.publish("ask", ask_graph()).await;
    let (_, r) = t
        .run("ask", json!({"inputs": {"topic": "secret-topic"}}))
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ada = common::api::Browser::login(&t.s, "ada@example.com", PASSWORD).await;
    let (status, bytes) = ada.export(&t.s, "/api/privacy/export").await;
    assert_eq!(status, StatusCode::OK);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    let mut read = |name: &str| {
        let mut s = String::new();
        zip.by_name(name)
            .expect(name)
            .read_to_string(&mut s)
            .expect("read");
        s
    };
    let versions = read("skills.jsonl");
    let v: Value = serde_json::from_str(versions.trim()).expect("one version");
    assert_eq!(
        v["graph"]["nodes"][1]["params"]["template"],
        "Tell me about {{topic}}"
    );
    let runs = read("skill_runs.jsonl");
    let run: Value = serde_json::from_str(runs.trim()).expect("one run");
    assert_eq!(run["skill"], "ask");
    assert!(!runs.contains("secret-topic"), "no input is kept: {runs}");

    t.s.make_account("root@example.com", easel::auth::Role::Admin, PASSWORD)
        .await;
    let admin = common::api::Browser::login(&t.s, "root@example.com", PASSWORD).await;
    let a = admin
        .send(
            &t.s,
            reqwest::Method::POST,
            &format!("/api/admin/users/{}/deletion", t.account),
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    t.s.clock.advance(Duration::from_secs(31 * 86_400));
    let done =
        t.s.app()
            .privacy()
            .run(easel::privacy::Job::DeletionRequests)
            .await
            .expect("runs");
    assert!(done.ok, "{done:?}");
    // The skill, its version and its run.
    assert_eq!(done.counts.get("skills").copied(), Some(3), "{done:?}");
    let left =
        t.s.app()
            .store()
            .read({
                let a = t.account.clone();
                move |r| easel::skills::count_of(r, &a)
            })
            .await
            .expect("count");
    assert_eq!(left, 0);
    t.stop().await;
}

#[actix_web::test]
async fn an_image_edit_node_sends_the_photo_to_the_provider_and_returns_the_edit() {
    let t = setup().await;
    let graph = json!({"nodes": [
        node("photo", "input.image", json!({"name": "photo"})),
        node("what", "input.text", json!({"name": "what"})),
        node("prompt", "template", json!({"template": "Put the product on {{what}}"})),
        node("edit", "image.edit", json!({"model": "dalle-test", "size": "256x256"})),
        node("out", "output", json!({"name": "edited"})),
    ], "edges": [
        edge("photo.image", "edit.image"), edge("what.text", "prompt.what"),
        edge("prompt.text", "edit.prompt"), edge("edit.image", "out.value"),
    ]});
    // The edit node checks like the others: its prompt and image must be connected,
    // and its model must make images.
    let mut broken = graph.clone();
    broken["edges"] = json!([edge("prompt.text", "edit.prompt")]);
    broken["nodes"][3]["params"]["model"] = json!("solo");
    let (_, r) = t.post("/api/skills/check", json!({"graph": broken})).await;
    let problems = r["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["node"] == "edit" && p["port"] == "image" && p["code"] == "unconnected"),
        "{r}"
    );
    assert!(
        problems.iter().any(|p| p["node"] == "edit"
            && p["param"] == "model"
            && p["code"] == "model_not_capable"),
        "{r}"
    );

    t.publish("restage", graph).await;
    let photo = png(64, 48, false);
    let before = t.balance().await;
    let (st, r) = t
        .run(
            "restage",
            json!({"inputs": {"photo": b64(&photo), "what": "white marble"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["outputs"]["edited"]["media_type"], "image/png");
    assert_eq!(r["outputs"]["edited"]["b64_json"], common::mock::PNG_B64);
    let call = t
        .mock
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/images/edits"))
        .expect("the provider was asked to edit");
    assert_eq!(
        call.body["fields"]["prompt"],
        "Put the product on white marble"
    );
    assert_eq!(call.body["fields"]["model"], "dall-e-up");
    assert_eq!(call.body["fields"]["size"], "256x256");
    assert_eq!(
        call.body["files"]["image"]["bytes"].as_u64(),
        Some(photo.len() as u64)
    );
    assert_eq!(call.body["files"]["image"]["magic_png"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.balance().await < before, "the edit was charged");
    t.stop().await;
}
