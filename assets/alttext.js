// Easel UI for alt text: drop, paste or choose images (or list URLs), set the
// options, and get an alt text per image with its own progress and a copy button.
// Uses the helpers of app.js (el, api, field, notice, say, when), loaded before it.
// Images go to the server as base64 and are never stored; previews are local blobs.
"use strict";

const ALT_PARALLEL = 3;
let altPasteHandler = null;

function altOptions(f) {
  const v = (name) => f.querySelector(`[name="${name}"]`).value.trim();
  const opts = { language: v("language") || "en", max_chars: Number(v("max_chars")) || 125, style: v("style") };
  const context = v("context");
  if (context) opts.context = context;
  const keywords = v("keywords").split(",").map((k) => k.trim()).filter(Boolean);
  if (keywords.length) opts.keywords = keywords;
  const model = v("model");
  if (model) opts.model = model;
  return opts;
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ""));
    r.onerror = () => reject(new Error("the file cannot be read"));
    r.readAsDataURL(file);
  });
}

// One row of the results: preview, state, alt text with a copy button, details.
function altRow(list, item, index) {
  const preview = item.file
    ? el("img", { src: URL.createObjectURL(item.file), alt: "", class: "thumb" })
    : el("span", { class: "thumb url" }, "URL");
  const state = el("span", { class: "pill", "data-state": "waiting" }, "waiting");
  const text = el("textarea", { rows: 2, readonly: true, id: `alt-${index}`, "aria-label": `Alt text for ${item.label}` });
  const copy = el("button", { type: "button", class: "small copy", disabled: true }, "Copy");
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(text.value); } catch (_) { text.select(); document.execCommand("copy"); }
    copy.textContent = "Copied";
  });
  const meta = el("p", { class: "muted meta" });
  const row = el("li", { class: "alt-result", "data-index": index },
    preview,
    el("div", { class: "alt-body" }, el("p", {}, el("strong", {}, item.label), " ", state), text, el("div", { class: "actions" }, copy), meta));
  list.append(row);
  return {
    set(kind, label) { state.dataset.state = kind; state.textContent = label; state.className = `pill ${kind === "error" ? "bad" : kind === "done" ? "ok" : ""}`; },
    done(r) {
      text.value = r.alt_text;
      copy.disabled = false;
      const bits = [r.decorative ? "decorative: use alt=\"\"" : null, r.text_in_image ? `text in image: “${r.text_in_image}”` : null,
        `${r.model} · ${r.language} · ${r.credits} credits`];
      meta.textContent = bits.filter(Boolean).join(" · ");
      this.set("done", "done");
    },
    fail(message) { meta.textContent = message; this.set("error", "failed"); },
  };
}

async function describeAll(items, opts, list) {
  const rows = items.map((item, i) => altRow(list, item, i));
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      const item = items[i];
      rows[i].set("working", "working…");
      try {
        const body = { ...opts };
        if (item.file) body.image_base64 = await fileToBase64(item.file);
        else body.image_url = item.url;
        const r = await api("POST", "/v1/alt-text", body);
        if (r.ok) rows[i].done(r.body);
        else rows[i].fail(errorText(r));
      } catch (e) {
        rows[i].fail(e.message);
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(ALT_PARALLEL, items.length) }, worker));
}

async function altHistory(card) {
  const r = await getJSON("/api/alt-text?limit=20");
  const tbody = el("tbody", {});
  card.replaceChildren(el("h2", {}, "Recent"), el("p", { class: "muted" }, "What Easel keeps: the alt text, its language, model and cost, and the image URL if one was given. Never the image."),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "When"), el("th", {}, "Alt text"), el("th", {}, "Language"), el("th", {}, "Model"), el("th", {}, "Source"))), tbody));
  const rows = r.ok ? r.body : [];
  if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "Nothing kept yet.")));
  for (const x of rows) {
    tbody.append(el("tr", {}, el("td", {}, when(x.created)), el("td", {}, x.alt_text || "(decorative)"), el("td", {}, x.language), el("td", {}, x.model), el("td", {}, x.image_url || "upload")));
  }
}

