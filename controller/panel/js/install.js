// The install command card: shown after adding a server by command, or minting a new one.

import { h, copyButton } from "./ui.js";

/// The host an install command downloads from, if it is a loopback address.
export function loopbackHost(command) {
  const m = /https?:\/\/(\[[^\]]+\]|[^/:\s]+)/.exec(command || "");
  if (!m) return null;
  const host = m[1].replace(/^\[|\]$/g, "").toLowerCase();
  const loop = host === "localhost" || host.endsWith(".localhost") || /^127\./.test(host)
    || host === "::1" || host === "0.0.0.0";
  return loop ? m[1] : null;
}

export function installCard(r) {
  const loop = loopbackHost(r.install_command);
  const code = h("code", { id: "install-command" }, r.install_command);
  return h("section", { id: "install", class: "card wide", "aria-labelledby": "install-title" },
    h("h2", { id: "install-title" }, "Install command"),
    loop ? h("p", { id: "install-loopback", class: "warning" },
      "This command names ", h("strong", null, loop), ", an address of the controller's own machine: another server cannot reach it, and the install will fail there. Open this panel by an address your servers can reach (start the controller with ",
      h("code", null, "--listen 0.0.0.0:8080"), " if it only listens on loopback), or set ", h("code", null, "--public-url"), ", then mint a new command.") : null,
    h("p", null, "Paste this on the server as root. It works once and expires at " + new Date(r.token_expires_at).toLocaleString() + "."),
    code,
    copyButton(() => code.textContent));
}
