//! The engine: runs a checked graph. Steps whose inputs are all there run at once, each
//! on its own task (so independent branches overlap, up to `[skills] max_parallel`),
//! under a timeout, with the run's credit budget held before each paid call and a
//! cancel signal that stops everything under way. Values between steps stay in
//! memory; what is kept of a run is only its [`Outcome`]'s metadata.

use super::graph::PortType;
use super::nodes::{self, Inputs, Op, Outputs, Plan};
use crate::alt_text::AltText;
use crate::auth::Caller;
use crate::gateway::{Gateway, NodeSpend, RunBudget, SPEND};
use crate::http::ApiError;
use crate::imaging::Limits;
use crate::library::Library;
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// An image between steps: its encoded bytes and what they hold.
#[derive(Clone, Debug)]
pub struct Img {
    pub bytes: Bytes,
    pub media_type: String,
    pub width: u32,
    pub height: u32,
}

impl Img {
    /// Checks and measures an image (decoded under `limits`, so a hostile file is
    /// refused here and not deep inside a step).
    pub fn from_bytes(bytes: Vec<u8>, limits: Limits) -> Result<Img, ApiError> {
        let intake = crate::imaging::decode(&bytes, limits)
            .map_err(|e| ApiError::bad_request("invalid_image", e.to_string()))?;
        Ok(Img {
            media_type: intake.format.media_type().to_string(),
            width: intake.image.width(),
            height: intake.image.height(),
            bytes: bytes.into(),
        })
    }

    /// The image as a `data:` URI.
    pub fn data_uri(&self) -> String {
        crate::imaging::data_uri(&self.media_type, &self.bytes)
    }

    fn to_json(&self) -> Value {
        json!({"media_type": self.media_type, "width": self.width, "height": self.height,
            "b64_json": base64::engine::general_purpose::STANDARD.encode(&self.bytes)})
    }
}

/// A value between steps.
#[derive(Clone, Debug)]
pub enum Data {
    Text(String),
    Number(f64),
    Json(Value),
    Image(Img),
    Images(Vec<Img>),
}

impl Data {
    /// The value as text (JSON for anything but text and numbers).
    pub fn as_text(&self) -> String {
        match self {
            Data::Text(t) => t.clone(),
            Data::Number(n) => format_number(*n),
            Data::Json(Value::String(s)) => s.clone(),
            Data::Json(v) => v.to_string(),
            Data::Image(i) => format!("[image {}x{}]", i.width, i.height),
            Data::Images(l) => format!("[{} images]", l.len()),
        }
    }

    /// The value as a run's output shows it.
    pub fn to_json(&self) -> Value {
        match self {
            Data::Text(t) => Value::String(t.clone()),
            Data::Number(n) => json!(n),
            Data::Json(v) => v.clone(),
            Data::Image(i) => i.to_json(),
            Data::Images(l) => Value::Array(l.iter().map(Img::to_json).collect()),
        }
    }

    /// A short view for progress events.
    fn preview(&self) -> String {
        let t = self.as_text();
        if t.chars().count() > 300 {
            let mut s: String = t.chars().take(300).collect();
            s.push('…');
            s
        } else {
            t
        }
    }

    /// Converts a value for a port of type `to` (see [`PortType::accepts`]).
    fn into_port(self, to: PortType) -> Result<Data, ApiError> {
        Ok(match (self, to) {
            (Data::Image(i), PortType::Images) => Data::Images(vec![i]),
            (Data::Number(n), PortType::Text) => Data::Text(format_number(n)),
            (Data::Json(v), PortType::Text) => Data::Text(match v {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            (Data::Number(n), PortType::Json) => Data::Json(json!(n)),
            (Data::Text(t), PortType::Json) => Data::Json(parse_json_text(&t)?),
            (d, _) => d,
        })
    }
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Parses text as JSON, as models write it: possibly inside a ``` fence.
fn parse_json_text(t: &str) -> Result<Value, ApiError> {
    let mut s = t.trim();
    if let Some(rest) = s.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        s = rest.trim().trim_end_matches("```").trim();
    }
    serde_json::from_str(s).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the text is not JSON ({e}); ask the model for JSON only"),
        )
    })
}

