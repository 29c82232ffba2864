// A workflow: edit it with the step form (or as JSON), run it, its webhook, its runs.
// `#/workflows/new` is the same page with nothing loaded.

import { api, ApiError } from "../api.js";
import { h, button, field, onSubmit, rank, toast, confirmDialog, copyButton, link, clearErrors, fill } from "../ui.js";
import { stepEditor, mapToText, textToMap } from "../steps.js";
import { runsTable } from "../widgets.js";

const EXAMPLE = [{ name: "hello", uses: "shell", with: { script: "echo hello from $(hostname)" } }];

export default async function workflow(ctx) {
  const id = ctx.params.id;
  const isNew = id === undefined;
  const [servers, wf] = await Promise.all([
    api("GET", "/servers"),
    isNew ? Promise.resolve(null) : api("GET", "/workflows/" + encodeURIComponent(id)),
  ]);
  if (!ctx.current()) return;
  ctx.title(isNew ? "New workflow" : wf.name);
  const mod = rank(ctx.me.role) >= 1;
  const admin = ctx.me.role === "admin";
  const def = wf ? wf.definition : { steps: EXAMPLE };

  // ---- The editor ----
  const editor = stepEditor(def.steps);
  const env = h("textarea", { name: "env", rows: "3", spellcheck: "false", dataset: { path: "definition.env" } }, mapToText(def.env));
  const branches = h("input", { name: "branches", value: (def.branches || []).join(", "), dataset: { path: "definition.branches" }, placeholder: "main, release/*" });
  const replaceSecrets = h("input", { type: "checkbox", name: "replace_secrets" });
  const secretRows = h("div", { class: "secret-rows", hidden: true });
  const addSecret = (name) => secretRows.append(h("div", { class: "row secret" },
    field("Secret name", h("input", { name: "secret_name", value: name || "", autocomplete: "off", dataset: { path: "definition.secrets" } })),
    field("Value", h("input", { name: "secret_value", type: "password", autocomplete: "new-password" }))));
  for (const n of (wf && wf.secrets) || []) addSecret(n);
  if (!secretRows.children.length) addSecret("");
  const secretsBox = h("fieldset", { class: "secrets" },
    h("legend", null, "Secrets"),
    h("p", { class: "muted", id: "secret-names" }, wf && wf.secrets.length ? "Stored: " + wf.secrets.join(", ") + ". Values are never shown again." : "None stored."),
    h("label", { class: "check" }, replaceSecrets, wf ? "Replace the stored secrets with these" : "Set secrets"),
    secretRows,
    button("Add secret", () => addSecret(""), "secondary", { hidden: true, id: "add-secret" }),
    h("small", { class: "hint" }, "Available to steps as environment variables, masked in run output. Write-only."));
  replaceSecrets.addEventListener("change", () => {
    secretRows.hidden = !replaceSecrets.checked;
    secretsBox.querySelector("#add-secret").hidden = !replaceSecrets.checked;
  });

  const json = h("textarea", { name: "definition", rows: "18", spellcheck: "false", class: "code", dataset: { path: "definition" }, "aria-label": "Definition as JSON" });
  const formPane = h("div", { id: "form-pane" }, editor.el,
    h("div", { class: "row" },
      field("Workflow environment", env, "KEY=value, one per line; every step gets these."),
      field("Branches", branches, "Webhook pushes to other branches are ignored; empty: any.")));
  const jsonPane = h("div", { id: "json-pane", hidden: true }, json,
    h("small", { class: "hint" }, "The definition as the API takes it (without secrets)."));
  let mode = "form";
  let current = editor;

  function definitionFromForm() {
    const d = { steps: current.value() };
    const e = textToMap(env.value);
    if (Object.keys(e).length) d.env = e;
    const b = branches.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (b.length) d.branches = b;
    return d;
  }
  function loadIntoForm(d) {
    current = stepEditor(d.steps || []);
    formPane.firstChild.replaceWith(current.el);
    env.value = mapToText(d.env);
    branches.value = (d.branches || []).join(", ");
  }
  const tabForm = h("button", { type: "button", role: "tab", "aria-selected": "true", id: "tab-form" }, "Form");
  const tabJson = h("button", { type: "button", role: "tab", "aria-selected": "false", id: "tab-json" }, "JSON");
  function switchTo(m) {
    clearErrors(form);
    if (m === mode) return;
    if (m === "json") json.value = JSON.stringify(definitionFromForm(), null, 2);
    else {
      let d;
      try { d = JSON.parse(json.value); }
      catch (e) { toast("The JSON does not parse: " + e.message, "error"); return; }
      loadIntoForm(d);
    }
    mode = m;
    formPane.hidden = m !== "form";
    jsonPane.hidden = m !== "json";
    tabForm.setAttribute("aria-selected", String(m === "form"));
    tabJson.setAttribute("aria-selected", String(m === "json"));
  }
  tabForm.addEventListener("click", () => switchTo("form"));
  tabJson.addEventListener("click", () => switchTo("json"));

  const name = h("input", { name: "name", required: true, maxlength: "64", value: wf ? wf.name : "", autocomplete: "off" });
  const server = h("select", { name: "server_id", id: "workflow-server" }, servers.map((s) => h("option", { value: s.id, selected: wf && wf.server_id === s.id }, s.name)));
  // A schedule: crontab's five fields (or six, seconds first) in a time zone; empty = none.
  const sched = wf && wf.schedule;
  const cron = h("input", { name: "cron", id: "workflow-cron", value: sched ? sched.cron : "", autocomplete: "off", spellcheck: "false", placeholder: "30 3 * * 1-5", dataset: { path: "schedule.cron" } });
  const zone = h("input", { name: "timezone", id: "workflow-timezone", value: sched ? sched.timezone : (Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"), autocomplete: "off", spellcheck: "false", dataset: { path: "schedule.timezone" } });
  const nextRun = h("small", { class: "hint", id: "workflow-next" },
    sched && sched.next_at ? "Next scheduled run: " + new Date(sched.next_at).toLocaleString() : "Runs only by hand and webhook while the schedule is empty.");
  const form = h("form", { id: "workflow-form", class: "card wide", novalidate: true },
    h("div", { class: "row" }, field("Name", name), field("Server", server)),
    h("div", { class: "row" }, field("Schedule (cron)", cron), field("Time zone", zone)), nextRun,
    h("div", { class: "tabs", role: "tablist", "aria-label": "Edit as" }, tabForm, tabJson),
    formPane, jsonPane, secretsBox,
    h("div", { class: "bar" }, h("button", { type: "submit" }, isNew ? "Create workflow" : "Save changes")));
  if (!mod) for (const el of form.querySelectorAll("input, select, textarea, button")) el.disabled = true;

  onSubmit(form, async () => {
    let definition;
    if (mode === "json") {
      try { definition = JSON.parse(json.value); }
      catch (e) { throw new ApiError(400, "definition: not valid JSON (" + e.message + ")", null); }
    } else definition = definitionFromForm();
    if (replaceSecrets.checked) {
      const secrets = {};
      for (const row of secretRows.querySelectorAll(".secret")) {
        const n = row.querySelector("[name=secret_name]").value.trim();
        const v = row.querySelector("[name=secret_value]").value;
        if (n) secrets[n] = v;
      }
      definition.secrets = secrets;
    }
    const body = { name: name.value.trim(), server_id: Number(server.value), definition };
    const expr = cron.value.trim();
    if (expr) body.schedule = { cron: expr, timezone: zone.value.trim() || "UTC" };
    else if (!isNew && wf.schedule) body.schedule = null;
    if (isNew) {
      const r = await api("POST", "/workflows", body);
      toast("Workflow " + body.name + " created.");
      location.hash = "#/workflows/" + r.id;
    } else {
      const r = await api("PATCH", "/workflows/" + id, body);
      toast(r.secrets_held ? "Saved. Its secrets are held until an admin approves this definition." : "Saved.");
      await ctx.reload();
    }
  });

  // ---- Actions, webhook, runs ----
  const actions = [];
  if (!isNew && mod) {
    actions.push(button("Run", async () => {
      const r = await api("POST", "/workflows/" + id + "/run");
      location.hash = "#/runs/" + r.runId;
    }, "", { id: "run-workflow" }));
  }
  if (!isNew && wf.secrets_held && admin) {
    actions.push(button("Approve", async () => {
      if (await confirmDialog("Approve " + wf.name + "?", "Its secrets are released to its current definition, which a moderator changed.", "Approve")) {
        await api("POST", "/workflows/" + id + "/approve");
        toast("Definition approved.");
      }
    }, "secondary"));
  }
  if (!isNew && admin) {
    actions.push(button("Delete", async () => {
      if (await confirmDialog("Delete workflow " + wf.name + "?", "Its runs and their output are deleted with it, and its webhook stops working.")) {
        await api("DELETE", "/workflows/" + id);
        toast("Workflow deleted.");
        location.hash = "#/workflows";
      }
    }, "danger"));
  }

  const hook = h("section", { id: "webhook", "aria-labelledby": "webhook-title" });
  function drawHook(url, secret) {
    const urlEl = h("code", { id: "webhook-url" }, url || "");
    const parts = [h("h2", { id: "webhook-title" }, "Webhook")];
    if (url) parts.push(h("p", null, "CI posts pushes here, signed with the secret (X-Hub-Signature-256)."), urlEl, copyButton(() => urlEl.textContent, "Copy URL"));
    else parts.push(h("p", { class: "muted" }, "No webhook yet."));
    if (secret) {
      const sec = h("code", { id: "webhook-secret" }, secret);
      const curl = "BODY='{\"ref\":\"refs/heads/main\"}'\nSIG=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hmac '" + secret + "' | awk '{print $2}')\ncurl -X POST " + url + " \\\n  -H 'Content-Type: application/json' \\\n  -H \"X-Hub-Signature-256: sha256=$SIG\" \\\n  -d \"$BODY\"";
      const ex = h("pre", { class: "code", id: "webhook-curl" }, curl);
      parts.push(h("p", { class: "warning" }, "The secret is shown only now."), sec, copyButton(() => sec.textContent, "Copy secret"),
        h("h3", null, "Try it"), ex, copyButton(() => ex.textContent, "Copy example"));
    }
    if (admin) {
      parts.push(h("div", null, button(url ? "Rotate secret" : "Create webhook", async () => {
        if (url && !await confirmDialog("Rotate the webhook secret of " + wf.name + "?", "The old secret stops working at once; update your CI.", "Rotate")) return;
        const r = await api("POST", "/workflows/" + id + "/webhook/rotate");
        drawHook(r.url, r.secret);
      }, "secondary", { id: "webhook-rotate" })));
    }
    fill(hook, ...parts);
  }

  const runsBox = h("section", { "aria-labelledby": "wf-runs" });
  async function loadRuns() {
    const page = await api("GET", "/deployments/runs?per_page=10&workflow_id=" + id);
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    for (const r of page.items) r.server = names[r.server_id];
    fill(runsBox, h("div", { class: "bar" }, h("h2", { id: "wf-runs" }, "Runs"), link("#/runs?workflow_id=" + id, "All runs of this workflow")), runsTable(page.items));
  }

  ctx.reload = async () => {
    const fresh = await api("GET", "/workflows/" + id);
    Object.assign(wf, fresh);
    nextRun.textContent = wf.schedule && wf.schedule.next_at
      ? "Next scheduled run: " + new Date(wf.schedule.next_at).toLocaleString()
      : "Runs only by hand and webhook while the schedule is empty.";
    secretsBox.querySelector("#secret-names").textContent = wf.secrets.length ? "Stored: " + wf.secrets.join(", ") + ". Values are never shown again." : "None stored.";
    replaceSecrets.checked = false;
    replaceSecrets.dispatchEvent(new Event("change"));
    for (const v of secretRows.querySelectorAll("[name=secret_value]")) v.value = "";
  };

  fill(ctx.view, 
    h("p", { class: "crumbs" }, link("#/workflows", "Workflows"), " / " + (isNew ? "new" : wf.name)),
    h("div", { class: "bar wrap" }, h("h1", null, isNew ? "New workflow" : wf.name,
      wf && wf.secrets_held ? h("span", { class: "status failed" }, " secrets held") : null), h("div", { class: "actions" }, actions)),
    !servers.length && isNew ? h("p", { class: "warning" }, "Add a server first: a workflow runs on one.") : null,
    form,
    isNew ? null : hook,
    isNew ? null : runsBox);
  if (!isNew) {
    drawHook(wf.webhook_url, null);
    await loadRuns();
    ctx.live(["run"], loadRuns, (d) => String(d.workflow_id) === String(id));
  }
}
