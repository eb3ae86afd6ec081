//! The privacy policy, generated from the live config: who runs the instance, each data
//! class and its rule, the providers requests go to (sub-processors), the one cookie,
//! and the rights with how to use each.
//!
//! Its material facts are compared with the latest published version whenever the
//! policy is read and at start-up; a difference publishes a new version that takes
//! effect after `[privacy] notice_period` (the first one at once). Every version is
//! kept, with what changed, and stays readable.

use crate::config::Config;
use crate::http::rfc3339;
use crate::providers::Providers;
use crate::store::{Class, Reader, Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Published versions by number.
const VERSIONS: Table<u64, StoredVersion> = Table::new("policy_versions", Class::System);

/// The tables of the policy.
pub(super) const TABLES: [crate::store::Decl; 1] = [VERSIONS.decl()];

/// The one cookie Easel sets.
pub const COOKIE: &str = "easel_session";

/// A published version as stored: its facts as JSON, so that every version stays
/// readable whatever later releases add.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredVersion {
    number: u64,
    published_ms: u64,
    effective_ms: u64,
    facts: String,
    changes: Vec<String>,
}

/// What the policy says, as far as the program decides it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Facts {
    pub operator: String,
    pub contact: String,
    /// `[privacy] policy_version`: the operator's label; changing it publishes a new
    /// version for a change the program cannot see (wording, say).
    pub label: String,
    /// Each data class with its rule (`90d`, `while_active`, …).
    pub classes: Vec<ClassRule>,
    pub deletion_recovery: String,
    pub notice_period: String,
    /// The providers that requests are sent to, for the organisation.
    pub sub_processors: Vec<SubProcessor>,
}

/// A data class and how long it is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassRule {
    pub class: String,
    pub rule: String,
}

/// A provider that receives requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubProcessor {
    pub name: String,
    pub kind: String,
    /// Where requests go.
    pub host: String,
}

/// One version of the policy.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Version {
    pub number: u64,
    pub published_at: String,
    pub effective_at: String,
    /// Whether it is in effect now (the newest version whose date has come).
    pub in_effect: bool,
    /// What changed from the version before, in words.
    pub changes: Vec<String>,
    pub facts: Facts,
}

/// The policy now: the version in effect, one waiting for its notice period, and all.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PolicyState {
    pub in_effect: Version,
    /// A newer version that takes effect at its `effective_at`: signed-in people are
    /// shown a notice until then.
    pub upcoming: Option<Version>,
    /// Every version, newest first.
    pub versions: Vec<Version>,
}

