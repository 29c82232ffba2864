// One run: its steps, each collapsible with its own output, timing and exit code; live
// while it runs; Cancel only while it can be cancelled.

import { api } from "../api.js";
import { h, button, status, duration, link, rank, toast, fill } from "../ui.js";
import { logView } from "../logview.js";
import { trigger } from "../widgets.js";

const OVER = ["succeeded", "failed", "cancelled", "timed_out", "interrupted"];

export default async function run(ctx) {
  const id = ctx.params.id;
  ctx.title("Run #" + id);
  const r = await api("GET", "/deployments/runs/" + encodeURIComponent(id));
  if (!ctx.current()) return;
  const wf = await api("GET", "/workflows/" + r.workflow_id).catch(() => null);

  const statusEl = h("span", { id: "run-status", class: "status " + r.status }, r.status);
  const errorEl = h("p", { id: "run-error", class: "warning", hidden: !r.error }, r.error || "");
  const cancel = rank(ctx.me.role) >= 1
    ? button("Cancel", async () => {
      const res = await api("POST", "/deployments/runs/" + id + "/cancel");
      toast("Run " + res.status + ".");
    }, "danger", { id: "run-cancel", hidden: OVER.includes(r.status) })
    : null;
  const timing = h("span", { id: "run-duration" }, duration(r.duration_ms));
  const notes = h("ul", { class: "notes", id: "run-notes" }, (r.notes || []).filter(Boolean).map((n) => h("li", null, n)));
  const stepsEl = h("div", { class: "steps", id: "run-steps" });

  // One collapsible block per step; its output lives in its own log view.
  const steps = new Map();
  function stepBlock(s) {
    if (steps.has(s.index)) return steps.get(s.index);
    const view = logView("step-output-" + s.index, () => "run-" + id + "-step-" + (s.index + 1) + ".log");
    const st = h("span", { class: "status " + (s.status || "pending") }, s.status || "pending");
    const meta = h("span", { class: "muted step-meta" });
    const d = h("details", { class: "step", dataset: { index: String(s.index) } },
      h("summary", null, h("span", { class: "step-name" }, (s.index + 1) + ". " + s.name), " ", st, " ", meta),
      view.el);
    // Closed, the output is not displayed at all (not only folded away), so tools that
    // walk the page (screen readers, checkers) skip it too.
    view.el.hidden = true;
    d.addEventListener("toggle", () => { view.el.hidden = !d.open; });
    const block = { d, st, meta, view, started: s.started_at ? Date.parse(s.started_at) : null, lines: 0 };
    block.set = (status, exit, finishedAt) => {
      st.textContent = status;
      st.className = "status " + status;
      const parts = [];
      if (exit != null) parts.push("exit " + exit);
      if (block.started && finishedAt) parts.push(duration(finishedAt - block.started));
      meta.textContent = parts.join(" · ");
      if (status === "running") d.open = true;
      if (status === "failed") d.open = true;
    };
    block.set(s.status || "pending", s.exit_code, s.finished_at ? Date.parse(s.finished_at) : null);
    steps.set(s.index, block);
    stepsEl.append(d);
    return block;
  }
  for (const s of r.steps || []) stepBlock(s);

  fill(ctx.view, 
    h("p", { class: "crumbs" }, link("#/runs", "Runs"), " / ", wf ? link("#/workflows/" + wf.id, wf.name) : "workflow " + r.workflow_id),
    h("div", { class: "bar" }, h("h1", null, "Run #" + id + " ", statusEl), cancel),
    h("dl", { class: "facts" },
      h("div", null, h("dt", null, "Trigger"), h("dd", null, trigger(r))),
      h("div", null, h("dt", null, "Queued"), h("dd", null, new Date(r.queued_at).toLocaleString())),
      h("div", null, h("dt", null, "Duration"), h("dd", null, timing))),
    errorEl, notes, stepsEl);

  function end(d) {
    statusEl.textContent = d.status;
    statusEl.className = "status " + d.status;
    if (cancel) cancel.hidden = true;
    if (d.error) { errorEl.textContent = d.error; errorEl.hidden = false; }
  }

  const over = OVER.includes(r.status);
  if (over) {
    // Over: the failing step (or a lone one) is opened; the stream below replays every
    // line with its stream (stderr marked), then ends.
    const failed = [...steps.values()].find((b) => b.st.textContent === "failed");
    if (failed) failed.d.open = true;
    else if (steps.size === 1) [...steps.values()][0].d.open = true;
  }

  // The event stream replays what is stored, then follows while the run goes on.
  const es = new EventSource("/api/deployments/runs/" + encodeURIComponent(id) + "/events");
  ctx.onLeave(() => es.close());
  const data = (ev) => { try { return JSON.parse(ev.data); } catch (_) { return {}; } };
  es.addEventListener("output", (ev) => {
    const d = data(ev);
    const b = steps.get(d.step) || stepBlock({ index: d.step, name: "step " + (d.step + 1) });
    b.view.add(d.line, d.stream === "stderr" ? "stderr" : "");
  });
  // A finished run's steps, notes and end are already shown as stored; its stream only
  // brings the lines.
  es.addEventListener("step", (ev) => {
    if (over) return;
    const d = data(ev);
    const b = stepBlock(d);
    if (d.status === "running") { b.started = Date.now(); b.d.open = true; }
    b.set(d.status, d.exit_code, d.status === "running" ? null : Date.now());
    statusEl.textContent = "running";
    statusEl.className = "status running";
  });
  es.addEventListener("note", (ev) => { if (!over) notes.append(h("li", null, data(ev).message)); });
  es.addEventListener("end", (ev) => {
    if (over) { es.close(); return; }
    end(data(ev));
    es.close();
    api("GET", "/deployments/runs/" + encodeURIComponent(id)).then((fresh) => { timing.textContent = duration(fresh.duration_ms); }).catch(() => {});
  });
}
