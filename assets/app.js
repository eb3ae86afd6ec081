// Easel UI: a hash router over the sections. No inline script, no external requests:
// everything comes from this server (CSP: script-src 'self'). The session lives in an
// HttpOnly cookie the page cannot read; the CSRF token is kept in memory only.
"use strict";

const sections = {
  "alt-text": "Alt text",
  skills: "Skills",
  library: "Library",
  usage: "Usage",
  keys: "API keys",
  providers: "Providers",
  privacy: "Privacy",
  admin: "Admin",
  account: "Account",
  signin: "Sign in",
  signup: "Create an account",
};
const PUBLIC = new Set(["status", "signin", "signup"]);
const SCOPES = ["alt_text", "chat", "images", "skills", "assets", "admin_read"];

let me = null; // { account, csrf }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fact(dl, label, value) {
  dl.append(el("dt", {}, label), el("dd", {}, value));
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  return { ok: res.ok, status: res.status, body: data };
}

function getJSON(path) { return api("GET", path); }

function errorText(r) {
  return (r.body && r.body.error && r.body.error.message) || `the server answered ${r.status}`;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// A message area inside a card: role=alert for problems, role=status for success.
function notice(kind) {
  return el("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", hidden: true });
}
function say(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function field(label, attrs) {
  const id = attrs.id || `f-${attrs.name}`;
  return el("label", { for: id }, el("span", {}, label), el("input", { id, ...attrs }));
}

function checkbox(label, attrs) {
  const id = attrs.id || `f-${attrs.name}`;
  return el("label", { class: "check", for: id }, el("input", { type: "checkbox", id, ...attrs }), el("span", {}, label));
}

// A form whose submit runs `action(values)`; shows its error or success message.
function form(id, title, fields, button, action) {
  const f = el("form", { id, class: "card", novalidate: false }, el("h2", {}, title), ...fields);
  const err = notice("error");
  const ok = notice("ok");
  const submit = el("button", { type: "submit" }, button);
  f.append(err, ok, el("div", { class: "actions" }, submit));
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say(err, ""); say(ok, "");
    submit.disabled = true;
    const values = {};
    for (const input of f.querySelectorAll("input, select")) {
      if (!input.name) continue;
      if (input.type === "checkbox") {
        if (input.dataset.group) (values[input.dataset.group] ||= []).push(...(input.checked ? [input.value] : []));
        else values[input.name] = input.checked;
      } else values[input.name] = input.value;
    }
    try {
      const message = await action(values, f);
      if (message) say(ok, message);
    } catch (e) {
      say(err, e.message);
    } finally {
      submit.disabled = false;
    }
  });
  return f;
}

