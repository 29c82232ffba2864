// Dashboard: servers by state, what needs attention first, recent runs.

import { api } from "../api.js";
import { h, link, status, fill } from "../ui.js";
import { runsTable } from "../widgets.js";

export default async function dashboard(ctx) {
  ctx.title("Dashboard");
  async function load() {
    const [servers, runs, failed] = await Promise.all([
      api("GET", "/servers"),
      api("GET", "/deployments/runs?per_page=10"),
      api("GET", "/deployments/runs?status=failed&per_page=5"),
    ]);
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    for (const r of runs.items) r.server = names[r.server_id];
    const by = {};
    for (const s of servers) by[s.status] = (by[s.status] || 0) + 1;
    const order = ["online", "offline", "failed", "pending", "connecting", "installing", "enrolling"];
    const tiles = order.filter((s) => by[s] || s === "online" || s === "offline").map((s) =>
      h("a", { class: "tile " + s, href: "#/servers?status=" + s },
        h("strong", null, String(by[s] || 0)), h("span", null, s)));
    const down = servers.filter((s) => s.status !== "online");
    const attention = [
      ...down.map((s) => h("li", null, status(s.status), " ", link("#/servers/" + s.id, s.name), " ", h("span", { class: "muted" }, s.host))),
      ...failed.items.map((r) => h("li", null, status(r.status), " ", link("#/runs/" + r.id, "run #" + r.id), " of ", r.workflow || "workflow " + r.workflow_id,
        r.error ? h("span", { class: "detail" }, r.error) : null)),
    ];
    if (!ctx.current()) return;
    fill(ctx.view, 
      h("h1", null, "Dashboard"),
      h("section", { "aria-labelledby": "dash-servers" },
        h("h2", { id: "dash-servers" }, "Servers ", h("span", { class: "muted" }, "(" + servers.length + ")")),
        h("div", { class: "tiles", id: "server-tiles" }, tiles)),
      h("section", { "aria-labelledby": "dash-attention" },
        h("h2", { id: "dash-attention" }, "Needs attention"),
        attention.length ? h("ul", { class: "attention", id: "attention" }, attention) : h("p", { class: "muted", id: "attention" }, "Nothing: every server is online and no run failed recently.")),
      h("section", { "aria-labelledby": "dash-runs" },
        h("div", { class: "bar" }, h("h2", { id: "dash-runs" }, "Recent runs"), link("#/runs", "All runs")),
        runsTable(runs.items)),
    );
  }
  await load();
  ctx.live(["server", "run"], load);
}