/// What every step of one run shares.
pub struct Ctx {
    pub caller: Caller,
    pub gateway: Gateway,
    pub alt_text: AltText,
    pub library: Library,
    /// The skill's slug and the run's id (a saved asset names both).
    pub skill: String,
    pub run: String,
    pub limits: Limits,
    pub node_timeout: Duration,
    pub max_parallel: usize,
}

/// An error as a run shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

impl From<&ApiError> for ErrorView {
    fn from(e: &ApiError) -> Self {
        ErrorView {
            code: e.code.to_string(),
            message: e.message.to_string(),
        }
    }
}

/// A progress event (sent as a server-sent event named after its kind).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    NodeStarted {
        node: String,
        #[serde(rename = "type")]
        kind: &'static str,
        /// Milliseconds since the run started.
        at_ms: u64,
    },
    NodeFinished {
        node: String,
        ms: u64,
        credits: f64,
        /// The start of each output, as text.
        preview: Map<String, Value>,
    },
    NodeFailed {
        node: String,
        ms: u64,
        credits: f64,
        error: ErrorView,
    },
    NodeSkipped {
        node: String,
        reason: &'static str,
    },
}

impl Event {
    /// The event's name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::NodeStarted { .. } => "node_started",
            Event::NodeFinished { .. } => "node_finished",
            Event::NodeFailed { .. } => "node_failed",
            Event::NodeSkipped { .. } => "node_skipped",
        }
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Succeeded,
    Failed,
    /// Never ran: an input failed, or the run stopped first.
    Skipped,
    /// Stopped while running (cancelled, or the run's budget ran out elsewhere).
    Cancelled,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    /// A step failed; the outputs that could be made are there.
    Failed,
    Cancelled,
    /// A paid step would have gone over the run's `max_credits`.
    BudgetExceeded,
}

/// One step's part in a run.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub id: String,
    pub kind: &'static str,
    pub status: Option<NodeStatus>,
    pub ms: u64,
    pub credits: i64,
    pub error: Option<ErrorView>,
}

/// What a run made and how each step went.
pub struct Outcome {
    pub status: RunStatus,
    pub outputs: Map<String, Value>,
    pub nodes: Vec<NodeReport>,
    pub credits: i64,
    pub ms: u64,
}

/// Waits until `rx` says stop (never, once its sender is gone).
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

type Finished = (Result<Outputs, ApiError>, u64, i64);

struct Run<'a> {
    plan: &'a Plan,
    outs: Vec<Option<Arc<Outputs>>>,
    waiting: Vec<usize>,
    ready: VecDeque<usize>,
    nodes: Vec<NodeReport>,
    outputs: Map<String, Value>,
    events: Option<mpsc::UnboundedSender<Event>>,
    stop: Option<RunStatus>,
    start: Instant,
    /// Steps under way on their own tasks, and which step each task runs.
    set: JoinSet<Finished>,
    running: HashMap<tokio::task::Id, usize>,
}

