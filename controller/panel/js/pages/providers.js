// Providers: credentials (checked by the provider before they are kept, never shown
// again), and the machines rented there with their state and power actions — droplets
// (created here, optionally adopting themselves), Hostinger VPS, Contabo instances.

import { api } from "../api.js";
import { h, button, table, status, rank, onSubmit, field, toast, confirmDialog, fill, link, ago } from "../ui.js";

// What each provider's credentials are made of (the API's field names).
const FIELDS = {
  digitalocean: [["token", "API token", "password"]],
  cloudflare: [["token", "API token", "password"], ["account_id", "Account id (optional)", "text"]],
  hostinger: [["token", "API token", "password"]],
  contabo: [["client_id", "Client id", "text"], ["client_secret", "Client secret", "password"],
    ["username", "API user (e-mail)", "text"], ["password", "API password", "password"]],
};

// Power actions per provider, and how each machine list reads.
const MACHINES = {
  digitalocean: {
    path: "/digitalocean/droplets", title: "DigitalOcean droplets", id: (m) => m.id,
    name: (m) => m.name, state: (m) => m.status,
    address: (m) => ((m.networks && m.networks.v4) || []).filter((n) => n.type === "public").map((n) => n.ip_address).join(", "),
    act: (m, a) => api("POST", "/digitalocean/droplets/" + m.id + "/actions", { type: a }),
    actions: ["power_on", "power_off", "reboot"],
  },
  hostinger: {
    path: "/hostinger/vps", title: "Hostinger VPS", id: (m) => m.id,
    name: (m) => m.hostname, state: (m) => m.state,
    address: (m) => (m.ipv4 || []).map((a) => a.address).join(", "),
    act: (m, a) => api("POST", "/hostinger/vps/" + m.id + "/" + a, {}),
    actions: ["start", "stop", "restart"],
  },
  contabo: {
    path: "/contabo/instances", title: "Contabo instances", id: (m) => m.instanceId,
    name: (m) => m.displayName || m.name, state: (m) => m.status,
    address: (m) => (m.ipConfig && m.ipConfig.v4 && m.ipConfig.v4.ip) || "",
    act: (m, a) => api("POST", "/contabo/instances/" + m.instanceId + "/actions/" + a, {}),
    actions: ["start", "stop", "restart", "shutdown"],
  },
};

