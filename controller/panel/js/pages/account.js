// Account: password, two-factor (TOTP with a QR code made by the controller), API
// tokens (made here, shown once, revoked here), theme.

import { api } from "../api.js";
import { h, field, onSubmit, toast, applyTheme, fill, table, button, confirmDialog, copyButton, ago, rank } from "../ui.js";

export default async function account(ctx) {
  ctx.title("Account");
  const state = await api("GET", "/auth/state");
  if (!ctx.current()) return;
  const me = state.user;

  const pw = h("form", { id: "password-form", class: "card" },
    h("h2", null, "Change password"),
    field("Current password", h("input", { name: "current", type: "password", autocomplete: "current-password", required: true })),
    field("New password", h("input", { name: "next", type: "password", autocomplete: "new-password", minlength: "10", required: true }), "10 characters or more."),
    h("button", { type: "submit" }, "Change password"));
  onSubmit(pw, async () => {
    await api("POST", "/auth/change-password", Object.fromEntries(new FormData(pw)));
    pw.reset();
    toast("Password changed; your other sessions were signed out.");
  });

  const totp = h("section", { class: "card", id: "totp", "aria-labelledby": "totp-title" });
  function drawTotp(enabled) {
    const parts = [h("h2", { id: "totp-title" }, "Two-factor (TOTP)"), h("p", { id: "totp-status" }, enabled ? "Enabled." : "Not enabled.")];
    if (enabled) {
      const off = h("form", { id: "totp-disable-form" },
        field("Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
        field("Code", h("input", { name: "code", inputmode: "numeric", pattern: "[0-9]{6}", autocomplete: "one-time-code", required: true })),
        h("button", { type: "submit", class: "danger" }, "Disable TOTP"));
      onSubmit(off, async () => {
        await api("POST", "/auth/totp/disable", Object.fromEntries(new FormData(off)));
        toast("TOTP disabled.");
        drawTotp(false);
      });
      parts.push(off);
    } else {
      const setup = h("form", { id: "totp-setup" },
        field("Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
        h("button", { type: "submit" }, "Set up TOTP"));
      onSubmit(setup, async () => {
        const r = await api("POST", "/auth/totp/setup", { password: setup.elements.password.value });
        const enable = h("form", { id: "totp-enable-form" },
          h("p", null, "Scan the code with your authenticator app (or type the secret), then enter the code it shows."),
          r.qr_svg ? h("img", { id: "totp-qr", class: "qr", alt: "QR code of the TOTP secret for " + me.username, src: "data:image/svg+xml;base64," + btoa(r.qr_svg) }) : null,
          h("code", { id: "totp-secret" }, r.secret),
          field("Code", h("input", { name: "code", inputmode: "numeric", pattern: "[0-9]{6}", autocomplete: "one-time-code", required: true })),
          h("button", { type: "submit" }, "Enable"));
        onSubmit(enable, async () => {
          await api("POST", "/auth/totp/enable", Object.fromEntries(new FormData(enable)));
          toast("TOTP enabled.");
          drawTotp(true);
        });
        setup.replaceWith(enable);
        enable.querySelector("input").focus();
      });
      parts.push(setup);
    }
    fill(totp, ...parts);
  }
  drawTotp(me.totp_enabled);

  const current = document.documentElement.dataset.theme || "system";
  const theme = h("fieldset", { class: "card", id: "theme" },
    h("legend", null, "Theme"),
    ["system", "light", "dark"].map((t) => h("label", { class: "check" },
      h("input", { type: "radio", name: "theme", value: t, checked: current === t, onchange: () => applyTheme(t) }),
      t === "system" ? "Follow the system" : t[0].toUpperCase() + t.slice(1))));

  // ---- API tokens: for scripts and CI (Authorization: Bearer mz_…). ----
  const tokens = h("section", { class: "card wide", id: "tokens", "aria-labelledby": "tokens-title" });
  const shown = h("div", { id: "new-token", "aria-live": "polite" });
  const roles = ["viewer", "moderator", "admin"].filter((r) => rank(r) <= rank(me.role));
  const make = h("form", { id: "token-form", class: "row" },
    field("Name", h("input", { name: "name", required: true, maxlength: "64", autocomplete: "off", placeholder: "CI deploys" })),
    field("Role", h("select", { name: "role" }, roles.map((r) => h("option", { value: r, selected: r === me.role }, r)))),
    field("Expires after (days)", h("input", { name: "expires_in_days", type: "number", min: "1", max: "3650", placeholder: "never" })),
    h("button", { type: "submit" }, "Make token"));
  onSubmit(make, async () => {
    const f = make.elements;
    const body = { name: f.name.value.trim(), role: f.role.value };
    if (f.expires_in_days.value) body.expires_in_days = Number(f.expires_in_days.value);
    const r = await api("POST", "/tokens", body);
    make.reset();
    fill(shown, h("p", { class: "warning" }, "Copy the token now: it is not shown again."),
      h("code", { id: "token-value" }, r.token), " ", copyButton(() => r.token, "Copy token"));
    toast("Token " + r.name + " made.");
    await loadTokens();
  });
  async function loadTokens() {
    const list = await api("GET", "/tokens");
    if (!ctx.current()) return;
    fill(tokens, h("h2", { id: "tokens-title" }, "API tokens"),
      h("p", { class: "muted" }, "For scripts and CI: send Authorization: Bearer <token>. A token acts with its role, never more than yours."),
      table([
        ["Name", (t) => t.name],
        ["Role", (t) => t.role],
        ["Owner", (t) => t.user],
        ["Token", (t) => h("code", null, t.prefix + "…")],
        ["Last used", (t) => ago(t.last_used_at)],
        ["Expires", (t) => t.expires_at ? new Date(t.expires_at).toLocaleDateString() : "never"],
        ["", (t) => button("Revoke", async () => {
          if (!await confirmDialog("Revoke token " + t.name + "?", "Scripts using it are refused from now on.", "Revoke")) return;
          await api("DELETE", "/tokens/" + t.id);
          toast("Token " + t.name + " revoked.");
          await loadTokens();
        }, "danger")],
      ], list, "No API tokens.", { id: "token-table" }),
      make, shown);
  }

  fill(ctx.view, h("h1", null, "Account"),
    h("p", { class: "muted" }, "Signed in as " + me.username + " (" + me.role + ")."),
    h("div", { class: "grid" }, pw, totp, theme), tokens);
  await loadTokens();
}