impl Run<'_> {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    fn gather(&self, i: usize) -> Result<Inputs, ApiError> {
        let mut list = Vec::with_capacity(self.plan.steps[i].slots.len());
        for slot in &self.plan.steps[i].slots {
            let mut values = Vec::with_capacity(slot.sources.len());
            for (src, port, _) in &slot.sources {
                let d = self.outs[*src]
                    .as_ref()
                    .and_then(|o| o.iter().find(|(p, _)| p == port))
                    .map(|(_, d)| d.clone())
                    .ok_or_else(|| ApiError::internal("a step ran before its input was made"))?;
                values.push(d.into_port(slot.ty)?);
            }
            list.push((slot.port.clone(), values));
        }
        Ok(Inputs(list))
    }

    fn finish(&mut self, i: usize, result: Result<Outputs, ApiError>, ms: u64, credits: i64) {
        let id = self.plan.steps[i].id.clone();
        let r = &mut self.nodes[i];
        r.ms = ms;
        r.credits = credits;
        match result {
            Ok(outs) => {
                r.status = Some(NodeStatus::Succeeded);
                if self.events.is_some() {
                    let preview = outs
                        .iter()
                        .map(|(p, d)| ((*p).to_string(), Value::String(d.preview())))
                        .collect();
                    self.emit(Event::NodeFinished {
                        node: id,
                        ms,
                        credits: crate::ledger::to_credits(credits),
                        preview,
                    });
                }
                self.outs[i] = Some(Arc::new(outs));
                for &d in &self.plan.dependents[i] {
                    self.waiting[d] -= 1;
                    if self.waiting[d] == 0 {
                        self.ready.push_back(d);
                    }
                }
            }
            Err(e) => {
                r.status = Some(NodeStatus::Failed);
                let view = ErrorView::from(&e);
                r.error = Some(view.clone());
                if e.code == "budget_exceeded" {
                    self.stop.get_or_insert(RunStatus::BudgetExceeded);
                }
                self.emit(Event::NodeFailed {
                    node: id,
                    ms,
                    credits: crate::ledger::to_credits(credits),
                    error: view,
                });
            }
        }
    }

    /// Starts step `i`: steps that finish at once finish here; the rest go to `set`.
    fn launch(
        &mut self,
        i: usize,
        plan: &Arc<Plan>,
        ctx: &Arc<Ctx>,
        given: &HashMap<String, Data>,
        budget: &Arc<RunBudget>,
    ) {
        let step = &self.plan.steps[i];
        self.emit(Event::NodeStarted {
            node: step.id.clone(),
            kind: step.kind,
            at_ms: self.start.elapsed().as_millis() as u64,
        });
        let inputs = match self.gather(i) {
            Ok(x) => x,
            Err(e) => return self.finish(i, Err(e), 0, 0),
        };
        let result = match &step.op {
            Op::InputText { name, default } => {
                let v = given
                    .get(name)
                    .cloned()
                    .or_else(|| default.clone().map(Data::Text));
                v.map(|d| vec![("text", d)]).ok_or_else(|| {
                    ApiError::bad_request("missing_input", format!("input `{name}` is missing"))
                })
            }
            Op::InputNumber { name, default, .. } => given
                .get(name)
                .cloned()
                .or_else(|| default.map(Data::Number))
                .map(|d| vec![("number", d)])
                .ok_or_else(|| {
                    ApiError::bad_request("missing_input", format!("input `{name}` is missing"))
                }),
            Op::InputImage { name } => given
                .get(name)
                .cloned()
                .map(|d| vec![("image", d)])
                .ok_or_else(|| {
                    ApiError::bad_request("missing_input", format!("input `{name}` is missing"))
                }),
            Op::Output { name } => {
                if let Some(d) = inputs.0.first().and_then(|(_, v)| v.first()) {
                    self.outputs.insert(name.clone(), d.to_json());
                }
                Ok(Vec::new())
            }
            op if nodes::inline(op) => {
                let t = Instant::now();
                let r = nodes::run_inline(op, &inputs);
                return self.finish(i, r, t.elapsed().as_millis() as u64, 0);
            }
            _ => {
                let spend = Arc::new(NodeSpend::new(budget.clone()));
                let (plan, ctx) = (plan.clone(), ctx.clone());
                let timeout = step.timeout.unwrap_or(ctx.node_timeout);
                let task = SPEND.scope(spend.clone(), async move {
                    let t = Instant::now();
                    let step = &plan.steps[i];
                    let r = match tokio::time::timeout(timeout, nodes::run(&step.op, inputs, &ctx)).await {
                        Ok(r) => r,
                        Err(_) => Err(ApiError::new(
                            actix_web::http::StatusCode::GATEWAY_TIMEOUT,
                            "node_timeout",
                            format!(
                                "the step took longer than its timeout of {} s; raise the node's timeout_s or [skills] node_timeout",
                                timeout.as_secs_f64()
                            ),
                        )),
                    };
                    (r, t.elapsed().as_millis() as u64, spend.charged())
                });
                let handle = self.set.spawn(task);
                self.running.insert(handle.id(), i);
                return;
            }
        };
        self.finish(i, result, 0, 0);
    }
}

