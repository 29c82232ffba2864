// The audit log (admins): paged on the server, filtered by who, what and outcome, each
// record said in words ("deleted server web-2") with the reason of a failure.

import { api, qs } from "../api.js";
import { h, table, pager, fill } from "../ui.js";

// Route template → what it does, in words.
const VERBS = {
  "POST /api/auth/setup": "created the first admin",
  "POST /api/auth/login": "logged in",
  "POST /api/auth/logout": "logged out",
  "POST /api/auth/change-password": "changed their password",
  "POST /api/auth/totp/setup": "started TOTP enrolment",
  "POST /api/auth/totp/enable": "enabled TOTP",
  "POST /api/auth/totp/disable": "disabled TOTP",
  "POST /api/users": "added user",
  "PATCH /api/users/{id}": "changed user",
  "DELETE /api/users/{id}": "deleted user",
  "POST /api/servers": "added server",
  "PATCH /api/servers/{id}": "changed server",
  "DELETE /api/servers/{id}": "deleted server",
  "POST /api/servers/{id}/install-command": "minted an install command for",
  "POST /api/servers/{id}/reinstall": "reinstalled",
  "POST /api/servers/{id}/ping": "pinged",
  "POST /api/servers/{id}/deploy-key/rotate": "rotated the deploy key of",
  "POST /api/servers/{id}/docker/containers/{cid}/start": "started a container on",
  "POST /api/servers/{id}/docker/containers/{cid}/stop": "stopped a container on",
  "POST /api/servers/{id}/docker/containers/{cid}/restart": "restarted a container on",
  "POST /api/servers/{id}/docker/containers/{cid}/remove": "removed a container on",
  "POST /api/workflows": "created",
  "PATCH /api/workflows/{id}": "edited",
  "DELETE /api/workflows/{id}": "deleted",
  "POST /api/workflows/{id}/run": "ran",
  "POST /api/workflows/{id}/approve": "approved",
  "POST /api/workflows/{id}/webhook/rotate": "rotated the webhook secret of",
  "POST /api/webhooks/{id}": "webhook for",
  "POST /api/deployments/runs/{id}/cancel": "cancelled",
  "POST /api/domains": "added domain",
  "DELETE /api/domains/{id}": "deleted",
  "POST /api/pools": "created",
  "PATCH /api/pools/{id}": "changed",
  "DELETE /api/pools/{id}": "deleted",
  "POST /api/pools/{id}/sync-lb": "synced the load balancer of pool",
  "POST /api/pools/{id}/scale-out": "scaled out pool",
  "POST /api/pools/{id}/deploy": "rolled out pool",
  "POST /api/pools/{id}/rollouts/{rollout_id}/cancel": "cancelled a rollout of pool",
  "DELETE /api/pools/{id}/members/{server_id}": "removed a member of pool",
  "PUT /api/registries/{host}": "saved registry credentials for",
  "DELETE /api/registries/{host}": "deleted registry credentials for",
};

export function sentence(e) {
  const verb = VERBS[e.action];
  const target = e.target || "";
  return verb ? verb + (target ? " " + target : "") : e.action + (target ? " " + target : "");
}

export default async function audit(ctx) {
  ctx.title("Audit log");
  const q = Object.fromEntries(ctx.query);
  const go = (change) => { location.hash = "#/audit" + qs(Object.assign({}, q, { page: "" }, change)); };
  const page = await api("GET", "/audit" + qs({ page: q.page, per_page: 50, actor: q.actor, outcome: q.outcome, action: q.action }));
  if (!ctx.current()) return;
  const actor = h("input", { name: "actor", value: q.actor || "", placeholder: "username", autocomplete: "off" });
  const filters = h("form", { class: "filters", id: "audit-filters", onsubmit: (ev) => { ev.preventDefault(); go({ actor: actor.value.trim() }); } },
    h("label", null, "Who", actor),
    h("label", null, "What", h("select", { name: "action", onchange: (ev) => go({ action: ev.target.value }) },
      h("option", { value: "" }, "anything"),
      Object.entries(VERBS).map(([a, v]) => h("option", { value: a, selected: q.action === a }, v + " (" + a + ")")))),
    h("label", null, "Outcome", h("select", { name: "outcome", onchange: (ev) => go({ outcome: ev.target.value }) },
      ["", "success", "denied", "failure"].map((o) => h("option", { value: o, selected: (q.outcome || "") === o }, o || "any")))),
    h("button", { type: "submit", class: "secondary" }, "Filter"));
  fill(ctx.view, 
    h("h1", null, "Audit log"),
    filters,
    table([
      ["When", (e) => h("time", { datetime: e.at }, new Date(e.at).toLocaleString())],
      ["Who", (e) => e.actor || "anonymous"],
      ["What", (e) => h("span", { title: e.action }, sentence(e))],
      ["Outcome", (e) => h("span", { class: "status " + (e.outcome === "success" ? "succeeded" : "failed") }, e.outcome + " (" + e.status + ")", e.reason ? h("span", { class: "detail" }, e.reason) : null)],
      ["From", (e) => e.ip || ""],
    ], page.items, Object.keys(q).length ? "No records match." : "Nothing recorded yet.", { id: "audit" }),
    pager(page, (p) => go({ page: p })));
}
