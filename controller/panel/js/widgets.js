// Pieces more than one page shows: the run table and a server's status cell.

import { h, table, status, duration, ago, link } from "./ui.js";

export function trigger(r) {
  const d = r.trigger_detail || {};
  return r.trigger + (d.user ? " by " + d.user : "") + (d.ref ? " " + d.ref : "") + (d.commit ? " @" + String(d.commit).slice(0, 8) : "");
}

export function runsTable(items, empty) {
  return table([
    ["Run", (r) => link("#/runs/" + r.id, "#" + r.id)],
    ["Workflow", (r) => link("#/workflows/" + r.workflow_id, r.workflow || String(r.workflow_id))],
    ["Server", (r) => r.server ? link("#/servers/" + r.server_id, r.server) : "—"],
    ["Status", (r) => status(r.status)],
    ["Trigger", trigger],
    ["Duration", (r) => duration(r.duration_ms)],
    ["Queued", (r) => h("time", { datetime: r.queued_at, title: new Date(r.queued_at).toLocaleString() }, ago(r.queued_at))],
  ], items, empty || "No runs yet.", { id: "runs" });
}