/// Runs `plan` with the caller's values (by input name) to the end, a failure, the
/// budget or `cancel`, sending progress to `events`.
pub async fn execute(
    plan: Arc<Plan>,
    ctx: Arc<Ctx>,
    given: HashMap<String, Data>,
    budget: Arc<RunBudget>,
    events: Option<mpsc::UnboundedSender<Event>>,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let n = plan.steps.len();
    let mut waiting = vec![0usize; n];
    for deps in &plan.dependents {
        for &d in deps {
            waiting[d] += 1;
        }
    }
    let mut run = Run {
        plan: &plan,
        outs: vec![None; n],
        ready: (0..n).filter(|&i| waiting[i] == 0).collect(),
        waiting,
        nodes: plan
            .steps
            .iter()
            .map(|s| NodeReport {
                id: s.id.clone(),
                kind: s.kind,
                status: None,
                ms: 0,
                credits: 0,
                error: None,
            })
            .collect(),
        outputs: Map::new(),
        events,
        stop: None,
        start: Instant::now(),
        set: JoinSet::new(),
        running: HashMap::new(),
    };
    let max_parallel = ctx.max_parallel.max(1);
    loop {
        while run.stop.is_none() && run.running.len() < max_parallel {
            let Some(i) = run.ready.pop_front() else {
                break;
            };
            run.launch(i, &plan, &ctx, &given, &budget);
        }
        if run.running.is_empty() && (run.ready.is_empty() || run.stop.is_some()) {
            break;
        }
        if run.stop.is_some() {
            run.set.abort_all();
        }
        tokio::select! {
            biased;
            () = cancelled(&mut cancel), if run.stop.is_none() => {
                run.stop = Some(RunStatus::Cancelled);
                run.set.abort_all();
            }
            joined = run.set.join_next_with_id() => match joined {
                Some(Ok((id, (result, ms, credits)))) => {
                    if let Some(i) = run.running.remove(&id) {
                        run.finish(i, result, ms, credits);
                    }
                }
                Some(Err(e)) => {
                    if let Some(i) = run.running.remove(&e.id()) {
                        if e.is_cancelled() {
                            run.nodes[i].status = Some(NodeStatus::Cancelled);
                            run.nodes[i].ms = 0;
                        } else {
                            run.finish(i, Err(ApiError::internal(format!("a step crashed: {e}"))), 0, 0);
                        }
                    }
                }
                None => {}
            }
        }
    }
    let stopped = run.stop.is_some();
    for i in 0..n {
        if run.nodes[i].status.is_none() {
            run.nodes[i].status = Some(NodeStatus::Skipped);
            let reason = if stopped {
                "the run stopped first"
            } else {
                "an input of it failed"
            };
            run.emit(Event::NodeSkipped {
                node: run.nodes[i].id.clone(),
                reason,
            });
        }
    }
    let failed = run
        .nodes
        .iter()
        .any(|r| r.status == Some(NodeStatus::Failed));
    let status = match run.stop {
        Some(s) => s,
        None if failed => RunStatus::Failed,
        None => RunStatus::Succeeded,
    };
    Outcome {
        status,
        outputs: run.outputs,
        credits: budget.charged(),
        ms: run.start.elapsed().as_millis() as u64,
        nodes: run.nodes,
    }
}
