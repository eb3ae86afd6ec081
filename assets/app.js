// Easel UI shell: a hash router over the sections. No inline script, no external
// requests: everything comes from this server (CSP: script-src 'self').
"use strict";

const sections = {
  "alt-text": { title: "Alt text", text: "Describe images for people who cannot see them, in many languages, with a provider's vision model or the local model." },
  skills: { title: "Skills", text: "Build visual workflows that people run in the browser and agents call as tools." },
  library: { title: "Library", text: "Product images, reference photos and saved outputs, sealed at rest." },
  usage: { title: "Usage", text: "Requests, credits and latency per key and model. Prompts and outputs are never stored." },
  keys: { title: "API keys", text: "Keys for the OpenAI-compatible API and the alt text API." },
  providers: { title: "Providers", text: "Connections to AI providers, with the organisation's keys or your own." },
  privacy: { title: "Privacy", text: "What Easel keeps, for how long, and your rights: export, correction, deletion." },
  admin: { title: "Admin", text: "Users, credits, models and pricing, the retention report and the audit log." },
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function fact(dl, label, value) {
  dl.append(el("dt", {}, label), el("dd", {}, value));
}

async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  const body = await res.json().catch(() => null);
  return { ok: res.ok, status: res.status, body };
}

function formatUptime(s) {
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${s % 60} s`;
}

// /api/status makes a durable write to prove readiness: ask once per view, and let
// the header's version reuse the answer.
let statusRequest = null;
function fetchStatus(fresh) {
  if (fresh || !statusRequest) statusRequest = getJSON("/api/status");
  return statusRequest;
}

async function renderStatus(main) {
  main.append(el("h1", {}, "Status"));
  const card = el("section", { class: "card", "aria-labelledby": "status-h" }, el("h2", { id: "status-h", class: "muted" }, "This server"));
  const dl = el("dl", { class: "facts", id: "status-facts" });
  card.append(dl);
  main.append(card);
  const [status, health] = await Promise.all([fetchStatus(true), getJSON("/healthz")]);
  if (!status.ok || !status.body) {
    fact(dl, "Server", el("span", { class: "pill bad" }, `unreachable (${status.status})`));
    return;
  }
  const s = status.body;
  fact(dl, "Version", s.version);
  fact(dl, "Live", el("span", { class: `pill ${health.ok ? "ok" : "bad"}` }, health.ok ? "yes" : "no"));
  fact(dl, "Ready", el("span", { class: `pill ${s.ready ? "ok" : "bad"}`, id: "ready" }, s.ready ? "ready" : "storage unavailable"));
  fact(dl, "Uptime", formatUptime(s.uptime_seconds));
  const links = el("p", { class: "muted" }, "Machine-readable: ");
  for (const [href, label] of [["/openapi.json", "OpenAPI"], ["/metrics", "metrics"], ["/readyz", "readiness"]]) {
    links.append(el("a", { href }, label), " ");
  }
  main.append(links);
}

function renderSection(main, key) {
  const s = sections[key];
  main.append(el("h1", {}, s.title));
  main.append(el("section", { class: "card" }, el("p", {}, s.text), el("p", { class: "muted" }, "This section is not available in this version of Easel yet.")));
}

async function route() {
  const key = (location.hash.replace(/^#\/?/, "") || "status").split("/")[0];
  const known = key === "status" || key in sections;
  const section = known ? key : "status";
  const main = document.getElementById("main");
  main.replaceChildren();
  main.removeAttribute("data-ready");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${section === "status" ? "Status" : sections[section].title} · Easel`;
  try {
    if (section === "status") await renderStatus(main);
    else renderSection(main, section);
  } finally {
    main.setAttribute("data-ready", section);
  }
}

async function showVersion() {
  const r = await fetchStatus(false);
  if (r.ok && r.body) document.getElementById("version").textContent = `v${r.body.version}`;
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => { route().then(showVersion); });
