// Notifiers (admins): where events go — a signed webhook, Slack, Discord or e-mail — their
// test button and delivery log, and a form to add one.

import { api } from "../api.js";
import { h, button, table, field, onSubmit, toast, confirmDialog, fill, ago } from "../ui.js";

// The events the API knows (GET /api/openapi.json lists the same under /api/notifiers).
const EVENTS = ["run.failed", "run.succeeded", "server.offline", "server.online", "certificate.renewal_failed", "agent.upgrade_rolled_back", "image.update_available"];
const KINDS = ["webhook", "slack", "discord", "email"];

export default async function notifiers(ctx) {
  ctx.title("Notifiers");
  const box = h("div", { id: "notifier-list" });
  const log = h("section", { id: "deliveries", "aria-live": "polite" });

  async function showDeliveries(n) {
    const rows = await api("GET", "/notifiers/" + n.id + "/deliveries");
    if (!ctx.current()) return;
    fill(log, h("h2", null, "Deliveries to " + n.name),
      table([
        ["Event", (d) => d.event],
        ["Status", (d) => h("span", { class: "status " + (d.status === "delivered" ? "succeeded" : d.status === "failed" ? "failed" : "running") }, d.status)],
        ["Attempts", (d) => String(d.attempts)],
        ["Last error", (d) => d.last_error || ""],
        ["Queued", (d) => ago(d.created_at)],
      ], rows, "Nothing delivered yet.", { id: "delivery-table" }));
  }

  async function load() {
    const list = await api("GET", "/notifiers");
    if (!ctx.current()) return;
    fill(box, table([
      ["Name", (n) => n.name],
      ["Kind", (n) => n.kind],
      ["Sends to", (n) => n.host + (n.signed ? " (signed)" : "")],
      ["Events", (n) => n.events.join(", ")],
      ["", (n) => h("div", { class: "actions" },
        button("Test", async () => {
          await api("POST", "/notifiers/" + n.id + "/test");
          toast("A test event is on its way to " + n.name + ".");
          await showDeliveries(n);
        }, "secondary", { "aria-label": "Send a test event to " + n.name }),
        button("Deliveries", () => showDeliveries(n), "secondary", { "aria-label": "Deliveries to " + n.name }),
        button("Delete", async () => {
          if (await confirmDialog("Delete notifier " + n.name + "?", "Its delivery log goes with it.")) {
            await api("DELETE", "/notifiers/" + n.id);
            toast("Notifier " + n.name + " deleted.");
            fill(log);
            await load();
          }
        }, "danger", { "aria-label": "Delete " + n.name }))],
    ], list, "No notifiers: events reach no one yet.", { id: "notifiers" }));
  }

  const kind = h("select", { name: "kind", id: "notifier-kind" }, KINDS.map((k) => h("option", { value: k }, k)));
  const secret = h("input", { name: "secret", type: "password", autocomplete: "new-password", minlength: "16", id: "notifier-secret" });
  const secretField = field("Signing secret (optional)", secret, "Bodies carry X-Mezzanine-Signature-256 (HMAC-SHA256).");
  const urlField = field("URL", h("input", { name: "url", type: "url", autocomplete: "off", spellcheck: "false" }), "Kept sealed; only its host is shown again.");
  // E-mail: the SMTP server (sealed whole: it may hold a password) and the addresses.
  const security = h("select", { name: "security", id: "smtp-security", "data-path": "smtp.security" },
    [["starttls", "STARTTLS (587)"], ["tls", "TLS (465)"], ["none", "none (loopback only)"]].map(([v, l]) => h("option", { value: v }, l)));
  const smtpBox = h("fieldset", { id: "smtp-fields", "data-path": "smtp", hidden: true },
    h("legend", null, "SMTP server"),
    h("div", { class: "row" },
      field("Host", h("input", { name: "smtp_host", autocomplete: "off", spellcheck: "false", "data-path": "smtp.host" })),
      field("Port (optional)", h("input", { name: "smtp_port", type: "number", min: "1", max: "65535", "data-path": "smtp.port" })),
      field("Security", security)),
    h("div", { class: "row" },
      field("Username (optional)", h("input", { name: "smtp_username", autocomplete: "off", "data-path": "smtp.username" })),
      field("Password (optional)", h("input", { name: "smtp_password", type: "password", autocomplete: "new-password", "data-path": "smtp.password" }))),
    h("div", { class: "row" },
      field("From", h("input", { name: "smtp_from", placeholder: "Mezzanine <mezzanine@example.com>", autocomplete: "off", "data-path": "smtp.from" })),
      field("To", h("input", { name: "smtp_to", placeholder: "ops@example.com, oncall@example.com", autocomplete: "off", "data-path": "smtp.to" }), "Separate addresses with commas.")));
  kind.addEventListener("change", () => {
    secretField.hidden = kind.value !== "webhook";
    urlField.hidden = kind.value === "email";
    smtpBox.hidden = kind.value !== "email";
  });
  const events = h("fieldset", { class: "checks", "data-path": "events" },
    h("legend", null, "Events"),
    EVENTS.map((e) => h("label", null, h("input", { type: "checkbox", name: "events", value: e, checked: e === "run.failed" }), " " + e)));
  const form = h("form", { id: "notifier-form", class: "card wide", "aria-labelledby": "add-notifier", novalidate: true },
    h("h2", { id: "add-notifier" }, "Add a notifier"),
    h("div", { class: "row" },
      field("Name", h("input", { name: "name", required: true, maxlength: "64", autocomplete: "off" })),
      field("Kind", kind)),
    urlField,
    smtpBox,
    secretField,
    events,
    h("button", { type: "submit" }, "Add notifier"));
  onSubmit(form, async () => {
    const body = {
      name: form.elements.name.value.trim(),
      kind: kind.value,
      events: [...form.querySelectorAll("input[name=events]:checked")].map((c) => c.value),
    };
    if (kind.value === "email") {
      const v = (n) => form.elements[n].value.trim();
      body.smtp = { host: v("smtp_host"), security: security.value, from: v("smtp_from"), to: v("smtp_to").split(",").map((t) => t.trim()).filter(Boolean) };
      if (v("smtp_port")) body.smtp.port = Number(v("smtp_port"));
      if (v("smtp_username")) body.smtp.username = v("smtp_username");
      if (form.elements.smtp_password.value) body.smtp.password = form.elements.smtp_password.value;
    } else {
      body.url = form.elements.url.value.trim();
    }
    if (kind.value === "webhook" && secret.value) body.secret = secret.value;
    await api("POST", "/notifiers", body);
    form.reset();
    secretField.hidden = false;
    urlField.hidden = false;
    smtpBox.hidden = true;
    toast("Notifier " + body.name + " added.");
    await load();
  });

  fill(ctx.view, h("h1", null, "Notifiers"), box, log, form);
  await load();
}
