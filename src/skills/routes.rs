//! The skills routes: managing skills under `/api/skills` (the editor), running them
//! under `/v1/skills` (agents and scripts), and the MCP endpoint at `/mcp`. A browser
//! session or an API key with the `skills` scope; each skill is its owner's alone.

use super::engine::Event;
use super::{Change, Draft, RunRequest, Skill, Skills, SkillsError, Version, templates};
use crate::auth::{Scoped, need};
use crate::http::{ApiError, rfc3339};
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use utoipa_actix_web::service_config::ServiceConfig;

type Caller = Scoped<need::Skills>;

/// Registers this capability's routes.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list)
        .service(create)
        .service(node_types)
        .service(template_list)
        .service(from_template)
        .service(import)
        .service(check)
        .service(agents_list)
        .service(cancel)
        .service(run)
        .service(one)
        .service(change)
        .service(remove)
        .service(versions)
        .service(version)
        .service(restore)
        .service(publish)
        .service(unpublish)
        .service(export)
        .service(runs)
        .service(super::mcp::mcp_post)
        .service(super::mcp::mcp_get)
        .service(super::mcp::mcp_delete);
}

/// Paths of `/api/skills/…` that are not skills.
const RESERVED: [&str; 5] = ["nodes", "templates", "import", "check", "runs"];

fn view(s: &Skill) -> Value {
    json!({
        "slug": s.slug, "name": s.name, "description": s.description,
        "latest_version": s.latest, "published_version": s.published,
        "created_at": rfc3339(s.created_ms), "updated_at": rfc3339(s.updated_ms),
    })
}

fn with_version(s: &Skill, v: &Version) -> Result<Value, ApiError> {
    let mut out = view(s);
    out["version"] = v.n.into();
    out["note"] = v.note.clone().into();
    out["graph"] = serde_json::from_str(&v.graph).map_err(ApiError::internal)?;
    Ok(out)
}

/// The JSON body; an empty body is `T`'s default (the bodies that may be left out
/// have one; the others fail to parse `{}` with the field that is missing).
fn parse<T: serde::de::DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    crate::gateway::parse_body(req, if body.is_empty() { b"{}" } else { body })
}

#[utoipa::path(tag = "skills", responses((status = 200, description = "Your skills")))]
#[get("/api/skills")]
async fn list(caller: Caller, skills: web::Data<Skills>) -> Result<HttpResponse, ApiError> {
    let all = skills.list(&caller.0.account).await?;
    Ok(HttpResponse::Ok().json(json!({"data": all.iter().map(view).collect::<Vec<_>>()})))
}

async fn create_from(skills: &Skills, account: &str, d: Draft) -> Result<HttpResponse, ApiError> {
    if d.slug.as_deref().is_some_and(|s| RESERVED.contains(&s)) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "that slug is reserved; pick another",
        ));
    }
    let s = skills.create(account, d).await?;
    let (s, v) = skills.get(account, &s.slug, None).await?;
    Ok(HttpResponse::Created().json(with_version(&s, &v)?))
}

/// Creates a skill: `{"name", "slug"?, "description"?, "graph"?}`.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 201, description = "The new skill with its graph"), (status = 409, description = "The slug is taken")))]
#[post("/api/skills")]
async fn create(
    caller: Caller,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let d: Draft = parse(&req, &body)?;
    create_from(&skills, &caller.0.account, d).await
}

/// The node types with their ports and parameter schemas, and which output types
/// each input type takes (for the editor).
#[utoipa::path(tag = "skills", responses((status = 200, description = "Node types")))]
#[get("/api/skills/nodes")]
async fn node_types(_caller: Caller) -> HttpResponse {
    let data: Vec<Value> = super::nodes::SPECS
        .iter()
        .map(super::nodes::Spec::view)
        .collect();
    HttpResponse::Ok().json(json!({"data": data, "accepts": super::graph::PortType::accepted()}))
}

