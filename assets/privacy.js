// Easel UI for privacy: each person's privacy centre (what is held, export, consent,
// deletion request) and, for admins, the privacy report with deletions and legal
// holds. Uses the helpers of app.js (el, api, form, field, must, notice, say, when, me).
"use strict";

// A message for the sign-in page after the session ended on purpose.
let privacyFlash = "";

async function renderPrivacy(main) {
  main.append(el("h1", {}, "Privacy"));
  const mine = await getJSON("/api/privacy/me");
  if (!mine.ok) {
    main.append(el("section", { class: "card" }, el("p", { role: "alert" }, errorText(mine))));
    return;
  }
  const d = mine.body;
  const who = el("dl", { class: "facts" });
  fact(who, "Email", d.email);
  fact(who, "Name", d.name);
  if (d.company) fact(who, "Company", d.company);
  fact(who, "Account created", when(d.created_at));
  const held = el("tbody", {});
  for (const h of d.held) {
    held.append(el("tr", {}, el("td", {}, h.class), el("td", { class: "num" }, String(h.records)), el("td", {}, h.kept)));
  }
  main.append(el("section", { class: "card", id: "held" }, el("h2", {}, "What Easel holds about you"), who,
    el("table", {}, el("thead", {}, el("tr", {}, ...["Class", "Records", "Kept"].map((x) => el("th", {}, x)))), held),
    el("p", {}, "Prompts, request images and generated outputs are never stored. ",
      el("a", { href: "/privacy", target: "_blank", rel: "noopener" }, "Read the privacy policy"), ". Correct your name and company on the ",
      el("a", { href: "#/account" }, "Account"), " page.")));

  main.append(el("section", { class: "card", id: "export" }, el("h2", {}, "Export"),
    el("p", {}, "One ZIP with everything held about you: your account, keys (never their secrets), usage, alt texts, credit entries, consent history and sign-in records."),
    el("a", { class: "button", href: "/api/privacy/export", download: "", id: "export-link" }, "Download my data")));

  const consentErr = notice("error");
  const consent = el("input", { type: "checkbox", id: "f-analytics", name: "analytics" });
  const history = el("p", { class: "muted", id: "consent-history" });
  async function showConsent(body) {
    consent.checked = body.analytics;
    const last = body.history[body.history.length - 1];
    history.textContent = last ? `Last changed ${when(new Date(last.at_ms).toISOString())}.` : "Never turned on.";
  }
  consent.addEventListener("change", async () => {
    consent.disabled = true;
    const r = await api("PUT", "/api/privacy/consent", { analytics: consent.checked });
    consent.disabled = false;
    if (!r.ok) { say(consentErr, errorText(r)); consent.checked = !consent.checked; return; }
    say(consentErr, "");
    await showConsent(r.body);
  });
  main.append(el("section", { class: "card", id: "consent" }, el("h2", {}, "Analytics"),
    el("label", { class: "check", for: "f-analytics" }, consent,
      el("span", {}, "Count my use of features, anonymously (a day and a feature, never who)")),
    history, consentErr));
  const c = await getJSON("/api/privacy/consent");
  if (c.ok) await showConsent(c.body);

  if (d.deletion) {
    main.append(el("section", { class: "card", id: "deletion" }, el("h2", {}, "Deletion requested"),
      el("p", {}, `Your account will be erased on ${when(d.deletion.erase_at)}. Signing in before then cancels the request.`)));
    return;
  }
  main.append(form("deletion-form", "Delete my account", [
    el("p", {}, "Your account is disabled at once: you are signed out everywhere and your API keys stop working. After the recovery window it is erased for good; signing in again before then cancels the request. Credit entries are kept for the books, detached from you."),
    field("Your password, to confirm", { name: "password", type: "password", autocomplete: "current-password", required: true }),
  ], "Request deletion", async (v) => {
    const body = await must(api("POST", "/api/privacy/deletion", { password: v.password }));
    privacyFlash = `Deletion requested: your account will be erased on ${when(body.erase_at)}. Sign in again before then to cancel it.`;
    me = null; showUser(); location.hash = "#/signin";
    return "";
  }));
}

