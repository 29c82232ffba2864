// Workflows: the list with each one's last run.

import { api } from "../api.js";
import { h, table, status, link, rank, ago, fill } from "../ui.js";

export default async function workflows(ctx) {
  ctx.title("Workflows");
  async function load() {
    const [list, servers] = await Promise.all([api("GET", "/workflows"), api("GET", "/servers")]);
    if (!ctx.current()) return;
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    fill(ctx.view, 
      h("div", { class: "bar" }, h("h1", null, "Workflows"),
        rank(ctx.me.role) >= 1 ? h("a", { class: "button", href: "#/workflows/new", id: "new-workflow" }, "New workflow") : null),
      table([
        ["Name", (w) => h("span", null, link("#/workflows/" + w.id, w.name),
          w.secrets_held ? h("span", { class: "status failed", title: "Its secrets were set by an admin and its definition was last changed by a moderator." }, " secrets held") : null)],
        ["Server", (w) => names[w.server_id] ? link("#/servers/" + w.server_id, names[w.server_id]) : String(w.server_id)],
        ["Last run", (w) => w.last_run ? h("span", null, status(w.last_run.status), " ", link("#/runs/" + w.last_run.id, "#" + w.last_run.id), " ", h("span", { class: "muted" }, ago(w.last_run.queued_at))) : "never"],
        ["Webhook", (w) => w.webhook ? "yes" : "no"],
      ], list, "No workflows yet." + (rank(ctx.me.role) >= 1 ? " Create one: it runs steps (shell, git, docker build/run, HTTP checks) on a server." : ""), { id: "workflows" }));
  }
  await load();
  ctx.live(["workflow", "run"], load);
}
