// Mezzanine panel: a thin client of the REST API under /api. No build step.
"use strict";

const $ = (sel) => document.querySelector(sel);

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  const res = await fetch("/api" + path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.error) || res.statusText);
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

function flash(message, good) {
  const el = $("#flash");
  el.textContent = message;
  el.className = good ? "ok" : "";
  el.hidden = !message;
}

function show(view) {
  for (const id of ["setup", "login", "home"]) $("#view-" + id).hidden = id !== view;
}

function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  row.appendChild(td);
  return td;
}

let me = null;

async function refresh() {
  const state = await api("GET", "/auth/state");
  me = state.user;
  $("#whoami").hidden = $("#logout").hidden = !state.authenticated;
  if (state.needs_setup) return show("setup");
  if (!state.authenticated) return show("login");
  $("#whoami").textContent = me.username + " (" + me.role + ")";
  $("#totp-status").textContent = me.totp_enabled ? "Enabled." : "Not enabled.";
  $("#totp-setup").hidden = me.totp_enabled;
  $("#totp-disable-form").hidden = !me.totp_enabled;
  $("#totp-enable-form").hidden = true;
  $("#admin").hidden = me.role !== "admin";
  show("home");
  if (me.role === "admin") await Promise.all([loadUsers(), loadAudit()]);
}

async function loadUsers() {
  const body = $("#users tbody");
  body.replaceChildren();
  for (const u of await api("GET", "/users")) {
    const tr = document.createElement("tr");
    cell(tr, u.username);
    const sel = document.createElement("select");
    for (const r of ["viewer", "moderator", "admin"]) sel.add(new Option(r, r, false, r === u.role));
    sel.addEventListener("change", () => act(() => api("PATCH", "/users/" + u.id, { role: sel.value }), "Role changed."));
    cell(tr, "").appendChild(sel);
    cell(tr, u.totp_enabled ? "on" : "off");
    const del = document.createElement("button");
    del.className = "danger";
    del.textContent = "Delete";
    del.addEventListener("click", () => {
      if (confirm("Delete user " + u.username + "?")) act(() => api("DELETE", "/users/" + u.id), "User deleted.");
    });
    cell(tr, "").appendChild(del);
    body.appendChild(tr);
  }
}

async function loadAudit() {
  const body = $("#audit tbody");
  body.replaceChildren();
  const page = await api("GET", "/audit?per_page=25");
  for (const e of page.items) {
    const tr = document.createElement("tr");
    cell(tr, new Date(e.at).toLocaleString());
    cell(tr, e.actor || "—");
    cell(tr, e.action);
    cell(tr, e.target || "");
    cell(tr, e.outcome + " (" + e.status + ")");
    body.appendChild(tr);
  }
}

async function act(fn, done) {
  try {
    await fn();
    flash(done, true);
  } catch (e) {
    if (e.status === 401) { flash("Your session ended; log in again."); }
    else flash(e.message);
  }
  await refresh().catch((e) => flash(e.message));
}

$("#setup-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/auth/setup", formData(ev.target)), "Admin created. Welcome!");
});

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const data = formData(ev.target);
  if (!data.totp) delete data.totp;
  try {
    await api("POST", "/auth/login", data);
    ev.target.reset();
    $("#totp-field").hidden = true;
    flash("");
    await refresh();
  } catch (e) {
    if (e.message === "TOTP_REQUIRED") {
      $("#totp-field").hidden = false;
      $("#totp-field input").focus();
      flash("Enter the code from your authenticator app.", true);
    } else flash(e.message);
  }
});

$("#logout").addEventListener("click", () => act(() => api("POST", "/auth/logout"), "Logged out."));

$("#password-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/auth/change-password", formData(ev.target)), "Password changed; other sessions were signed out.");
  ev.target.reset();
});

$("#totp-setup").addEventListener("click", async () => {
  try {
    const r = await api("POST", "/auth/totp/setup");
    $("#totp-secret").textContent = r.secret;
    $("#totp-enable-form").hidden = false;
    $("#totp-setup").hidden = true;
  } catch (e) { flash(e.message); }
});

$("#totp-enable-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/auth/totp/enable", formData(ev.target)), "TOTP enabled.");
  ev.target.reset();
});

$("#totp-disable-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/auth/totp/disable", formData(ev.target)), "TOTP disabled.");
  ev.target.reset();
});

$("#user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/users", formData(ev.target)), "User added.");
  ev.target.reset();
});

refresh().catch((e) => flash("Cannot reach the controller: " + e.message));