/// The example skills shipped with Easel.
#[utoipa::path(tag = "skills", responses((status = 200, description = "Templates")))]
#[get("/api/skills/templates")]
async fn template_list(_caller: Caller) -> HttpResponse {
    let data: Vec<Value> = templates::TEMPLATES
        .iter()
        .map(|t| json!({"id": t.id, "name": t.name, "description": t.description}))
        .collect();
    HttpResponse::Ok().json(json!({"data": data}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromTemplate {
    #[serde(default)]
    slug: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Creates a skill from a template, with the first of your models that fits each
/// model node.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 201, description = "The new skill")))]
#[post("/api/skills/templates/{id}")]
async fn from_template(
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
    gw: web::Data<crate::gateway::Gateway>,
) -> Result<HttpResponse, ApiError> {
    let t = templates::find(&path).ok_or_else(|| {
        ApiError::not_found(format!(
            "no template `{path}`; GET /api/skills/templates lists them"
        ))
    })?;
    let opts: FromTemplate = parse(&req, &body)?;
    let models =
        crate::gateway::catalog::available(&gw.providers, &gw.live.get(), &caller.0.account)
            .await?;
    let pick = |cap| {
        models
            .iter()
            .find(|(_, caps)| caps.contains(&cap))
            .map(|(id, _)| id.clone())
    };
    let d = Draft {
        slug: opts.slug.or_else(|| Some(t.id.to_string())),
        name: opts.name.unwrap_or_else(|| t.name.to_string()),
        description: t.description.to_string(),
        graph: t.graph(&pick),
    };
    create_from(&skills, &caller.0.account, d).await
}

/// Imports a skill from a file made by export.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 201, description = "The imported skill"), (status = 409, description = "The slug is taken")))]
#[post("/api/skills/import")]
async fn import(
    caller: Caller,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        easel_skill: u32,
        #[serde(default)]
        slug: Option<String>,
        name: String,
        #[serde(default)]
        description: String,
        graph: super::graph::Graph,
    }
    let f: File = parse(&req, &body)?;
    if f.easel_skill != 1 {
        return Err(ApiError::bad_request(
            "unsupported_version",
            "this file is from a newer Easel (easel_skill must be 1)",
        ));
    }
    let d = Draft {
        slug: f.slug,
        name: f.name,
        description: f.description,
        graph: f.graph,
    };
    create_from(&skills, &caller.0.account, d).await
}

/// Checks a graph without saving it: its problems (each at its node and port) and,
/// when it has none, its input and output schemas.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 200, description = "The check's result")))]
#[post("/api/skills/check")]
async fn check(
    caller: Caller,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        graph: super::graph::Graph,
    }
    let b: Body = parse(&req, &body)?;
    Ok(match skills.check(&caller.0, &b.graph).await {
        Ok(plan) => HttpResponse::Ok().json(json!({"ok": true, "problems": [],
            "input_schema": plan.input_schema(), "output_schema": plan.output_schema()})),
        Err(SkillsError::Graph(problems)) => {
            HttpResponse::Ok().json(json!({"ok": false, "problems": problems}))
        }
        Err(e) => return Err(e.into()),
    })
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

/// A skill with the graph of its newest version (or `?version=N`).
#[utoipa::path(tag = "skills", responses((status = 200, description = "The skill"), (status = 404, description = "No such skill")))]
#[get("/api/skills/{slug}")]
async fn one(
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<VersionQuery>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let (s, v) = skills.get(&caller.0.account, &path, q.version).await?;
    Ok(HttpResponse::Ok().json(with_version(&s, &v)?))
}

/// Renames, describes, or saves a graph (a changed graph is a new version).
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 200, description = "The skill")))]
#[put("/api/skills/{slug}")]
async fn change(
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let c: Change = parse(&req, &body)?;
    skills.save(&caller.0.account, &path, c).await?;
    let (s, v) = skills.get(&caller.0.account, &path, None).await?;
    Ok(HttpResponse::Ok().json(with_version(&s, &v)?))
}

