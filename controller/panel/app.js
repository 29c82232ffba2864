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
  if (!state.authenticated) closeChangeFeed();
  if (state.needs_setup) return show("setup");
  if (!state.authenticated) return show("login");
  $("#whoami").textContent = me.username + " (" + me.role + ")";
  $("#totp-status").textContent = me.totp_enabled ? "Enabled." : "Not enabled.";
  $("#totp-setup").hidden = me.totp_enabled;
  $("#totp-disable-form").hidden = !me.totp_enabled;
  $("#totp-enable-form").hidden = true;
  $("#admin").hidden = me.role !== "admin";
  for (const el of document.querySelectorAll("[data-min-role]")) {
    el.hidden = rank(me.role) < rank(el.dataset.minRole);
  }
  show("home");
  openChangeFeed();
  await loadServers();
  await loadWorkflows();
  await loadRuns();
  if (me.role === "admin") await Promise.all([loadUsers(), loadAudit()]);
}

const rank = (role) => ["viewer", "moderator", "admin"].indexOf(role);

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return new Date(iso).toLocaleString();
}

function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", onClick);
  return b;
}

/// The host an install command downloads from, if it is a loopback address.
function loopbackHost(command) {
  const m = /https?:\/\/(\[[^\]]+\]|[^\/:\s]+)/.exec(command || "");
  if (!m) return null;
  const host = m[1].replace(/^\[|\]$/g, "").toLowerCase();
  const loop = host === "localhost" || host.endsWith(".localhost") || /^127\./.test(host)
    || host === "::1" || host === "0.0.0.0";
  return loop ? m[1] : null;
}

function showInstall(r) {
  const loop = loopbackHost(r.install_command);
  $("#install-loopback").hidden = !loop;
  $("#install-host").textContent = loop || "";
  $("#install").hidden = false;
  $("#install-command").textContent = r.install_command;
  $("#install-expires").textContent = new Date(r.token_expires_at).toLocaleString();
}

async function loadServers() {
  const body = $("#servers tbody");
  const list = await api("GET", "/servers");
  body.replaceChildren();
  $("#no-servers").hidden = list.length > 0;
  for (const srv of list) {
    const tr = document.createElement("tr");
    cell(tr, srv.name);
    cell(tr, srv.host);
    const st = cell(tr, srv.status);
    st.className = "status " + srv.status;
    cell(tr, ago(srv.last_seen));
    cell(tr, srv.agent_version || "—");
    cell(tr, (srv.tags || []).join(", "));
    const actions = cell(tr, "");
    if (rank(me.role) >= 1) {
      actions.appendChild(button("Ping", "", () => act(async () => {
        const r = await api("POST", "/servers/" + srv.id + "/ping");
        flash("Agent answered in " + r.rtt_ms.toFixed(1) + " ms.", true);
      }, "")));
      actions.appendChild(button("Install command", "", async () => {
        const path = "/servers/" + srv.id + "/install-command";
        try { showInstall(await api("POST", path)); }
        catch (e) {
          // An enrolled server: a new token replaces its agent, so ask first (admin only).
          if (e.status === 409 && me.role === "admin" &&
              confirm("This server already has an agent. A new install command replaces it: the current agent is told it was removed and stops. Continue?")) {
            try { showInstall(await api("POST", path, { reenroll: true })); }
            catch (e2) { flash(e2.message); }
          } else {
            flash(e.message);
          }
        }
      }));
    }
    if (srv.status === "online") {
      actions.appendChild(button("Docker", "", () => openDocker(srv)));
    }
    if (me.role === "admin") {
      actions.appendChild(button("Delete", "danger", () => {
        if (confirm("Remove " + srv.name + "? Its agent stops and cannot reconnect.")) {
          act(() => api("DELETE", "/servers/" + srv.id), "Server removed.");
        }
      }));
    }
    if (srv.status !== "online") {
      api("GET", "/servers/" + srv.id).then((d) => {
        if (d.status_detail) {
          const small = document.createElement("span");
          small.className = "detail";
          small.textContent = d.status_detail;
          st.appendChild(small);
        }
      }).catch(() => {});
    }
    body.appendChild(tr);
  }
}

function syncServerForm() {
  const form = $("#server-form");
  const type = form.elements.auth_type.value;
  for (const el of form.querySelectorAll(".ssh")) el.hidden = type === "manual";
  for (const el of form.querySelectorAll(".ssh-password")) el.hidden = type !== "password";
  for (const el of form.querySelectorAll(".ssh-key")) el.hidden = type !== "key";
}