async function renderAltText(main) {
  main.append(el("h1", {}, "Alt text"));
  main.append(el("p", { class: "muted" }, "Describe images for people who cannot see them. Images are processed in memory and never stored."));
  const files = [];
  const input = el("input", { type: "file", id: "alt-files", accept: "image/*", multiple: true, class: "visually-hidden" });
  const chosen = el("p", { class: "muted", id: "alt-chosen", "aria-live": "polite" }, "No images yet.");
  const drop = el("div", { class: "dropzone", id: "alt-drop", tabindex: 0, role: "button", "aria-describedby": "alt-chosen" },
    "Drop images here, paste them, or ", el("label", { for: "alt-files", class: "link" }, "choose files"), ".");
  const showChosen = () => { chosen.textContent = files.length ? `${files.length} image${files.length > 1 ? "s" : ""}: ${files.map((f) => f.name || "pasted image").join(", ")}` : "No images yet."; };
  const add = (list) => { for (const f of list) if (f.type.startsWith("image/")) files.push(f); showChosen(); };
  input.addEventListener("change", () => add(input.files));
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); } });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); add(ev.dataTransfer.files); });
  const urls = el("textarea", { id: "alt-urls", name: "urls", rows: 3, placeholder: "https://example.com/photo.jpg" });
  if (altPasteHandler) document.removeEventListener("paste", altPasteHandler);
  altPasteHandler = (ev) => {
    if (!document.getElementById("alt-drop")) return;
    const pasted = [...(ev.clipboardData?.files || [])];
    if (pasted.length) { ev.preventDefault(); add(pasted); }
  };
  document.addEventListener("paste", altPasteHandler);

  const style = el("select", { id: "f-style", name: "style" }, ...["concise", "descriptive", "ecommerce"].map((s) => el("option", { value: s }, s)));
  const f = el("form", { id: "alt-form", class: "card" }, el("h2", {}, "Images"), drop, input, chosen,
    el("label", { for: "alt-urls" }, el("span", {}, "Image URLs, one per line"), urls),
    el("h2", {}, "Options"),
    field("Language (BCP-47, e.g. en, de, pt-BR)", { name: "language", value: "en", required: true }),
    field("Longest alt text, in characters", { name: "max_chars", type: "number", min: 1, max: 1000, value: 125 }),
    el("label", { for: "f-style" }, el("span", {}, "Style"), style),
    el("label", { for: "f-context" }, el("span", {}, "Page or product text (optional, up to 2 KB)"), el("textarea", { id: "f-context", name: "context", rows: 2, maxlength: 2048 })),
    field("Keywords, comma-separated (used only where they fit)", { name: "keywords" }),
    field("Model (optional: a vision model, or local)", { name: "model" }));
  const err = notice("error");
  const submit = el("button", { type: "submit", id: "alt-submit" }, "Write alt text");
  f.append(err, el("div", { class: "actions" }, submit));
  const list = el("ol", { id: "alt-results", class: "alt-results", "aria-live": "polite" });
  const history = el("section", { class: "card", id: "alt-history" });
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say(err, "");
    const items = files.map((file) => ({ file, label: file.name || "pasted image" }));
    for (const u of urls.value.split("\n").map((s) => s.trim()).filter(Boolean)) items.push({ url: u, label: u });
    if (!items.length) { say(err, "Add an image or a URL first."); return; }
    submit.disabled = true;
    list.replaceChildren();
    try {
      await describeAll(items, altOptions(f), list);
      files.length = 0; urls.value = ""; input.value = ""; showChosen();
      // Records join the next group commit, a few milliseconds after the answers.
      await new Promise((resolve) => setTimeout(resolve, 300));
      await altHistory(history);
    } finally {
      submit.disabled = false;
    }
  });
  main.append(f, el("section", { class: "card" }, el("h2", {}, "Results"), list), history);
  await altHistory(history);
}
