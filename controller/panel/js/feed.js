// The change feed: one Server-Sent Events stream per tab (GET /api/events). Each event
// names what changed; pages refetch only that. `reset` means "refetch everything".

let es = null;
let metricsOf = null;
const subscribers = new Set();

function dispatch(type, ev) {
  let data = {};
  try { data = ev.data ? JSON.parse(ev.data) : {}; } catch (_) { return; }
  for (const fn of [...subscribers]) fn(type, data);
}

/// Opens the feed, or reopens it when the server whose heartbeats it carries changes.
export function openFeed(metricsServer) {
  const want = metricsServer === undefined ? metricsOf : metricsServer;
  if (es && want === metricsOf) return;
  closeFeed();
  metricsOf = want;
  es = new EventSource("/api/events" + (want ? "?metrics=" + encodeURIComponent(want) : ""));
  for (const type of ["change", "metrics", "reset"]) es.addEventListener(type, (ev) => dispatch(type, ev));
}

export function closeFeed() {
  if (es) es.close();
  es = null;
  parked = false;
}

export function subscribe(fn) {
  subscribers.add(fn);
  return () => subscribers.delete(fn);
}

// A browser gives a host six HTTP/1.1 connections, shared by all its tabs: a stream held
// by every open tab, or by pages kept in the back/forward cache, would starve the seventh.
// So a page that is left closes its stream, and a tab hidden for a while does too; when
// it is shown again the stream reopens and the page refetches what it shows.
const HIDDEN_CLOSE_MS = 30000;
let hiddenTimer = null;
let parked = false;

function park() {
  if (!es) return;
  closeFeed();
  parked = true;
}

function unpark() {
  if (!parked) return;
  parked = false;
  openFeed(metricsOf);
  for (const fn of [...subscribers]) fn("reset", {});
}

window.addEventListener("pagehide", park);
window.addEventListener("pageshow", unpark);
document.addEventListener("visibilitychange", () => {
  clearTimeout(hiddenTimer);
  if (document.visibilityState === "hidden") hiddenTimer = setTimeout(park, HIDDEN_CLOSE_MS);
  else unpark();
});