async function loadUsers() {
  const body = $("#users tbody");
  body.replaceChildren();
  for (const u of await api("GET", "/users")) {
    const tr = document.createElement("tr");
    const self = me && u.id === me.id;
    cell(tr, self ? u.username + " (you)" : u.username);
    if (self) {
      // One's own role and account are changed by another admin; the password in Account.
      cell(tr, u.role);
      cell(tr, u.totp_enabled ? "on" : "off");
      cell(tr, "");
      body.appendChild(tr);
      continue;
    }
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

// ---- Docker on one server -----------------------------------------------------------

let dockerServer = null;
let logStream = null;

function openDocker(srv) {
  dockerServer = srv;
  $("#docker").hidden = false;
  $("#docker-server").textContent = srv.name;
  stopLogs();
  loadDocker(false);
  // Heartbeats of this server come with the change feed while its card is open.
  openChangeFeed(srv.id);
  loadServerDetail(srv.id).catch((e) => flash(e.message));
}

// ---- Facts and live charts of one server --------------------------------------------

let samples = [];
const SAMPLES = 60;

function fact(dl, label, value) {
  if (value == null || value === "") return;
  const div = document.createElement("div");
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  div.append(dt, dd);
  dl.appendChild(div);
}

async function loadServerDetail(id) {
  const [d, m] = await Promise.all([api("GET", "/servers/" + id), api("GET", "/servers/" + id + "/metrics")]);
  if (!dockerServer || dockerServer.id !== id) return;
  const f = d.facts || {};
  const dl = $("#server-facts");
  dl.replaceChildren();
  fact(dl, "OS", f.os);
  fact(dl, "Kernel", f.kernel ? f.kernel + (f.arch ? " (" + f.arch + ")" : "") : null);
  fact(dl, "CPUs", f.cpus);
  fact(dl, "Memory", f.memory_bytes ? size(f.memory_bytes) : null);
  fact(dl, "Disk", f.disk_bytes ? size(f.disk_bytes) : null);
  fact(dl, "Docker", f.docker_version || "not found");
  fact(dl, "Agent", d.agent_version);
  fact(dl, "Certificate expires", d.cert_expires_at ? new Date(d.cert_expires_at).toLocaleDateString() : null);
  fact(dl, "Online since", d.connected_since ? new Date(d.connected_since).toLocaleString() : null);
  samples = m.samples;
  drawCharts();
}

function drawChart(name, values, max, label) {
  const svg = $("#chart-" + name);
  const top = max || Math.max(1, ...values);
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (29 - (Math.min(v, top) / top) * 28).toFixed(1));
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
  svg.dataset.points = String(values.length);
  $("#chart-" + name + "-now").textContent = values.length ? label(values[values.length - 1]) : "no heartbeats yet";
}

function drawCharts() {
  const share = (used, total) => (total ? used / total : 0);
  const pct = (v) => (v * 100).toFixed(0) + " %";
  drawChart("load", samples.map((s) => s.load1), null, (v) => v.toFixed(2));
  drawChart("memory", samples.map((s) => share(s.memory_used_bytes, s.memory_total_bytes)), 1, pct);
  drawChart("disk", samples.map((s) => share(s.disk_used_bytes, s.disk_total_bytes)), 1, pct);
}

function addSample(id, m) {
  if (!dockerServer || dockerServer.id !== id || !m) return;
  samples.push({
    at: m.at,
    load1: (m.load || [0])[0],
    memory_used_bytes: m.memory_used_bytes,
    memory_total_bytes: m.memory_total_bytes,
    disk_used_bytes: m.disk_used_bytes,
    disk_total_bytes: m.disk_total_bytes,
  });
  while (samples.length > SAMPLES) samples.shift();
  drawCharts();
}

function stopLogs() {
  if (logStream) logStream.close();
  logStream = null;
  $("#docker-logs-box").hidden = true;
}

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return bytes.toFixed(i ? 1 : 0) + " " + units[i];
}

async function loadDocker(check) {
  if (!dockerServer) return;
  const base = "/servers/" + dockerServer.id + "/docker";
  $("#docker-error").hidden = true;
  try {
    const [containers, images] = await Promise.all([
      api("GET", base + "/containers"),
      api("GET", base + "/images" + (check ? "?check=true" : "")),
    ]);
    renderContainers(containers);
    renderImages(images);
  } catch (e) {
    $("#docker-error").hidden = false;
    $("#docker-error").textContent = e.message;
    $("#containers tbody").replaceChildren();
    $("#images tbody").replaceChildren();
  }
}

