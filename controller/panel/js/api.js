// The panel's one way to the controller: JSON over /api, errors as ApiError with the
// status and the API's own message ("field.path: what is wrong").

export class ApiError extends Error {
  constructor(status, message, data) {
    super(message);
    this.status = status;
    this.data = data;
  }
  /// The field the API named, if its message starts with one ("definition.steps[1].with.script: …").
  get field() {
    const m = /^([A-Za-z_][\w.[\]]*): /.exec(this.message);
    return m ? m[1] : null;
  }
  get detail() {
    const f = this.field;
    return f ? this.message.slice(f.length + 2) : this.message;
  }
}

const listeners = new Set();
/// Called with every 401: the session ended (logout elsewhere, expiry).
export function onUnauthorized(fn) { listeners.add(fn); }

export async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET" && method !== "HEAD") {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  let res;
  try { res = await fetch("/api" + path, init); }
  catch (e) { throw new ApiError(0, "Cannot reach the controller (" + e.message + ")", null); }
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, (data && data.error) || res.statusText || "HTTP " + res.status, data);
    if (res.status === 401 && !path.startsWith("/auth/")) for (const fn of listeners) fn(err);
    throw err;
  }
  return data;
}

/// Query string from an object, leaving out empty values.
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}
