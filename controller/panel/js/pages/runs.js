// Run history across workflows: filter by status, trigger and workflow; paged.

import { api, qs } from "../api.js";
import { h, pager, fill } from "../ui.js";
import { runsTable } from "../widgets.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "interrupted"];

export default async function runs(ctx) {
  ctx.title("Runs");
  const q = Object.fromEntries(ctx.query);
  const go = (change) => { location.hash = "#/runs" + qs(Object.assign({}, q, { page: "" }, change)); };
  const select = (name, label, options) => h("label", null, label,
    h("select", { name, onchange: (ev) => go({ [name]: ev.target.value }) },
      h("option", { value: "" }, "any"),
      options.map(([v, text]) => h("option", { value: v, selected: q[name] === String(v) }, text))));

  async function load() {
    const [page, workflows, servers] = await Promise.all([
      api("GET", "/deployments/runs" + qs({ status: q.status, trigger: q.trigger, workflow_id: q.workflow_id, server_id: q.server_id, page: q.page, per_page: 25 })),
      api("GET", "/workflows"),
      api("GET", "/servers"),
    ]);
    if (!ctx.current()) return;
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    for (const r of page.items) r.server = names[r.server_id];
    fill(ctx.view, 
      h("h1", null, "Runs"),
      h("form", { class: "filters", id: "run-filters", onsubmit: (ev) => ev.preventDefault() },
        select("status", "Status", STATUSES.map((s) => [s, s.replace("_", " ")])),
        select("trigger", "Trigger", [["manual", "manual"], ["webhook", "webhook"], ["schedule", "schedule"]]),
        select("workflow_id", "Workflow", workflows.map((w) => [w.id, w.name])),
        select("server_id", "Server", servers.map((s) => [s.id, s.name]))),
      runsTable(page.items, Object.keys(q).length ? "No runs match these filters." : "No runs yet."),
      pager(page, (p) => go({ page: p })));
  }
  await load();
  ctx.live(["run", "workflow"], load);
}