async function must(promise) {
  const r = await promise;
  if (!r.ok) throw new Error(errorText(r));
  return r.body;
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

function adopt(body) {
  me = { account: body.account, csrf: body.csrf_token };
  showUser();
}

async function renderSignin(main) {
  main.append(el("h1", {}, "Sign in"));

  const opts = await getJSON("/api/auth/options");
  if (opts.ok && opts.body.setup_needed) {
    main.append(el("section", { class: "card", id: "setup" },
      el("h2", {}, "First start"),
      el("p", {}, "No account exists yet. Create the first admin on the server:"),
      el("pre", {}, "easel user create --email you@example.com --admin --password-stdin")));
  }
  main.append(form("signin-form", "Your account", [
    field("Email", { name: "email", type: "email", autocomplete: "username", required: true }),
    field("Password", { name: "password", type: "password", autocomplete: "current-password", required: true }),
  ], "Sign in", async (v) => {
    const body = await must(api("POST", "/api/auth/login", { email: v.email, password: v.password }));
    adopt(body);
    if (body.deletion_cancelled) privacyFlash = "Welcome back: signing in cancelled your deletion request, and your account is active again.";
    showPolicyNotice();
    location.hash = body.account.must_change_password ? "#/account" : "#/keys";
    return "";
  }));
  if (opts.ok && opts.body.signup !== "closed") {
    main.append(el("p", {}, "No account yet? ", el("a", { href: "#/signup" }, "Create one"), opts.body.signup === "invite" ? " (with your invite link)." : "."));
  }
}

async function renderSignup(main, params) {
  main.append(el("h1", {}, "Create an account"));
  const opts = await getJSON("/api/auth/options");
  const invite = params.get("invite") || "";
  if (opts.ok && opts.body.signup === "closed") {
    main.append(el("section", { class: "card" }, el("p", {}, "Sign-up is closed here. Ask an admin to create an account for you.")));
    return;
  }
  if (opts.ok && opts.body.signup === "invite" && !invite) {
    main.append(el("section", { class: "card" }, el("p", {}, "Sign-up here needs an invite link from an admin.")));
    return;
  }
  main.append(form("signup-form", invite ? "You were invited" : "Your details", [
    field("Name", { name: "name", autocomplete: "name", required: true, maxlength: 100 }),
    field("Email", { name: "email", type: "email", autocomplete: "email", required: true }),
    field("Company (optional)", { name: "company", autocomplete: "organization", maxlength: 100 }),
    field("Password (at least 12 characters)", { name: "password", type: "password", autocomplete: "new-password", required: true, minlength: 12 }),
    checkbox("I am 18 years or older", { name: "adult", required: true }),
  ], "Create account", async (v) => {
    const body = await must(api("POST", "/api/auth/signup", {
      name: v.name, email: v.email, company: v.company || null, password: v.password, adult: v.adult, invite: invite || null,
    }));
    adopt(body);
    location.hash = "#/keys";
    return "";
  }));
}

async function renderAccount(main) {
  main.append(el("h1", {}, "Account"));
  const a = me.account;
  if (a.must_change_password) {
    main.append(el("p", { class: "notice error", role: "alert", id: "must-change" }, "Choose a new password before going on: your password was set by an admin."));
  }
  const pwFields = [
    field("Current password", { name: "current_password", type: "password", autocomplete: "current-password", required: true }),
    field("New password (at least 12 characters)", { name: "new_password", type: "password", autocomplete: "new-password", required: true, minlength: 12 }),
  ];
  if (!a.adult_attested_at) pwFields.push(checkbox("I am 18 years or older", { name: "adult", required: true }));
  main.append(form("password-form", "Password", pwFields, "Change password", async (v, f) => {
    const body = await must(api("POST", "/api/account/password", { current_password: v.current_password, new_password: v.new_password, adult: !!v.adult }));
    me.csrf = body.csrf_token;
    f.reset();
    const fresh = await getJSON("/api/auth/session");
    if (fresh.ok && fresh.body.signed_in) adopt(fresh.body);
    if (a.must_change_password) { location.hash = "#/keys"; return ""; }
    return "Password changed. Every other session has ended.";
  }));
  if (a.must_change_password) return;

  main.append(form("profile-form", "Profile", [
    field("Name", { name: "name", value: a.name, required: true, maxlength: 100 }),
    field("Company", { name: "company", value: a.company || "", maxlength: 100 }),
  ], "Save", async (v) => {
    const body = await must(api("PATCH", "/api/account", { name: v.name, company: v.company }));
    me.account = body; showUser();
    return "Saved.";
  }));
  main.append(form("email-form", "Sign-in email", [
    field("Email", { name: "email", type: "email", value: a.email, required: true }),
    field("Password (to confirm)", { name: "password", type: "password", autocomplete: "current-password", required: true }),
  ], "Change email", async (v, f) => {
    const body = await must(api("POST", "/api/account/email", { email: v.email, password: v.password }));
    me.account = body;
    f.querySelector("[name=password]").value = "";
    return "Email changed.";
  }));

  const card = el("section", { class: "card", id: "sessions" }, el("h2", {}, "Sessions"));
  const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Signed in"), el("th", {}, "Last active"), el("th", {}, "Ends"), el("th", {}, ""))));
  const tbody = el("tbody", {});
  table.append(tbody);
  const err = notice("error");
  const everywhere = el("button", { type: "button", class: "danger", id: "signout-everywhere" }, "Sign out everywhere");
  everywhere.addEventListener("click", async () => {
    const r = await api("DELETE", "/api/account/sessions");
    if (!r.ok) return say(err, errorText(r));
    me = null; showUser(); location.hash = "#/signin";
  });
  card.append(table, err, el("div", { class: "actions" }, everywhere));
  main.append(card);
  const list = await getJSON("/api/account/sessions");
  if (!list.ok) return say(err, errorText(list));
  for (const s of list.body) {
    const cell = el("td", {});
    if (s.current) cell.append(el("span", { class: "pill ok" }, "this browser"));
    else {
      const b = el("button", { type: "button", class: "small" }, "End");
      b.addEventListener("click", async () => {
        const r = await api("DELETE", `/api/account/sessions/${encodeURIComponent(s.id)}`);
        if (!r.ok) return say(err, errorText(r));
        b.closest("tr").remove();
      });
      cell.append(b);
    }
    tbody.append(el("tr", {}, el("td", {}, when(s.created_at)), el("td", {}, when(s.last_seen_at)), el("td", {}, when(s.expires_at)), cell));
  }
}

function copyButton(input) {
  const b = el("button", { type: "button", class: "small", id: "copy-secret" }, "Copy");
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      input.select();
      document.execCommand("copy");
    }
    b.textContent = "Copied";
  });
  return b;
}

