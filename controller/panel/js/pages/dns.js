// DNS and e-mail: every zone at the configured providers, a zone's records (add, delete),
// Cloudflare Email Routing for a zone (rules, catch-all, destination addresses), and the
// pool domains linked to a zone.

import { api } from "../api.js";
import { h, button, table, status, rank, onSubmit, field, toast, confirmDialog, fill } from "../ui.js";

const TYPES = ["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SRV", "CAA"];

// How each provider lists zones and records, and how a record is added and deleted.
const KINDS = {
  cloudflare: {
    label: "Cloudflare",
    zones: async () => (await api("GET", "/cloudflare/zones")).map((z) => ({ key: z.id, name: z.name })),
    records: (z) => api("GET", "/cloudflare/zones/" + z.key + "/dns"),
    row: (r) => ({ id: r.id, name: r.name, type: r.type, value: r.content, ttl: r.ttl === 1 ? "auto" : r.ttl }),
    add: (z, f) => api("POST", "/cloudflare/zones/" + z.key + "/dns", { type: f.type, name: f.name, content: f.value, ttl: f.ttl || 1 }),
    remove: (z, r) => api("DELETE", "/cloudflare/zones/" + z.key + "/dns/" + r.id),
    valuePath: "content",
  },
  digitalocean: {
    label: "DigitalOcean",
    zones: async () => (await api("GET", "/digitalocean/domains")).map((d) => ({ key: d.name, name: d.name })),
    records: (z) => api("GET", "/digitalocean/domains/" + encodeURIComponent(z.key) + "/records"),
    row: (r) => ({ id: r.id, name: r.name, type: r.type, value: r.data, ttl: r.ttl }),
    add: (z, f) => {
      const body = { type: f.type, name: f.name, data: f.value };
      if (f.ttl) body.ttl = f.ttl;
      return api("POST", "/digitalocean/domains/" + encodeURIComponent(z.key) + "/records", body);
    },
    remove: (z, r) => api("DELETE", "/digitalocean/domains/" + encodeURIComponent(z.key) + "/records/" + r.id),
    valuePath: "data",
  },
  hostinger: {
    label: "Hostinger",
    zones: async () => (await api("GET", "/hostinger/domains")).map((d) => ({ key: d.domain, name: d.domain })),
    // One row per record value; a name and type are deleted together.
    records: async (z) => (await api("GET", "/hostinger/domains/" + encodeURIComponent(z.key) + "/dns"))
      .flatMap((e) => (e.records || []).map((r) => ({ name: e.name, type: e.type, content: r.content, ttl: e.ttl }))),
    row: (r) => ({ id: r.name + " " + r.type, name: r.name, type: r.type, value: r.content, ttl: r.ttl }),
    add: (z, f) => {
      const entry = { name: f.name, type: f.type, records: [{ content: f.value }] };
      if (f.ttl) entry.ttl = f.ttl;
      return api("PUT", "/hostinger/domains/" + encodeURIComponent(z.key) + "/dns", { overwrite: false, zone: [entry] });
    },
    remove: (z, r) => api("DELETE", "/hostinger/domains/" + encodeURIComponent(z.key) + "/dns", { filters: [{ name: r.name, type: r.type }] }),
    valuePath: "zone",
  },
};

