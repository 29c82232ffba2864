// Components shared by the pages: an element builder, tables, toasts, a confirmation
// dialog, busy buttons, forms with errors next to their fields, and formatting. Text is
// only ever set as text (never as HTML): what the API returns cannot become markup.

import { ApiError } from "./api.js";

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

export const $ = (sel, root) => (root || document).querySelector(sel);

export function button(label, onClick, cls, attrs) {
  const b = h("button", Object.assign({ type: "button", class: cls || null }, attrs || {}), label);
  b.addEventListener("click", (ev) => busy(b, () => onClick(ev)));
  return b;
}

/// Disables `btn` while `fn` runs (a second click cannot send twice) and reports an error
/// that `fn` did not handle.
export async function busy(btn, fn) {
  if (btn.disabled) return undefined;
  btn.disabled = true;
  btn.setAttribute("aria-busy", "true");
  try { return await fn(); }
  catch (e) { toast(e.message, "error"); return undefined; }
  finally { btn.disabled = false; btn.removeAttribute("aria-busy"); }
}

// ---- Toasts: results reported where the user is, not in a banner far above. ----------

export function toast(message, kind) {
  const box = $("#toasts");
  const bad = kind === "error";
  const t = h("div", { class: "toast " + (bad ? "error" : "ok"), role: bad ? "alert" : "status" },
    h("span", null, message),
    h("button", { type: "button", class: "link", "aria-label": "Dismiss", onclick: () => t.remove() }, "×"));
  box.append(t);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => t.remove(), bad ? 12000 : 5000);
}

// ---- Confirmation dialog ----------------------------------------------------------------

/// Asks before something that cannot be undone; `what` says what it takes with it.
export function confirmDialog(title, what, action) {
  return new Promise((resolve) => {
    const d = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" },
      h("h2", { id: "dialog-title" }, title),
      h("p", null, what),
      h("form", { method: "dialog", class: "bar end" },
        h("button", { value: "cancel", class: "secondary" }, "Cancel"),
        h("button", { value: "ok", class: "danger" }, action || "Delete")));
    d.addEventListener("close", () => { resolve(d.returnValue === "ok"); d.remove(); });
    document.body.append(d);
    d.showModal();
  });
}

// ---- Forms --------------------------------------------------------------------------------

export function field(label, input, hint) {
  return h("label", null, label, input, hint ? h("small", { class: "hint" }, hint) : null);
}

export function clearErrors(form) {
  for (const e of form.querySelectorAll(".field-error")) e.remove();
  for (const e of form.querySelectorAll("[aria-invalid]")) {
    e.removeAttribute("aria-invalid");
    e.removeAttribute("aria-describedby");
  }
}

let errorIds = 0;

/// Shows an API error next to the field it names (the input whose `data-path`, or name,
/// is the longest prefix of the error's path), else as a toast.
export function showError(form, e) {
  const path = e instanceof ApiError ? e.field : null;
  if (path && form) {
    let best = null;
    let bestLen = -1;
    for (const el of form.querySelectorAll("[data-path], [name]")) {
      const p = el.dataset.path || el.name;
      if (!p) continue;
      const hit = path === p || path.startsWith(p + ".") || path.startsWith(p + "[");
      if (hit && p.length > bestLen) { best = el; bestLen = p.length; }
    }
    if (best) {
      const id = "err-" + (++errorIds);
      best.setAttribute("aria-invalid", "true");
      best.setAttribute("aria-describedby", id);
      const msg = h("p", { class: "field-error", id, role: "alert" }, e.detail);
      const anchor = best.closest("label") || best;
      anchor.after(msg);
      if (best.closest("details")) best.closest("details").open = true;
      best.focus();
      return;
    }
  }
  toast(e.message, "error");
}

/// Wires a form: on submit, errors are cleared, the submit button is busy, `fn(form)` runs;
/// its failure is shown next to the field it names.
export function onSubmit(form, fn) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    const btn = ev.submitter || form.querySelector("button[type=submit]");
    if (btn && btn.disabled) return;
    if (btn) { btn.disabled = true; btn.setAttribute("aria-busy", "true"); }
    try { await fn(form); }
    catch (e) { showError(form, e); }
    finally { if (btn) { btn.disabled = false; btn.removeAttribute("aria-busy"); } }
  });
  return form;
}

// ---- Tables -------------------------------------------------------------------------------

/// A table of `rows`: columns are `[label, (row) => node or text]`; `empty` is said when
/// there are no rows.
export function table(columns, rows, empty, attrs) {
  if (!rows.length) return h("p", { class: "muted empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", attrs || null,
      h("thead", null, h("tr", null, columns.map(([label]) => h("th", { scope: "col" }, label)))),
      h("tbody", null, rows.map((r) => h("tr", null, columns.map(([, cell]) => h("td", null, cell(r))))))));
}

/// Previous/next for a paged API answer `{page, per_page, total}`.
export function pager(page, go) {
  const pages = Math.max(1, Math.ceil(page.total / page.per_page));
  if (pages <= 1) return null;
  return h("nav", { class: "pager", "aria-label": "Pages" },
    button("Previous", () => go(page.page - 1), "secondary", { disabled: page.page <= 1 }),
    h("span", null, "Page " + page.page + " of " + pages + " (" + page.total + ")"),
    button("Next", () => go(page.page + 1), "secondary", { disabled: page.page >= pages }));
}

export function status(s, detail) {
  return h("span", { class: "status " + s }, s.replace(/_/g, " "), detail ? h("span", { class: "detail" }, detail) : null);
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function copyButton(getText, label) {
  return button(label || "Copy", async () => {
    try { await navigator.clipboard.writeText(getText()); toast("Copied."); }
    catch (_) { toast("Select the text and copy it by hand.", "error"); }
  }, "secondary");
}

// ---- Formatting ------------------------------------------------------------------------------

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(iso).toLocaleString();
}

export function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return bytes.toFixed(i ? 1 : 0) + " " + units[i];
}

export function duration(ms) {
  if (ms == null) return "—";
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

export const rank = (role) => ["viewer", "moderator", "admin"].indexOf(role);

/// The theme: the system's, unless the user picked one (kept in this browser).
export function applyTheme(choice) {
  if (choice === "light" || choice === "dark") {
    document.documentElement.dataset.theme = choice;
    localStorage.setItem("mz-theme", choice);
  } else {
    delete document.documentElement.dataset.theme;
    localStorage.removeItem("mz-theme");
  }
}

/// Replaces `el`'s children, skipping null/false ones (`replaceChildren` would print them).
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
