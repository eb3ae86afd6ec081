// Easel UI for the asset library: a grid of thumbnails, drag-and-drop upload with a
// progress bar per file, tags, a detail view, and bulk actions (delete, alt text,
// download as ZIP). Uses the helpers of app.js (el, api, must, field, notice, say, when),
// loaded before it. Every name, tag and alt text is set as text, never as HTML.
"use strict";

const LIB_PAGE = 48;
const lib = { offset: 0, selected: new Set(), items: [] };

function libBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

function libTags(text) {
  return text.split(",").map((t) => t.trim()).filter(Boolean);
}

// Uploads one file with its own progress bar; resolves with the server's answer.
function libUpload(file, tags, row) {
  return new Promise((resolve) => {
    const data = new FormData();
    if (tags) data.append("tags", tags);
    data.append("file", file, file.name || "pasted image");
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/assets");
    if (me && me.csrf) xhr.setRequestHeader("X-CSRF-Token", me.csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (ev) => {
      if (ev.lengthComputable) row.bar.value = Math.round((ev.loaded / ev.total) * 100);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, body });
    });
    xhr.addEventListener("error", () => resolve({ ok: false, status: 0, body: null }));
    xhr.send(data);
  });
}

function libQuery(f) {
  const p = new URLSearchParams({ limit: String(LIB_PAGE), offset: String(lib.offset) });
  const tag = f.querySelector("[name=tag]").value.trim();
  const q = f.querySelector("[name=q]").value.trim();
  const sort = f.querySelector("[name=sort]").value;
  if (tag) p.set("tag", tag);
  if (q) p.set("q", q);
  if (sort) p.set("sort", sort);
  return `/api/assets?${p}`;
}

