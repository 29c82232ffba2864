// Account: password, two-factor (TOTP with a QR code made by the controller), theme.

import { api } from "../api.js";
import { h, field, onSubmit, toast, applyTheme, fill } from "../ui.js";

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

  fill(ctx.view, h("h1", null, "Account"),
    h("p", { class: "muted" }, "Signed in as " + me.username + " (" + me.role + ")."),
    h("div", { class: "grid" }, pw, totp, theme));
}
