// Users (admins): filter, page, add, change roles, delete.

import { api } from "../api.js";
import { h, button, table, field, onSubmit, toast, confirmDialog, pager, fill } from "../ui.js";

const PER_PAGE = 25;

export default async function users(ctx) {
  ctx.title("Users");
  const search = h("input", { type: "search", placeholder: "Filter by name", "aria-label": "Filter users", value: ctx.query.get("q") || "" });
  const role = h("select", { "aria-label": "Role" }, ["", "viewer", "moderator", "admin"].map((r) => h("option", { value: r, selected: ctx.query.get("role") === r }, r || "any role")));
  const box = h("div", { id: "user-list" });
  let list = [];
  let page = 1;

  function draw() {
    const q = search.value.trim().toLowerCase();
    const rows = list.filter((u) => (!q || u.username.toLowerCase().includes(q)) && (!role.value || u.role === role.value));
    const pages = Math.max(1, Math.ceil(rows.length / PER_PAGE));
    page = Math.min(page, pages);
    fill(box, 
      table([
        ["User", (u) => u.id === ctx.me.id ? u.username + " (you)" : u.username],
        ["Role", (u) => {
          // One's own role is changed by another admin.
          if (u.id === ctx.me.id) return u.role;
          const sel = h("select", { "aria-label": "Role of " + u.username }, ["viewer", "moderator", "admin"].map((r) => h("option", { value: r, selected: r === u.role }, r)));
          sel.addEventListener("change", async () => {
            try { await api("PATCH", "/users/" + u.id, { role: sel.value }); toast(u.username + " is now " + sel.value + "."); }
            catch (e) { toast(e.message, "error"); sel.value = u.role; }
          });
          return sel;
        }],
        ["TOTP", (u) => u.totp_enabled ? "on" : "off"],
        ["", (u) => u.id === ctx.me.id ? "" : button("Delete", async () => {
          if (await confirmDialog("Delete user " + u.username + "?", "Their sessions end at once. What they did stays in the audit log.")) {
            await api("DELETE", "/users/" + u.id);
            toast("User " + u.username + " deleted.");
          }
        }, "danger")],
      ], rows.slice((page - 1) * PER_PAGE, page * PER_PAGE), list.length ? "No user matches." : "No users.", { id: "users" }),
      pager({ page, per_page: PER_PAGE, total: rows.length }, (p) => { page = p; draw(); }));
  }
  search.addEventListener("input", () => { page = 1; draw(); });
  role.addEventListener("change", () => { page = 1; draw(); });

  async function load() {
    list = await api("GET", "/users");
    if (ctx.current()) draw();
  }

  const form = h("form", { id: "user-form", class: "card wide", "aria-labelledby": "add-user" },
    h("h2", { id: "add-user" }, "Add a user"),
    h("div", { class: "row" },
      field("Username", h("input", { name: "username", required: true, autocomplete: "off" })),
      field("Password", h("input", { name: "password", type: "password", minlength: "10", required: true, autocomplete: "new-password" }), "10 characters or more."),
      field("Role", h("select", { name: "role" }, ["viewer", "moderator", "admin"].map((r) => h("option", { value: r }, r))))),
    h("button", { type: "submit" }, "Add user"));
  onSubmit(form, async () => {
    const body = Object.fromEntries(new FormData(form));
    await api("POST", "/users", body);
    form.reset();
    toast("User " + body.username + " added.");
  });

  fill(ctx.view, h("h1", null, "Users"), h("div", { class: "bar filters" }, search, role), box, form);
  await load();
  ctx.live(["user"], load);
}
