//! Skills (data class `skills`): node-graph workflows that people build in the browser
//! and agents call, over HTTP or MCP.
//!
//! A skill has a slug (fixed at creation: agents call it by that name), a name, a
//! description and a graph. Each save with a changed graph is a new version; one
//! version may be published, and that is what `/v1/skills/{slug}/run` and MCP run.
//! Any version can be restored (as a new version) or run by number.
//!
//! A run keeps its values in memory only. What is stored is its metadata
//! ([`RunRecord`]): the version, each node's status, time and credits, and the error
//! code of a failed node, never a prompt, an input or an output. Only the
//! `library.save` node keeps anything a run makes, in the caller's library.

pub mod engine;
pub mod graph;
mod imageops;
pub mod mcp;
pub mod nodes;
mod routes;
pub mod templates;

pub use routes::routes;

use crate::alt_text::AltText;
use crate::auth::Caller;
use crate::config::{Capability, Live};
use crate::gateway::{Gateway, RunBudget};
use crate::http::ApiError;
use crate::imaging::Limits;
use crate::library::Library;
use crate::store::{Class, Decl, ReadTx, Reader, Store, StoreError, Table, TimedKey, now_ms};
use actix_web::http::StatusCode;
use engine::{Ctx, Data, Img, NodeStatus, Outcome, RunStatus};
use graph::{Graph, PortType, Problem};
use nodes::{Op, Plan};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, watch};

/// Skills, keyed `account / slug`.
const SKILLS: Table<Vec<u8>, Skill> = Table::new("skills", Class::Skills);
/// Versions, keyed `account / slug / version (u32, big-endian)`.
const VERSIONS: Table<Vec<u8>, Version> = Table::new("skill_versions", Class::Skills);
/// Run metadata, keyed `account / slug / time / random` (a [`TimedKey`] of
/// `account/slug`).
const RUNS: Table<Vec<u8>, RunRecord> = Table::new("skill_runs", Class::Skills);

/// The tables of this capability and their classes.
pub const TABLES: [Decl; 3] = [SKILLS.decl(), VERSIONS.decl(), RUNS.decl()];

/// The longest skill name and description.
const MAX_NAME: usize = 100;
const MAX_DESCRIPTION: usize = 2000;
/// The largest graph, as JSON.
const MAX_GRAPH_BYTES: usize = 1 << 20;
/// The longest slug.
const MAX_SLUG: usize = 48;

/// A skill.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skill {
    pub slug: String,
    pub name: String,
    pub description: String,
    /// The newest version.
    pub latest: u32,
    /// The version agents run, if one is published.
    pub published: Option<u32>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// One saved version of a skill's graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub n: u32,
    /// The graph as JSON (the store's codec cannot hold free-form JSON values).
    pub graph: String,
    pub note: String,
    pub created_ms: u64,
}

impl Version {
    /// The graph.
    pub fn graph(&self) -> Result<Graph, SkillsError> {
        serde_json::from_str(&self.graph).map_err(|e| {
            SkillsError::Store(StoreError::Corrupt {
                table: VERSIONS.name().into(),
                message: e.to_string(),
            })
        })
    }
}

/// What is kept of one run: no input, prompt or output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub skill: String,
    pub version: u32,
    pub status: RunStatus,
    /// `api`, `mcp` or `editor`.
    pub via: String,
    pub started_ms: u64,
    pub ms: u64,
    /// Micro-credits.
    pub credits: i64,
    pub nodes: Vec<NodeRun>,
}

/// One node's part in a stored run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRun {
    pub id: String,
    pub kind: String,
    pub status: NodeStatus,
    pub ms: u64,
    pub credits: i64,
    /// The error code of a failed node (its message is not kept: it may quote input).
    pub error: Option<String>,
}

