// Easel UI for the gateway: provider connections, usage and credits. Uses the helpers
// of app.js (el, api, form, field, must, notice, say, when, me), loaded before it.
"use strict";

const KINDS = ["openai", "openai-compatible", "anthropic", "gemini", "bfl"];

function credits(n) {
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: 4 });
}

function select(label, name, options) {
  const id = `f-${name}`;
  return el("label", { for: id }, el("span", {}, label),
    el("select", { id, name }, ...options.map((o) => el("option", { value: o }, o))));
}

// The caller's balance, for the landing page and Usage.
async function balanceCard(main) {
  const r = await getJSON("/api/credits?limit=1");
  if (!r.ok) return;
  const b = r.body.balance;
  const dl = el("dl", { class: "facts" });
  fact(dl, "Balance", el("strong", { id: "balance" }, `${credits(b.balance)} credits`));
  if (b.held > 0) fact(dl, "Held by requests in flight", credits(b.held));
  main.append(el("section", { class: "card", id: "credits" }, el("h2", {}, "Credits"), dl));
}

function providerRows(list, tbody, base, onChange, err) {
  tbody.replaceChildren();
  if (!list.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "None yet.")));
  for (const p of list) {
    const key = p.key_set ? (p.key_hint ? el("code", {}, `…${p.key_hint}`) : "set") : el("span", { class: "pill bad" }, "no key");
    const status = p.skipped_until ? el("span", { class: "pill bad" }, `skipped until ${when(p.skipped_until)}`)
      : (p.failures ? `${p.failures} failures in a row` : "ok");
    const actions = el("td", {});
    const result = el("span", { class: "muted", "data-test-result": p.name });
    if (base) {
      const test = el("button", { type: "button", class: "small", "data-test": p.name }, "Test");
      test.addEventListener("click", async () => {
        test.disabled = true;
        result.textContent = "testing…";
        const t = await api("POST", `${base}/${encodeURIComponent(p.name)}/test`);
        test.disabled = false;
        result.textContent = t.ok ? `${t.body.ok ? "✓" : "✗"} ${t.body.message}` : errorText(t);
      });
      actions.append(test);
      if (p.source !== "config") {
        const remove = el("button", { type: "button", class: "small danger", "data-remove": p.name }, "Remove");
        remove.addEventListener("click", async () => {
          if (remove.dataset.armed !== "1") { remove.dataset.armed = "1"; remove.textContent = "Confirm remove"; return; }
          const d = await api("DELETE", `${base}/${encodeURIComponent(p.name)}`);
          if (!d.ok) return say(err, errorText(d));
          await onChange();
        });
        actions.append(remove);
      }
      actions.append(result);
    }
    tbody.append(el("tr", { "data-provider": p.name }, el("td", {}, p.name), el("td", {}, p.kind), el("td", {}, el("code", {}, p.base_url)),
      el("td", {}, key), el("td", {}, status), actions));
  }
}

function providerForm(id, title, path, after) {
  return form(id, title, [
    field("Name", { name: "name", required: true, maxlength: 40, pattern: "[a-z0-9_\\-]+", placeholder: "e.g. openai" }),
    select("Kind", "kind", KINDS),
    field("Endpoint (required for openai-compatible)", { name: "base_url", type: "url", placeholder: "https://openrouter.ai/api/v1" }),
    field("API key", { name: "api_key", type: "password", autocomplete: "off" }),
  ], "Add connection", async (v, f) => {
    await must(api("POST", path, { name: v.name, kind: v.kind, base_url: v.base_url || null, api_key: v.api_key }));
    f.reset();
    await after();
    return `Connection “${v.name}” added; its key is sealed and will not be shown again.`;
  });
}

