// A log view for container logs and run output: follow (stick to the bottom), pause,
// search with highlighted matches, wrap, download, and ANSI colours rendered as classes.

import { h, button, fill } from "./ui.js";

const MAX_LINES = 5000;

// SGR codes we render; anything else in an escape sequence is dropped.
const COLOURS = { 30: "black", 31: "red", 32: "green", 33: "yellow", 34: "blue", 35: "magenta", 36: "cyan", 37: "white",
  90: "black", 91: "red", 92: "green", 93: "yellow", 94: "blue", 95: "magenta", 96: "cyan", 97: "white" };

/// Splits a line into spans by its ANSI SGR sequences: `[{text, classes}]`.
export function ansiSpans(line, state) {
  const out = [];
  const re = /\x1b\[([0-9;]*)([A-Za-z])/g;
  let last = 0;
  let m;
  const cls = () => [state.fg ? "ansi-" + state.fg : null, state.bold ? "ansi-bold" : null].filter(Boolean).join(" ");
  while ((m = re.exec(line))) {
    if (m.index > last) out.push({ text: line.slice(last, m.index), cls: cls() });
    last = re.lastIndex;
    if (m[2] !== "m") continue;
    for (const code of (m[1] || "0").split(";").map(Number)) {
      if (code === 0) { state.fg = null; state.bold = false; }
      else if (code === 1) state.bold = true;
      else if (code === 22) state.bold = false;
      else if (code === 39) state.fg = null;
      else if (COLOURS[code]) state.fg = COLOURS[code];
    }
  }
  if (last < line.length) out.push({ text: line.slice(last), cls: cls() });
  // Other control characters (cursor moves, bells) are not text.
  for (const s of out) s.text = s.text.replace(/\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]/g, "");
  return out;
}

export function logView(id, fileName) {
  const pre = h("pre", { id, class: "log wrap", tabindex: "0", "aria-live": "off" });
  const search = h("input", { type: "search", placeholder: "Search", "aria-label": "Search the log" });
  const count = h("span", { class: "muted" });
  let follow = true;
  let paused = false;
  const held = [];
  const ansi = {};
  const pause = button("Pause", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    if (!paused) { for (const [t, c] of held.splice(0)) add(t, c); }
  }, "secondary", { "aria-pressed": "false" });
  const wrap = h("input", { type: "checkbox", checked: true, onchange: () => pre.classList.toggle("wrap", wrap.checked) });
  const bar = h("div", { class: "bar tools" },
    h("label", { class: "inline-field" }, search),
    count,
    pause,
    h("label", { class: "check" }, wrap, "Wrap"),
    button("Download", () => {
      const blob = new Blob([pre.textContent], { type: "text/plain" });
      const a = h("a", { href: URL.createObjectURL(blob), download: fileName() });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 1000);
    }, "secondary"));

  pre.addEventListener("scroll", () => {
    follow = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  });

  function mark(line) {
    const q = search.value.toLowerCase();
    const hit = q && line.textContent.toLowerCase().includes(q);
    line.classList.toggle("hit", !!hit);
    line.hidden = !!q && !hit;
    return hit;
  }
  search.addEventListener("input", () => {
    let hits = 0;
    for (const l of pre.children) if (mark(l)) hits++;
    count.textContent = search.value ? hits + " matching lines" : "";
  });

  function add(text, cls) {
    if (paused) { held.push([text, cls]); return; }
    const line = h("span", { class: "line " + (cls || "") });
    for (const s of ansiSpans(text, ansi)) line.append(s.cls ? h("span", { class: s.cls }, s.text) : s.text);
    line.append("\n");
    mark(line);
    pre.append(line);
    while (pre.childNodes.length > MAX_LINES) pre.firstChild.remove();
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  return {
    el: h("div", { class: "logview" }, bar, pre),
    pre,
    add,
    clear() { fill(pre); held.length = 0; },
  };
}