async function renderKeys(main) {
  main.append(el("h1", {}, "API keys"));
  main.append(el("p", { class: "muted" }, "Keys for the OpenAI-compatible API and the alt text API. Send one as ", el("code", {}, "Authorization: Bearer easel_sk_…"), ". Only a fingerprint is stored: a key is shown once, when it is made."));
  await balanceCard(main);
  const reveal = el("section", { class: "card secret", id: "new-key", hidden: true });
  const scopeBoxes = SCOPES.filter((s) => s !== "admin_read" || me.account.role === "admin")
    .map((s) => checkbox(s, { name: `scope-${s}`, id: `scope-${s}`, value: s, "data-group": "scopes", checked: s !== "admin_read" }));
  const scopes = el("fieldset", { class: "scopes" }, el("legend", {}, "Scopes"), ...scopeBoxes);
  main.append(form("key-form", "New key", [
    field("Name", { name: "name", required: true, maxlength: 100, placeholder: "e.g. shop backend" }),
    field("Expires after (days, optional)", { name: "expires_days", type: "number", min: 1 }),
    field("Requests per minute (optional)", { name: "rpm", type: "number", min: 1 }),
    field("Credit budget (optional)", { name: "credit_budget", type: "number", min: 0 }),
    scopes,
  ], "Create key", async (v, f) => {
    const num = (x) => (x === "" || x === undefined ? null : Number(x));
    const body = await must(api("POST", "/api/keys", {
      name: v.name, expires_days: num(v.expires_days), rpm: num(v.rpm), credit_budget: num(v.credit_budget), scopes: v.scopes || [],
    }));
    const input = el("input", { id: "secret", readonly: true, value: body.secret, "aria-label": "The new key" });
    reveal.replaceChildren(
      el("h2", {}, `Key “${body.key.name}” created`),
      el("p", {}, "Copy it now: it will not be shown again."),
      el("div", { class: "row" }, input, copyButton(input)));
    reveal.hidden = false;
    f.reset();
    await fillKeys();
    reveal.scrollIntoView({ block: "nearest" });
    return "";
  }));
  main.insertBefore(reveal, main.querySelector("#key-form"));
  const card = el("section", { class: "card" }, el("h2", {}, "Your keys"));
  const err = notice("error");
  const tbody = el("tbody", { id: "keys-body" });
  card.append(el("table", { id: "keys" }, el("thead", {}, el("tr", {}, ...["Name", "Key", "Scopes", "Created", "Last used", "Expires", ""].map((h) => el("th", {}, h)))), tbody), err);
  main.append(card);

  async function fillKeys() {
    const r = await getJSON("/api/keys");
    if (!r.ok) return say(err, errorText(r));
    tbody.replaceChildren();
    if (!r.body.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No keys yet.")));
    for (const k of r.body) {
      const revoke = el("button", { type: "button", class: "small danger", "data-revoke": k.id }, "Revoke");
      revoke.addEventListener("click", async () => {
        if (revoke.dataset.armed !== "1") { revoke.dataset.armed = "1"; revoke.textContent = "Confirm revoke"; return; }
        const d = await api("DELETE", `/api/keys/${encodeURIComponent(k.id)}`);
        if (!d.ok) return say(err, errorText(d));
        await fillKeys();
      });
      const expires = k.expires_at ? (k.expired ? el("span", { class: "pill bad" }, "expired") : when(k.expires_at)) : "never";
      tbody.append(el("tr", { "data-key": k.id }, el("td", {}, k.name), el("td", {}, el("code", {}, `${k.prefix}…`)), el("td", {}, k.scopes.join(", ")),
        el("td", {}, when(k.created_at)), el("td", {}, when(k.last_used_at)), el("td", {}, expires), el("td", {}, revoke)));
    }
  }
  await fillKeys();
}

async function renderAdmin(main) {
  main.append(el("h1", {}, "Admin"));
  if (me.account.role !== "admin") {
    main.append(el("section", { class: "card" }, el("p", {}, "Only admins can see this page.")));
    return;
  }
  const err = notice("error");
  const users = el("section", { class: "card", id: "users" }, el("h2", {}, "Users"));
  const tbody = el("tbody", {});
  users.append(el("table", {}, el("thead", {}, el("tr", {}, ...["Email", "Name", "Role", "Status", "Created", ""].map((h) => el("th", {}, h)))), tbody), err);
  main.append(users);

  async function change(id, patch) {
    const r = await api("PATCH", `/api/admin/users/${encodeURIComponent(id)}`, patch);
    if (!r.ok) say(err, errorText(r)); else say(err, "");
    await fillUsers();
  }
  async function fillUsers() {
    const r = await getJSON("/api/admin/users");
    if (!r.ok) return say(err, errorText(r));
    tbody.replaceChildren();
    for (const u of r.body) {
      const role = el("select", { "aria-label": `Role of ${u.email}` }, ...["member", "admin"].map((x) => el("option", { value: x, selected: u.role === x }, x)));
      role.addEventListener("change", () => change(u.id, { role: role.value }));
      const toggle = el("button", { type: "button", class: "small" }, u.status === "disabled" ? "Enable" : "Disable");
      toggle.addEventListener("click", () => change(u.id, { status: u.status === "disabled" ? "active" : "disabled" }));
      const pw = el("input", { type: "password", placeholder: "new password", "aria-label": `New password for ${u.email}`, autocomplete: "new-password" });
      const reset = el("button", { type: "button", class: "small" }, "Reset password");
      reset.addEventListener("click", async () => {
        const x = await api("POST", `/api/admin/users/${encodeURIComponent(u.id)}/password`, { password: pw.value });
        say(err, x.ok ? "" : errorText(x));
        if (x.ok) { pw.value = ""; reset.textContent = "Reset: change due"; }
      });
      tbody.append(el("tr", {}, el("td", {}, u.email), el("td", {}, u.name), el("td", {}, role),
        el("td", {}, el("span", { class: `pill ${u.status === "active" ? "ok" : "bad"}` }, u.status)), el("td", {}, when(u.created_at)),
        el("td", { class: "row" }, toggle, pw, reset)));
    }
  }

  main.append(form("user-form", "New user", [
    field("Email", { name: "email", type: "email", required: true }),
    field("Name", { name: "name", required: true }),
    el("label", { for: "f-role" }, el("span", {}, "Role"), el("select", { id: "f-role", name: "role" }, el("option", { value: "member" }, "member"), el("option", { value: "admin" }, "admin"))),
    field("First password (they change it at first sign-in)", { name: "password", type: "password", autocomplete: "new-password", required: true, minlength: 12 }),
  ], "Create user", async (v, f) => {
    await must(api("POST", "/api/admin/users", { email: v.email, name: v.name, role: v.role, password: v.password }));
    f.reset();
    await fillUsers();
    return "User created.";
  }));

  const inviteOut = el("section", { class: "card secret", id: "new-invite", hidden: true });
  main.append(form("invite-form", "Invite link", [
    field("Only for this email (optional)", { name: "email", type: "email" }),
    el("label", { for: "f-invite-role" }, el("span", {}, "Role"), el("select", { id: "f-invite-role", name: "role" }, el("option", { value: "member" }, "member"), el("option", { value: "admin" }, "admin"))),
  ], "Create invite link", async (v, f) => {
    const body = await must(api("POST", "/api/admin/invites", { email: v.email || null, role: v.role }));
    const input = el("input", { readonly: true, value: body.url, "aria-label": "Invite link" });
    inviteOut.replaceChildren(el("h2", {}, "Invite link"), el("p", {}, `Single use; valid until ${when(body.invite.expires_at)}. It is shown only now.`), el("div", { class: "row" }, input, copyButton(input)));
    inviteOut.hidden = false;
    f.reset();
    await fillInvites();
    return "";
  }));
  main.append(inviteOut);
  const invites = el("tbody", {});
  main.append(el("section", { class: "card" }, el("h2", {}, "Open invites"), el("table", {}, el("thead", {}, el("tr", {}, ...["For", "Role", "Expires", ""].map((h) => el("th", {}, h)))), invites)));
  async function fillInvites() {
    const r = await getJSON("/api/admin/invites");
    if (!r.ok) return say(err, errorText(r));
    invites.replaceChildren();
    for (const i of r.body) {
      const b = el("button", { type: "button", class: "small danger" }, "Withdraw");
      b.addEventListener("click", async () => { await api("DELETE", `/api/admin/invites/${encodeURIComponent(i.id)}`); await fillInvites(); });
      invites.append(el("tr", {}, el("td", {}, i.email || "anyone"), el("td", {}, i.role), el("td", {}, i.expired ? "expired" : when(i.expires_at)), el("td", {}, b)));
    }
  }

  const creditsSlot = el("div", { id: "credits-slot" });
  const privacySlot = el("div", { id: "privacy-slot" });
  main.append(creditsSlot, privacySlot);
  const audit = el("tbody", {});
  main.append(el("section", { class: "card", id: "audit" }, el("h2", {}, "Audit log"), el("table", {}, el("thead", {}, el("tr", {}, ...["When", "Action", "By", "On", "Detail"].map((h) => el("th", {}, h)))), audit)));
  await Promise.all([fillUsers(), fillInvites()]);
  const people = await getJSON("/api/admin/users");
  if (people.ok) await renderAdminCredits(creditsSlot, people.body);
  await renderAdminPrivacy(privacySlot);
  const log = await getJSON("/api/admin/audit?limit=100");
  if (log.ok) for (const e of log.body.entries) {
    audit.append(el("tr", {}, el("td", {}, when(e.at)), el("td", {}, el("code", {}, e.action)), el("td", {}, e.actor || "system"), el("td", {}, e.target || ""), el("td", {}, e.detail)));
  }
}

function showUser() {
  const box = document.getElementById("user");
  box.replaceChildren();
  document.body.classList.toggle("signed-in", !!me);
  document.body.classList.toggle("is-admin", !!me && me.account.role === "admin");
  if (!me) {
    box.append(el("a", { href: "#/signin", id: "signin-link" }, "Sign in"));
    return;
  }
  const out = el("button", { type: "button", class: "link", id: "signout" }, "Sign out");
  out.addEventListener("click", async () => {
    await api("POST", "/api/auth/logout");
    me = null; showUser(); location.hash = "#/signin";
  });
  box.append(el("a", { href: "#/account", id: "who" }, me.account.name), out);
}

async function route() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const key = (path || "status").split("/")[0];
  let section = key === "status" || key in sections ? key : "status";
  if (!me && !PUBLIC.has(section)) section = "signin";
  if (me && me.account.must_change_password && !PUBLIC.has(section)) section = "account";
  if (me && (section === "signin" || section === "signup")) section = "keys";
  // Leaving a skill with unsaved changes asks first.
  if (typeof sk !== "undefined" && sk && sk.dirty && location.hash !== `#/skills/${encodeURIComponent(sk.slug)}`) {
    if (!confirm("Leave this skill without saving your changes?")) {
      history.replaceState(null, "", `#/skills/${encodeURIComponent(sk.slug)}`);
      return;
    }
    sk.dirty = false;
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  main.classList.toggle("wide", section === "skills");
  main.removeAttribute("data-ready");
  // A message that outlives the page it was made on (a sign-out, a sign-in).
  if (privacyFlash) {
    main.append(el("p", { class: "notice ok", role: "status", id: "flash" }, privacyFlash));
    privacyFlash = "";
  }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${section === "status" ? "Status" : sections[section]} · Easel`;
  try {
    if (section === "status") await renderStatus(main);
    else if (section === "signin") await renderSignin(main);
    else if (section === "signup") await renderSignup(main, new URLSearchParams(query || ""));
    else if (section === "account") await renderAccount(main);
    else if (section === "keys") await renderKeys(main);
    else if (section === "admin") await renderAdmin(main);
    else if (section === "providers") await renderProviders(main);
    else if (section === "usage") await renderUsage(main);
    else if (section === "alt-text") await renderAltText(main);
    else if (section === "privacy") await renderPrivacy(main);
    else if (section === "library") await renderLibrary(main);
    else if (section === "skills") await renderSkills(main, (path || "").split("/").slice(1));
  } finally {
    main.setAttribute("data-ready", section);
  }
}

async function showVersion() {
  const r = await fetchStatus(false);
  if (r.ok && r.body) document.getElementById("version").textContent = `v${r.body.version}`;
}

async function boot() {
  const s = await getJSON("/api/auth/session");
  if (s.ok && s.body.signed_in) adopt(s.body);
  else showUser();
  await route();
  await showPolicyNotice();
  await showVersion();
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", boot);
