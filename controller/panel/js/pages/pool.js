// One pool: its members with live health, scale out and remove, roll out with live
// progress, and its edge, strategy and health settings.

import { api } from "../api.js";
import { h, button, table, status, link, rank, onSubmit, field, toast, confirmDialog, ago, fill } from "../ui.js";

const STRATEGIES = ["round_robin", "least_conn", "ip_hash", "random", "cookie_hash"];

export default async function pool(ctx) {
  const id = ctx.params.id;
  const base = "/pools/" + encodeURIComponent(id);
  const mod = rank(ctx.me.role) >= 1;
  const admin = ctx.me.role === "admin";
  let [p, servers, workflows, domains] = await Promise.all([
    api("GET", base), api("GET", "/servers"), api("GET", "/workflows"), api("GET", "/domains"),
  ]);
  if (!ctx.current()) return;
  ctx.title(p.name);
  const head = h("div");
  const membersBox = h("section", { id: "members", "aria-labelledby": "members-title" });
  const rolloutBox = h("div", { id: "rollout" });
  let rolloutId = Number(ctx.query.get("rollout")) || null;

  function drawHead() {
    const actions = [];
    if (mod) {
      actions.push(button("Roll out", async () => {
        const r = await api("POST", base + "/deploy", {});
        rolloutId = r.rolloutId;
        toast("Rollout " + r.rolloutId + " started.");
        await loadRollout();
      }, "", { id: "pool-deploy" }));
      actions.push(button("Sync load balancer", async () => {
        const r = await api("POST", base + "/sync-lb", {});
        toast("The edge serves the pool's config" + (r.started ? " (nginx was started)." : "."));
      }, "secondary"));
    }
    if (admin) {
      actions.push(button("Delete", async () => {
        if (await confirmDialog("Delete pool " + p.name + "?", "Its config is removed from the edge, which stops serving it; its members keep running their apps.")) {
          await api("DELETE", base);
          toast("Pool deleted.");
          location.hash = "#/pools";
        }
      }, "danger"));
    }
    const edge = servers.find((s) => s.id === p.edge_server_id);
    fill(head,
      h("p", { class: "crumbs" }, link("#/pools", "Pools"), " / " + p.name),
      h("div", { class: "bar wrap" }, h("h1", null, p.name), h("div", { class: "actions" }, actions)),
      h("p", { class: "muted" },
        (p.domain || "any host name") + " → edge " + (edge ? edge.name : "not set") + " :" + p.ports.listen + " → members :" + p.ports.target + " · " + p.lb_strategy.replace("_", " ")),
      p.lb.error ? h("p", { class: "warning", id: "lb-error" }, "The edge did not take the last config: " + p.lb.error) : null,
      certificateLine());
  }

  // HTTPS: what the certificate is, when it renews, or why it could not be had.
  function certificateLine() {
    if (!p.tls.enabled) return null;
    const c = p.certificate;
    const renew = mod ? button("Renew now", async () => {
      await api("POST", base + "/certificate/renew", {});
      toast("Renewing the certificate; this page shows how it goes.");
    }, "secondary") : null;
    const parts = [];
    if (c && c.not_after) {
      parts.push(h("span", null, "HTTPS on :" + p.tls.port + " — certificate for " + c.names.join(", ") + " from " + (c.issuer || "the CA") +
        ", valid until " + new Date(c.not_after).toLocaleString() + " (renewed from " + new Date(c.renew_at).toLocaleString() + ")"));
    } else {
      parts.push(h("span", null, "HTTPS on :" + p.tls.port + " — waiting for the first certificate (" + p.tls.challenge + ")"));
    }
    if (c && c.error) parts.push(h("span", { class: "status failed" }, " Last attempt failed: " + c.error));
    return h("p", { id: "certificate", class: c && c.error ? "warning" : "muted" }, parts, " ", renew);
  }

  function drawMembers() {
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    const taken = new Set(p.members.map((m) => m.server_id));
    const choices = servers.filter((s) => !taken.has(s.id) && s.id !== p.edge_server_id);
    let scale = null;
    if (mod) {
      scale = h("form", { class: "bar filters", id: "scale-out" },
        h("label", null, "Server", h("select", { name: "server_id" }, choices.map((s) => h("option", { value: s.id }, s.name)))),
        h("button", { type: "submit", disabled: !choices.length }, "Scale out"));
      onSubmit(scale, async () => {
        const r = await api("POST", base + "/scale-out", { server_id: Number(scale.elements.server_id.value) });
        toast("Deploying to the new member (run #" + r.runId + ").");
      });
    }
    fill(membersBox,
      h("h2", { id: "members-title" }, "Members ", h("span", { class: "muted" }, "(" + p.members.length + " of " + p.min_replicas + "–" + p.max_replicas + ")")),
      table([
        ["Server", (m) => link("#/servers/" + m.server_id, names[m.server_id] || m.name)],
        ["Address", (m) => m.address + ":" + p.ports.target],
        ["State", (m) => status(m.state, m.health_detail)],
        ["Checked", (m) => ago(m.last_health_at)],
        ["Weight", (m) => mod ? weightInput(m, names[m.server_id] || m.name) : String(m.weight)],
        ["Deploy", (m) => m.last_run_id ? link("#/runs/" + m.last_run_id, "#" + m.last_run_id) : "—"],
        ["", (m) => admin ? button("Remove", async () => {
          const last = p.members.length - 1 < p.min_replicas;
          if (!await confirmDialog("Remove " + (names[m.server_id] || m.name) + " from " + p.name + "?",
            "It is taken out of the load balancer first; requests in flight finish." + (last ? " This leaves fewer members than the pool's minimum." : ""), "Remove")) return;
          await api("DELETE", base + "/members/" + m.server_id + (last ? "?force=true" : ""));
          toast("Member removed.");
        }, "danger") : ""],
      ], p.members, "No members yet." + (mod ? " Scale out to a server: the pool's workflow runs on it, and it joins once its health check passes." : ""), { id: "member-table" }),
      scale);
  }

  // A member's share of the requests (1–100, nginx's `weight`), saved when it changes;
  // a refused value is said and the stored one shown again.
  function weightInput(m, name) {
    return h("input", {
      type: "number", min: 1, max: 100, value: String(m.weight), class: "weight",
      "aria-label": "Weight of " + name,
      onchange: async (ev) => {
        const input = ev.target;
        try {
          await api("PATCH", base, { members: [{ server_id: m.server_id, weight: Number(input.value) }] });
          toast("Weight of " + name + " set to " + input.value + ".");
        } catch (e) {
          toast(e.message, "error");
          input.value = String(m.weight);
        }
      },
    });
  }

  async function loadRollout() {
    if (!rolloutId) { fill(rolloutBox); return; }
    const r = await api("GET", base + "/rollouts/" + rolloutId);
    if (!ctx.current()) return;
    const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
    const running = r.status === "running";
    fill(rolloutBox,
      h("div", { class: "bar" }, h("h2", { id: "rollout-title" }, "Rollout " + r.id + " ", status(r.status)),
        running && mod ? button("Cancel", async () => { await api("POST", base + "/rollouts/" + r.id + "/cancel", {}); toast("The rollout stops after the members in progress."); }, "danger") : null),
      r.error ? h("p", { class: "warning" }, r.error) : null,
      h("ol", { class: "stepper", id: "rollout-steps" }, r.members.map((m) =>
        h("li", { class: m.status === "succeeded" ? "done" : ["draining", "deploying", "checking"].includes(m.status) ? "current" : "" },
          (names[m.server_id] || "server " + m.server_id) + ": " + m.status))));
  }

  async function reload() {
    [p, servers] = await Promise.all([api("GET", base), api("GET", "/servers")]);
    if (!ctx.current()) return;
    drawHead();
    drawMembers();
    await loadRollout();
  }

  // ---- Settings ----
  const settings = h("form", { id: "pool-settings", class: "card wide", "aria-labelledby": "settings-title" });
  const sel = (name, options, value) => h("select", { name }, options.map(([v, t]) => h("option", { value: v, selected: String(value ?? "") === String(v) }, t)));
  const num = (name, value, min, max) => h("input", { name, type: "number", min, max, value: String(value), dataset: { path: name.replace("_", ".") } });
  fill(settings,
    h("h2", { id: "settings-title" }, "Settings"),
    h("div", { class: "row" },
      field("Name", h("input", { name: "name", value: p.name, required: true })),
      field("Workflow", sel("workflow_id", [["", "none"], ...workflows.map((w) => [w.id, w.name])], p.workflow_id)),
      field("Domain", sel("domain_id", [["", "any host name"], ...domains.map((d) => [d.id, d.name])], p.domain_id)),
      field("Edge server", sel("edge_server_id", [["", "not set"], ...servers.map((s) => [s.id, s.name])], p.edge_server_id))),
    h("div", { class: "row" },
      field("Strategy", sel("lb_strategy", STRATEGIES.map((s) => [s, s.replace("_", " ")]), p.lb_strategy)),
      field("Sticky cookie", h("input", { name: "sticky_cookie", value: p.sticky_cookie || "", placeholder: "for cookie hash" })),
      field("Listen port", h("input", { name: "listen", type: "number", min: "1", max: "65535", value: String(p.ports.listen), dataset: { path: "ports.listen" } })),
      field("Member port", h("input", { name: "target", type: "number", min: "1", max: "65535", value: String(p.ports.target), dataset: { path: "ports.target" } }))),
    h("div", { class: "row" },
      field("Health path", h("input", { name: "path", value: p.health.path, dataset: { path: "health.path" } })),
      field("Every (s)", h("input", { name: "interval_s", type: "number", value: String(p.health.interval_s), dataset: { path: "health.interval_s" } })),
      field("Timeout (s)", h("input", { name: "timeout_s", type: "number", value: String(p.health.timeout_s), dataset: { path: "health.timeout_s" } })),
      field("Out after failures", h("input", { name: "unhealthy_after", type: "number", value: String(p.health.unhealthy_after), dataset: { path: "health.unhealthy_after" } })),
      field("Back after successes", h("input", { name: "healthy_after", type: "number", value: String(p.health.healthy_after), dataset: { path: "health.healthy_after" } }))),
    h("div", { class: "row" },
      field("Min members", num("min_replicas", p.min_replicas, 0, 256)),
      field("Max members", num("max_replicas", p.max_replicas, 1, 256)),
      field("Drain (s)", num("drain_timeout_s", p.drain_timeout_s, 0, 600))),
    h("div", { class: "row" },
      h("label", { class: "check" }, h("input", { name: "tls_enabled", type: "checkbox", checked: p.tls.enabled, dataset: { path: "tls.enabled" } }),
        " HTTPS with a certificate from ACME (needs a domain)"),
      field("Challenge", sel("tls_challenge", [["http-01", "HTTP-01 (the edge answers)"], ["dns-01", "DNS-01 (the domain's DNS zone)"]], p.tls.challenge)),
      field("HTTPS port", h("input", { name: "tls_port", type: "number", min: "1", max: "65535", value: String(p.tls.port), dataset: { path: "tls.port" } }))),
    mod ? h("button", { type: "submit" }, "Save settings") : null);
  if (!mod) for (const el of settings.querySelectorAll("input, select")) el.disabled = true;
  onSubmit(settings, async () => {
    const f = settings.elements;
    const opt = (v) => (v === "" ? null : Number(v));
    const body = {
      name: f.name.value.trim(),
      workflow_id: opt(f.workflow_id.value),
      domain_id: opt(f.domain_id.value),
      edge_server_id: opt(f.edge_server_id.value),
      lb_strategy: f.lb_strategy.value,
      sticky_cookie: f.sticky_cookie.value.trim() || null,
      ports: { listen: Number(f.listen.value), target: Number(f.target.value) },
      health: { path: f.path.value, interval_s: Number(f.interval_s.value), timeout_s: Number(f.timeout_s.value), unhealthy_after: Number(f.unhealthy_after.value), healthy_after: Number(f.healthy_after.value) },
      min_replicas: Number(f.min_replicas.value),
      max_replicas: Number(f.max_replicas.value),
      drain_timeout_s: Number(f.drain_timeout_s.value),
      tls: { enabled: f.tls_enabled.checked, challenge: f.tls_challenge.value, port: Number(f.tls_port.value) },
    };
    await api("PATCH", base, body);
    toast("Saved" + (body.edge_server_id ? "; the edge serves the new config." : "."));
  });

  drawHead();
  drawMembers();
  fill(ctx.view, head, rolloutBox, membersBox, settings);
  await loadRollout();
  ctx.live(["pool", "server"], reload, (d) => d.kind === "server" || String(d.id) === String(id));
}