/// What the policy says under `cfg` with the organisation's providers.
pub fn facts(cfg: &Config, providers: &Providers) -> Facts {
    let mut sub_processors: Vec<SubProcessor> = providers
        .organisation()
        .values()
        .map(|c| SubProcessor {
            name: c.name.clone(),
            kind: serde_json::to_value(c.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            host: reqwest::Url::parse(&c.base_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_else(|| c.base_url.clone()),
        })
        .collect();
    sub_processors.sort_by(|a, b| a.name.cmp(&b.name));
    Facts {
        operator: cfg.privacy.operator.clone(),
        contact: cfg.privacy.contact.clone(),
        label: cfg.privacy.policy_version.clone(),
        classes: Class::PERSONAL
            .into_iter()
            .filter_map(|c| {
                Some(ClassRule {
                    class: c.name().to_string(),
                    rule: super::rule(&cfg.retention, c)?.to_string(),
                })
            })
            .collect(),
        deletion_recovery: cfg.retention.deletion_recovery.to_string(),
        notice_period: cfg.privacy.notice_period.to_string(),
        sub_processors,
    }
}

/// What changed from `old` to `new`, in words.
fn changes(old: &Facts, new: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    for c in &new.classes {
        match old.classes.iter().find(|o| o.class == c.class) {
            Some(o) if o.rule != c.rule => {
                out.push(format!("{}: kept {} (was {})", c.class, c.rule, o.rule))
            }
            None => out.push(format!("{}: kept {} (new class)", c.class, c.rule)),
            _ => {}
        }
    }
    for p in &new.sub_processors {
        if !old
            .sub_processors
            .iter()
            .any(|o| o.name == p.name && o.host == p.host)
        {
            out.push(format!("sub-processor added: {} ({})", p.name, p.host));
        }
    }
    for p in &old.sub_processors {
        if !new
            .sub_processors
            .iter()
            .any(|o| o.name == p.name && o.host == p.host)
        {
            out.push(format!("sub-processor removed: {} ({})", p.name, p.host));
        }
    }
    let fields = [
        ("operator", &old.operator, &new.operator),
        ("contact", &old.contact, &new.contact),
        (
            "deletion recovery window",
            &old.deletion_recovery,
            &new.deletion_recovery,
        ),
        ("notice period", &old.notice_period, &new.notice_period),
        ("policy label", &old.label, &new.label),
    ];
    for (what, o, n) in fields {
        if o != n {
            out.push(format!("{what}: {n} (was {o})"));
        }
    }
    out
}

fn view(v: StoredVersion, current: u64) -> Version {
    Version {
        in_effect: v.number == current,
        published_at: rfc3339(v.published_ms),
        effective_at: rfc3339(v.effective_ms),
        changes: v.changes,
        facts: serde_json::from_str(&v.facts).unwrap_or_default(),
        number: v.number,
    }
}

/// Publishes a new version when the facts differ from the newest one (the first at
/// once, later ones after the notice period), then answers the state at `now`.
pub async fn sync(
    store: &Store,
    facts: Facts,
    notice_ms: u64,
    now: u64,
) -> Result<PolicyState, StoreError> {
    let stored = store
        .read(|r| r.scan_rev(&VERSIONS, None, usize::MAX))
        .await?;
    let unchanged = stored.first().is_some_and(|(_, v)| {
        serde_json::from_str::<Facts>(&v.facts).ok().as_ref() == Some(&facts)
    });
    // Most reads change nothing and cost no write; a change is published in a write
    // that looks again, so two readers cannot publish it twice.
    let all = if unchanged {
        stored
    } else {
        publish(store, facts, notice_ms, now).await?
    };
    state(all, now)
}

async fn publish(
    store: &Store,
    facts: Facts,
    notice_ms: u64,
    now: u64,
) -> Result<Vec<(u64, StoredVersion)>, StoreError> {
    store
        .write(move |tx| {
            let newest = tx.scan_rev(&VERSIONS, None, 1)?.into_iter().next();
            let previous = newest
                .as_ref()
                .map(|(_, v)| serde_json::from_str::<Facts>(&v.facts).unwrap_or_default());
            if previous.as_ref() != Some(&facts) {
                let number = newest.as_ref().map_or(1, |(n, _)| n + 1);
                let version = StoredVersion {
                    number,
                    published_ms: now,
                    effective_ms: if number == 1 { now } else { now + notice_ms },
                    facts: serde_json::to_string(&facts)
                        .map_err(|e| StoreError::Db(e.to_string()))?,
                    changes: match &previous {
                        Some(p) => changes(p, &facts),
                        None => vec!["first version".into()],
                    },
                };
                tx.insert(&VERSIONS, &number, &version)?;
                tracing::info!(
                    version = number,
                    effective = %rfc3339(version.effective_ms),
                    "a new version of the privacy policy was published"
                );
            }
            tx.scan_rev(&VERSIONS, None, usize::MAX)
        })
        .await
}

/// The state at `now` of the versions `all`, newest first.
fn state(all: Vec<(u64, StoredVersion)>, now: u64) -> Result<PolicyState, StoreError> {
    let current = all
        .iter()
        .find(|(_, v)| v.effective_ms <= now)
        .map_or(1, |(n, _)| *n);
    let versions: Vec<Version> = all.into_iter().map(|(_, v)| view(v, current)).collect();
    let in_effect = versions
        .iter()
        .find(|v| v.number == current)
        .cloned()
        .ok_or_else(|| StoreError::Db("no policy version is stored".into()))?;
    let upcoming = versions.first().filter(|v| v.number > current).cloned();
    Ok(PolicyState {
        in_effect,
        upcoming,
        versions,
    })
}

/// What a class holds, in words (SPEC.md's table).
fn holds(class: &str) -> &'static str {
    match class {
        "account" => "email, name, company, password hash, role, 18+ attestation",
        "credentials" => "API key hashes and web sessions",
        "provider_keys" => "provider API keys you or an admin entered, sealed",
        "usage" => {
            "per request: time, key, endpoint, model, provider, credits, token and image counts, status, latency; never the prompt or the output"
        }
        "access_log" => "client IP address and user agent of sign-ins, for security",
        "alt_text" => "the image URL (if one was given), the alt text, language, model, cost",
        "billing" => "credit entries and purchases; kept after erasure, detached from the person",
        "skills" => "skill graphs, prompt templates, settings, run metadata",
        "assets" => "uploaded and saved images",
        "analytics" => "anonymous feature-use counters, only with your consent",
        "audit" => "admin and security actions; erasure entries hold no personal data",
        _ => "",
    }
}

/// `&`, `<`, `>`, `"` and `'` as entities.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The policy page for `shown`, with the notice of an upcoming version and links to
/// every version.
pub fn render(state: &PolicyState, shown: &Version, css: &str) -> String {
    let f = &shown.facts;
    let mut h = String::new();
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    h.push_str(&format!(
        "<title>Privacy policy · {}</title><link rel=\"stylesheet\" href=\"{}\"></head>",
        esc(&f.operator),
        esc(css)
    ));
    h.push_str("<body><main class=\"policy\">");
    h.push_str(&format!(
        "<h1>Privacy policy</h1><p class=\"muted\">Version {} · in effect from {}{}</p>",
        shown.number,
        esc(&shown.effective_at[..10.min(shown.effective_at.len())]),
        if shown.in_effect {
            " · the version in effect now"
        } else if shown.number > state.in_effect.number {
            " · <strong>not yet in effect</strong>"
        } else {
            " · an earlier version"
        }
    ));
    if let Some(up) = &state.upcoming
        && up.number != shown.number
    {
        h.push_str(&format!(
            "<p class=\"notice\" role=\"status\">A new version takes effect on {}: <a href=\"/privacy?version={}\">read version {}</a> ({}).</p>",
            esc(&up.effective_at[..10.min(up.effective_at.len())]),
            up.number,
            up.number,
            esc(&up.changes.join("; "))
        ));
    }
    h.push_str(&format!(
        "<h2>Who we are</h2><p>This service is run by {}.{}</p>",
        esc(&f.operator),
        if f.contact.is_empty() {
            String::new()
        } else {
            format!(" Contact for privacy questions: {}.", esc(&f.contact))
        }
    ));
    h.push_str("<h2>What is kept, and for how long</h2><p>Every record belongs to one class; the program deletes it when its time is up, and an administrator's report proves it.</p><table><thead><tr><th>Class</th><th>What it holds</th><th>Kept</th></tr></thead><tbody>");
    for c in &f.classes {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.class),
            esc(holds(&c.class)),
            esc(&rule_words(&c.rule))
        ));
    }
    h.push_str("</tbody></table>");
    h.push_str("<p>Never stored: prompts, request images, generated outputs (unless you save one to the library), plaintext API keys, provider keys or passwords.</p>");
    h.push_str("<h2>Sub-processors</h2>");
    if f.sub_processors.is_empty() {
        h.push_str("<p>None: no request leaves this server.</p>");
    } else {
        h.push_str("<p>Requests to a model are sent to the provider that serves it:</p><ul>");
        for p in &f.sub_processors {
            h.push_str(&format!(
                "<li>{} ({}, {})</li>",
                esc(&p.name),
                esc(&p.kind),
                esc(&p.host)
            ));
        }
        h.push_str("</ul><p>Provider keys you add yourself send your requests to that provider on your own account with it.</p>");
    }
    h.push_str(&format!(
        "<h2>Cookies</h2><p>One cookie, <code>{COOKIE}</code>: it keeps you signed in and ends when you sign out or the session ends. There are no tracking or third-party cookies.</p>"
    ));
    h.push_str("<h2>Your rights</h2><ul>");
    h.push_str("<li><strong>See your data</strong>: the Privacy page of the web app, or <code>GET /api/privacy/me</code>.</li>");
    h.push_str("<li><strong>Correct it</strong>: the Account page, or <code>PATCH /api/account</code>.</li>");
    h.push_str("<li><strong>Export it all</strong>: one ZIP from the Privacy page, or <code>GET /api/privacy/export</code>.</li>");
    h.push_str(&format!(
        "<li><strong>Have it deleted</strong>: request deletion on the Privacy page (<code>POST /api/privacy/deletion</code>). Your account is disabled at once and erased after {}; signing in before then cancels the request. Billing entries are kept, detached from you.</li>",
        esc(&rule_words(&f.deletion_recovery))
    ));
    h.push_str("<li><strong>Analytics consent</strong>: off unless you turn it on; withdraw it any time on the Privacy page (<code>PUT /api/privacy/consent</code>).</li>");
    if !f.contact.is_empty() {
        h.push_str(&format!(
            "<li>For anything else, write to {}.</li>",
            esc(&f.contact)
        ));
    }
    h.push_str("</ul>");
    h.push_str(&format!(
        "<h2>Changes</h2><p>A change to what is kept, for how long, or who receives requests publishes a new version, which takes effect {} later; signed-in people see a notice meanwhile.</p><ul>",
        esc(&rule_words(&f.notice_period))
    ));
    for v in &state.versions {
        h.push_str(&format!(
            "<li><a href=\"/privacy?version={}\">Version {}</a>, in effect from {}: {}</li>",
            v.number,
            v.number,
            esc(&v.effective_at[..10.min(v.effective_at.len())]),
            esc(&v.changes.join("; "))
        ));
    }
    h.push_str("</ul></main></body></html>");
    h
}

/// A rule or span in words: `90d` as "90 days".
fn rule_words(rule: &str) -> String {
    match rule {
        "while_active" => "while the account is active".into(),
        "until_deleted" => "until deleted; erased with the account".into(),
        "until_revoked" => "until revoked or expired".into(),
        "0" => "not kept".into(),
        r => {
            let (n, unit) = r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len()));
            let word = match unit {
                "s" => "second",
                "m" => "minute",
                "h" => "hour",
                "d" => "day",
                "w" => "week",
                "y" => "year",
                _ => return r.to_string(),
            };
            let plural = if n == "1" { "" } else { "s" };
            format!("{n} {word}{plural}")
        }
    }
}
