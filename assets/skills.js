// Easel UI for skills: the list (new, from a template, import), and the editor: a
// palette, a canvas of nodes with typed ports, a parameter panel drawn from each node
// type's JSON Schema, the server's problems drawn on the nodes, a test-run panel with
// live progress, and version history. Uses the helpers of app.js (el, api, must, notice,
// say, when, errorText). Everything a graph holds (names, params, messages) is set as
// text, never as HTML: an imported file cannot put markup or script in the page.
"use strict";

const SK_SVG = "http://www.w3.org/2000/svg";

// The editor's state while a skill is open.
let sk = null;

function skTemplateVars(t) {
  // `{{name}}` is a variable; `\{{` is literal braces (graph.rs, parse_template).
  const names = [];
  const re = /(\\?)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
  for (const m of String(t || "").matchAll(re)) if (!m[1] && !names.includes(m[2])) names.push(m[2]);
  return names;
}

// The input ports of a node: its type's, or a template's variables.
function skInputs(node) {
  const spec = sk.specs[node.type];
  if (!spec) return [];
  if (spec.dynamic_inputs) return skTemplateVars(node.params.template).map((name) => ({ name, type: "text", required: true, many: false }));
  return spec.inputs;
}

function skNewId(type) {
  const base = (type.split(".").pop() || "node").replace(/[^A-Za-z0-9_]/g, "_");
  const taken = new Set(sk.graph.nodes.map((n) => n.id));
  if (!taken.has(base)) return base;
  for (let i = 2; ; i++) if (!taken.has(`${base}_${i}`)) return `${base}_${i}`;
}

function skSplit(end) {
  const at = String(end).lastIndexOf(".");
  return at < 0 ? [String(end), ""] : [end.slice(0, at), end.slice(at + 1)];
}

