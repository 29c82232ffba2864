// A small line chart as SVG: enough for a heartbeat history, no library.

import { h } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";

export function chart(id, caption) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("id", id);
  svg.setAttribute("viewBox", "0 0 120 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", caption + " over the last heartbeats");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", "");
  svg.append(line);
  const now = h("span", { id: id + "-now" });
  const fig = h("figure", null, h("figcaption", null, caption + " ", now), svg);
  return {
    el: fig,
    /// Draws `values` scaled to `max` (or to their own maximum); `label` formats the latest.
    draw(values, max, label) {
      const top = max || Math.max(1, ...values);
      const step = values.length > 1 ? 120 / (values.length - 1) : 0;
      line.setAttribute("points", values.map((v, i) =>
        (i * step).toFixed(1) + "," + (29 - (Math.min(v, top) / top) * 28).toFixed(1)).join(" "));
      svg.dataset.points = String(values.length);
      now.textContent = values.length ? label(values[values.length - 1]) : "no heartbeats yet";
    },
  };
}
