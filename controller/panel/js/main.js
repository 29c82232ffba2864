// Boot, session and the hash router. Each page is a module under pages/ loaded when it is
// first visited; a page gets a fresh container and a context whose subscriptions end when
// the user leaves it.

import { api, onUnauthorized } from "./api.js";
import { $, applyTheme, h, onSubmit, rank, toast, fill } from "./ui.js";
import { openFeed, closeFeed, subscribe } from "./feed.js";

// Pattern, page module, least role, sidebar entry it belongs to.
const ROUTES = [
  ["/", "dashboard", "viewer", "#/"],
  ["/servers", "servers", "viewer", "#/servers"],
  ["/servers/:id", "server", "viewer", "#/servers"],
  ["/workflows", "workflows", "viewer", "#/workflows"],
  ["/workflows/new", "workflow", "moderator", "#/workflows"],
  ["/workflows/:id", "workflow", "viewer", "#/workflows"],
  ["/pools", "pools", "viewer", "#/pools"],
  ["/pools/:id", "pool", "viewer", "#/pools"],
  ["/providers", "providers", "viewer", "#/providers"],
  ["/dns", "dns", "viewer", "#/dns"],
  ["/runs", "runs", "viewer", "#/runs"],
  ["/runs/:id", "run", "viewer", "#/runs"],
  ["/users", "users", "admin", "#/users"],
  ["/notifiers", "notifiers", "admin", "#/notifiers"],
  ["/audit", "audit", "admin", "#/audit"],
  ["/account", "account", "viewer", "#/account"],
].map(([pattern, page, role, nav]) => ({
  re: new RegExp("^" + pattern.replace(/:(\w+)/g, "(?<$1>[^/]+)") + "$"),
  page, role, nav,
}));

export let me = null;
let leave = [];

applyTheme(localStorage.getItem("mz-theme"));

// ---- Session ---------------------------------------------------------------------------

function showOnly(id) {
  for (const v of ["view-setup", "view-login", "view"]) $("#" + v).hidden = v !== id;
  const app = id === "view";
  $("#nav").hidden = !app;
  $("#whoami").hidden = $("#logout").hidden = !app;
}

async function refresh() {
  const state = await api("GET", "/auth/state");
  me = state.user;
  if (!state.authenticated) {
    closeFeed();
    endPage();
    showOnly(state.needs_setup ? "view-setup" : "view-login");
    document.title = (state.needs_setup ? "Set up" : "Log in") + " · Mezzanine";
    return;
  }
  $("#whoami").textContent = me.username + " (" + me.role + ")";
  for (const el of document.querySelectorAll("#nav [data-min-role]")) {
    el.hidden = rank(me.role) < rank(el.dataset.minRole);
  }
  showOnly("view");
  openFeed(null);
  await render();
}

onUnauthorized(() => {
  toast("Your session ended; log in again.", "error");
  refresh().catch(() => {});
});

onSubmit($("#setup-form"), async (form) => {
  await api("POST", "/auth/setup", Object.fromEntries(new FormData(form)));
  form.reset();
  toast("Admin created. Welcome!");
  await refresh();
});

onSubmit($("#login-form"), async (form) => {
  const data = Object.fromEntries(new FormData(form));
  if (!data.totp) delete data.totp;
  try {
    await api("POST", "/auth/login", data);
  } catch (e) {
    if (e.message === "TOTP_REQUIRED") {
      $("#totp-field").hidden = false;
      $("#totp-field input").focus();
      toast("Enter the code from your authenticator app.");
      return;
    }
    throw e;
  }
  form.reset();
  $("#totp-field").hidden = true;
  await refresh();
});

$("#logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); toast("Logged out."); }
  catch (e) { toast(e.message, "error"); }
  await refresh();
});

// ---- Router --------------------------------------------------------------------------------

function endPage() {
  for (const fn of leave.splice(0)) {
    try { fn(); } catch (_) { /* a page's cleanup must not stop the next page */ }
  }
}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  return { path: path || "/", query: new URLSearchParams(query || "") };
}

let renders = 0;

async function render() {
  if (!me) return;
  endPage();
  const mine = ++renders;
  const { path, query } = parseHash();
  const route = ROUTES.find((r) => r.re.test(path));
  for (const a of document.querySelectorAll("#nav a")) {
    if (route && a.getAttribute("href") === route.nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const view = h("div", { class: "page" });
  $("#view").replaceChildren(view);
  if (!route) {
    view.append(h("h1", null, "Not found"), h("p", null, "Nothing lives at ", h("code", null, "#" + path), ". ", h("a", { href: "#/" }, "Go to the dashboard")));
    document.title = "Not found · Mezzanine";
    return;
  }
  if (rank(me.role) < rank(route.role)) {
    view.append(h("h1", null, "Not allowed"), h("p", null, "This page needs the " + route.role + " role; you are " + me.role + "."));
    document.title = "Not allowed · Mezzanine";
    return;
  }
  openFeed(null);
  const ctx = {
    me,
    view,
    query,
    params: path.match(route.re).groups || {},
    title(t) { document.title = t + " · Mezzanine"; },
    /// Runs `fn` when the user leaves the page.
    onLeave(fn) { leave.push(fn); },
    /// Calls `fn(type, data)` for each change-feed event while the page is shown.
    on(fn) { leave.push(subscribe(fn)); },
    /// Calls `reload()` (coalesced: a burst of changes costs one call) when a change of
    /// one of `kinds` arrives, and on `reset`.
    live(kinds, reload, only) {
      let timer = null;
      ctx.on((type, d) => {
        if (type === "reset" || (type === "change" && kinds.includes(d.kind) && (!only || only(d)))) {
          if (timer) return;
          timer = setTimeout(() => { timer = null; if (mine === renders) reload().catch(() => {}); }, 300);
        }
      });
      ctx.onLeave(() => clearTimeout(timer));
    },
    /// Heartbeat metrics of one server come with the feed while the page is shown.
    watchMetrics(id) { openFeed(id); ctx.onLeave(() => openFeed(null)); },
    current() { return mine === renders; },
  };
  try {
    const mod = await import("./pages/" + route.page + ".js");
    if (mine !== renders) return;
    await mod.default(ctx);
    // When the page has its data on screen (what the load benchmark reads).
    if (mine === renders) performance.mark("mz:page-ready", { detail: route.page });
  } catch (e) {
    if (mine !== renders) return;
    if (e.status === 401) return;
    fill(view, h("h1", null, "Something went wrong"), h("p", { class: "warning", role: "alert" }, e.message));
    document.title = "Error · Mezzanine";
  }
}

window.addEventListener("hashchange", () => {
  render().then(() => { if (document.activeElement === document.body) $("#page").focus({ preventScroll: true }); });
});

refresh().catch((e) => toast("Cannot reach the controller: " + e.message, "error"));