/// Deletes a skill with its versions and run records.
#[utoipa::path(tag = "skills", responses((status = 204, description = "Deleted")))]
#[delete("/api/skills/{slug}")]
async fn remove(
    caller: Caller,
    path: web::Path<String>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    skills.delete(&caller.0.account, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Every version, newest first.
#[utoipa::path(tag = "skills", responses((status = 200, description = "Versions")))]
#[get("/api/skills/{slug}/versions")]
async fn versions(
    caller: Caller,
    path: web::Path<String>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let (s, vs) = skills.versions(&caller.0.account, &path).await?;
    let data: Vec<Value> = vs
        .iter()
        .map(|v| {
            let nodes = serde_json::from_str::<super::graph::Graph>(&v.graph).map_or(0, |g| g.nodes.len());
            json!({"version": v.n, "note": v.note, "created_at": rfc3339(v.created_ms), "nodes": nodes,
                "published": s.published == Some(v.n)})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"data": data})))
}

/// One version with its graph.
#[utoipa::path(tag = "skills", responses((status = 200, description = "The version")))]
#[get("/api/skills/{slug}/versions/{n}")]
async fn version(
    caller: Caller,
    path: web::Path<(String, u32)>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let (slug, n) = path.into_inner();
    let (s, v) = skills.get(&caller.0.account, &slug, Some(n)).await?;
    Ok(HttpResponse::Ok().json(with_version(&s, &v)?))
}

/// Makes a new version from version `n`.
#[utoipa::path(tag = "skills", responses((status = 200, description = "The skill")))]
#[post("/api/skills/{slug}/versions/{n}/restore")]
async fn restore(
    caller: Caller,
    path: web::Path<(String, u32)>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let (slug, n) = path.into_inner();
    skills.restore(&caller.0.account, &slug, n).await?;
    let (s, v) = skills.get(&caller.0.account, &slug, None).await?;
    Ok(HttpResponse::Ok().json(with_version(&s, &v)?))
}

/// Publishes a version (`{"version": N}`, default the newest) once it passes every check.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 200, description = "The skill"), (status = 422, description = "The graph has problems")))]
#[post("/api/skills/{slug}/publish")]
async fn publish(
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        version: Option<u32>,
    }
    let b: Body = parse(&req, &body)?;
    let s = skills.publish(&caller.0, &path, b.version).await?;
    Ok(HttpResponse::Ok().json(view(&s)))
}

/// Takes a skill off the agents' list.
#[utoipa::path(tag = "skills", responses((status = 200, description = "The skill")))]
#[post("/api/skills/{slug}/unpublish")]
async fn unpublish(
    caller: Caller,
    path: web::Path<String>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let s = skills.unpublish(&caller.0.account, &path).await?;
    Ok(HttpResponse::Ok().json(view(&s)))
}

/// The skill as a file to import elsewhere (`?version=N`, default the newest).
#[utoipa::path(tag = "skills", responses((status = 200, description = "The skill file")))]
#[get("/api/skills/{slug}/export")]
async fn export(
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<VersionQuery>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let (s, v) = skills.get(&caller.0.account, &path, q.version).await?;
    let graph: Value = serde_json::from_str(&v.graph).map_err(ApiError::internal)?;
    let file = json!({"easel_skill": 1, "slug": s.slug, "name": s.name, "description": s.description, "graph": graph});
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.skill.json\"", s.slug),
        ))
        .json(file))
}

#[derive(Deserialize)]
struct RunsQuery {
    limit: Option<usize>,
}

/// The newest runs of a skill: metadata only (no input, prompt or output is kept).
#[utoipa::path(tag = "skills", responses((status = 200, description = "Runs")))]
#[get("/api/skills/{slug}/runs")]
async fn runs(
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<RunsQuery>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let rs = skills.runs(&caller.0.account, &path, limit).await?;
    Ok(HttpResponse::Ok()
        .json(json!({"data": rs.into_iter().map(super::run_view).collect::<Vec<_>>()})))
}

/// The published skills, for agents: each with its input and output schemas.
#[utoipa::path(tag = "skills", responses((status = 200, description = "Published skills")))]
#[get("/v1/skills")]
async fn agents_list(caller: Caller, skills: web::Data<Skills>) -> Result<HttpResponse, ApiError> {
    let data: Vec<Value> = skills
        .published(&caller.0)
        .await?
        .into_iter()
        .map(|(s, plan)| {
            json!({"object": "skill", "slug": s.slug, "name": s.name, "description": s.description,
                "version": s.published, "input_schema": plan.input_schema(), "output_schema": plan.output_schema()})
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data})))
}