async function renderProviders(main) {
  main.append(el("h1", {}, "Providers"));
  main.append(el("p", { class: "muted" }, "Connections to AI providers. A connection of your own named like one of the organisation's (for example ",
    el("code", {}, "openai"), ") serves those models with your key; ", el("code", {}, "NAME/model"), " reaches any model of your own connection. Keys are sealed and never shown again."));
  const err = notice("error");
  const mine = el("tbody", { id: "personal-body" });
  const org = el("tbody", { id: "org-body" });
  const head = () => el("thead", {}, el("tr", {}, ...["Name", "Kind", "Endpoint", "Key", "Status", ""].map((h) => el("th", {}, h))));
  const isAdmin = me.account.role === "admin";
  async function fill() {
    const r = await getJSON("/api/providers");
    if (!r.ok) return say(err, errorText(r));
    providerRows(r.body.personal, mine, "/api/providers", fill, err);
    providerRows(r.body.organisation, org, isAdmin ? "/api/admin/providers" : null, fill, err);
  }
  main.append(el("section", { class: "card", id: "personal" }, el("h2", {}, "Your own keys"), el("table", {}, head(), mine), err));
  main.append(providerForm("personal-form", "Add your own key", "/api/providers", fill));
  main.append(el("section", { class: "card", id: "organisation" }, el("h2", {}, "The organisation's"), el("table", {}, head(), org)));
  if (isAdmin) main.append(providerForm("org-form", "Add an organisation connection", "/api/admin/providers", fill));
  await fill();
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

// Daily credits per model as stacked bars (SVG attributes, no inline styles: CSP).
function dailyChart(days) {
  const byDay = new Map();
  const models = [];
  for (const d of days) {
    if (!byDay.has(d.day)) byDay.set(d.day, []);
    byDay.get(d.day).push(d);
    if (!models.includes(d.model)) models.push(d.model);
  }
  const totals = [...byDay.values()].map((list) => list.reduce((s, d) => s + d.requests, 0));
  const max = Math.max(1, ...totals);
  const w = 24, h = 120, gap = 6;
  const chart = svg("svg", { viewBox: `0 0 ${Math.max(1, byDay.size) * (w + gap)} ${h + 20}`, role: "img", "aria-label": "Requests per day and model", class: "chart" });
  let x = 0;
  for (const [day, list] of byDay) {
    let y = h;
    for (const d of list) {
      const bh = (d.requests / max) * h;
      y -= bh;
      const rect = svg("rect", { x, y, width: w, height: bh, class: `series s${models.indexOf(d.model) % 6}` });
      rect.append(svg("title", {}, `${day} · ${d.model}: ${d.requests} requests, ${credits(d.credits)} credits`));
      chart.append(rect);
    }
    chart.append(svg("text", { x: x + w / 2, y: h + 14, "text-anchor": "middle", class: "axis" }, day.slice(5)));
    x += w + gap;
  }
  const legend = el("ul", { class: "legend" }, ...models.map((m, i) => el("li", {}, el("span", { class: `swatch s${i % 6}` }), m)));
  return el("div", { id: "daily" }, chart, legend);
}

async function renderUsage(main) {
  main.append(el("h1", {}, "Usage"));
  main.append(el("p", { class: "muted" }, "One record per request: time, key, model, provider, tokens, images, credits, status and latency. Prompts and outputs are never stored."));
  await balanceCard(main);
  const daily = await getJSON("/api/usage/daily?days=30");
  const chartCard = el("section", { class: "card" }, el("h2", {}, "Last 30 days"));
  chartCard.append(daily.ok && daily.body.length ? dailyChart(daily.body) : el("p", { class: "muted" }, "No requests in the last 30 days."));
  main.append(chartCard);

  const tbody = el("tbody", { id: "usage-body" });
  const err = notice("error");
  const csv = el("a", { href: "/api/usage?format=csv", id: "csv", download: "easel-usage.csv" }, "Export CSV");
  const filters = el("form", { class: "row", id: "usage-filter" },
    field("Model", { name: "model", placeholder: "any" }),
    field("From", { name: "from", type: "date" }),
    field("To", { name: "to", type: "date" }),
    el("button", { type: "submit" }, "Filter"), csv);
  async function fill() {
    const q = new URLSearchParams();
    for (const input of filters.querySelectorAll("input")) if (input.value) q.set(input.name, input.value);
    csv.href = `/api/usage?${new URLSearchParams([...q, ["format", "csv"]])}`;
    const r = await getJSON(`/api/usage?${q}`);
    if (!r.ok) return say(err, errorText(r));
    say(err, "");
    tbody.replaceChildren();
    if (!r.body.records.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No requests match.")));
    for (const u of r.body.records) {
      tbody.append(el("tr", { "data-usage": u.id }, el("td", {}, when(u.at)), el("td", {}, u.endpoint), el("td", {}, u.model),
        el("td", {}, u.byok ? `${u.provider} (your key)` : u.provider), el("td", {}, `${u.input_tokens} / ${u.output_tokens}${u.images ? ` · ${u.images} img` : ""}`),
        el("td", {}, credits(u.credits)), el("td", {}, String(u.status)), el("td", {}, `${u.latency_ms} ms`)));
    }
  }
  filters.addEventListener("submit", (ev) => { ev.preventDefault(); fill(); });
  main.append(el("section", { class: "card" }, el("h2", {}, "Requests"), filters,
    el("table", { id: "usage" }, el("thead", {}, el("tr", {}, ...["When", "Endpoint", "Model", "Provider", "Tokens in / out", "Credits", "Status", "Latency"].map((h) => el("th", {}, h)))), tbody), err));
  await fill();
}

// Admin: balances of every account, and grants, purchases, refunds, adjustments.
async function renderAdminCredits(main, users) {
  const tbody = el("tbody", { id: "balances-body" });
  const card = el("section", { class: "card", id: "admin-credits" }, el("h2", {}, "Credits"),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Account", "Balance", "Held"].map((h) => el("th", {}, h)))), tbody));
  const email = new Map(users.map((u) => [u.id, u.email]));
  async function fill() {
    const r = await getJSON("/api/admin/credits");
    if (!r.ok) return;
    tbody.replaceChildren();
    for (const b of r.body) {
      tbody.append(el("tr", { "data-balance": b.account }, el("td", {}, email.get(b.account) || b.account), el("td", {}, credits(b.balance)), el("td", {}, credits(b.held))));
    }
  }
  const who = el("label", { for: "f-account" }, el("span", {}, "Account"),
    el("select", { id: "f-account", name: "account" }, ...users.map((u) => el("option", { value: u.id }, u.email))));
  main.append(card, form("grant-form", "Grant or adjust credits", [
    who,
    field("Amount (credits; negative only for an adjustment)", { name: "amount", type: "number", step: "any", required: true }),
    select("Kind", "kind", ["grant", "purchase", "refund", "adjustment"]),
    field("Note", { name: "note", maxlength: 500 }),
  ], "Post", async (v, f) => {
    const e = await must(api("POST", "/api/admin/credits", { account: v.account, amount: Number(v.amount), kind: v.kind, note: v.note }));
    f.reset();
    await fill();
    return `Posted ${credits(e.amount)} credits (${e.kind}); the balance is now ${credits(e.balance_after)}.`;
  }));
  await fill();
}