async function renderAdminPrivacy(slot) {
  const err = notice("error");
  const card = el("section", { class: "card", id: "privacy-report" }, el("h2", {}, "Privacy report"));
  slot.replaceChildren(card);
  const r = await getJSON("/api/admin/privacy/report");
  if (!r.ok) { card.append(el("p", { role: "alert" }, errorText(r))); return; }
  const rep = r.body;
  const classes = el("tbody", {});
  for (const c of rep.classes) {
    const age = c.oldest_at ? when(c.oldest_at) : "—";
    const state = el("span", { class: `pill ${c.within_window ? "ok" : "bad"}` }, c.within_window ? "within" : "overdue");
    classes.append(el("tr", {}, el("td", {}, c.class), el("td", {}, c.rule), el("td", { class: "num" }, String(c.records)), el("td", {}, age), el("td", {}, state)));
  }
  const jobs = el("tbody", {});
  for (const j of rep.jobs) {
    const last = j.last_run ? `${when(j.last_run_at)} (${j.last_run.ok ? "ok" : "failed"})` : "never";
    jobs.append(el("tr", {}, el("td", {}, el("code", {}, j.job)), el("td", {}, j.schedule || "off"), el("td", {}, last), el("td", {}, when(j.next_run_at))));
  }
  async function act(method, path, body) {
    const x = await api(method, path, body);
    if (!x.ok) return say(err, errorText(x));
    say(err, "");
    await renderAdminPrivacy(slot);
  }
  const deletions = el("tbody", {});
  if (!rep.deletions.length) deletions.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "None pending.")));
  for (const p of rep.deletions) {
    const cancel = el("button", { type: "button", class: "small", "data-cancel": p.account }, "Cancel request");
    cancel.addEventListener("click", () => act("DELETE", `/api/admin/users/${encodeURIComponent(p.account)}/deletion`));
    deletions.append(el("tr", {}, el("td", {}, el("code", {}, p.account)), el("td", {}, when(p.erase_at)),
      el("td", {}, p.held ? `held: ${p.held}` : (p.by_admin ? "by an admin" : "by the person")), el("td", {}, cancel)));
  }
  const holds = el("tbody", {});
  if (!rep.holds.length) holds.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "None.")));
  for (const h of rep.holds) {
    const lift = el("button", { type: "button", class: "small danger", "data-lift": h.account }, "Lift");
    lift.addEventListener("click", () => act("DELETE", `/api/admin/users/${encodeURIComponent(h.account)}/hold`));
    holds.append(el("tr", {}, el("td", {}, el("code", {}, h.account)), el("td", {}, h.reason), el("td", {}, when(h.since)), el("td", {}, lift)));
  }
  const holdForm = form("hold-form", "Put a legal hold", [
    field("Account id", { name: "account", required: true }),
    field("Reason (shown in this report)", { name: "reason", required: true, maxlength: 500 }),
  ], "Hold", async (v) => {
    await must(api("PUT", `/api/admin/users/${encodeURIComponent(v.account)}/hold`, { reason: v.reason }));
    await renderAdminPrivacy(slot);
    return "";
  });
  const table = (heads, body) => el("table", {}, el("thead", {}, el("tr", {}, ...heads.map((x) => el("th", {}, x)))), body);
  card.append(el("p", { class: "muted" }, `Generated ${when(rep.generated_at)}.`),
    table(["Class", "Rule", "Records", "Oldest", "Window"], classes),
    el("h2", {}, "Jobs"), table(["Job", "Schedule", "Last run", "Next run"], jobs),
    el("h2", {}, "Pending deletions"), table(["Account", "Erased on", "Requested", ""], deletions),
    el("h2", {}, "Legal holds"), table(["Account", "Reason", "Since", ""], holds), err);
  slot.append(holdForm);
}

// A notice for signed-in people while a new policy version waits for its date.
async function showPolicyNotice() {
  const box = document.getElementById("policy-notice");
  if (!box) return;
  box.hidden = true;
  if (!me) return;
  const r = await getJSON("/api/privacy/policy");
  if (!r.ok || !r.body.upcoming) return;
  const up = r.body.upcoming;
  box.replaceChildren(el("span", {}, `The privacy policy changes on ${when(up.effective_at)}: ${up.changes.join("; ")}. `),
    el("a", { href: `/privacy?version=${up.number}`, target: "_blank", rel: "noopener" }, "Read the new version"));
  box.hidden = false;
}