/// Why a skills request failed.
#[derive(Debug, thiserror::Error)]
pub enum SkillsError {
    #[error("no skill `{0}`; GET /api/skills lists yours")]
    NotFound(String),
    #[error("skill `{0}` has no version {1}")]
    NoVersion(String, u32),
    #[error("a skill called `{0}` exists already; pick another slug")]
    Taken(String),
    #[error("skill `{0}` has no published version; publish one, or pass `version`")]
    NotPublished(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the graph has {} problem(s); the first: {}", .0.len(), .0.first().map_or("", |p| p.message.as_str()))]
    Graph(Vec<Problem>),
    #[error("no run `{0}` is under way")]
    NoRun(String),
    #[error("{0}")]
    Api(ApiError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<ApiError> for SkillsError {
    fn from(e: ApiError) -> Self {
        SkillsError::Api(e)
    }
}

impl From<SkillsError> for ApiError {
    fn from(e: SkillsError) -> ApiError {
        let msg = e.to_string();
        match e {
            SkillsError::NotFound(_) | SkillsError::NoVersion(..) | SkillsError::NoRun(_) => {
                ApiError::not_found(msg)
            }
            SkillsError::Taken(_) => ApiError::conflict("slug_taken", msg),
            SkillsError::NotPublished(_) => ApiError::conflict("not_published", msg),
            SkillsError::Invalid(_) => ApiError::bad_request("invalid_field", msg),
            SkillsError::Graph(problems) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_graph", msg)
                    .with_problems(serde_json::to_value(problems).unwrap_or_default())
            }
            SkillsError::Api(e) => e,
            SkillsError::Store(e) => e.into(),
        }
    }
}

fn skill_key(account: &str, slug: &str) -> Vec<u8> {
    let mut k = TimedKey::prefix(account);
    k.extend_from_slice(slug.as_bytes());
    k
}

fn version_prefix(account: &str, slug: &str) -> Vec<u8> {
    let mut k = skill_key(account, slug);
    k.push(b'/');
    k
}

fn version_key(account: &str, slug: &str, n: u32) -> Vec<u8> {
    let mut k = version_prefix(account, slug);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn runs_owner(account: &str, slug: &str) -> String {
    format!("{account}/{slug}")
}

/// Whether `slug` may name a skill: lowercase letters, digits and `-`.
pub fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= MAX_SLUG
        && slug
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A slug made from a name.
pub fn slugify(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
        if s.len() >= MAX_SLUG {
            break;
        }
    }
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "skill".into() } else { s }
}

/// A new skill.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// Lowercase letters, digits and `-`; made from the name when left out.
    #[serde(default)]
    pub slug: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub graph: Graph,
}

/// A change to a skill: a changed graph makes a new version.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub graph: Option<Graph>,
    /// A note on the new version.
    #[serde(default)]
    pub note: Option<String>,
}

fn check_text(name: &str, description: &str) -> Result<(), SkillsError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME {
        return Err(SkillsError::Invalid(format!(
            "`name` must be 1 to {MAX_NAME} characters"
        )));
    }
    if description.chars().count() > MAX_DESCRIPTION {
        return Err(SkillsError::Invalid(format!(
            "`description` is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(())
}

fn graph_json(g: &Graph) -> Result<String, SkillsError> {
    let s = serde_json::to_string(g).map_err(|e| SkillsError::Invalid(e.to_string()))?;
    if s.len() > MAX_GRAPH_BYTES {
        return Err(SkillsError::Invalid(format!(
            "the graph is larger than {MAX_GRAPH_BYTES} bytes as JSON"
        )));
    }
    Ok(s)
}

/// Which version a run uses.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Which {
    /// A version number.
    Number(u32),
    /// `published` (the default) or `latest`.
    Named(String),
}

/// `POST /v1/skills/{slug}/run`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Values by input name; images as base64, a `data:` URI, an http(s) URL or
    /// `{"asset_id": "..."}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub inputs: Map<String, Value>,
    /// `published` (default), `latest`, or a version number.
    #[serde(default)]
    pub version: Option<Which>,
    /// The most credits this run may spend; each paid node's largest possible cost is
    /// held against it before the node starts.
    #[serde(default)]
    pub max_credits: Option<f64>,
    /// Answer with server-sent progress events instead of waiting.
    #[serde(default)]
    pub stream: bool,
}

/// A run under way that can be cancelled.
struct Active {
    account: String,
    cancel: watch::Sender<bool>,
}

/// The skills service; cheap to clone.
#[derive(Clone)]
pub struct Skills {
    store: Store,
    gateway: Gateway,
    alt_text: AltText,
    library: Library,
    live: Arc<Live>,
    runs: Arc<Mutex<HashMap<String, Active>>>,
    /// The account whose published skills changed (MCP tells its clients).
    changes: broadcast::Sender<String>,
}

/// A run about to start: its id and the future that runs it to the end.
pub struct Started {
    pub id: String,
    pub skill: Skill,
    pub version: u32,
    pub run: std::pin::Pin<Box<dyn std::future::Future<Output = RunResult> + Send>>,
}

/// A finished run as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub id: String,
    pub skill: String,
    pub version: u32,
    pub status: RunStatus,
    pub outputs: Map<String, Value>,
    pub nodes: Vec<NodeResult>,
    pub credits: f64,
    pub ms: u64,
}