export default async function dns(ctx) {
  ctx.title("DNS and e-mail");
  const mod = rank(ctx.me.role) >= 1;
  const admin = ctx.me.role === "admin";
  const providers = await api("GET", "/providers");
  if (!ctx.current()) return;
  const kinds = providers.filter((p) => p.configured && KINDS[p.provider]).map((p) => p.provider);
  const zones = [];
  const problems = [];
  await Promise.all(kinds.map(async (k) => {
    try {
      for (const z of await KINDS[k].zones()) zones.push(Object.assign(z, { kind: k }));
    } catch (e) {
      problems.push(h("p", { class: "warning" }, KINDS[k].label + ": " + e.message));
    }
  }));
  if (!ctx.current()) return;
  zones.sort((a, b) => a.name.localeCompare(b.name));
  const wanted = ctx.query.get("zone");
  const pick = h("select", { id: "zone-pick", name: "zone", "aria-label": "Zone" },
    zones.map((z, i) => h("option", { value: String(i), selected: z.kind + ":" + z.key === wanted }, z.name + " (" + KINDS[z.kind].label + ")")));
  const zoneBox = h("div", { id: "zone" });
  pick.addEventListener("change", () => show());

  async function show() {
    const z = zones[Number(pick.value)];
    if (!z) { fill(zoneBox); return; }
    const k = KINDS[z.kind];
    const rows = (await k.records(z)).map(k.row);
    if (!ctx.current()) return;
    let form = null;
    if (mod) {
      form = h("form", { id: "record-form", class: "card wide", "aria-labelledby": "add-record" },
        h("h3", { id: "add-record" }, "Add a record"),
        h("div", { class: "row" },
          field("Type", h("select", { name: "type" }, TYPES.map((t) => h("option", { value: t }, t)))),
          field("Name", h("input", { name: "name", required: true, autocomplete: "off", placeholder: z.kind === "cloudflare" ? "www." + z.name : "www or @" })),
          field("Value", h("input", { name: "value", required: true, autocomplete: "off", dataset: { path: k.valuePath } })),
          field("TTL (s)", h("input", { name: "ttl", type: "number", min: "1", max: "86400" }))),
        h("button", { type: "submit" }, "Add record"));
      onSubmit(form, async () => {
        const f = form.elements;
        await k.add(z, { type: f.type.value, name: f.name.value.trim(), value: f.value.value.trim(), ttl: f.ttl.value ? Number(f.ttl.value) : null });
        toast("Record added to " + z.name + ".");
        await show();
      });
    }
    const domains = (await api("GET", "/domains")).filter((d) => d.name === z.name || d.name.endsWith("." + z.name));
    if (!ctx.current()) return;
    const here = (d) => d.dns && d.dns.provider === z.kind && d.dns.zone === String(z.key).toLowerCase();
    const poolDomains = domains.length ? h("section", { id: "pool-domains", "aria-labelledby": "pd-title" },
      h("h2", { id: "pd-title" }, "Pool domains in this zone"),
      h("p", { class: "muted" }, "A linked domain's A record points at the edge of the pools that serve it, and follows it."),
      table([
        ["Domain", (d) => d.name],
        ["Record", (d) => here(d) ? (d.dns.error ? status("failed", d.dns.error) : d.dns.address ? h("code", null, d.dns.address) : "waiting for a pool with an edge")
          : d.dns ? "linked elsewhere" : "not linked"],
        ["", (d) => mod ? button(here(d) ? "Unlink" : "Link", async () => {
          const r = await api("PATCH", "/domains/" + d.id, here(d) ? { provider: null, zone: null } : { provider: z.kind, zone: String(z.key) });
          toast(here(d) ? d.name + " unlinked." : d.name + " linked" + (r.dns && r.dns.address ? ": " + r.dns.address + "." : "."));
          await show();
        }, "secondary") : ""],
      ], domains, "", { id: "pool-domain-table" })) : null;
    fill(zoneBox,
      poolDomains,
      h("h2", { id: "records-title" }, "Records of " + z.name),
      table([
        ["Name", (r) => r.name],
        ["Type", (r) => r.type],
        ["Value", (r) => h("code", null, r.value)],
        ["TTL", (r) => String(r.ttl ?? "—")],
        ["", (r) => admin ? button("Delete", async () => {
          if (!await confirmDialog("Delete " + r.type + " " + r.name + "?", "Resolvers stop getting it once their caches expire.")) return;
          await k.remove(z, r);
          toast("Record deleted.");
          await show();
        }, "danger") : ""],
      ], rows, "No records.", { id: "records" }),
      form,
      z.kind === "cloudflare" ? await emailRouting(z) : null);
  }

  async function emailRouting(z) {
    const base = "/cloudflare/zones/" + z.key + "/email";
    const box = h("section", { id: "email-routing", "aria-labelledby": "email-title" }, h("h2", { id: "email-title" }, "E-mail routing"));
    let rules, dests, catchAll;
    try {
      [rules, dests, catchAll] = await Promise.all([api("GET", base + "/rules"), api("GET", base + "/destinations"), api("GET", base + "/catch-all")]);
    } catch (e) {
      box.append(h("p", { class: "warning" }, e.message));
      return box;
    }
    const describe = (r) => (r.actions || []).map((a) => a.type + (a.value ? " → " + a.value.join(", ") : "")).join("; ");
    box.append(
      h("h3", null, "Rules"),
      table([
        ["Name", (r) => r.name || "—"],
        ["To", (r) => (r.matchers || []).map((m) => m.type === "all" ? "any address" : m.value).join(", ")],
        ["Does", describe],
        ["", (r) => status(r.enabled ? "enabled" : "disabled")],
        ["", (r) => admin ? button("Delete", async () => {
          if (!await confirmDialog("Delete this rule?", "Mail to " + ((r.matchers || [])[0] || {}).value + " is no longer routed by it.")) return;
          await api("DELETE", base + "/rules/" + r.id);
          toast("Rule deleted.");
          await show();
        }, "danger") : ""],
      ], rules, "No rules.", { id: "email-rules" }),
      h("p", null, "Anything else (catch-all): ", h("strong", null, catchAll.enabled ? describe(catchAll) : "not routed")));
    if (mod) {
      const ruleForm = h("form", { id: "rule-form", class: "card wide", "aria-labelledby": "add-rule" },
        h("h3", { id: "add-rule" }, "Forward an address"),
        h("div", { class: "row" },
          field("Mail to", h("input", { name: "to", type: "email", required: true, dataset: { path: "matchers" } })),
          field("Forward to", h("input", { name: "dest", type: "email", required: true, dataset: { path: "actions" } }))),
        h("button", { type: "submit" }, "Add rule"));
      onSubmit(ruleForm, async () => {
        const f = ruleForm.elements;
        await api("POST", base + "/rules", {
          name: f.to.value.trim() + " → " + f.dest.value.trim(),
          matchers: [{ type: "literal", field: "to", value: f.to.value.trim() }],
          actions: [{ type: "forward", value: [f.dest.value.trim()] }],
        });
        toast("Rule added.");
        await show();
      });
      const destForm = h("form", { id: "destination-form", class: "card wide", "aria-labelledby": "add-dest" },
        h("h3", { id: "add-dest" }, "Add a destination address"),
        field("Address", h("input", { name: "email", type: "email", required: true })),
        h("button", { type: "submit" }, "Add address"));
      onSubmit(destForm, async () => {
        await api("POST", base + "/destinations", { email: destForm.elements.email.value.trim() });
        toast("Cloudflare sent a confirmation message to that address.");
        await show();
      });
      box.append(ruleForm);
      box.append(h("h3", null, "Destination addresses"),
        table([
          ["Address", (d) => d.email],
          ["", (d) => status(d.verified ? "verified" : "pending", d.verified ? null : "waiting for confirmation")],
          ["", (d) => admin ? button("Delete", async () => {
            if (!await confirmDialog("Delete " + d.email + "?", "Rules forwarding to it stop delivering.")) return;
            await api("DELETE", base + "/destinations/" + d.id);
            toast("Address deleted.");
            await show();
          }, "danger") : ""],
        ], dests, "No destination addresses.", { id: "email-destinations" }),
        destForm);
    }
    return box;
  }

  fill(ctx.view, h("h1", null, "DNS and e-mail"), problems,
    zones.length ? field("Zone", pick) : h("p", { class: "muted" }, "No DNS zones: configure Cloudflare, DigitalOcean or Hostinger under Providers."),
    zoneBox);
  await show();
}