function renderContainers(list) {
  const body = $("#containers tbody");
  body.replaceChildren();
  const base = "/servers/" + dockerServer.id + "/docker/containers/";
  for (const c of list) {
    const tr = document.createElement("tr");
    const name = c.names[0] || c.id.slice(0, 12);
    cell(tr, name);
    cell(tr, c.image);
    const st = cell(tr, c.state);
    st.className = "status " + (c.state === "running" ? "online" : "offline");
    const small = document.createElement("span");
    small.className = "detail";
    small.textContent = c.status;
    st.appendChild(small);
    cell(tr, c.ports.filter((p) => p.public_port).map((p) => p.public_port + "→" + p.private_port + "/" + p.type).join(", "));
    const actions = cell(tr, "");
    const run = (action, body) => async () => {
      try {
        const r = await api("POST", base + encodeURIComponent(c.id) + "/" + action, body);
        flash(name + ": " + r.detail + ".", true);
      } catch (e) { flash(e.message); }
      loadDocker(false);
    };
    actions.appendChild(button("Logs", "", () => followLogs(c.id, name)));
    if (rank(me.role) >= 1) {
      if (c.state === "running") {
        actions.appendChild(button("Stop", "", run("stop")));
        actions.appendChild(button("Restart", "", run("restart")));
      } else {
        actions.appendChild(button("Start", "", run("start")));
      }
    }
    if (me.role === "admin") {
      actions.appendChild(button("Remove", "danger", () => {
        if (confirm("Remove container " + name + "?")) run("remove", { force: c.state === "running" })();
      }));
    }
    body.appendChild(tr);
  }
}

function renderImages(list) {
  const body = $("#images tbody");
  body.replaceChildren();
  for (const img of list) {
    const tr = document.createElement("tr");
    cell(tr, img.repo_tags.length ? img.repo_tags.join(", ") : img.id.slice(7, 19));
    cell(tr, size(img.size));
    const u = cell(tr, img.update.status.replace(/_/g, " "));
    u.className = "update " + img.update.status;
    if (img.update.detail) {
      const small = document.createElement("span");
      small.className = "detail";
      small.textContent = img.update.detail;
      u.appendChild(small);
    }
    body.appendChild(tr);
  }
}

function followLogs(id, name) {
  stopLogs();
  const pre = $("#docker-logs");
  pre.replaceChildren();
  $("#docker-logs-box").hidden = false;
  $("#docker-logs-name").textContent = name;
  const url = "/api/servers/" + dockerServer.id + "/docker/containers/" + encodeURIComponent(id) + "/logs?follow=true";
  const es = new EventSource(url);
  logStream = es;
  const add = (cls) => (ev) => {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = ev.data + "\n";
    pre.appendChild(span);
    while (pre.childNodes.length > 2000) pre.removeChild(pre.firstChild);
    pre.scrollTop = pre.scrollHeight;
  };
  es.addEventListener("stdout", add(""));
  es.addEventListener("stderr", add("stderr"));
  const finish = (ev) => {
    let why = "stream closed";
    try { const d = JSON.parse(ev.data); why = d.reason || d.error || why; } catch (_) { /* keep default */ }
    add("muted")({ data: "— " + why + " —" });
    es.close();
    if (logStream === es) logStream = null;
  };
  es.addEventListener("end", finish);
  es.addEventListener("error", (ev) => { if (ev.data) finish(ev); else if (es.readyState === EventSource.CLOSED) finish({ data: "{}" }); });
}

$("#docker-close").addEventListener("click", () => { stopLogs(); dockerServer = null; $("#docker").hidden = true; openChangeFeed(null); });
$("#docker-reload").addEventListener("click", () => loadDocker(false));
$("#docker-check").addEventListener("click", () => loadDocker(true));
$("#docker-logs-stop").addEventListener("click", stopLogs);

// ---- Deploy workflows -------------------------------------------------------------------

let runStream = null;
let watchedRun = null;

