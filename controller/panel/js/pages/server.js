// One server: its state and adoption progress, facts, live charts, deploy key, and its
// Docker engine (containers with live logs, images with update status).

import { api } from "../api.js";
import { h, button, status, ago, size, link, rank, toast, confirmDialog, copyButton, table, field, onSubmit, fill } from "../ui.js";
import { chart } from "../chart.js";
import { logView } from "../logview.js";
import { installCard } from "../install.js";

const SAMPLES = 60;
const ADOPTION = ["pending", "connecting", "installing", "enrolling", "online"];

export default async function server(ctx) {
  const id = ctx.params.id;
  const base = "/servers/" + encodeURIComponent(id);
  let s = await api("GET", base);
  if (!ctx.current()) return;
  ctx.title(s.name);
  const mod = rank(ctx.me.role) >= 1;
  const admin = ctx.me.role === "admin";

  const head = h("div");
  const adoption = h("section", { id: "adoption" });
  const facts = h("dl", { id: "server-facts", class: "facts" });
  const charts = { load: chart("chart-load", "Load (1 min)"), memory: chart("chart-memory", "Memory used"), disk: chart("chart-disk", "Disk used") };
  const installBox = h("div");
  const keyBox = h("section", { id: "deploy-key", "aria-labelledby": "key-title" });
  const docker = h("section", { id: "docker", "aria-labelledby": "docker-title" });
  let samples = [];
  // "live": the last heartbeats, kept moving by the event stream; a range: the stored
  // history at one-minute or fifteen-minute points.
  let range = "live";
  const rangeSel = h("select", { id: "chart-range", "aria-label": "Chart range" },
    [["live", "last 10 minutes (live)"], ["1h", "last hour"], ["24h", "last day"], ["7d", "last week"], ["30d", "last 30 days"]]
      .map(([v, label]) => h("option", { value: v }, label)));
  rangeSel.addEventListener("change", async () => {
    range = rangeSel.value;
    const m = await api("GET", base + "/metrics" + (range === "live" ? "" : "?range=" + range)).catch(() => ({}));
    if (!ctx.current()) return;
    samples = (range === "live" ? m.samples : m.points) || [];
    drawCharts();
  });

  function drawCharts() {
    const share = (used, total) => (total ? used / total : 0);
    const pct = (v) => (v * 100).toFixed(0) + " %";
    charts.load.draw(samples.map((x) => x.load1), null, (v) => v.toFixed(2));
    charts.memory.draw(samples.map((x) => share(x.memory_used_bytes, x.memory_total_bytes)), 1, pct);
    charts.disk.draw(samples.map((x) => share(x.disk_used_bytes, x.disk_total_bytes)), 1, pct);
  }

  function drawHead() {
    const actions = [];
    if (mod && s.status === "online") {
      actions.push(button("Ping", async () => {
        const r = await api("POST", base + "/ping");
        toast("Agent answered in " + r.rtt_ms.toFixed(1) + " ms.");
      }, "secondary"));
    }
    if (mod) {
      actions.push(button("Install command", async () => {
        try { fill(installBox, installCard(await api("POST", base + "/install-command"))); }
        catch (e) {
          // An enrolled server: a new token replaces its agent, so ask first (admin only).
          if (e.status !== 409 || !admin) throw e;
          if (await confirmDialog("Replace the agent of " + s.name + "?", "A new install command replaces the current agent: it is told it was removed and stops.", "Mint a new command")) {
            fill(installBox, installCard(await api("POST", base + "/install-command", { reenroll: true })));
          }
        }
      }, "secondary"));
    }
    // The controller serves a newer agent build: replace this one over its session (it
    // tries the new binary and takes it back if it does not attach).
    if (admin && s.status === "online" && s.agent_outdated && !(s.agent_upgrade && s.agent_upgrade.status === "upgrading")) {
      actions.push(button("Upgrade agent", async () => {
        const r = await api("POST", base + "/agent/upgrade", {});
        toast("Upgrading the agent from " + r.from + " to " + r.to + ".");
        s = await api("GET", base);
        drawHead(); drawFacts();
      }, "secondary", { id: "agent-upgrade" }));
    }
    if (admin && s.auth_type && s.auth_type !== "manual" && s.status !== "online") {
      actions.push(button(s.status === "failed" ? "Retry adoption" : "Reinstall", () => reinstall(), "secondary", { id: "reinstall" }));
    }
    if (admin) {
      actions.push(button("Delete", async () => {
        if (await confirmDialog("Delete " + s.name + "?", "Its agent stops and cannot reconnect; workflows that deploy to it stop working. Its run history stays.")) {
          await api("DELETE", base);
          toast("Server " + s.name + " removed.");
          location.hash = "#/servers";
        }
      }, "danger"));
    }
    fill(head, 
      h("p", { class: "crumbs" }, link("#/servers", "Servers"), " / " + s.name),
      h("div", { class: "bar wrap" }, h("h1", null, s.name + " ", status(s.status)), h("div", { class: "actions" }, actions)),
      h("p", { class: "muted" }, s.host + (s.tags && s.tags.length ? " · " + s.tags.join(", ") : "") + " · last seen " + ago(s.last_seen)));
  }

  async function reinstall() {
    try {
      await api("POST", base + "/reinstall", {});
      toast("Adopting " + s.name + " again.");
      return;
    } catch (e) {
      if (e.status !== 400 && e.status !== 409) throw e;
      // Credentials were not kept (or no host key is pinned): ask for them.
      const form = h("form", { class: "card wide", id: "reinstall-form" },
        h("p", null, e.message),
        h("div", { class: "row" },
          field("SSH password", h("input", { name: "password", type: "password", autocomplete: "off" })),
          field("Host key fingerprint", h("input", { name: "host_key_fingerprint", placeholder: "SHA256:…", value: s.host_key_fingerprint || "" }))),
        h("button", { type: "submit" }, "Reinstall"));
      onSubmit(form, async () => {
        const body = {};
        if (form.elements.password.value) body.password = form.elements.password.value;
        if (form.elements.host_key_fingerprint.value) body.host_key_fingerprint = form.elements.host_key_fingerprint.value.trim();
        await api("POST", base + "/reinstall", body);
        form.remove();
        toast("Adopting " + s.name + " again.");
      });
      fill(installBox, form);
    }
  }

  function drawAdoption() {
    const over = s.status === "online" && !(s.events || []).length;
    if (over || s.auth_type === "manual" && s.status === "online") { fill(adoption); return; }
    const at = ADOPTION.indexOf(s.status);
    const steps = ["connecting", "installing", "enrolling", "online"].map((st) => {
      const i = ADOPTION.indexOf(st);
      const state = s.status === "failed" ? "" : i < at ? "done" : i === at ? "current" : "";
      return h("li", { class: state, "aria-current": state === "current" ? "step" : null }, st);
    });
    fill(adoption, 
      h("h2", null, "Adoption"),
      s.auth_type !== "manual" ? h("ol", { class: "stepper" }, steps) : null,
      s.status_detail ? h("p", { class: s.status === "failed" ? "warning" : "muted", id: "status-detail" }, s.status_detail) : null,
      (s.events || []).length ? h("ul", { class: "events" }, s.events.map((e) => h("li", null, h("time", { datetime: e.at }, ago(e.at)), " ", e.message))) : null);
  }

  function drawFacts() {
    const f = s.facts || {};
    const rows = [
      ["OS", f.os],
      ["Kernel", f.kernel ? f.kernel + (f.arch ? " (" + f.arch + ")" : "") : null],
      ["CPUs", f.cpus],
      ["Memory", f.memory_bytes ? size(f.memory_bytes) : null],
      ["Disk", f.disk_bytes ? size(f.disk_bytes) : null],
      ["Docker", s.facts ? f.docker_version || "not found" : null],
      ["Agent", s.agent_version ? s.agent_version + (s.agent_outdated ? " (a newer build is served)" : "") : null],
      ["Agent upgrade", upgradeLine(s.agent_upgrade)],
      ["Certificate expires", s.cert_expires_at ? new Date(s.cert_expires_at).toLocaleDateString() : null],
      ["Online since", s.connected_since ? new Date(s.connected_since).toLocaleString() : null],
      ["SSH", s.auth_type && s.auth_type !== "manual" ? (s.username || "root") + "@" + s.host + ":" + s.port : null],
      ["Host key", s.host_key_fingerprint],
    ].filter(([, v]) => v != null && v !== "");
    fill(facts, ...rows.map(([k, v]) => h("div", null, h("dt", null, k), h("dd", null, String(v)))));
  }

  function upgradeLine(u) {
    if (!u) return null;
    const what = (u.from || "?") + " → " + u.to;
    if (u.status === "upgrading") return what + ": in progress since " + ago(u.started_at);
    return what + ": " + u.status.replace("_", " ") + (u.ended_at ? " " + ago(u.ended_at) : "") + (u.error ? " — " + u.error : "");
  }

  async function loadKey() {
    try {
      const k = await api("GET", base + "/deploy-key");
      const pub = h("code", { id: "deploy-key-value" }, k.public_key);
      fill(keyBox, h("h2", { id: "key-title" }, "Deploy key"),
        h("p", { class: "muted" }, "Add it as a read-only deploy key to the Git repositories this server clones. Fingerprint " + k.fingerprint + "."),
        pub, h("div", { class: "bar" }, copyButton(() => pub.textContent),
          admin ? button("Rotate", async () => {
            if (await confirmDialog("Rotate the deploy key of " + s.name + "?", "Repositories that trust the old key refuse this server until the new one is added.", "Rotate")) {
              await api("POST", base + "/deploy-key/rotate");
              toast("New deploy key made.");
              await loadKey();
            }
          }, "secondary") : null));
    } catch (e) {
      fill(keyBox, h("h2", { id: "key-title" }, "Deploy key"), h("p", { class: "muted" }, e.message));
    }
  }

  // ---- Docker ----
  const logBox = h("div", { id: "docker-logs-box", hidden: true });
  let logStream = null;
  const containersBox = h("div");
  const imagesBox = h("div");
  const dockerError = h("p", { id: "docker-error", class: "warning", hidden: true });
  function stopLogs() {
    if (logStream) logStream.close();
    logStream = null;
  }
  ctx.onLeave(stopLogs);

  function followLogs(cid, name) {
    stopLogs();
    const view = logView("docker-logs", () => name + ".log");
    logBox.hidden = false;
    fill(logBox, h("div", { class: "bar" }, h("h3", null, "Log of ", h("span", { id: "docker-logs-name" }, name)),
      button("Stop following", () => { stopLogs(); }, "secondary", { id: "docker-logs-stop" }),
      button("Close", () => { stopLogs(); logBox.hidden = true; }, "link")), view.el);
    const es = new EventSource("/api" + base + "/docker/containers/" + encodeURIComponent(cid) + "/logs?follow=true");
    logStream = es;
    es.addEventListener("stdout", (ev) => view.add(ev.data));
    es.addEventListener("stderr", (ev) => view.add(ev.data, "stderr"));
    const finish = (ev) => {
      let why = "stream closed";
      try { const d = JSON.parse(ev.data); why = d.reason || d.error || why; } catch (_) { /* keep default */ }
      view.add("— " + why + " —", "muted");
      es.close();
      if (logStream === es) logStream = null;
    };
    es.addEventListener("end", finish);
    es.addEventListener("error", (ev) => { if (ev.data) finish(ev); else if (es.readyState === EventSource.CLOSED) finish({ data: "{}" }); });
  }

  async function loadDocker(check) {
    dockerError.hidden = true;
    try {
      const [containers, images] = await Promise.all([
        api("GET", base + "/docker/containers"),
        api("GET", base + "/docker/images" + (check ? "?check=true" : "")),
      ]);
      if (!ctx.current()) return;
      drawContainers(containers);
      drawImages(images);
    } catch (e) {
      dockerError.hidden = false;
      dockerError.textContent = e.message;
      fill(containersBox);
      fill(imagesBox);
    }
  }

  function drawContainers(list) {
    const cbase = base + "/docker/containers/";
    fill(containersBox, table([
      ["Name", (c) => c.names[0] || c.id.slice(0, 12)],
      ["Image", (c) => c.image],
      ["State", (c) => h("span", { class: "status " + (c.state === "running" ? "online" : "offline") }, c.state, h("span", { class: "detail" }, c.status))],
      ["Ports", (c) => c.ports.filter((p) => p.public_port).map((p) => p.public_port + "→" + p.private_port + "/" + p.type).join(", ")],
      ["", (c) => {
        const name = c.names[0] || c.id.slice(0, 12);
        const act = (action, body) => async () => {
          const r = await api("POST", cbase + encodeURIComponent(c.id) + "/" + action, body);
          toast(name + ": " + r.detail + ".");
          await loadDocker(false);
        };
        const out = [button("Logs", () => followLogs(c.id, name), "secondary")];
        if (mod) {
          if (c.state === "running") out.push(button("Stop", act("stop"), "secondary"), button("Restart", act("restart"), "secondary"));
          else out.push(button("Start", act("start"), "secondary"));
        }
        if (admin) {
          out.push(button("Remove", async () => {
            if (await confirmDialog("Remove container " + name + "?", "The container and its writable layer go; named volumes stay.", "Remove")) await act("remove", { force: c.state === "running" })();
          }, "danger"));
        }
        return h("div", { class: "actions" }, out);
      }],
    ], list, "No containers.", { id: "containers" }));
  }

  function drawImages(list) {
    fill(imagesBox, table([
      ["Tags", (i) => i.repo_tags.length ? i.repo_tags.join(", ") : i.id.slice(7, 19)],
      ["Size", (i) => size(i.size)],
      ["Update", (i) => h("span", { class: "update " + i.update.status }, i.update.status.replace(/_/g, " "), i.update.detail ? h("span", { class: "detail" }, i.update.detail) : null)],
    ], list, "No images.", { id: "images" }));
  }

  function drawDocker() {
    if (s.status !== "online") {
      fill(docker, h("h2", { id: "docker-title" }, "Docker"), h("p", { class: "muted" }, "Shown while the server is online."));
      return false;
    }
    fill(docker, 
      h("div", { class: "bar" }, h("h2", { id: "docker-title" }, "Docker"), button("Reload", () => loadDocker(false), "secondary", { id: "docker-reload" })),
      dockerError,
      h("h3", null, "Containers"), containersBox, logBox,
      h("div", { class: "bar" }, h("h3", null, "Images"), button("Check for updates", () => loadDocker(true), "secondary", { id: "docker-check" })),
      imagesBox);
    return true;
  }

  drawHead();
  drawAdoption();
  drawFacts();
  fill(ctx.view, head, installBox, adoption,
    h("section", { "aria-labelledby": "facts-title" }, h("h2", { id: "facts-title" }, "Facts"), facts,
      h("div", { class: "bar" }, h("label", null, "Charts ", rangeSel)),
      h("div", { class: "charts" }, charts.load.el, charts.memory.el, charts.disk.el)),
    docker, keyBox);

  ctx.watchMetrics(Number(id));
  const m = await api("GET", base + "/metrics").catch(() => ({ samples: [] }));
  samples = m.samples || [];
  drawCharts();
  loadKey();
  let online = drawDocker();
  if (online) loadDocker(false);

  ctx.on((type, d) => {
    if (type !== "metrics" || String(d.id) !== String(id) || !d.metrics || range !== "live") return;
    const x = d.metrics;
    samples.push({
      at: x.at,
      load1: (x.load || [0])[0],
      memory_used_bytes: x.memory_used_bytes,
      memory_total_bytes: x.memory_total_bytes,
      disk_used_bytes: x.disk_used_bytes,
      disk_total_bytes: x.disk_total_bytes,
    });
    while (samples.length > SAMPLES) samples.shift();
    drawCharts();
  });
  ctx.live(["server"], async () => {
    try { s = await api("GET", base); }
    catch (e) { if (e.status === 404) { toast("This server was removed."); location.hash = "#/servers"; } return; }
    if (!ctx.current()) return;
    drawHead();
    drawAdoption();
    drawFacts();
    const now = s.status === "online";
    if (now !== online) { online = drawDocker(); if (online) loadDocker(false); }
  }, (d) => String(d.id) === String(id));
}
