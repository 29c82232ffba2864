// Pools: the list with each pool's members and health, and creating one.

import { api } from "../api.js";
import { h, table, link, rank, onSubmit, field, toast, fill } from "../ui.js";

export default async function pools(ctx) {
  ctx.title("Pools");
  const listBox = h("div");
  async function load() {
    const [list, workflows] = await Promise.all([api("GET", "/pools"), api("GET", "/workflows")]);
    if (!ctx.current()) return;
    const names = Object.fromEntries(workflows.map((w) => [w.id, w.name]));
    fill(listBox, table([
      ["Name", (p) => link("#/pools/" + p.id, p.name)],
      ["Domain", (p) => p.domain || "—"],
      ["Workflow", (p) => p.workflow_id ? link("#/workflows/" + p.workflow_id, names[p.workflow_id] || String(p.workflow_id)) : "—"],
      ["Members", (p) => String(p.members)],
      ["Health", (p) => {
        const m = p.health.members;
        return h("span", null,
          h("span", { class: "status healthy" }, m.healthy + " healthy"),
          m.unhealthy ? h("span", { class: "status failed" }, " · " + m.unhealthy + " unhealthy") : null,
          m.failed ? h("span", { class: "status failed" }, " · " + m.failed + " failed") : null,
          m.deploying ? h("span", { class: "status running" }, " · " + m.deploying + " deploying") : null,
          m.draining ? h("span", { class: "status running" }, " · " + m.draining + " draining") : null);
      }],
      ["Edge", (p) => p.lb.error ? h("span", { class: "status failed" }, "error") : p.lb.applied_at ? "applied" : "—"],
    ], list, "No pools yet. A pool runs one workflow on several servers behind an nginx load balancer on an edge server.", { id: "pools" }));
  }

  let form = null;
  if (rank(ctx.me.role) >= 1) {
    const workflows = await api("GET", "/workflows");
    form = h("form", { id: "pool-form", class: "card wide", "aria-labelledby": "add-pool" },
      h("h2", { id: "add-pool" }, "New pool"),
      h("div", { class: "row" },
        field("Name", h("input", { name: "name", required: true, maxlength: "64", autocomplete: "off" })),
        field("Workflow", h("select", { name: "workflow_id" }, h("option", { value: "" }, "none yet"),
          workflows.map((w) => h("option", { value: w.id }, w.name)))),
        field("Min members", h("input", { name: "min_replicas", type: "number", min: "0", max: "256", value: "1" })),
        field("Max members", h("input", { name: "max_replicas", type: "number", min: "1", max: "256", value: "10" }))),
      h("button", { type: "submit" }, "Create pool"));
    onSubmit(form, async () => {
      const f = form.elements;
      const body = { name: f.name.value.trim(), min_replicas: Number(f.min_replicas.value), max_replicas: Number(f.max_replicas.value) };
      if (f.workflow_id.value) body.workflow_id = Number(f.workflow_id.value);
      const r = await api("POST", "/pools", body);
      toast("Pool " + body.name + " created.");
      location.hash = "#/pools/" + r.id;
    });
  }
  fill(ctx.view, h("h1", null, "Pools"), listBox, form);
  await load();
  ctx.live(["pool", "workflow"], load);
}