/// One node of a finished run.
#[derive(Clone, Debug, Serialize)]
pub struct NodeResult {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: NodeStatus,
    pub ms: u64,
    pub credits: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<engine::ErrorView>,
}

impl Skills {
    /// The service over its parts.
    pub fn new(
        store: Store,
        gateway: Gateway,
        alt_text: AltText,
        library: Library,
        live: Arc<Live>,
    ) -> Skills {
        Skills {
            store,
            gateway,
            alt_text,
            library,
            live,
            runs: Arc::default(),
            changes: broadcast::channel(64).0,
        }
    }

    /// Accounts whose published skills change, as they do.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    fn changed(&self, account: &str) {
        let _ = self.changes.send(account.to_string());
    }

    /// The account's skills, by slug.
    pub async fn list(&self, account: &str) -> Result<Vec<Skill>, SkillsError> {
        let prefix = TimedKey::prefix(account);
        let rows = self
            .store
            .read(move |r| r.scan_prefix(&SKILLS, &prefix, usize::MAX))
            .await?;
        Ok(rows.into_iter().map(|(_, s)| s).collect())
    }

    /// A skill's record alone.
    async fn skill(&self, account: &str, slug: &str) -> Result<Skill, SkillsError> {
        let key = skill_key(account, slug);
        self.store
            .read(move |r| r.get(&SKILLS, &key))
            .await?
            .ok_or_else(|| SkillsError::NotFound(slug.into()))
    }

    /// A skill and one version of it (the newest when `n` is `None`).
    pub async fn get(
        &self,
        account: &str,
        slug: &str,
        n: Option<u32>,
    ) -> Result<(Skill, Version), SkillsError> {
        let (a, s) = (account.to_string(), slug.to_string());
        let found = self
            .store
            .read(move |r| -> Result<_, StoreError> {
                let Some(skill) = r.get(&SKILLS, &skill_key(&a, &s))? else {
                    return Ok(None);
                };
                let n = n.unwrap_or(skill.latest);
                let v = r.get(&VERSIONS, &version_key(&a, &s, n))?;
                Ok(Some((skill, n, v)))
            })
            .await?;
        match found {
            None => Err(SkillsError::NotFound(slug.into())),
            Some((_, n, None)) => Err(SkillsError::NoVersion(slug.into(), n)),
            Some((skill, _, Some(v))) => Ok((skill, v)),
        }
    }

    /// Creates a skill with its first version.
    pub async fn create(&self, account: &str, d: Draft) -> Result<Skill, SkillsError> {
        check_text(&d.name, &d.description)?;
        let slug = match d.slug {
            Some(s) if valid_slug(&s) => s,
            Some(s) => {
                return Err(SkillsError::Invalid(format!(
                    "slug `{}` must be 1 to {MAX_SLUG} lowercase letters, digits or -",
                    s.chars().take(60).collect::<String>()
                )));
            }
            None => slugify(&d.name),
        };
        let graph = graph_json(&d.graph)?;
        let now = now_ms();
        let skill = Skill {
            slug: slug.clone(),
            name: d.name.trim().to_string(),
            description: d.description.trim().to_string(),
            latest: 1,
            published: None,
            created_ms: now,
            updated_ms: now,
        };
        let version = Version {
            n: 1,
            graph,
            note: "created".into(),
            created_ms: now,
        };
        let (a, s2) = (account.to_string(), skill.clone());
        self.store
            .write(move |tx| {
                let key = skill_key(&a, &s2.slug);
                if tx.get(&SKILLS, &key)?.is_some() {
                    return Ok(Err(SkillsError::Taken(s2.slug.clone())));
                }
                tx.insert(&SKILLS, &key, &s2)?;
                tx.insert(&VERSIONS, &version_key(&a, &s2.slug, 1), &version)?;
                Ok::<_, StoreError>(Ok(()))
            })
            .await??;
        Ok(skill)
    }

    /// Renames, describes or saves a new graph (a new version when it changed).
    pub async fn save(&self, account: &str, slug: &str, c: Change) -> Result<Skill, SkillsError> {
        let graph = c.graph.as_ref().map(graph_json).transpose()?;
        let (a, s) = (account.to_string(), slug.to_string());
        let note = c
            .note
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect::<String>();
        let out = self
            .update(account, slug, move |tx, skill| {
                if let Some(n) = &c.name {
                    skill.name = n.trim().to_string();
                }
                if let Some(d) = &c.description {
                    skill.description = d.trim().to_string();
                }
                if let Err(e) = check_text(&skill.name, &skill.description) {
                    return Ok(Err(e));
                }
                if let Some(g) = &graph {
                    let latest = tx.get(&VERSIONS, &version_key(&a, &s, skill.latest))?;
                    if latest.is_none_or(|v| &v.graph != g) {
                        skill.latest += 1;
                        let v = Version {
                            n: skill.latest,
                            graph: g.clone(),
                            note: note.clone(),
                            created_ms: now_ms(),
                        };
                        tx.insert(&VERSIONS, &version_key(&a, &s, skill.latest), &v)?;
                    }
                }
                Ok(Ok(()))
            })
            .await?;
        if out.published.is_some() {
            self.changed(account);
        }
        Ok(out)
    }

    /// Changes a skill in one write: `edit` changes it (and may write beside it, or
    /// refuse); it is saved with a new `updated_ms`.
    async fn update<F>(&self, account: &str, slug: &str, edit: F) -> Result<Skill, SkillsError>
    where
        F: Fn(
                &crate::store::WriteTx<'_>,
                &mut Skill,
            ) -> Result<Result<(), SkillsError>, StoreError>
            + Send
            + 'static,
    {
        let (a, s) = (account.to_string(), slug.to_string());
        self.store
            .write(move |tx| {
                let key = skill_key(&a, &s);
                let Some(mut skill) = tx.get(&SKILLS, &key)? else {
                    return Ok(Err(SkillsError::NotFound(s.clone())));
                };
                if let Err(e) = edit(tx, &mut skill)? {
                    return Ok(Err(e));
                }
                skill.updated_ms = now_ms();
                tx.insert(&SKILLS, &key, &skill)?;
                Ok::<_, StoreError>(Ok(skill))
            })
            .await?
    }

    /// Deletes a skill with its versions and run records.
    pub async fn delete(&self, account: &str, slug: &str) -> Result<(), SkillsError> {
        let (a, s) = (account.to_string(), slug.to_string());
        let found = self
            .store
            .write(move |tx| {
                if !tx.remove(&SKILLS, &skill_key(&a, &s))? {
                    return Ok(false);
                }
                tx.remove_prefix(&VERSIONS, &version_prefix(&a, &s), usize::MAX)?;
                tx.remove_prefix(&RUNS, &TimedKey::prefix(&runs_owner(&a, &s)), usize::MAX)?;
                Ok::<_, StoreError>(true)
            })
            .await?;
        if !found {
            return Err(SkillsError::NotFound(slug.into()));
        }
        self.changed(account);
        Ok(())
    }

    /// Every version of a skill, newest first.
    pub async fn versions(
        &self,
        account: &str,
        slug: &str,
    ) -> Result<(Skill, Vec<Version>), SkillsError> {
        let (a, s) = (account.to_string(), slug.to_string());
        let found = self
            .store
            .read(move |r| -> Result<_, StoreError> {
                let Some(skill) = r.get(&SKILLS, &skill_key(&a, &s))? else {
                    return Ok(None);
                };
                let mut vs: Vec<Version> = r
                    .scan_prefix(&VERSIONS, &version_prefix(&a, &s), usize::MAX)?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect();
                vs.reverse();
                Ok(Some((skill, vs)))
            })
            .await?;
        found.ok_or_else(|| SkillsError::NotFound(slug.into()))
    }

    /// Makes a new version with the graph of version `n`.
    pub async fn restore(&self, account: &str, slug: &str, n: u32) -> Result<Skill, SkillsError> {
        let (_, v) = self.get(account, slug, Some(n)).await?;
        let graph = v.graph()?;
        self.save(
            account,
            slug,
            Change {
                graph: Some(graph),
                note: Some(format!("restored from version {n}")),
                ..Change::default()
            },
        )
        .await
    }

    /// Publishes version `n` (the newest when `None`) once it passes every check for
    /// `caller`; `unpublish` takes the skill off the agents' list.
    pub async fn publish(
        &self,
        caller: &Caller,
        slug: &str,
        n: Option<u32>,
    ) -> Result<Skill, SkillsError> {
        let (_, v) = self.get(&caller.account, slug, n).await?;
        self.check(caller, &v.graph()?).await?;
        self.set_published(&caller.account, slug, Some(v.n)).await
    }

    /// Takes a skill off the agents' list.
    pub async fn unpublish(&self, account: &str, slug: &str) -> Result<Skill, SkillsError> {
        self.set_published(account, slug, None).await
    }

    async fn set_published(
        &self,
        account: &str,
        slug: &str,
        n: Option<u32>,
    ) -> Result<Skill, SkillsError> {
        let out = self
            .update(account, slug, move |_, skill| {
                skill.published = n;
                Ok(Ok(()))
            })
            .await?;
        self.changed(account);
        Ok(out)
    }

    /// Checks a graph for `caller`: its shape, types and parameters, and that each
    /// model it names exists for them and can do what the node needs.
    pub async fn check(&self, caller: &Caller, g: &Graph) -> Result<Plan, SkillsError> {
        let config = self.live.get();
        let shape = nodes::check(g, config.skills.max_nodes);
        let mut problems = match &shape {
            Ok(_) => Vec::new(),
            Err(p) => p.clone(),
        };
        let mut seen: HashMap<String, Result<crate::gateway::Resolved, ApiError>> = HashMap::new();
        for (node, param, model, cap) in nodes::models(g) {
            if cap.is_none() && model == "local" {
                continue;
            }
            if !seen.contains_key(&model) {
                let r = crate::gateway::catalog::resolve(
                    &self.gateway.providers,
                    &config,
                    &caller.account,
                    &model,
                )
                .await;
                seen.insert(model.clone(), r);
            }
            let problem = match &seen[&model] {
                Err(e) => Some(Problem::node(&node, "unknown_model", e.message.to_string())),
                Ok(m) => m
                    .require(cap.unwrap_or(Capability::Vision))
                    .err()
                    .map(|e| Problem::node(&node, "model_not_capable", e.message.to_string())),
            };
            if let Some(p) = problem {
                problems.push(p.at_param(param));
            }
        }
        match shape {
            Ok(plan) if problems.is_empty() => Ok(plan),
            _ => Err(SkillsError::Graph(problems)),
        }
    }

    fn limits(&self) -> Limits {
        let c = self.live.get();
        Limits {
            max_bytes: c.skills.max_image_bytes,
            max_pixels: c.skills.max_pixels,
        }
    }

    /// Reads one image input.
    async fn image_input(&self, caller: &Caller, name: &str, v: &Value) -> Result<Img, ApiError> {
        let limits = self.limits();
        let bad =
            |msg: String| ApiError::bad_request("invalid_input", format!("input `{name}`: {msg}"));
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let bytes = if let Some(id) = field("asset_id") {
            self.library
                .read_original(&caller.account, id, limits.max_bytes)
                .await
                .map_err(|e| bad(ApiError::from(e).message.to_string()))?
        } else {
            let s = match v {
                Value::String(s) => s.as_str(),
                _ => field("url").or_else(|| field("base64")).ok_or_else(|| {
                    bad("give an image as base64, a data: URI, an http(s) URL or {\"asset_id\": ...}".into())
                })?,
            };
            if s.starts_with("http://") || s.starts_with("https://") {
                let timeout = self.live.get().alt_text.url_timeout.get();
                self.alt_text
                    .fetcher()
                    .get(s, limits.max_bytes, timeout)
                    .await
                    .map_err(|e| bad(e.to_string()))?
                    .bytes
            } else {
                // Refused before decoding; the exact size is checked with the image.
                // (A data: URI's header makes the text a little longer.)
                if (s.len() as u64) / 4 * 3 > limits.max_bytes + 64 {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "image_too_large",
                        format!(
                            "input `{name}` is larger than [skills] max_image_bytes ({} bytes)",
                            limits.max_bytes
                        ),
                    ));
                }
                crate::imaging::from_base64(s).ok_or_else(|| bad("is not valid base64".into()))?
            }
        };
        tokio::task::spawn_blocking(move || Img::from_bytes(bytes, limits))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::new(e.status, e.code, format!("input `{name}`: {}", e.message)))
    }

    /// Checks the caller's values against the skill's inputs.
    async fn inputs(
        &self,
        caller: &Caller,
        plan: &Plan,
        given: &Map<String, Value>,
    ) -> Result<HashMap<String, Data>, ApiError> {
        for k in given.keys() {
            if !plan.inputs.iter().any(|f| &f.name == k) {
                let names: Vec<&str> = plan.inputs.iter().map(|f| f.name.as_str()).collect();
                return Err(ApiError::bad_request(
                    "unknown_input",
                    format!(
                        "this skill has no input `{k}`; its inputs are: {}",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
        let mut out = HashMap::new();
        for f in &plan.inputs {
            let Some(v) = given.get(&f.name).filter(|v| !v.is_null()) else {
                if f.required {
                    return Err(ApiError::bad_request(
                        "missing_input",
                        format!("input `{}` ({}) is required", f.name, f.ty.name()),
                    ));
                }
                continue;
            };
            let d = match f.ty {
                PortType::Text => match v {
                    Value::String(s) => Data::Text(s.clone()),
                    Value::Number(n) => Data::Text(n.to_string()),
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_input",
                            format!("input `{}` must be text", f.name),
                        ));
                    }
                },
                PortType::Number => {
                    let n = v.as_f64().ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_input",
                            format!("input `{}` must be a number", f.name),
                        )
                    })?;
                    if let Op::InputNumber { min, max, .. } = &plan.steps[f.step].op
                        && (min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m))
                    {
                        return Err(ApiError::bad_request(
                            "invalid_input",
                            format!(
                                "input `{}` must be from {} to {}",
                                f.name,
                                min.unwrap_or(f64::MIN),
                                max.unwrap_or(f64::MAX)
                            ),
                        ));
                    }
                    Data::Number(n)
                }
                _ => Data::Image(self.image_input(caller, &f.name, v).await?),
            };
            out.insert(f.name.clone(), d);
        }
        Ok(out)
    }

    /// Checks a run request and returns the run, ready to go: awaiting it runs the
    /// skill to its end and records the run's metadata. `events` gets progress.
    pub async fn start(
        &self,
        caller: &Caller,
        slug: &str,
        req: RunRequest,
        via: &'static str,
        events: Option<mpsc::UnboundedSender<engine::Event>>,
    ) -> Result<Started, SkillsError> {
        let skill = self.skill(&caller.account, slug).await?;
        let n = match &req.version {
            None => skill
                .published
                .ok_or_else(|| SkillsError::NotPublished(slug.into()))?,
            Some(Which::Number(n)) => *n,
            Some(Which::Named(s)) if s == "published" => skill
                .published
                .ok_or_else(|| SkillsError::NotPublished(slug.into()))?,
            Some(Which::Named(s)) if s == "latest" => skill.latest,
            Some(Which::Named(s)) => {
                return Err(SkillsError::Invalid(format!(
                    "`version` must be published, latest or a number, not `{s}`"
                )));
            }
        };
        let (skill, version) = self.get(&caller.account, slug, Some(n)).await?;
        let plan = Arc::new(self.check(caller, &version.graph()?).await?);
        let budget = match req.max_credits {
            None => None,
            Some(c) if c.is_finite() && c >= 0.0 => Some(
                crate::ledger::from_credits(c)
                    .map_err(|e| SkillsError::Invalid(format!("`max_credits`: {e}")))?,
            ),
            Some(_) => {
                return Err(SkillsError::Invalid(
                    "`max_credits` must be a number of credits, 0 or more".into(),
                ));
            }
        };
        let given = self.inputs(caller, &plan, &req.inputs).await?;
        let id = crate::crypto::random_hex::<12>().map_err(ApiError::internal)?;
        let config = self.live.get();
        let ctx = Arc::new(Ctx {
            caller: caller.clone(),
            gateway: self.gateway.clone(),
            alt_text: self.alt_text.clone(),
            library: self.library.clone(),
            skill: slug.to_string(),
            run: id.clone(),
            limits: self.limits(),
            node_timeout: config.skills.node_timeout.get(),
            max_parallel: config.skills.max_parallel,
        });
        let (cancel, cancelled) = watch::channel(false);
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                id.clone(),
                Active {
                    account: caller.account.clone(),
                    cancel,
                },
            );
        let guard = Registered {
            runs: self.runs.clone(),
            id: id.clone(),
        };
        let this = self.clone();
        let (account, run_id, slug2) = (caller.account.clone(), id.clone(), slug.to_string());
        let run = Box::pin(async move {
            let _guard = guard;
            let started_ms = now_ms();
            let budget = Arc::new(RunBudget::new(budget));
            let outcome = engine::execute(plan, ctx, given, budget, events, cancelled).await;
            let result = result_of(&run_id, &slug2, n, &outcome);
            if let Err(e) = this
                .record(&account, &slug2, n, via, started_ms, &run_id, &outcome)
                .await
            {
                tracing::error!(error = %e, "cannot record a skill run");
            }
            result
        });
        Ok(Started {
            id,
            skill,
            version: n,
            run,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        account: &str,
        slug: &str,
        version: u32,
        via: &'static str,
        started_ms: u64,
        id: &str,
        o: &Outcome,
    ) -> Result<(), StoreError> {
        let record = RunRecord {
            id: id.to_string(),
            skill: slug.to_string(),
            version,
            status: o.status,
            via: via.to_string(),
            started_ms,
            ms: o.ms,
            credits: o.credits,
            nodes: o
                .nodes
                .iter()
                .map(|n| NodeRun {
                    id: n.id.clone(),
                    kind: n.kind.to_string(),
                    status: n.status.unwrap_or(NodeStatus::Skipped),
                    ms: n.ms,
                    credits: n.credits,
                    error: n.error.as_ref().map(|e| e.code.clone()),
                })
                .collect(),
        };
        let owner = runs_owner(account, slug);
        let kept = self.live.get().skills.runs_kept;
        let (a, s) = (account.to_string(), slug.to_string());
        self.store
            .write_background(move |tx| {
                // The skill may have been deleted while it ran: then nothing is kept.
                if tx.get(&SKILLS, &skill_key(&a, &s))?.is_none() {
                    return Ok(());
                }
                let mut key = TimedKey::prefix(&owner);
                key.extend_from_slice(&started_ms.to_be_bytes());
                key.extend_from_slice(record.id.as_bytes());
                tx.insert(&RUNS, &key, &record)?;
                let prefix = TimedKey::prefix(&owner);
                let n = tx.count_prefix(&RUNS, &prefix)? as usize;
                if n > kept {
                    tx.remove_prefix(&RUNS, &prefix, n - kept)?;
                }
                Ok(())
            })
            .await
    }

    /// The newest runs of a skill (metadata only), newest first.
    pub async fn runs(
        &self,
        account: &str,
        slug: &str,
        limit: usize,
    ) -> Result<Vec<RunRecord>, SkillsError> {
        self.skill(account, slug).await?;
        let prefix = TimedKey::prefix(&runs_owner(account, slug));
        let rows = self
            .store
            .read(move |r| r.scan_prefix_rev(&RUNS, &prefix, None, limit))
            .await?;
        Ok(rows.into_iter().map(|(_, v)| v).collect())
    }

    /// Cancels a run of `account` under way.
    pub fn cancel(&self, account: &str, run: &str) -> Result<(), SkillsError> {
        let runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match runs.get(run) {
            Some(r) if r.account == account => {
                let _ = r.cancel.send(true);
                Ok(())
            }
            _ => Err(SkillsError::NoRun(run.into())),
        }
    }

    /// The published skills of an account with their plans (for agents).
    pub async fn published(&self, caller: &Caller) -> Result<Vec<(Skill, Plan)>, SkillsError> {
        let mut out = Vec::new();
        let max_nodes = self.live.get().skills.max_nodes;
        for s in self.list(&caller.account).await? {
            let Some(n) = s.published else { continue };
            let (_, v) = self.get(&caller.account, &s.slug, Some(n)).await?;
            if let Ok(plan) = nodes::check(&v.graph()?, max_nodes) {
                out.push((s, plan));
            }
        }
        Ok(out)
    }
}

