// The form-based step editor: one card per step with the fields of its type; reorder,
// add, remove. Each input carries the API path of its value (`data-path`), so an error the
// API names ("definition.steps[1].with.script: …") lands next to the right field.

import { h, button, field } from "./ui.js";

// Fields per step type: [key, label, kind, hint]. kind: text | area | number | list | map | select:<a|b>.
export const TYPES = {
  shell: [["script", "Script", "area", "Runs with sh -e as root; MZ_RUN_ID and the workflow's env are set."], ["workdir", "Working directory", "text", "An absolute path (optional)."]],
  git: [["repo", "Repository", "text", "https://… or git@host:owner/repo.git (the server's deploy key is used for SSH)."], ["ref", "Branch, tag or commit", "text"], ["path", "Checkout path", "text", "An absolute path on the server."], ["known_hosts", "known_hosts lines (SSH)", "area", "host key-type base64-key"]],
  "docker.build": [["context", "Context directory", "text", "An absolute path on the server."], ["dockerfile", "Dockerfile", "text", "Inside the context (default Dockerfile)."], ["tag", "Image tag", "text"], ["build_args", "Build arguments", "map", "KEY=value, one per line."]],
  "docker.run": [["image", "Image", "text"], ["name", "Container name", "text"], ["ports", "Ports", "list", "host:container[/udp], comma separated."], ["volumes", "Volumes", "list", "/host/path:/container/path[:ro], comma separated."], ["env", "Environment", "map", "KEY=value, one per line."], ["restart", "Restart policy", "select:unless-stopped|always|on-failure|no"]],
  "http.check": [["url", "URL", "text", "Checked from the server, e.g. http://127.0.0.1:8080/health."], ["expect_status", "Expected status", "number"], ["retries", "Retries", "number"], ["interval_s", "Seconds between tries", "number"]],
};

export function mapToText(m) {
  return Object.entries(m || {}).map(([k, v]) => k + "=" + v).join("\n");
}

export function textToMap(t) {
  const out = {};
  for (const line of String(t || "").split("\n")) {
    if (!line.trim()) continue;
    const i = line.indexOf("=");
    if (i < 0) out[line.trim()] = "";
    else out[line.slice(0, i).trim()] = line.slice(i + 1);
  }
  return out;
}

function input(kind, value, path, label) {
  const common = { dataset: { path }, "aria-label": label || null };
  if (kind === "area") return h("textarea", Object.assign({ rows: "4", spellcheck: "false" }, common), value == null ? "" : String(value));
  if (kind === "map") return h("textarea", Object.assign({ rows: "3", spellcheck: "false" }, common), mapToText(value));
  if (kind === "list") return h("input", Object.assign({ value: (value || []).join(", ") }, common));
  if (kind === "number") return h("input", Object.assign({ type: "number", value: value == null ? "" : String(value) }, common));
  if (kind.startsWith("select:")) {
    return h("select", common, kind.slice(7).split("|").map((o) => h("option", { value: o, selected: value === o }, o)));
  }
  return h("input", Object.assign({ value: value == null ? "" : String(value), spellcheck: "false" }, common));
}

function read(kind, el) {
  const v = el.value;
  if (kind === "map") { const m = textToMap(v); return Object.keys(m).length ? m : undefined; }
  if (kind === "list") { const l = v.split(",").map((x) => x.trim()).filter(Boolean); return l.length ? l : undefined; }
  if (kind === "number") return v === "" ? undefined : Number(v);
  return v === "" ? undefined : v;
}

/// The editor for `steps` (the definition's array). `el` is its element; `value()` the
/// steps as the API takes them.
export function stepEditor(initial) {
  const model = (initial || []).map((s) => ({ name: s.name, uses: s.uses, with: Object.assign({}, s.with || {}), timeout_s: s.timeout_s, env: s.env || {} }));
  const list = h("ol", { class: "step-editor", id: "step-editor" });
  const el = h("div", null, list, button("Add step", () => { model.push({ name: "step-" + (model.length + 1), uses: "shell", with: {}, env: {} }); draw(); list.lastChild.querySelector("input").focus(); }, "secondary", { id: "add-step" }));

  function draw() {
    list.replaceChildren(...model.map((s, i) => card(s, i)));
  }

  function card(s, i) {
    const p = "definition.steps[" + i + "]";
    const name = input("text", s.name, p + ".name", null);
    name.addEventListener("input", () => { s.name = name.value; });
    const uses = h("select", { dataset: { path: p + ".uses" } }, Object.keys(TYPES).map((t) => h("option", { value: t, selected: s.uses === t }, t)));
    if (!TYPES[s.uses]) uses.append(h("option", { value: s.uses, selected: true }, s.uses));
    uses.addEventListener("change", () => { s.uses = uses.value; s.with = {}; draw(); });
    const timeout = input("number", s.timeout_s, p + ".timeout_s");
    timeout.addEventListener("input", () => { s.timeout_s = read("number", timeout); });
    const env = input("map", s.env, p + ".env");
    env.addEventListener("input", () => { s.env = textToMap(env.value); });
    const fields = (TYPES[s.uses] || []).map(([key, label, kind, hint]) => {
      const el = input(kind, s.with[key], p + ".with." + key);
      el.addEventListener(el.tagName === "SELECT" ? "change" : "input", () => {
        const v = read(kind, el);
        if (v === undefined) delete s.with[key]; else s.with[key] = v;
      });
      return field(label, el, hint);
    });
    const move = (d) => () => { const j = i + d; [model[i], model[j]] = [model[j], model[i]]; draw(); list.children[j].querySelector("input").focus(); };
    return h("li", { class: "card step-card" },
      h("div", { class: "bar wrap" },
        h("strong", null, "Step " + (i + 1)),
        h("div", { class: "actions" },
          button("↑", move(-1), "secondary", { "aria-label": "Move step " + (i + 1) + " up", disabled: i === 0 }),
          button("↓", move(1), "secondary", { "aria-label": "Move step " + (i + 1) + " down", disabled: i === model.length - 1 }),
          button("Remove", () => { model.splice(i, 1); draw(); }, "danger", { "aria-label": "Remove step " + (i + 1) }))),
      h("div", { class: "row" }, field("Name", name), field("Type", uses), field("Timeout (s)", timeout, "Default 600.")),
      fields,
      h("details", null, h("summary", null, "Step environment"), field("Environment", env, "KEY=value, one per line.")));
  }

  draw();
  return {
    el,
    value() {
      return model.map((s) => {
        const out = { name: s.name, uses: s.uses, with: s.with };
        if (s.timeout_s != null && !Number.isNaN(s.timeout_s)) out.timeout_s = s.timeout_s;
        if (s.env && Object.keys(s.env).length) out.env = s.env;
        return out;
      });
    },
  };
}