async function renderLibrary(main) {
  lib.offset = 0;
  lib.selected.clear();
  main.append(el("h1", {}, "Library"));
  const usage = el("p", { class: "muted", id: "lib-usage" });
  main.append(el("p", { class: "muted" }, "Product images, reference photos and saved outputs. Each file is sealed with your account's key; only you can open it."), usage);

  // Upload: drop, paste or choose; each file gets its own progress bar.
  const input = el("input", { type: "file", id: "lib-files", accept: "image/*", multiple: true, class: "visually-hidden" });
  const drop = el("div", { class: "dropzone", id: "lib-drop", tabindex: 0, role: "button" },
    "Drop images here or ", el("label", { for: "lib-files", class: "link" }, "choose files"), " to add them to your library.");
  const tagsIn = field("Tags for new uploads, comma-separated", { name: "upload_tags", id: "lib-upload-tags" });
  const progress = el("ul", { class: "lib-progress", id: "lib-progress", "aria-live": "polite" });
  const upErr = notice("error");
  const upload = el("section", { class: "card", id: "lib-upload" }, el("h2", {}, "Add images"), drop, input, tagsIn, upErr, progress);

  // Filters.
  const sort = el("select", { id: "lib-sort", name: "sort" },
    el("option", { value: "created" }, "Newest first"), el("option", { value: "name" }, "Name"), el("option", { value: "bytes" }, "Largest first"));
  const filters = el("form", { class: "card lib-filters", id: "lib-filters" },
    field("Tag", { name: "tag", id: "lib-tag" }), field("Name contains", { name: "q", id: "lib-q" }),
    el("label", { for: "lib-sort" }, el("span", {}, "Sort"), sort),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Show")));

  // Bulk actions.
  const count = el("span", { id: "lib-count", "aria-live": "polite" }, "Nothing selected");
  const all = el("button", { type: "button", class: "small", id: "lib-all" }, "Select all");
  const del = el("button", { type: "button", class: "small danger", id: "lib-delete", disabled: true }, "Delete");
  const alt = el("button", { type: "button", class: "small", id: "lib-alt", disabled: true }, "Write alt text");
  const zip = el("a", { class: "button small", id: "lib-zip", href: "#", "aria-disabled": "true" }, "Download ZIP");
  const bulkMsg = notice("ok");
  const bulkErr = notice("error");
  const bulk = el("div", { class: "lib-bulk", id: "lib-bulk" }, count, all, alt, zip, del);

  const grid = el("ul", { class: "lib-grid", id: "lib-grid" });
  const more = el("div", { class: "actions" });
  const detail = el("section", { class: "card", id: "lib-detail", hidden: true, tabindex: -1 });
  const gallery = el("section", { class: "card", id: "lib-gallery" }, el("h2", {}, "Your images"), bulk, bulkErr, bulkMsg, grid, more);
  main.append(upload, filters, detail, gallery);

  function syncBulk() {
    const n = lib.selected.size;
    count.textContent = n ? `${n} selected` : "Nothing selected";
    del.disabled = alt.disabled = !n;
    del.textContent = "Delete";
    delete del.dataset.confirm;
    if (n) {
      zip.href = `/api/assets/zip?ids=${[...lib.selected].join(",")}`;
      zip.removeAttribute("aria-disabled");
    } else {
      zip.href = "#";
      zip.setAttribute("aria-disabled", "true");
    }
  }

  function tile(a) {
    const id = `lib-sel-${a.id}`;
    const box = el("input", { type: "checkbox", id, "data-id": a.id });
    box.checked = lib.selected.has(a.id);
    box.addEventListener("change", () => { if (box.checked) lib.selected.add(a.id); else lib.selected.delete(a.id); syncBulk(); });
    const open = el("button", { type: "button", class: "lib-open", "data-id": a.id, "aria-label": `Open ${a.name}` },
      el("img", { src: `/api/assets/${a.id}/thumbnail`, alt: a.alt_text || "", loading: "lazy", width: 160, height: 160 }));
    open.addEventListener("click", () => showDetail(a));
    const tags = el("span", { class: "lib-tags" }, ...a.tags.map((t) => el("span", { class: "pill" }, t)));
    return el("li", { class: "lib-item", "data-id": a.id }, open,
      el("label", { for: id, class: "check" }, box, el("span", { class: "lib-name" }, a.name)), tags);
  }

  async function load(append) {
    const r = await getJSON(libQuery(filters));
    if (!r.ok) { say(bulkErr, errorText(r)); return; }
    const page = r.body;
    usage.textContent = page.quota_bytes ? `${libBytes(page.used_bytes)} of ${libBytes(page.quota_bytes)} used.` : `${libBytes(page.used_bytes)} used.`;
    if (!append) { grid.replaceChildren(); lib.items = []; }
    lib.items.push(...page.items);
    for (const a of page.items) grid.append(tile(a));
    if (!lib.items.length) grid.append(el("li", { class: "muted", id: "lib-empty" }, "No images yet."));
    more.replaceChildren();
    if (page.offset + page.items.length < page.total) {
      const b = el("button", { type: "button", id: "lib-more" }, `Show more (${page.total - page.offset - page.items.length} left)`);
      b.addEventListener("click", async () => { lib.offset += LIB_PAGE; await load(true); });
      more.append(b);
    }
    syncBulk();
  }

  function showDetail(a) {
    const err = notice("error");
    const ok = notice("ok");
    const name = el("input", { id: "lib-d-name", name: "name", value: a.name, required: true });
    const tags = el("input", { id: "lib-d-tags", name: "tags", value: a.tags.join(", ") });
    const altText = el("textarea", { id: "lib-d-alt", name: "alt_text", rows: 3 });
    altText.value = a.alt_text || "";
    const f = el("form", { id: "lib-d-form" },
      el("label", { for: "lib-d-name" }, el("span", {}, "Name"), name),
      el("label", { for: "lib-d-tags" }, el("span", {}, "Tags, comma-separated"), tags),
      el("label", { for: "lib-d-alt" }, el("span", {}, "Alt text (empty: decorative)"), altText),
      err, ok, el("div", { class: "actions" }, el("button", { type: "submit", id: "lib-d-save" }, "Save")));
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      say(err, ""); say(ok, "");
      const r = await api("PATCH", `/api/assets/${a.id}`, { name: name.value, tags: libTags(tags.value), alt_text: altText.value });
      if (!r.ok) { say(err, errorText(r)); return; }
      say(ok, "Saved.");
      Object.assign(a, r.body);
      heading.textContent = a.name;
      await load(false);
    });
    const dl = el("dl", { class: "facts" });
    fact(dl, "Type", a.media_type);
    fact(dl, "Size", `${libBytes(a.bytes)} · ${a.width}×${a.height} px`);
    fact(dl, "Source", a.source.kind === "generated" ? `generated by ${a.source.model}` : a.source.kind);
    fact(dl, "Added", when(a.created_at));
    const remove = el("button", { type: "button", class: "danger", id: "lib-d-delete" }, "Delete");
    remove.addEventListener("click", async () => {
      if (!remove.dataset.confirm) { remove.dataset.confirm = "1"; remove.textContent = "Delete for good"; return; }
      const r = await api("DELETE", `/api/assets/${a.id}`);
      if (!r.ok) { say(err, errorText(r)); return; }
      lib.selected.delete(a.id);
      detail.hidden = true;
      say(bulkMsg, `Deleted ${a.name}.`);
      await load(false);
    });
    const heading = el("h2", {}, a.name);
    detail.replaceChildren(heading,
      el("div", { class: "lib-detail" },
        el("img", { src: `/api/assets/${a.id}/original`, alt: a.alt_text || "", class: "lib-preview" }),
        el("div", {}, dl, f, el("div", { class: "actions" },
          el("a", { class: "button", href: `/api/assets/${a.id}/original?download=1`, id: "lib-d-download" }, "Download"), remove))));
    detail.hidden = false;
    detail.focus();
  }

  async function addFiles(list) {
    say(upErr, "");
    const files = [...list].filter((f) => f.type.startsWith("image/") || !f.type);
    const tagText = tagsIn.querySelector("input").value;
    for (const file of files) {
      const bar = el("progress", { max: 100, value: 0, "aria-label": `Uploading ${file.name}` });
      const state = el("span", { class: "pill", "data-state": "uploading" }, "uploading");
      const li = el("li", {}, el("span", {}, file.name || "pasted image"), " ", bar, " ", state);
      progress.append(li);
      const r = await libUpload(file, tagText, { bar });
      bar.value = 100;
      state.dataset.state = r.ok ? "done" : "error";
      state.className = `pill ${r.ok ? "ok" : "bad"}`;
      state.textContent = r.ok ? "added" : `failed: ${errorText(r)}`;
    }
    input.value = "";
    await load(false);
  }

  input.addEventListener("change", () => addFiles(input.files));
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); input.click(); } });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); addFiles(ev.dataTransfer.files); });
  filters.addEventListener("submit", async (ev) => { ev.preventDefault(); lib.offset = 0; await load(false); });
  all.addEventListener("click", () => {
    for (const a of lib.items) lib.selected.add(a.id);
    for (const b of grid.querySelectorAll("input[type=checkbox]")) b.checked = true;
    syncBulk();
  });
  zip.addEventListener("click", (ev) => { if (!lib.selected.size) ev.preventDefault(); });
  del.addEventListener("click", async () => {
    say(bulkErr, ""); say(bulkMsg, "");
    if (!del.dataset.confirm) { del.dataset.confirm = "1"; del.textContent = `Delete ${lib.selected.size} for good`; return; }
    const ids = [...lib.selected];
    const r = await api("POST", "/api/assets/delete", { ids });
    if (!r.ok) { say(bulkErr, errorText(r)); return; }
    lib.selected.clear();
    detail.hidden = true;
    say(bulkMsg, `Deleted ${r.body.deleted} image${r.body.deleted === 1 ? "" : "s"}; ${libBytes(r.body.freed_bytes)} freed.`);
    await load(false);
  });
  alt.addEventListener("click", async () => {
    say(bulkErr, ""); say(bulkMsg, "");
    alt.disabled = true;
    alt.textContent = "Writing…";
    try {
      const r = await api("POST", "/api/assets/alt-text", { ids: [...lib.selected] });
      if (!r.ok) { say(bulkErr, errorText(r)); return; }
      const failed = r.body.filter((x) => x.error);
      say(bulkMsg, `Alt text written for ${r.body.length - failed.length} image${r.body.length - failed.length === 1 ? "" : "s"}.`);
      if (failed.length) say(bulkErr, failed.map((x) => x.error.message).join(" "));
      await load(false);
    } finally {
      alt.textContent = "Write alt text";
      syncBulk();
    }
  });
  await load(false);
}