/// Removes a run from the cancellable ones when it ends (or is dropped).
struct Registered {
    runs: Arc<Mutex<HashMap<String, Active>>>,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn result_of(id: &str, slug: &str, version: u32, o: &Outcome) -> RunResult {
    RunResult {
        id: id.to_string(),
        skill: slug.to_string(),
        version,
        status: o.status,
        outputs: o.outputs.clone(),
        nodes: o
            .nodes
            .iter()
            .map(|n| NodeResult {
                id: n.id.clone(),
                kind: n.kind.to_string(),
                status: n.status.unwrap_or(NodeStatus::Skipped),
                ms: n.ms,
                credits: crate::ledger::to_credits(n.credits),
                error: n.error.clone(),
            })
            .collect(),
        credits: crate::ledger::to_credits(o.credits),
        ms: o.ms,
    }
}

/// A run record as the API and the export show it.
pub fn run_view(r: RunRecord) -> Value {
    json!({
        "id": r.id, "skill": r.skill, "version": r.version, "status": r.status, "via": r.via,
        "started_at": crate::http::rfc3339(r.started_ms), "ms": r.ms,
        "credits": crate::ledger::to_credits(r.credits),
        "nodes": r.nodes.into_iter().map(|n| json!({"id": n.id, "type": n.kind, "status": n.status,
            "ms": n.ms, "credits": crate::ledger::to_credits(n.credits), "error": n.error})).collect::<Vec<_>>(),
    })
}

/// One page of `account`'s skills (with every version's graph) for an export.
pub fn export_page(
    r: &ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(r, &VERSIONS, account, after, limit, |v: Version| {
        json!({"version": v.n, "note": v.note, "created_at": crate::http::rfc3339(v.created_ms),
            "graph": serde_json::from_str::<Value>(&v.graph).unwrap_or(Value::Null)})
    })
}

/// One page of `account`'s run records for an export.
pub fn export_runs_page(
    r: &ReadTx,
    account: &str,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<crate::store::JsonPage, StoreError> {
    crate::store::JsonPage::of_owner(r, &RUNS, account, after, limit, run_view)
}

/// How many skills `account` has.
pub fn count_of(r: &impl Reader, account: &str) -> Result<u64, StoreError> {
    r.count_prefix(&SKILLS, &TimedKey::prefix(account))
}

/// Removes up to `limit` records of `account` (erasure, in batches).
pub fn erase_batch(
    tx: &crate::store::WriteTx<'_>,
    account: &str,
    limit: usize,
) -> Result<u64, StoreError> {
    tx.remove_prefix_across(
        &[RUNS.decl(), VERSIONS.decl(), SKILLS.decl()],
        &TimedKey::prefix(account),
        limit,
    )
}