/// Cancels a run under way (its steps stop; the run ends as `cancelled`).
#[utoipa::path(tag = "skills", responses((status = 202, description = "Cancelling"), (status = 404, description = "No such run under way")))]
#[post("/v1/skills/runs/{id}/cancel")]
async fn cancel(
    caller: Caller,
    path: web::Path<String>,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    skills.cancel(&caller.0.account, &path)?;
    Ok(HttpResponse::Accepted().json(json!({"id": path.into_inner(), "cancelling": true})))
}

/// Cancels a run when dropped before it was disarmed (the client went away).
struct CancelOnDrop {
    skills: Skills,
    account: String,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.skills.cancel(&self.account, &self.id);
        }
    }
}

fn sse(name: &str, data: &Value) -> Bytes {
    let mut out = String::new();
    sse_into(&mut out, name, data);
    Bytes::from(out)
}

fn sse_into(out: &mut String, name: &str, data: &Value) {
    use std::fmt::Write;
    let _ = write!(out, "event: {name}\ndata: {data}\n\n");
}

/// Runs a skill (the published version unless `version` says otherwise) with
/// `inputs`; waits for the result, or streams progress as server-sent events with
/// `"stream": true` (or `Accept: text/event-stream`). A failed node leaves the
/// outputs that could be made; `status` says how the run ended.
#[utoipa::path(request_body(content = Object), tag = "skills", responses((status = 200, description = "The run's result, or its events"), (status = 400, description = "Bad inputs"), (status = 422, description = "The graph has problems")))]
#[post("/v1/skills/{slug}/run")]
async fn run(
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    body: Bytes,
    skills: web::Data<Skills>,
) -> Result<HttpResponse, ApiError> {
    let r: RunRequest = parse(&req, &body)?;
    let stream = r.stream
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    let via = if caller.0.session_id().is_some() {
        "editor"
    } else {
        "api"
    };
    let (tx, rx) = if stream {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let started = skills.start(&caller.0, &path, r, via, tx).await?;
    let mut guard = CancelOnDrop {
        skills: skills.get_ref().clone(),
        account: caller.0.account.clone(),
        id: started.id.clone(),
        armed: true,
    };
    let first = json!({"run": started.id, "skill": started.skill.slug, "version": started.version});
    let task = tokio::spawn(started.run);
    let Some(rx) = rx else {
        let result = task.await.map_err(ApiError::internal)?;
        guard.armed = false;
        return Ok(HttpResponse::Ok().json(result));
    };
    struct State {
        rx: mpsc::UnboundedReceiver<Event>,
        task: Option<tokio::task::JoinHandle<super::RunResult>>,
        guard: CancelOnDrop,
        first: Option<Value>,
    }
    let state = State {
        rx,
        task: Some(task),
        guard,
        first: Some(first),
    };
    let body = futures_util::stream::unfold(state, |mut s| async move {
        if let Some(f) = s.first.take() {
            return Some((Ok::<_, std::convert::Infallible>(sse("run_started", &f)), s));
        }
        if let Some(e) = s.rx.recv().await {
            // What is already queued goes out in the same write; one yield first lets
            // steps that are about to finish add theirs (fewer, larger writes).
            tokio::task::yield_now().await;
            let mut out = String::new();
            let mut next = Some(e);
            while let Some(e) = next {
                let v = serde_json::to_value(&e).unwrap_or_default();
                sse_into(&mut out, e.name(), &v);
                next = s.rx.try_recv().ok();
            }
            return Some((Ok(Bytes::from(out)), s));
        }
        let task = s.task.take()?;
        let result = match task.await {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => {
                json!({"error": {"message": format!("the run failed: {e}"), "code": "internal_error"}})
            }
        };
        s.guard.armed = false;
        Some((Ok(sse("run_finished", &result)), s))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