async function loadWorkflows() {
  const [list, servers] = await Promise.all([api("GET", "/workflows"), api("GET", "/servers")]);
  const names = Object.fromEntries(servers.map((s) => [s.id, s.name]));
  const select = $("#workflow-server");
  select.replaceChildren(...servers.map((s) => {
    const o = document.createElement("option");
    o.value = s.id;
    o.textContent = s.name;
    return o;
  }));
  const body = $("#workflows tbody");
  body.replaceChildren();
  $("#no-workflows").hidden = list.length > 0;
  for (const wf of list) {
    const tr = document.createElement("tr");
    const nameCell = cell(tr, wf.name);
    cell(tr, names[wf.server_id] || wf.server_id);
    const last = cell(tr, wf.last_run ? wf.last_run.status : "never");
    if (wf.last_run) {
      last.className = "status " + wf.last_run.status;
      last.appendChild(button("View", "link", () => watchRun(wf.last_run.id, wf.name)));
    }
    cell(tr, wf.webhook ? "yes" : "no");
    const actions = cell(tr, "");
    if (rank(me.role) >= 1) {
      actions.appendChild(button("Run", "", async () => {
        try {
          const r = await api("POST", "/workflows/" + wf.id + "/run");
          watchRun(r.runId, wf.name);
          loadWorkflows();
        } catch (e) { flash(e.message); }
      }));
    }
    if (wf.secrets_held) {
      // A moderator changed the definition after an admin set its secrets: runs are
      // refused until an admin approves the definition as it stands.
      const held = document.createElement("span");
      held.textContent = " secrets held";
      held.className = "status failed";
      nameCell.appendChild(held);
      held.title = "Its secrets were set by an admin and its definition was last changed by a moderator.";
      if (me.role === "admin") {
        actions.appendChild(button("Approve", "", () => {
          if (confirm("Release the secrets of " + wf.name + " to its current definition?")) {
            act(() => api("POST", "/workflows/" + wf.id + "/approve"), "Definition approved.");
          }
        }));
      }
    }
    if (me.role === "admin") {
      actions.appendChild(button("Webhook", "", async () => {
        if (!confirm("Mint a new webhook secret for " + wf.name + "? The old one stops working.")) return;
        try {
          const r = await api("POST", "/workflows/" + wf.id + "/webhook/rotate");
          $("#webhook").hidden = false;
          $("#webhook-name").textContent = wf.name;
          $("#webhook-url").textContent = r.url;
          $("#webhook-secret").textContent = r.secret;
          loadWorkflows();
        } catch (e) { flash(e.message); }
      }));
      actions.appendChild(button("Delete", "danger", () => {
        if (confirm("Delete workflow " + wf.name + " and its runs?")) {
          act(() => api("DELETE", "/workflows/" + wf.id), "Workflow deleted.");
        }
      }));
    }
    body.appendChild(tr);
  }
}

function stopRunStream() {
  if (runStream) runStream.close();
  runStream = null;
}

function watchRun(runId, name) {
  stopRunStream();
  watchedRun = runId;
  $("#run-view").hidden = false;
  $("#run-id").textContent = "#" + runId;
  $("#run-workflow").textContent = name;
  const status = $("#run-status");
  status.textContent = "…";
  status.className = "status";
  const pre = $("#run-output");
  pre.replaceChildren();
  const add = (text, cls) => {
    const span = document.createElement("span");
    if (cls) span.className = cls;
    span.textContent = text + "\n";
    pre.appendChild(span);
    while (pre.childNodes.length > 5000) pre.removeChild(pre.firstChild);
    pre.scrollTop = pre.scrollHeight;
  };
  const es = new EventSource("/api/deployments/runs/" + runId + "/events");
  runStream = es;
  const data = (ev) => { try { return JSON.parse(ev.data); } catch (_) { return {}; } };
  es.addEventListener("output", (ev) => { const d = data(ev); add(d.line, d.stream === "stderr" ? "stderr" : ""); });
  es.addEventListener("step", (ev) => {
    const d = data(ev);
    status.textContent = "running";
    status.className = "status running";
    add("▸ " + d.name + ": " + d.status + (d.exit_code != null ? " (exit " + d.exit_code + ")" : ""), "step");
  });
  es.addEventListener("note", (ev) => add("note: " + data(ev).message, "step"));
  es.addEventListener("end", (ev) => {
    const d = data(ev);
    status.textContent = d.status;
    status.className = "status " + d.status;
    if (d.error) add("— " + d.error + " —", "step");
    es.close();
    if (runStream === es) runStream = null;
    loadWorkflows().catch(() => {});
  });
}

$("#run-close").addEventListener("click", () => { stopRunStream(); $("#run-view").hidden = true; });
$("#run-cancel").addEventListener("click", async () => {
  if (watchedRun == null) return;
  try {
    const r = await api("POST", "/deployments/runs/" + watchedRun + "/cancel");
    flash("Run " + r.status + ".", true);
  } catch (e) { flash(e.message); }
});

$("#workflow-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = formData(ev.target);
  let definition;
  try { definition = JSON.parse(f.definition); } catch (e) { flash("Definition: not valid JSON (" + e.message + ")"); return; }
  act(() => api("POST", "/workflows", { name: f.name, server_id: Number(f.server_id), definition }), "Workflow created.");
});