export default async function providers(ctx) {
  ctx.title("Providers");
  const admin = ctx.me.role === "admin";
  const mod = rank(ctx.me.role) >= 1;
  const credsBox = h("section", { id: "credentials", "aria-labelledby": "creds-title" });
  const machinesBox = h("div", { id: "machines" });
  let list = [];

  function credentialsForm() {
    const form = h("form", { id: "provider-form", class: "card wide", "aria-labelledby": "set-creds" });
    const fieldsBox = h("div", { class: "row" });
    const pick = h("select", { name: "provider" }, list.map((p) => h("option", { value: p.provider }, p.name)));
    const draw = () => fill(fieldsBox,
      FIELDS[pick.value].map(([name, label, type]) => field(label, h("input", { name, type, autocomplete: "off", required: !label.includes("optional") }))),
      field("API base URL (optional)", h("input", { name: "api_url", type: "url", autocomplete: "off", placeholder: "the provider's own" })));
    pick.addEventListener("change", draw);
    draw();
    fill(form, h("h2", { id: "set-creds" }, "Set credentials"),
      h("p", { class: "muted" }, "The provider is asked whether they work before they are kept; they are stored sealed and never shown again."),
      field("Provider", pick), fieldsBox, h("button", { type: "submit" }, "Check and save"));
    onSubmit(form, async () => {
      const body = {};
      for (const el of fieldsBox.querySelectorAll("input")) if (el.value.trim()) body[el.name] = el.value.trim();
      const p = list.find((x) => x.provider === pick.value);
      await api("PUT", "/providers/" + pick.value, body);
      form.reset();
      draw();
      toast(p.name + " credentials checked and saved.");
      await load();
    });
    return form;
  }

  function drawCredentials() {
    fill(credsBox, h("h2", { id: "creds-title" }, "Credentials"),
      table([
        ["Provider", (p) => p.name],
        ["Status", (p) => status(p.configured ? "configured" : "not_configured")],
        ["Account", (p) => p.account || "—"],
        ["Saved", (p) => p.updated_at ? ago(p.updated_at) : "—"],
        ["", (p) => admin && p.configured ? button("Remove", async () => {
          if (!await confirmDialog("Remove the " + p.name + " credentials?", "Mezzanine stops reaching " + p.name + "; nothing there changes.", "Remove")) return;
          await api("DELETE", "/providers/" + p.provider);
          toast(p.name + " credentials removed.");
          await load();
        }, "danger") : ""],
      ], list, "", { id: "provider-table" }),
      admin ? credentialsForm() : null);
  }

  async function machines(kind) {
    const m = MACHINES[kind];
    const box = h("section", { "aria-labelledby": kind + "-title", id: kind + "-machines" }, h("h2", { id: kind + "-title" }, m.title));
    try {
      const rows = await api("GET", m.path);
      box.append(table([
        ["Name", (x) => m.name(x)],
        ["State", (x) => status(String(m.state(x) || "unknown"))],
        ["Address", (x) => m.address(x) || "—"],
        ["", (x) => mod ? h("span", { class: "actions" }, m.actions.map((a) => button(a.replace("_", " "), async () => {
          await m.act(x, a);
          toast(m.name(x) + ": " + a.replace("_", " ") + " sent.");
          await load();
        }, "secondary"))) : ""],
      ], rows, "None.", { class: "machines" }));
    } catch (e) {
      box.append(h("p", { class: "warning" }, e.message));
    }
    return box;
  }

  function dropletForm() {
    const form = h("form", { id: "droplet-form", class: "card wide", "aria-labelledby": "new-droplet" },
      h("h2", { id: "new-droplet" }, "New droplet"),
      h("div", { class: "row" },
        field("Name", h("input", { name: "name", required: true, autocomplete: "off" })),
        field("Size", h("input", { name: "size", required: true, value: "s-1vcpu-1gb" })),
        field("Image", h("input", { name: "image", required: true, value: "debian-12-x64" })),
        field("Region", h("input", { name: "region", value: "ams3" }))),
      h("label", { class: "check" }, h("input", { name: "adopt", type: "checkbox", checked: true }),
        " Adopt it: add it as a server whose agent installs itself at first boot (no SSH)"),
      h("button", { type: "submit" }, "Create droplet"));
    onSubmit(form, async () => {
      const f = form.elements;
      const body = { name: f.name.value.trim(), size: f.size.value.trim(), image: f.image.value.trim(), adopt: f.adopt.checked };
      if (f.region.value.trim()) body.region = f.region.value.trim();
      const d = await api("POST", "/digitalocean/droplets", body);
      toast("Droplet " + d.name + " is being created" + (d.server_id ? "; it comes online by itself." : "."));
      form.reset();
      await load();
    });
    return form;
  }

  async function load() {
    list = await api("GET", "/providers");
    if (!ctx.current()) return;
    drawCredentials();
    const kinds = list.filter((p) => p.configured && MACHINES[p.provider]).map((p) => p.provider);
    const boxes = await Promise.all(kinds.map(machines));
    if (!ctx.current()) return;
    const doOn = kinds.includes("digitalocean");
    fill(machinesBox, boxes, doOn && mod ? dropletForm() : null,
      kinds.length ? null : h("p", { class: "muted" }, "No machine provider is configured yet."),
      h("p", null, "DNS zones and e-mail routing: ", link("#/dns", "DNS and e-mail"), "."));
  }

  fill(ctx.view, h("h1", null, "Providers"), credsBox, machinesBox);
  await load();
}
