// Servers: the list (filter by state or name), upgrading outdated agents, and adding one,
// by install command or SSH.

import { api } from "../api.js";
import { h, table, status, ago, link, rank, onSubmit, field, toast, fill, button } from "../ui.js";
import { installCard } from "../install.js";

export default async function servers(ctx) {
  ctx.title("Servers");
  const want = ctx.query.get("status") || "";
  const search = h("input", { type: "search", name: "q", placeholder: "Filter by name, host or tag", "aria-label": "Filter servers" });
  const listBox = h("div", { id: "server-list" });
  const installBox = h("div");
  let list = [];

  function draw() {
    const q = search.value.trim().toLowerCase();
    const rows = list.filter((s) => (!want || s.status === want)
      && (!q || [s.name, s.host, ...(s.tags || [])].some((t) => String(t).toLowerCase().includes(q))));
    fill(listBox, table([
      ["Name", (s) => link("#/servers/" + s.id, s.name)],
      ["Host", (s) => s.host],
      ["Status", (s) => status(s.status)],
      ["Last seen", (s) => ago(s.last_seen)],
      ["Agent", (s) => s.agent_version ? s.agent_version + (s.agent_outdated ? " (update available)" : "") : "—"],
      ["Tags", (s) => (s.tags || []).join(", ")],
    ], rows, list.length ? "No server matches." : "No servers yet. Add one below: paste an install command on it, or let the controller adopt it over SSH.", { id: "servers" }));
  }
  search.addEventListener("input", draw);

  // Admins: one button upgrades every outdated agent that is online, one at a time.
  const upgradeBox = h("div", { class: "actions" });
  function drawUpgrade() {
    const outdated = list.filter((s) => s.agent_outdated && s.status === "online");
    const busy = list.some((s) => s.agent_upgrade && s.agent_upgrade.status === "upgrading");
    fill(upgradeBox, ctx.me.role === "admin" && outdated.length && !busy
      ? button("Upgrade " + outdated.length + " outdated agent" + (outdated.length > 1 ? "s" : ""), async () => {
        const r = await api("POST", "/servers/agent/upgrade", {});
        toast("Upgrading " + r.server_ids.length + " agent" + (r.server_ids.length === 1 ? "" : "s") + ", one at a time.");
        await load();
      }, "secondary", { id: "upgrade-agents" })
      : null);
  }

  async function load() {
    list = await api("GET", "/servers");
    if (ctx.current()) { draw(); drawUpgrade(); }
  }

  const form = rank(ctx.me.role) >= 1 ? addForm(ctx, installBox, load) : null;
  fill(ctx.view, 
    h("h1", null, "Servers"),
    h("div", { class: "bar filters" }, search,
      want ? h("span", null, "Showing ", status(want), " ", link("#/servers", "show all")) : null, upgradeBox),
    listBox, installBox, form);
  await load();
  ctx.live(["server"], load);
}

function addForm(ctx, installBox, reload) {
  const auth = h("select", { name: "auth_type" },
    h("option", { value: "manual" }, "Paste an install command on the server"),
    h("option", { value: "password" }, "SSH with a password"),
    h("option", { value: "key" }, "SSH with a private key"));
  const ssh = (cls, label, input, hint) => { const l = field(label, input, hint); l.className = cls; l.hidden = true; return l; };
  const form = h("form", { id: "server-form", class: "card wide", "aria-labelledby": "add-server" },
    h("h2", { id: "add-server" }, "Add a server"),
    h("div", { class: "row" },
      field("Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*", maxlength: "64", autocomplete: "off" })),
      field("Host", h("input", { name: "host", required: true, placeholder: "203.0.113.10 or host.example.com", autocomplete: "off" })),
      field("Tags", h("input", { name: "tags", placeholder: "env=prod, role:web", autocomplete: "off" }))),
    h("div", { class: "row" },
      field("Method", auth),
      ssh("ssh", "SSH user", h("input", { name: "username", value: "root", autocomplete: "off" })),
      ssh("ssh", "Port", h("input", { name: "port", type: "number", min: "1", max: "65535", value: "22" }))),
    ssh("ssh-password", "Password", h("input", { name: "password", type: "password", autocomplete: "off" })),
    ssh("ssh-key", "Private key", h("textarea", { name: "private_key", rows: "4", spellcheck: "false", placeholder: "-----BEGIN OPENSSH PRIVATE KEY-----" })),
    ssh("ssh-key", "Passphrase (if the key has one)", h("input", { name: "passphrase", type: "password", autocomplete: "off" })),
    ssh("ssh", "Host key fingerprint (optional)", h("input", { name: "host_key_fingerprint", placeholder: "SHA256:…", autocomplete: "off", spellcheck: "false" }),
      "From ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the server. Without it, the first key seen is trusted and kept."),
    h("label", { class: "ssh check", hidden: true }, h("input", { name: "keep_credentials", type: "checkbox" }), "Keep the credentials (sealed) for reinstalls"),
    h("button", { type: "submit" }, "Add server"));
  const sync = () => {
    const type = auth.value;
    for (const el of form.querySelectorAll(".ssh")) el.hidden = type === "manual";
    for (const el of form.querySelectorAll(".ssh-password")) el.hidden = type !== "password";
    for (const el of form.querySelectorAll(".ssh-key")) el.hidden = type !== "key";
  };
  auth.addEventListener("change", sync);
  onSubmit(form, async () => {
    const f = form.elements;
    const body = {
      name: f.name.value.trim(),
      host: f.host.value.trim(),
      auth_type: f.auth_type.value,
      tags: f.tags.value.split(",").map((t) => t.trim()).filter(Boolean),
    };
    if (body.auth_type !== "manual") {
      body.username = f.username.value.trim();
      body.port = Number(f.port.value);
      body.keep_credentials = f.keep_credentials.checked;
      if (f.host_key_fingerprint.value.trim()) body.host_key_fingerprint = f.host_key_fingerprint.value.trim();
      if (body.auth_type === "password") body.password = f.password.value;
      else {
        body.private_key = f.private_key.value;
        if (f.passphrase.value) body.passphrase = f.passphrase.value;
      }
    }
    const r = await api("POST", "/servers", body);
    form.reset();
    sync();
    if (r.install_command) {
      fill(installBox, installCard(r));
      toast("Server added: paste the command on it.");
      await reload();
    } else {
      toast("Adopting " + body.name + " over SSH.");
      location.hash = "#/servers/" + r.id;
    }
  });
  return form;
}