async function act(fn, done) {
  try {
    await fn();
    if (done) flash(done, true);
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

$("#totp-setup").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const password = ev.target.password.value;
  try {
    const r = await api("POST", "/auth/totp/setup", { password });
    ev.target.reset();
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

$("#server-form").elements.auth_type.addEventListener("change", syncServerForm);

$("#server-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target.elements;
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
    if (body.auth_type === "password") body.password = f.password.value;
    else {
      body.private_key = f.private_key.value;
      if (f.passphrase.value) body.passphrase = f.passphrase.value;
    }
  }
  try {
    const r = await api("POST", "/servers", body);
    ev.target.reset();
    syncServerForm();
    if (r.install_command) showInstall(r);
    else { $("#install").hidden = true; flash("Adopting " + body.name + " over SSH; watch its status below.", true); }
    await loadServers();
  } catch (e) { flash(e.message); }
});

$("#install-copy").addEventListener("click", async () => {
  try { await navigator.clipboard.writeText($("#install-command").textContent); flash("Copied.", true); }
  catch (_) { flash("Select the command and copy it by hand."); }
});

// ---- Live updates ----------------------------------------------------------------------
// One change feed per tab instead of polling: each event names what changed, and only
// that list is fetched again (coalesced, so a burst costs one request per list).

let changeFeed = null;
let feedMetrics = null;
const dirty = new Set();
let dirtyTimer = null;

function reloadSoon(what) {
  dirty.add(what);
  if (dirtyTimer) return;
  dirtyTimer = setTimeout(async () => {
    dirtyTimer = null;
    const lists = [...dirty];
    dirty.clear();
    if (!me) return;
    try {
      if (lists.includes("all")) return await refresh();
      if (lists.includes("servers")) await loadServers();
      if (lists.includes("workflows")) await loadWorkflows();
      if (lists.includes("runs")) await loadRuns();
      if (lists.includes("users") && me.role === "admin") await loadUsers();
    } catch (_) { /* the next change or a reload tries again */ }
  }, 300);
}

/// Opens the feed (again, when the server whose heartbeats it carries changes).
function openChangeFeed(metricsOf) {
  const want = metricsOf === undefined ? feedMetrics : metricsOf;
  if (changeFeed && want === feedMetrics) return;
  closeChangeFeed();
  feedMetrics = want;
  const es = new EventSource("/api/events" + (want ? "?metrics=" + want : ""));
  changeFeed = es;
  es.addEventListener("metrics", (ev) => {
    try { const d = JSON.parse(ev.data); addSample(d.id, d.metrics); } catch (_) { /* ignore a malformed event */ }
  });
  es.addEventListener("change", (ev) => {
    let d = {};
    try { d = JSON.parse(ev.data); } catch (_) { return; }
    if (d.kind === "server") reloadSoon("servers");
    else if (d.kind === "workflow") reloadSoon("workflows");
    else if (d.kind === "run") { reloadSoon("workflows"); reloadSoon("runs"); }
    else if (d.kind === "user") reloadSoon("users");
  });
  es.addEventListener("reset", () => reloadSoon("all"));
}

function closeChangeFeed() {
  if (changeFeed) changeFeed.close();
  changeFeed = null;
}

async function loadRuns() {
  const body = $("#runs tbody");
  const page = await api("GET", "/deployments/runs?per_page=15");
  body.replaceChildren();
  $("#no-runs").hidden = page.items.length > 0;
  for (const r of page.items) {
    const tr = document.createElement("tr");
    cell(tr, "#" + r.id);
    cell(tr, r.workflow || r.workflow_id);
    const st = cell(tr, r.status);
    st.className = "status " + r.status;
    const detail = r.trigger_detail || {};
    cell(tr, r.trigger + (detail.user ? " by " + detail.user : "") + (detail.ref ? " " + detail.ref : ""));
    cell(tr, r.duration_ms != null ? (r.duration_ms / 1000).toFixed(1) + " s" : "—");
    cell(tr, ago(r.queued_at));
    const name = r.workflow || String(r.workflow_id);
    cell(tr, "").appendChild(button("View", "link", () => watchRun(r.id, name)));
    body.appendChild(tr);
  }
  $("#runs-total").textContent = page.total > page.items.length ? "(newest " + page.items.length + " of " + page.total + ")" : "";
}

$("#user-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act(() => api("POST", "/users", formData(ev.target)), "User added.");
  ev.target.reset();
});

refresh().catch((e) => flash("Cannot reach the controller: " + e.message));