async function renderSkills(main, rest) {
  if (rest[0]) return renderSkillEditor(main, decodeURIComponent(rest[0]));
  sk = null;
  main.append(el("h1", {}, "Skills"));
  main.append(el("p", { class: "muted" }, "Workflows of nodes that people run here and agents call as tools (", el("code", {}, "POST /v1/skills/{slug}/run"), " or MCP at ", el("code", {}, "/mcp"), "). A run keeps nothing but its timings, unless a Save to library node keeps an image."));
  const err = notice("error");
  const tbody = el("tbody", { id: "sk-list" });
  main.append(el("section", { class: "card" }, el("h2", {}, "Your skills"),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Name", "Slug", "Versions", "Agents see", "Changed"].map((h) => el("th", {}, h)))), tbody), err));

  main.append(form("sk-new", "New skill", [
    field("Name", { name: "name", id: "sk-new-name", required: true, maxlength: 100 }),
    field("Description (agents read it)", { name: "description", id: "sk-new-description", maxlength: 2000 }),
  ], "Create", async (v) => {
    const s = await must(api("POST", "/api/skills", { name: v.name, description: v.description }));
    location.hash = `#/skills/${encodeURIComponent(s.slug)}`;
    return "";
  }));

  const templates = el("ul", { class: "sk-templates", id: "sk-templates" });
  const tErr = notice("error");
  main.append(el("section", { class: "card" }, el("h2", {}, "Start from an example"), templates, tErr));

  const file = el("input", { type: "file", id: "sk-import-file", accept: ".json,application/json" });
  const iErr = notice("error");
  file.addEventListener("change", async () => {
    say(iErr, "");
    const f = file.files[0];
    if (!f) return;
    let body;
    try { body = JSON.parse(await f.text()); } catch (_) { say(iErr, "That file is not JSON: choose a .skill.json file made by Export."); return; }
    const r = await api("POST", "/api/skills/import", body);
    if (!r.ok) { say(iErr, errorText(r)); file.value = ""; return; }
    location.hash = `#/skills/${encodeURIComponent(r.body.slug)}`;
  });
  main.append(el("section", { class: "card" }, el("h2", {}, "Import"),
    el("label", { for: "sk-import-file" }, "A skill file (made by Export on any Easel): "), file, iErr));

  const [list, tl] = await Promise.all([getJSON("/api/skills"), getJSON("/api/skills/templates")]);
  if (!list.ok) say(err, errorText(list));
  else if (!list.body.data.length) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted", id: "sk-none" }, "No skills yet: create one or start from an example.")));
  else for (const s of list.body.data) {
    tbody.append(el("tr", { "data-slug": s.slug },
      el("td", {}, el("a", { href: `#/skills/${encodeURIComponent(s.slug)}` }, s.name)),
      el("td", {}, el("code", {}, s.slug)), el("td", {}, String(s.latest_version)),
      el("td", {}, s.published_version ? el("span", { class: "pill ok" }, `v${s.published_version}`) : el("span", { class: "muted" }, "not published")),
      el("td", {}, when(s.updated_at))));
  }
  if (!tl.ok) say(tErr, errorText(tl));
  else for (const t of tl.body.data) {
    const use = el("button", { type: "button", class: "small", "data-template": t.id }, "Use");
    use.addEventListener("click", async () => {
      say(tErr, "");
      const r = await api("POST", `/api/skills/templates/${encodeURIComponent(t.id)}`, {});
      if (!r.ok) return say(tErr, errorText(r));
      location.hash = `#/skills/${encodeURIComponent(r.body.slug)}`;
    });
    templates.append(el("li", {}, el("div", {}, el("strong", {}, t.name), el("p", { class: "muted" }, t.description)), use));
  }
}

async function renderSkillEditor(main, slug) {
  const [skill, nodes, models] = await Promise.all([
    getJSON(`/api/skills/${encodeURIComponent(slug)}`), getJSON("/api/skills/nodes"), getJSON("/v1/models"),
  ]);
  main.append(el("p", {}, el("a", { href: "#/skills" }, "← All skills")));
  if (!skill.ok || !nodes.ok) {
    main.append(el("h1", {}, "Skill"), el("p", { class: "notice error", role: "alert" }, errorText(skill.ok ? nodes : skill)));
    return;
  }
  const specs = {};
  for (const n of nodes.body.data) specs[n.type] = n;
  sk = {
    slug, specs, accepts: nodes.body.accepts, skill: skill.body, graph: skill.body.graph, dirty: false, selected: null, armed: null,
    problems: [], models: models.ok ? models.body.data : [], checkTimer: 0, checkSeq: 0, run: null,
  };
  for (const n of sk.graph.nodes) { n.params ||= {}; n.position ||= { x: 40, y: 40 }; }

  const title = el("h1", { id: "sk-title" }, sk.skill.name);
  const meta = el("p", { class: "muted", id: "sk-meta" });
  const err = notice("error");
  const ok = notice("ok");
  const note = el("input", { id: "sk-note", placeholder: "What changed (optional)", "aria-label": "Note for the new version", maxlength: 200 });
  const save = el("button", { type: "button", id: "sk-save" }, "Save");
  const publish = el("button", { type: "button", id: "sk-publish" }, "Publish");
  const unpublish = el("button", { type: "button", class: "danger", id: "sk-unpublish" }, "Unpublish");
  const exp = el("a", { class: "button", id: "sk-export", href: `/api/skills/${encodeURIComponent(slug)}/export`, download: `${slug}.skill.json` }, "Export");
  const del = el("button", { type: "button", class: "danger", id: "sk-delete" }, "Delete");
  const bar = el("div", { class: "row sk-bar" }, note, save, publish, unpublish, exp, del);

  const palette = el("nav", { class: "sk-palette", id: "sk-palette", "aria-label": "Node types" });
  const board = el("div", { class: "sk-board", id: "sk-board" });
  const wires = document.createElementNS(SK_SVG, "svg");
  wires.setAttribute("class", "sk-wires");
  board.append(wires);
  const canvas = el("div", { class: "sk-canvas", id: "sk-canvas", tabindex: 0, "aria-label": "Canvas: click an output port, then an input port, to connect them" }, board);
  const hint = el("p", { class: "muted sk-hint", id: "sk-hint", "aria-live": "polite" }, "Add nodes from the left. Click an output port, then an input port, to connect them.");
  const panel = el("aside", { class: "sk-panel", id: "sk-panel", "aria-label": "Selected node" });
  const problemsList = el("ul", { class: "sk-problem-list", id: "sk-problems" });
  main.append(title, meta, bar, err, ok,
    el("div", { class: "sk-editor" }, palette, el("div", { class: "sk-middle" }, canvas, hint), panel),
    el("section", { class: "card", id: "sk-check" }, el("h2", {}, "Problems"), problemsList));
  const runCard = el("section", { class: "card", id: "sk-run" });
  const versionsCard = el("section", { class: "card", id: "sk-versions" });
  const runsCard = el("section", { class: "card", id: "sk-runs" });
  const agentsCard = el("section", { class: "card", id: "sk-agents" }, el("h2", {}, "Calling it"),
    el("p", {}, "Once published, agents and scripts call this skill with an API key that has the ", el("code", {}, "skills"), " scope:"),
    el("pre", {}, `curl -H "Authorization: Bearer easel_sk_…" ${location.origin}/v1/skills/${slug}/run \
  -d '{"inputs": {…}, "stream": false}'`),
    el("p", {}, "MCP clients connect to ", el("code", {}, `${location.origin}/mcp`), " with the same key; the skill is the tool ", el("code", {}, slug), "."));
  main.append(runCard, runsCard, versionsCard, agentsCard);

  // ---- the palette --------------------------------------------------------------
  const groups = {};
  for (const n of nodes.body.data) (groups[n.category] ||= []).push(n);
  for (const [cat, list] of Object.entries(groups)) {
    palette.append(el("h3", {}, cat));
    for (const n of list) {
      const b = el("button", { type: "button", class: "sk-add", "data-add": n.type, title: n.description }, n.title, n.paid ? el("span", { class: "sk-paid", title: "Spends credits" }, " ¢") : null);
      b.addEventListener("click", () => addNode(n.type));
      palette.append(b);
    }
  }

  function addNode(type) {
    const id = skNewId(type);
    const params = {};
    if (type.startsWith("input.") || type === "output") params.name = id.toLowerCase();
    // New nodes fill the visible part of the canvas left to right, then downwards.
    const count = sk.graph.nodes.length;
    const cols = Math.max(1, Math.floor((canvas.clientWidth - 40) / 230));
    const x = canvas.scrollLeft + 20 + (count % cols) * 230;
    const y = canvas.scrollTop + 20 + (Math.floor(count / cols) % 4) * 150;
    sk.graph.nodes.push({ id, type, params, position: { x, y } });
    sk.selected = { node: id };
    changed();
  }

  // ---- the canvas ---------------------------------------------------------------
  function nodeById(id) { return sk.graph.nodes.find((n) => n.id === id); }

  function drawNode(n) {
    const spec = sk.specs[n.type];
    const box = el("div", { class: "sk-node", "data-node": n.id, tabindex: 0, role: "group", "aria-label": `${spec ? spec.title : n.type} ${n.id}` });
    box.style.left = `${Math.max(0, n.position.x)}px`;
    box.style.top = `${Math.max(0, n.position.y)}px`;
    if (sk.selected && sk.selected.node === n.id) box.classList.add("selected");
    const head = el("div", { class: "sk-head" }, el("span", { class: "sk-type" }, spec ? spec.title : n.type), el("span", { class: "sk-id" }, n.id));
    const ins = el("ul", { class: "sk-ins" });
    for (const p of skInputs(n)) {
      const b = el("button", { type: "button", class: `sk-port in t-${p.type}`, "data-port": p.name, "data-type": p.type, title: `${p.name}: ${p.type}${p.required ? "" : " (optional)"}${p.many ? ", many" : ""}` }, p.name);
      b.addEventListener("click", (ev) => { ev.stopPropagation(); connectTo(n.id, p); });
      ins.append(el("li", {}, b));
    }
    const outs = el("ul", { class: "sk-outs" });
    for (const p of spec ? spec.outputs : []) {
      const b = el("button", { type: "button", class: `sk-port out t-${p.type}`, "data-port": p.name, "data-type": p.type, title: `${p.name}: ${p.type}` }, p.name);
      if (sk.armed && sk.armed.node === n.id && sk.armed.port === p.name) b.classList.add("armed");
      b.addEventListener("click", (ev) => { ev.stopPropagation(); arm(n.id, p); });
      outs.append(el("li", {}, b));
    }
    if (!spec) box.classList.add("bad");
    box.append(head, el("div", { class: "sk-ports" }, ins, outs), el("ul", { class: "sk-node-problems" }), el("p", { class: "sk-state", "aria-live": "polite" }));
    box.addEventListener("click", () => select({ node: n.id }));
    box.addEventListener("keydown", (ev) => {
      if (ev.target !== box) return;
      const step = ev.shiftKey ? 50 : 10;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (moves[ev.key]) {
        ev.preventDefault();
        n.position.x = Math.max(0, n.position.x + moves[ev.key][0]);
        n.position.y = Math.max(0, n.position.y + moves[ev.key][1]);
        box.style.left = `${n.position.x}px`; box.style.top = `${n.position.y}px`;
        markDirty(); drawWires();
      } else if (ev.key === "Delete" || ev.key === "Backspace") { ev.preventDefault(); removeNode(n.id); }
    });
    head.addEventListener("pointerdown", (ev) => drag(ev, n, box));
    return box;
  }

  function drag(ev, n, box) {
    if (ev.button !== 0) return;
    ev.preventDefault();
    const start = { x: ev.clientX, y: ev.clientY, nx: n.position.x, ny: n.position.y };
    let moved = false;
    grip(box).setPointerCapture(ev.pointerId);
    const move = (e) => {
      n.position.x = Math.max(0, Math.round(start.nx + e.clientX - start.x));
      n.position.y = Math.max(0, Math.round(start.ny + e.clientY - start.y));
      box.style.left = `${n.position.x}px`; box.style.top = `${n.position.y}px`;
      moved = true;
      drawWires();
    };
    const up = () => {
      grip(box).removeEventListener("pointermove", move);
      grip(box).removeEventListener("pointerup", up);
      if (moved) markDirty();
    };
    grip(box).addEventListener("pointermove", move);
    grip(box).addEventListener("pointerup", up);
  }
  function grip(box) { return box.querySelector(".sk-head"); }

  function draw() {
    for (const old of board.querySelectorAll(".sk-node")) old.remove();
    for (const n of sk.graph.nodes) board.append(drawNode(n));
    const far = sk.graph.nodes.reduce((m, n) => ({ x: Math.max(m.x, n.position.x + 400), y: Math.max(m.y, n.position.y + 300) }), { x: 1600, y: 900 });
    board.style.width = `${far.x}px`; board.style.height = `${far.y}px`;
    drawWires();
    drawProblems();
    drawPanel();
    drawRunInputs();
  }

  function portAt(nodeId, port, side) {
    const box = board.querySelector(`.sk-node[data-node="${CSS.escape(nodeId)}"]`);
    const p = box && box.querySelector(`.sk-port.${side}[data-port="${CSS.escape(port)}"]`);
    if (!p) return null;
    const b = board.getBoundingClientRect(), r = p.getBoundingClientRect();
    return { x: (side === "out" ? r.right : r.left) - b.left, y: r.top + r.height / 2 - b.top };
  }

  function drawWires() {
    wires.replaceChildren();
    wires.setAttribute("width", board.style.width || "1600px");
    wires.setAttribute("height", board.style.height || "900px");
    sk.graph.edges.forEach((e, i) => {
      const [fn, fp] = skSplit(e.from), [tn, tp] = skSplit(e.to);
      const a = portAt(fn, fp, "out"), b = portAt(tn, tp, "in");
      if (!a || !b) return;
      const dx = Math.max(40, Math.abs(b.x - a.x) / 2);
      const d = `M ${a.x} ${a.y} C ${a.x + dx} ${a.y}, ${b.x - dx} ${b.y}, ${b.x} ${b.y}`;
      const path = document.createElementNS(SK_SVG, "path");
      path.setAttribute("d", d);
      path.setAttribute("class", `sk-wire${sk.selected && sk.selected.edge === i ? " selected" : ""}${sk.problems.some((p) => p.edge === i) ? " bad" : ""}`);
      path.dataset.edge = String(i);
      const hit = document.createElementNS(SK_SVG, "path");
      hit.setAttribute("d", d);
      hit.setAttribute("class", "sk-wire-hit");
      hit.addEventListener("click", (ev) => { ev.stopPropagation(); select({ edge: i }); });
      wires.append(path, hit);
    });
  }

  // Clicking an output port arms it (clicking it again, Esc or the empty canvas
  // disarms it); the input ports that take its type are marked.
  function arm(node, port) {
    setArmed(sk.armed && sk.armed.node === node && sk.armed.port === port.name ? null : { node, port: port.name, type: port.type });
  }

  function setArmed(a) {
    sk.armed = a;
    for (const b of board.querySelectorAll(".sk-port")) b.classList.remove("armed", "can", "cannot");
    if (!a) { hint.textContent = "Click an output port, then an input port, to connect them."; return; }
    const out = board.querySelector(`.sk-node[data-node="${CSS.escape(a.node)}"] .sk-port.out[data-port="${CSS.escape(a.port)}"]`);
    if (out) out.classList.add("armed");
    for (const b of board.querySelectorAll(".sk-port.in")) {
      const same = b.closest(".sk-node").dataset.node === a.node;
      b.classList.add(!same && sk.accepts[b.dataset.type].includes(a.type) ? "can" : "cannot");
    }
    hint.textContent = `Connecting ${a.node}.${a.port} (${a.type}): click an input port that takes it. Esc cancels.`;
  }

  function connectTo(node, port) {
    if (!sk.armed) {
      hint.textContent = `To connect ${node}.${port.name}, click an output port first.`;
      return;
    }
    if (!sk.accepts[port.type].includes(sk.armed.type)) {
      hint.textContent = `${node}.${port.name} takes ${port.type}, not ${sk.armed.type}.`;
      return;
    }
    const to = `${node}.${port.name}`;
    const from = `${sk.armed.node}.${sk.armed.port}`;
    // An input that is not `many` takes one connection: a new one replaces the old.
    if (!port.many) sk.graph.edges = sk.graph.edges.filter((e) => e.to !== to);
    if (!sk.graph.edges.some((e) => e.from === from && e.to === to)) sk.graph.edges.push({ from, to });
    setArmed(null);
    hint.textContent = `Connected ${from} to ${to}.`;
    changed();
  }

  function removeNode(id) {
    sk.graph.nodes = sk.graph.nodes.filter((n) => n.id !== id);
    sk.graph.edges = sk.graph.edges.filter((e) => skSplit(e.from)[0] !== id && skSplit(e.to)[0] !== id);
    sk.selected = null;
    changed();
  }

  function select(what) {
    sk.selected = what;
    for (const b of board.querySelectorAll(".sk-node")) b.classList.toggle("selected", !!what && b.dataset.node === what.node);
    drawWires();
    drawPanel();
  }

  canvas.addEventListener("click", (ev) => { if (ev.target === canvas || ev.target === board || ev.target === wires) { setArmed(null); select(null); } });
  canvas.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && sk.armed) setArmed(null);
    if ((ev.key === "Delete" || ev.key === "Backspace") && sk.selected && sk.selected.edge !== undefined) {
      ev.preventDefault();
      sk.graph.edges.splice(sk.selected.edge, 1); sk.selected = null; changed();
    }
  });

  // ---- the parameter panel ------------------------------------------------------
  function modelOptions(schema) {
    const cap = schema["x-capability"];
    const ids = sk.models.filter((m) => !cap || (m.capabilities || []).includes(cap)).map((m) => m.id);
    if (schema["x-local"]) ids.push("local");
    return ids;
  }

  function paramField(n, name, schema, required) {
    const id = `sk-p-${name}`;
    const value = n.params[name];
    const widget = schema["x-widget"];
    let input;
    const set = (v) => {
      if (v === "" || v === undefined || v === null || (Array.isArray(v) && !v.length)) delete n.params[name];
      else n.params[name] = v;
      if (n.type === "template" && name === "template") {
        // The variables are the node's inputs: redraw it, and drop wires to ports gone.
        const names = skTemplateVars(v);
        sk.graph.edges = sk.graph.edges.filter((e) => { const [tn, tp] = skSplit(e.to); return tn !== n.id || names.includes(tp); });
        const old = board.querySelector(`.sk-node[data-node="${CSS.escape(n.id)}"]`);
        if (old) old.replaceWith(drawNode(n));
        drawWires();
      }
      if ((n.type.startsWith("input.")) && name === "name") drawRunInputs();
      markDirty(); scheduleCheck();
    };
    if (widget === "textarea") {
      input = el("textarea", { id, rows: 5, maxlength: schema.maxLength });
      input.value = value === undefined ? "" : String(value);
      input.addEventListener("input", () => set(input.value));
    } else if (widget === "select" || widget === "model") {
      const options = widget === "model" ? modelOptions(schema) : schema.enum || [];
      input = el("select", { id });
      input.append(el("option", { value: "" }, schema.default !== undefined ? `default (${schema.default})` : required ? "choose…" : "none"));
      for (const o of options) input.append(el("option", { value: o }, o));
      if (value !== undefined && !options.includes(String(value))) input.append(el("option", { value: String(value) }, `${value} (not available to you)`));
      input.value = value === undefined ? "" : String(value);
      input.addEventListener("change", () => set(input.value));
    } else if (widget === "number") {
      input = el("input", { id, type: "number", min: schema.minimum, max: schema.maximum, step: schema.type === "integer" ? 1 : "any", placeholder: schema.default !== undefined ? String(schema.default) : "" });
      input.value = value === undefined ? "" : String(value);
      input.addEventListener("input", () => set(input.value === "" ? "" : Number(input.value)));
    } else if (widget === "tags") {
      input = el("input", { id, placeholder: "comma-separated" });
      input.value = Array.isArray(value) ? value.join(", ") : "";
      input.addEventListener("input", () => set(input.value.split(",").map((t) => t.trim()).filter(Boolean)));
    } else if (widget === "color") {
      input = el("input", { id, placeholder: schema.default || "#ffffff", pattern: "^#[0-9a-fA-F]{6}([0-9a-fA-F]{2})?$" });
      input.value = value === undefined ? "" : String(value);
      const pick = el("input", { type: "color", "aria-label": `${schema.title}: pick`, class: "sk-color" });
      pick.value = /^#[0-9a-fA-F]{6}/.test(input.value) ? input.value.slice(0, 7) : "#ffffff";
      pick.addEventListener("input", () => { input.value = pick.value; set(pick.value); });
      input.addEventListener("input", () => { if (/^#[0-9a-fA-F]{6}/.test(input.value)) pick.value = input.value.slice(0, 7); set(input.value); });
      input = el("span", { class: "row" }, input, pick);
    } else {
      input = el("input", { id, maxlength: schema.maxLength, placeholder: schema.default !== undefined ? String(schema.default) : "" });
      input.value = value === undefined ? "" : String(value);
      input.addEventListener("input", () => set(input.value));
    }
    const problem = el("span", { class: "sk-param-problem", "data-param": name });
    return el("label", { for: id }, el("span", {}, `${schema.title || name}${required ? " *" : ""}`), input,
      schema.description ? el("small", { class: "muted" }, schema.description) : null, problem);
  }

  function drawPanel() {
    panel.replaceChildren();
    const s = sk.selected;
    if (s && s.edge !== undefined && sk.graph.edges[s.edge]) {
      const e = sk.graph.edges[s.edge];
      const rm = el("button", { type: "button", class: "danger", id: "sk-edge-remove" }, "Remove connection");
      rm.addEventListener("click", () => { sk.graph.edges.splice(s.edge, 1); sk.selected = null; changed(); });
      panel.append(el("h2", {}, "Connection"), el("p", {}, el("code", {}, e.from), " → ", el("code", {}, e.to)), rm);
      return;
    }
    const n = s && s.node && nodeById(s.node);
    if (!n) {
      panel.append(el("h2", {}, "Nothing selected"), el("p", { class: "muted" }, "Select a node to set its parameters. Arrow keys move a selected node; Delete removes it."));
      return;
    }
    const spec = sk.specs[n.type];
    panel.append(el("h2", {}, spec ? spec.title : n.type), el("p", { class: "muted" }, spec ? spec.description : `Unknown node type ${n.type}.`));
    const f = el("form", { id: "sk-params", class: "sk-params" });
    f.addEventListener("submit", (ev) => ev.preventDefault());
    const idIn = el("input", { id: "sk-p-id", value: n.id, maxlength: 64, pattern: "^[A-Za-z0-9_-]+$" });
    idIn.addEventListener("change", () => {
      const v = idIn.value.trim();
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(v) || (v !== n.id && nodeById(v))) { idIn.setCustomValidity("Letters, digits, _ and -, unique in the skill."); idIn.reportValidity(); return; }
      idIn.setCustomValidity("");
      const old = n.id;
      n.id = v;
      for (const e of sk.graph.edges) {
        const [fn, fp] = skSplit(e.from), [tn, tp] = skSplit(e.to);
        if (fn === old) e.from = `${v}.${fp}`;
        if (tn === old) e.to = `${v}.${tp}`;
      }
      sk.selected = { node: v };
      changed();
    });
    f.append(el("label", { for: "sk-p-id" }, el("span", {}, "Node id"), idIn));
    const schema = spec ? spec.params : { properties: {} };
    for (const [name, ps] of Object.entries(schema.properties || {})) f.append(paramField(n, name, ps, (schema.required || []).includes(name)));
    const t = el("input", { id: "sk-p-timeout", type: "number", min: 1, step: "any", placeholder: "server default" });
    t.value = n.timeout_s === undefined || n.timeout_s === null ? "" : String(n.timeout_s);
    t.addEventListener("input", () => { if (t.value === "") delete n.timeout_s; else n.timeout_s = Number(t.value); markDirty(); scheduleCheck(); });
    f.append(el("label", { for: "sk-p-timeout" }, el("span", {}, "Timeout (seconds)"), t));
    const rm = el("button", { type: "button", class: "danger", id: "sk-node-remove" }, "Remove node");
    rm.addEventListener("click", () => removeNode(n.id));
    f.append(el("div", { class: "actions" }, rm));
    panel.append(f);
    drawParamProblems();
  }

  // ---- checking -----------------------------------------------------------------
  function scheduleCheck() {
    clearTimeout(sk.checkTimer);
    sk.checkTimer = setTimeout(check, 300);
  }

  async function check() {
    const mine = sk;
    const seq = ++mine.checkSeq;
    const r = await api("POST", "/api/skills/check", { graph: mine.graph });
    if (sk !== mine || seq !== mine.checkSeq) return;
    if (!r.ok) { sk.problems = [{ code: "check_failed", message: errorText(r) }]; }
    else sk.problems = r.body.problems;
    sk.checked = r.ok && r.body.ok;
    drawProblems();
    drawWires();
    drawParamProblems();
  }

  function drawProblems() {
    for (const box of board.querySelectorAll(".sk-node")) {
      box.classList.remove("bad");
      box.querySelector(".sk-node-problems").replaceChildren();
      for (const p of box.querySelectorAll(".sk-port")) { p.classList.remove("bad"); p.removeAttribute("aria-invalid"); }
    }
    problemsList.replaceChildren();
    for (const p of sk.problems) {
      const box = p.node && board.querySelector(`.sk-node[data-node="${CSS.escape(p.node)}"]`);
      if (box) {
        box.classList.add("bad");
        box.querySelector(".sk-node-problems").append(el("li", {}, p.message));
        const port = p.port && box.querySelector(`.sk-port.in[data-port="${CSS.escape(p.port)}"], .sk-port.out[data-port="${CSS.escape(p.port)}"]`);
        if (port) { port.classList.add("bad"); port.setAttribute("aria-invalid", "true"); }
      }
      const where = [p.node, p.port || p.param].filter(Boolean).join(" · ");
      const item = el("li", { "data-code": p.code }, where ? el("strong", {}, `${where}: `) : null, p.message);
      if (p.node) item.addEventListener("click", () => select({ node: p.node }));
      problemsList.append(item);
    }
    if (!sk.problems.length) problemsList.append(el("li", { class: "ok", id: "sk-no-problems" }, sk.checked ? "None: the skill can run and be published." : "Checking…"));
  }

  function drawParamProblems() {
    const n = sk.selected && sk.selected.node;
    for (const slot of panel.querySelectorAll(".sk-param-problem")) {
      const p = sk.problems.find((x) => x.node === n && x.param === slot.dataset.param);
      slot.textContent = p ? p.message : "";
    }
  }

  // ---- saving, publishing, versions -----------------------------------------------
  function markDirty() {
    if (!sk.dirty) { sk.dirty = true; showMeta(); }
  }

  function changed() {
    markDirty();
    draw();
    scheduleCheck();
  }

  function showMeta() {
    const s = sk.skill;
    meta.replaceChildren(el("code", {}, s.slug), ` · version ${s.latest_version}`,
      s.published_version ? ` · agents run version ${s.published_version}` : " · not published", sk.dirty ? el("span", { class: "pill bad", id: "sk-unsaved" }, "unsaved") : "");
    unpublish.hidden = !s.published_version;
    title.textContent = s.name;
  }

  async function saveNow() {
    if (!sk.dirty) return true;
    const r = await api("PUT", `/api/skills/${encodeURIComponent(slug)}`, { graph: sk.graph, note: note.value || undefined });
    if (!r.ok) { say(err, errorText(r)); return false; }
    sk.skill = r.body; sk.dirty = false; note.value = "";
    showMeta();
    await fillVersions();
    return true;
  }

  save.addEventListener("click", async () => {
    say(err, ""); say(ok, "");
    const was = sk.dirty;
    if (await saveNow()) say(ok, was ? `Saved as version ${sk.skill.latest_version}.` : "Nothing changed since the last save.");
  });
  publish.addEventListener("click", async () => {
    say(err, ""); say(ok, "");
    if (!(await saveNow())) return;
    await publishVersion(sk.skill.latest_version);
  });
  async function publishVersion(n) {
    const r = await api("POST", `/api/skills/${encodeURIComponent(slug)}/publish`, { version: n });
    if (!r.ok) {
      say(err, errorText(r));
      if (r.body && r.body.error && r.body.error.problems) { sk.problems = r.body.error.problems; drawProblems(); drawWires(); }
      return;
    }
    Object.assign(sk.skill, r.body);
    showMeta();
    say(ok, `Version ${n} is published: agents see it as the tool “${slug}”.`);
    await fillVersions();
  }
  unpublish.addEventListener("click", async () => {
    say(err, ""); say(ok, "");
    const r = await api("POST", `/api/skills/${encodeURIComponent(slug)}/unpublish`, {});
    if (!r.ok) return say(err, errorText(r));
    Object.assign(sk.skill, r.body);
    showMeta();
    say(ok, "Unpublished: agents no longer see this skill.");
    await fillVersions();
  });
  del.addEventListener("click", async () => {
    if (!del.dataset.confirm) { del.dataset.confirm = "1"; del.textContent = "Delete with every version"; return; }
    const r = await api("DELETE", `/api/skills/${encodeURIComponent(slug)}`);
    if (!r.ok) return say(err, errorText(r));
    sk.dirty = false;
    location.hash = "#/skills";
  });

  async function fillVersions() {
    const r = await getJSON(`/api/skills/${encodeURIComponent(slug)}/versions`);
    versionsCard.replaceChildren(el("h2", {}, "Versions"));
    if (!r.ok) return versionsCard.append(el("p", { class: "notice error", role: "alert" }, errorText(r)));
    const tbody = el("tbody", { id: "sk-version-list" });
    for (const v of r.body.data) {
      const restore = el("button", { type: "button", class: "small", "data-restore": v.version }, "Restore");
      restore.addEventListener("click", async () => {
        say(err, ""); say(ok, "");
        const x = await api("POST", `/api/skills/${encodeURIComponent(slug)}/versions/${v.version}/restore`, {});
        if (!x.ok) return say(err, errorText(x));
        load(x.body);
        say(ok, `Version ${v.version} restored as version ${x.body.version}.`);
        await fillVersions();
      });
      const pub = el("button", { type: "button", class: "small", "data-publish": v.version }, "Publish");
      pub.addEventListener("click", async () => { say(err, ""); say(ok, ""); await publishVersion(v.version); });
      tbody.append(el("tr", { "data-version": v.version }, el("td", {}, `v${v.version}`), el("td", {}, v.note || ""), el("td", {}, String(v.nodes)),
        el("td", {}, when(v.created_at)), el("td", {}, v.published ? el("span", { class: "pill ok" }, "published") : ""),
        el("td", { class: "row" }, v.version === sk.skill.latest_version ? el("span", { class: "muted" }, "current") : restore, v.published ? null : pub)));
    }
    versionsCard.append(el("p", { class: "muted" }, "Each save that changes the graph is a new version. Restoring makes a new version from an old one."),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Version", "Note", "Nodes", "Saved", "", ""].map((h) => el("th", {}, h)))), tbody));
  }

  // Runs are kept as metadata only: no input, prompt or output.
  async function fillRuns() {
    const r = await getJSON(`/api/skills/${encodeURIComponent(slug)}/runs?limit=20`);
    runsCard.replaceChildren(el("h2", {}, "Recent runs"));
    if (!r.ok) return runsCard.append(el("p", { class: "notice error", role: "alert" }, errorText(r)));
    if (!r.body.data.length) return runsCard.append(el("p", { class: "muted", id: "sk-no-runs" }, "No runs yet."));
    const tbody = el("tbody", { id: "sk-run-list" });
    for (const run of r.body.data) {
      const failed = run.nodes.filter((n) => n.status === "failed").map((n) => `${n.id}${n.error ? ` (${n.error.code})` : ""}`);
      tbody.append(el("tr", { "data-run": run.id }, el("td", {}, when(run.started_at)), el("td", {}, `v${run.version}`), el("td", {}, run.via),
        el("td", {}, el("span", { class: `pill ${run.status === "succeeded" ? "ok" : "bad"}` }, run.status)),
        el("td", { class: "num" }, `${run.ms} ms`), el("td", { class: "num" }, String(run.credits)), el("td", {}, failed.join(", "))));
    }
    runsCard.append(el("p", { class: "muted" }, "What is kept of a run: its version, each node's status, time and credits, and the error code of a failed node. Never an input, a prompt or an output."),
      el("table", {}, el("thead", {}, el("tr", {}, ...["Started", "Version", "From", "Status", "Time", "Credits", "Failed"].map((h) => el("th", {}, h)))), tbody));
  }

  function load(body) {
    sk.skill = body; sk.graph = body.graph; sk.dirty = false; sk.selected = null; sk.armed = null;
    for (const n of sk.graph.nodes) { n.params ||= {}; n.position ||= { x: 40, y: 40 }; }
    showMeta(); draw(); scheduleCheck();
  }

  // ---- the test run -------------------------------------------------------------
  const runInputs = el("div", { id: "sk-run-inputs" });
  const runBtn = el("button", { type: "submit", id: "sk-run-go" }, "Run");
  const cancelBtn = el("button", { type: "button", class: "danger", id: "sk-run-cancel", hidden: true }, "Cancel");
  const runErr = notice("error");
  const runStatus = el("p", { id: "sk-run-status", "aria-live": "polite" });
  const runLog = el("ol", { class: "sk-log", id: "sk-run-log" });
  const runOut = el("dl", { class: "facts sk-outputs", id: "sk-run-outputs" });
  const runForm = el("form", { id: "sk-run-form" }, runInputs, el("div", { class: "row" }, runBtn, cancelBtn));
  runCard.append(el("h2", {}, "Test run"), el("p", { class: "muted" }, "Runs the newest version (saved first) as an agent would, with live progress. Paid nodes spend your credits."),
    runForm, runErr, runStatus, runOut, el("details", {}, el("summary", {}, "Progress"), runLog));

  // The form follows the graph's input nodes; what was typed or chosen stays.
  function drawRunInputs() {
    const keep = {};
    for (const i of runInputs.querySelectorAll("[data-input]")) keep[`${i.dataset.kind}:${i.dataset.input}`] = i;
    runInputs.replaceChildren();
    const ins = sk.graph.nodes.filter((n) => n.type.startsWith("input.") && n.params.name);
    if (!ins.length) runInputs.append(el("p", { class: "muted" }, "This skill takes no inputs."));
    for (const n of ins) {
      const name = String(n.params.name);
      const id = `sk-in-${name}`;
      const placeholder = n.params.default !== undefined ? String(n.params.default) : "";
      let input = keep[`${n.type}:${name}`];
      delete keep[`${n.type}:${name}`];
      if (!input && n.type === "input.image") input = el("input", { type: "file", accept: "image/*" });
      else if (!input && n.type === "input.number") input = el("input", { type: "number", step: "any" });
      else if (!input) input = el("textarea", { rows: 2 });
      input.id = id;
      input.dataset.input = name;
      input.dataset.kind = n.type;
      if (n.type !== "input.image") input.placeholder = placeholder;
      runInputs.append(el("label", { for: id }, el("span", {}, name), input, n.params.description ? el("small", { class: "muted" }, String(n.params.description)) : null));
    }
  }

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(r.result);
      r.onerror = () => reject(new Error(`cannot read ${file.name}`));
      r.readAsDataURL(file);
    });
  }

  function nodeState(id, cls, text) {
    const box = board.querySelector(`.sk-node[data-node="${CSS.escape(id)}"]`);
    if (!box) return;
    box.classList.remove("running", "succeeded", "failed", "skipped");
    if (cls) box.classList.add(cls);
    box.querySelector(".sk-state").textContent = text;
  }

  function showValue(v) {
    const image = (x) => x && typeof x === "object" && typeof x.b64_json === "string" && /^image\/(png|jpeg|webp|gif)$/.test(x.media_type || "");
    if (image(v)) return el("img", { src: `data:${v.media_type};base64,${v.b64_json}`, alt: "", class: "sk-out-image", width: Math.min(v.width || 240, 240) });
    if (Array.isArray(v) && v.length && v.every(image)) return el("span", { class: "row" }, ...v.map(showValue));
    return el("pre", {}, typeof v === "string" ? v : JSON.stringify(v, null, 2));
  }

  function onEvent(name, d) {
    const line = (text) => runLog.append(el("li", {}, text));
    if (name === "run_started") { sk.run = d.run; line(`run ${d.run} of version ${d.version}`); }
    else if (name === "node_started") { nodeState(d.node, "running", "running…"); line(`${d.node} started at ${d.at_ms} ms`); }
    else if (name === "node_finished") {
      nodeState(d.node, "succeeded", `done in ${d.ms} ms${d.credits ? ` · ${d.credits} credits` : ""}`);
      line(`${d.node} finished in ${d.ms} ms${Object.keys(d.preview || {}).length ? `: ${Object.entries(d.preview).map(([k, v]) => `${k} = ${v}`).join("; ")}` : ""}`);
    } else if (name === "node_failed") { nodeState(d.node, "failed", `failed: ${d.error.message}`); line(`${d.node} failed: ${d.error.message}`); }
    else if (name === "node_skipped") { nodeState(d.node, "skipped", "skipped"); line(`${d.node} skipped: ${d.reason}`); }
    else if (name === "run_finished") {
      if (d.error) { say(runErr, d.error.message); return; }
      runStatus.replaceChildren(el("span", { class: `pill ${d.status === "succeeded" ? "ok" : "bad"}`, "data-status": d.status }, d.status), ` in ${d.ms} ms · ${d.credits} credits`);
      runOut.replaceChildren();
      for (const [k, v] of Object.entries(d.outputs || {})) runOut.append(el("dt", {}, k), el("dd", { "data-output": k }, showValue(v)));
      if (!Object.keys(d.outputs || {}).length) runOut.append(el("dt", {}, "Outputs"), el("dd", {}, "none"));
    }
  }

  runForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say(runErr, ""); runStatus.textContent = ""; runOut.replaceChildren(); runLog.replaceChildren();
    for (const n of sk.graph.nodes) nodeState(n.id, null, "");
    runBtn.disabled = true;
    try {
      if (!(await saveNow())) { say(runErr, "Save failed; see the message above."); return; }
      const inputs = {};
      for (const i of runInputs.querySelectorAll("[data-input]")) {
        if (i.type === "file") { if (i.files[0]) inputs[i.dataset.input] = await readFile(i.files[0]); }
        else if (i.value !== "") inputs[i.dataset.input] = i.type === "number" ? Number(i.value) : i.value;
      }
      runStatus.textContent = "Running…";
      cancelBtn.hidden = false;
      const res = await fetch(`/v1/skills/${encodeURIComponent(slug)}/run`, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRF-Token": me.csrf },
        body: JSON.stringify({ version: "latest", stream: true, inputs }),
      });
      if (!res.ok) {
        let body = null;
        try { body = await res.json(); } catch (_) { body = null; }
        runStatus.textContent = "";
        say(runErr, errorText({ status: res.status, body }));
        if (body && body.error && body.error.problems) { sk.problems = body.error.problems; drawProblems(); }
        return;
      }
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let at;
        while ((at = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          let name = "", data = "";
          for (const l of block.split("\n")) {
            if (l.startsWith("event: ")) name = l.slice(7);
            else if (l.startsWith("data: ")) data += l.slice(6);
          }
          if (name && data) { try { onEvent(name, JSON.parse(data)); } catch (e) { say(runErr, `a progress event could not be read: ${e.message}`); } }
        }
      }
    } catch (e) {
      say(runErr, e.message);
    } finally {
      runBtn.disabled = false;
      cancelBtn.hidden = true;
      sk.run = null;
      // The run's record is written just after it ends.
      setTimeout(fillRuns, 300);
    }
  });
  cancelBtn.addEventListener("click", async () => {
    if (!sk.run) return;
    const r = await api("POST", `/v1/skills/runs/${encodeURIComponent(sk.run)}/cancel`, {});
    if (!r.ok) say(runErr, errorText(r));
  });

  showMeta();
  draw();
  await Promise.all([check(), fillVersions(), fillRuns()]);
}

// Leaving the editor with unsaved changes asks first (closing the tab too).
window.addEventListener("beforeunload", (ev) => { if (sk && sk.dirty) { ev.preventDefault(); ev.returnValue = ""; } });
