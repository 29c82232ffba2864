//! The panel in a real browser: headless Chromium driven over WebDriver (Debian's
//! chromium and chromium-driver), against a real controller, doing what a person does.

use mezzanine_tests::browser::Browser;
use mezzanine_tests::{Controller, ADMIN_PASSWORD};
use serde_json::json;
use std::time::Duration;

/// Waits for the page at `hash` to have rendered its heading.
pub(crate) async fn page(b: &Browser, what: &str, heading: &str) {
    b.until(
        what,
        &format!("[...document.querySelectorAll('#view h1')].some(h => h.textContent.startsWith({heading:?}))"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sets_up_adds_a_server_and_logs_out() {
    let ctl = Controller::start().await;
    let b = Browser::start().await;
    b.open(&format!("{}/", ctl.base)).await;
    b.until(
        "the setup form",
        "!document.querySelector('#view-setup').hidden",
    )
    .await;

    b.type_into("#setup-form input[name=username]", "admin")
        .await;
    b.type_into("#setup-form input[name=password]", ADMIN_PASSWORD)
        .await;
    b.click("#setup-form button[type=submit]").await;
    page(&b, "the dashboard", "Dashboard").await;
    b.until(
        "who am I",
        "document.querySelector('#whoami').textContent === 'admin (admin)'",
    )
    .await;
    b.until(
        "the empty dashboard",
        "document.querySelector('#attention').textContent.includes('every server is online')",
    )
    .await;

    // The sidebar leads to the servers page; add a server by install command there.
    b.click("#nav a[href='#/servers']").await;
    page(&b, "the servers page", "Servers").await;
    assert_eq!(
        b.js("return document.querySelector('#nav a[aria-current=page]').textContent;")
            .await,
        json!("Servers")
    );
    b.type_into("#server-form input[name=name]", "web-1").await;
    b.type_into("#server-form input[name=host]", "10.0.0.5")
        .await;
    b.type_into("#server-form input[name=tags]", "env=prod")
        .await;
    b.click("#server-form button[type=submit]").await;
    b.until(
        "the install command",
        "!!document.querySelector('#install')",
    )
    .await;
    let command = b
        .js("return document.querySelector('#install-command').textContent;")
        .await;
    assert!(
        command
            .as_str()
            .is_some_and(|c| c.starts_with("f=$(mktemp)") && c.contains("MZ_TOKEN=MZ1.")),
        "{command}"
    );
    // The panel was opened at 127.0.0.1: the command says so, and the panel warns that
    // other servers cannot reach that address.
    let warning = b
        .js("const w = document.querySelector('#install-loopback'); return w ? w.innerText : '';")
        .await;
    assert!(
        warning
            .as_str()
            .is_some_and(|w| w.contains("127.0.0.1") && w.contains("--public-url")),
        "{warning}"
    );
    b.until(
        "the server row",
        "[...document.querySelectorAll('#servers tbody tr')].some(r => r.innerText.includes('web-1') && r.innerText.includes('pending') && r.innerText.includes('env=prod'))",
    )
    .await;
    b.until(
        "the result toast",
        "document.querySelector('#toasts').textContent.includes('Server added')",
    )
    .await;

    // A name the API refuses: its message appears next to the name field.
    b.js("const f = document.querySelector('#server-form'); f.elements.name.removeAttribute('pattern'); return 1;").await;
    b.type_into("#server-form input[name=name]", "bad name!")
        .await;
    b.type_into("#server-form input[name=host]", "10.0.0.6")
        .await;
    b.click("#server-form button[type=submit]").await;
    b.until(
        "the error next to the name",
        "document.querySelector('#server-form input[name=name]').getAttribute('aria-invalid') === 'true' && document.querySelector('#server-form input[name=name]').closest('label').nextElementSibling.classList.contains('field-error')",
    )
    .await;

    // The SSH fields appear only for SSH methods.
    assert_eq!(
        b.js("return document.querySelector('#server-form .ssh').hidden;")
            .await,
        json!(true)
    );
    b.js("const s = document.querySelector('#server-form select[name=auth_type]'); s.value = 'key'; s.dispatchEvent(new Event('change')); return 1;").await;
    assert_eq!(
        b.js("return document.querySelector('#server-form .ssh-key').hidden;")
            .await,
        json!(false)
    );
    assert_eq!(
        b.js("return document.querySelector('#server-form .ssh-password').hidden;")
            .await,
        json!(true)
    );

    // The server's own page, by its link; Back returns to the list.
    b.click_text("#servers a", "web-1").await;
    page(&b, "the server page", "web-1").await;
    b.until(
        "the server's state",
        "document.querySelector('#view h1 .status').textContent === 'pending'",
    )
    .await;
    b.js("history.back(); return 1;").await;
    page(&b, "the servers page again", "Servers").await;

    // The dark theme follows the system setting, and the Account page can pin one.
    b.cmd(
        reqwest::Method::POST,
        "/goog/cdp/execute",
        json!({ "cmd": "Emulation.setEmulatedMedia", "params": { "features": [ { "name": "prefers-color-scheme", "value": "dark" } ] } }),
    )
    .await;
    b.until(
        "the dark background",
        "getComputedStyle(document.body).backgroundColor === 'rgb(19, 23, 28)'",
    )
    .await;
    b.click("#nav a[href='#/account']").await;
    page(&b, "the account page", "Account").await;
    b.click("#theme input[value=light]").await;
    b.until(
        "the light background, chosen",
        "getComputedStyle(document.body).backgroundColor === 'rgb(245, 246, 248)'",
    )
    .await;

    // A reload keeps the session, the page and the chosen theme; logging out ends it.
    b.open(&format!("{}/#/account", ctl.base)).await;
    page(&b, "the account page after reload", "Account").await;
    assert_eq!(
        b.js("return getComputedStyle(document.body).backgroundColor;")
            .await,
        json!("rgb(245, 246, 248)")
    );
    b.click("#logout").await;
    b.until(
        "the login form",
        "!document.querySelector('#view-login').hidden",
    )
    .await;

    // A wrong password is said plainly; the right one gets back in.
    b.type_into("#login-form input[name=username]", "admin")
        .await;
    b.type_into("#login-form input[name=password]", "not-the-password")
        .await;
    b.click("#login-form button[type=submit]").await;
    b.until(
        "the error",
        "document.querySelector('#toasts').textContent.includes('invalid username or password')",
    )
    .await;
    b.js("document.querySelector('#login-form').reset(); return 1;")
        .await;
    b.type_into("#login-form input[name=username]", "admin")
        .await;
    b.type_into("#login-form input[name=password]", ADMIN_PASSWORD)
        .await;
    b.click("#login-form button[type=submit]").await;
    page(&b, "the account page again", "Account").await;

    let mut api = ctl.client();
    assert_eq!(api.login("admin", ADMIN_PASSWORD, None).await.status, 200);
    let servers = api.get("/api/servers").await.body;
    assert_eq!(servers[0]["name"], "web-1");
    assert_eq!(servers.as_array().map(Vec::len), Some(1), "{servers}");
}

/// The server page on a node with its own engine: facts, live charts, containers, a live
/// log with search, stop, images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_watches_a_container_log_and_stops_it() {
    let fleet = mezzanine_tests::Fleet::new();
    let images = tempfile::tempdir().expect("tmp");
    let tar = mezzanine_tests::workload_image_tar(images.path(), "v1");
    let (node, ip) = fleet.docker_node("pd", 21, &[("ROOT_PASSWORD", "panel-node-pw-77")]);
    fleet.load_image(&node, &tar, "web:v1");
    let (ok, out) = fleet.exec(
        &node,
        "docker run -d --name ticker web:v1 sh -c 'trap \"exit 0\" TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done'",
    );
    assert!(ok, "{out}");
    let (_ctl, base, _data) = mezzanine_tests::fleet_controller(&fleet, false);
    let mut admin = mezzanine_tests::first_admin(&base).await;
    let id = mezzanine_tests::adopt(&mut admin, "pd", &ip, "panel-node-pw-77").await;

    let b = Browser::start().await;
    b.log_in_as_admin(&base).await;
    page(&b, "the dashboard", "Dashboard").await;
    // The server's page by its deep link.
    b.open(&format!("{base}/#/servers/{id}")).await;
    b.until(
        "the running container",
        "[...document.querySelectorAll('#containers tbody tr')].some(r => r.innerText.includes('ticker') && r.innerText.includes('running'))",
    )
    .await;
    // The server's facts, and its heartbeats drawn as they arrive (one every 10 s).
    b.until(
        "the server's facts",
        "['OS', 'Kernel', 'CPUs', 'Memory', 'Docker'].every(t => document.querySelector('#server-facts').innerText.includes(t))",
    )
    .await;
    b.until("the deploy key", "(document.querySelector('#deploy-key-value') || {}).textContent?.startsWith('ssh-ed25519 ')").await;
    b.until_within(
        "a heartbeat in the load chart",
        "Number(document.querySelector('#chart-load').dataset.points) >= 1",
        Duration::from_secs(60),
    )
    .await;
    let drawn = b
        .js("return Number(document.querySelector('#chart-memory').dataset.points);")
        .await;
    b.until_within(
        "a live heartbeat",
        &format!("Number(document.querySelector('#chart-memory').dataset.points) > {drawn}"),
        Duration::from_secs(60),
    )
    .await;
    assert!(b
        .js("return document.querySelector('#chart-memory-now').textContent;")
        .await
        .as_str()
        .is_some_and(|t| t.ends_with('%')));
    b.until(
        "the image with its update status",
        "[...document.querySelectorAll('#images tbody tr')].some(r => r.innerText.includes('web:v1') && r.innerText.includes('unknown'))",
    )
    .await;

    // Follow the log: lines arrive live.
    b.js("[...document.querySelectorAll('#containers tbody tr')].find(r => r.innerText.includes('ticker')).querySelector('button').click(); return 1;")
        .await;
    b.until(
        "log lines",
        "(document.querySelector('#docker-logs').textContent.match(/tick-/g) || []).length >= 3",
    )
    .await;
    let first = b
        .js("return document.querySelector('#docker-logs').textContent.length;")
        .await;
    b.until(
        "more log lines",
        &format!("document.querySelector('#docker-logs').textContent.length > {first}"),
    )
    .await;
    // Search hides the other lines and counts the matches.
    b.type_into("#docker-logs-box input[type=search]", "tick-1")
        .await;
    b.until(
        "the search",
        "[...document.querySelectorAll('#docker-logs .line')].filter(l => !l.hidden).every(l => l.textContent.includes('tick-1')) && document.querySelector('#docker-logs .hit')",
    )
    .await;
    b.js("const s = document.querySelector('#docker-logs-box input[type=search]'); s.value = ''; s.dispatchEvent(new Event('input')); return 1;").await;

    // Stop it from the panel: the row says so and the log says why it ended.
    b.js("[...[...document.querySelectorAll('#containers tbody tr')].find(r => r.innerText.includes('ticker')).querySelectorAll('button')].find(x => x.textContent === 'Stop').click(); return 1;")
        .await;
    b.until(
        "the stopped container",
        "[...document.querySelectorAll('#containers tbody tr')].some(r => r.innerText.includes('ticker') && r.innerText.includes('exited'))",
    )
    .await;
    b.until(
        "the end of the log",
        "document.querySelector('#docker-logs').textContent.includes('container stopped')",
    )
    .await;
    let r = admin
        .get(&format!("/api/servers/{id}/docker/containers"))
        .await;
    assert_eq!(r.body[0]["state"], "exited", "{}", r.body);
}

/// A workflow created with the step form, refused field by field, run and watched from
/// the panel, then edited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_creates_runs_and_watches_a_workflow() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (_id, _agent, _proc) = mezzanine_tests::attached_agent(&mut admin, "box-1", 1).await;
    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    page(&b, "the dashboard", "Dashboard").await;
    b.click("#nav a[href='#/workflows']").await;
    page(&b, "the workflows page", "Workflows").await;
    b.click("#new-workflow").await;
    page(&b, "the new workflow page", "New workflow").await;
    b.until(
        "the server in the workflow form",
        "[...document.querySelectorAll('#workflow-server option')].some(o => o.textContent === 'box-1')",
    )
    .await;
    b.type_into("#workflow-form input[name=name]", "greet")
        .await;
    // The first step (a shell step) is there; add a second one and make it an HTTP check
    // with no URL: the API refuses it and the panel says so next to that field.
    b.click("#add-step").await;
    b.js("const s = document.querySelector('[data-path=\"definition.steps[1].uses\"]'); s.value = 'http.check'; s.dispatchEvent(new Event('change')); return 1;").await;
    b.until(
        "the HTTP check's fields",
        "!!document.querySelector('[data-path=\"definition.steps[1].with.url\"]')",
    )
    .await;
    b.click("#workflow-form button[type=submit]").await;
    b.until(
        "the error next to the URL field",
        "document.querySelector('[data-path=\"definition.steps[1].with.url\"]').getAttribute('aria-invalid') === 'true' && document.querySelector('.field-error').textContent.includes('required')",
    )
    .await;
    // Remove that step; give the first a script that writes to both streams, in colour.
    b.js("document.querySelector('[aria-label=\"Remove step 2\"]').click(); return 1;")
        .await;
    b.js("const t = document.querySelector('[data-path=\"definition.steps[0].with.script\"]'); t.value = 'echo hello-from-the-panel; printf \"\\\\033[32mgreen\\\\033[0m\\\\n\"; echo careful >&2'; t.dispatchEvent(new Event('input')); return 1;").await;
    // The JSON view shows the same definition.
    b.click("#tab-json").await;
    b.until(
        "the JSON view",
        "document.querySelector('#json-pane textarea').value.includes('hello-from-the-panel')",
    )
    .await;
    b.click("#tab-form").await;
    b.click("#workflow-form button[type=submit]").await;
    page(&b, "the workflow's page", "greet").await;
    b.until(
        "the run button",
        "!!document.querySelector('#run-workflow')",
    )
    .await;
    // A schedule: a bad expression is refused next to its field, a good one is saved and
    // its next run shown.
    b.js("const c = document.querySelector('#workflow-cron'); c.value = '0 25 * * *'; c.dispatchEvent(new Event('input')); return 1;").await;
    b.click("#workflow-form button[type=submit]").await;
    b.until(
        "the error next to the schedule field",
        "document.querySelector('#workflow-cron').getAttribute('aria-invalid') === 'true'",
    )
    .await;
    b.js("const c = document.querySelector('#workflow-cron'); c.value = '0 3 * * 1-5'; const z = document.querySelector('#workflow-timezone'); z.value = 'Europe/Berlin'; return 1;").await;
    b.click("#workflow-form button[type=submit]").await;
    b.until(
        "the next scheduled run",
        "document.querySelector('#workflow-next').textContent.startsWith('Next scheduled run')",
    )
    .await;
    let listed = admin.get("/api/workflows").await.body;
    assert_eq!(listed[0]["schedule"]["cron"], "0 3 * * 1-5", "{listed}");
    assert_eq!(listed[0]["schedule"]["timezone"], "Europe/Berlin");
    b.click("#run-workflow").await;
    page(&b, "the run page", "Run #").await;
    b.until(
        "the live output",
        "document.querySelector('#step-output-0').textContent.includes('hello-from-the-panel')",
    )
    .await;
    b.until(
        "the run's end",
        "document.querySelector('#run-status').textContent === 'succeeded'",
    )
    .await;
    b.until(
        "the stderr line, marked",
        "document.querySelector('#step-output-0 .stderr')?.textContent === 'careful\\n'",
    )
    .await;
    // ANSI colours are rendered, not printed.
    assert_eq!(
        b.js("return document.querySelector('#step-output-0 .ansi-green').textContent;")
            .await,
        json!("green")
    );
    assert!(!b
        .js("return document.querySelector('#step-output-0').textContent;")
        .await
        .as_str()
        .unwrap_or_default()
        .contains('\u{1b}'));
    assert_eq!(
        b.js("return document.querySelector('#run-cancel').hidden;")
            .await,
        json!(true)
    );
    // The finished run by its link: the same lines, stderr still marked.
    let url = b.js("return location.href;").await;
    b.open("about:blank").await;
    b.open(url.as_str().expect("url")).await;
    b.until(
        "the stored stderr line",
        "document.querySelector('#step-output-0 .stderr')?.textContent === 'careful\\n' && document.querySelector('#step-output-0 .ansi-green')",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#run-status').textContent;")
            .await,
        json!("succeeded")
    );
    b.click("#nav a[href='#/runs']").await;
    b.until(
        "the run in the history",
        "[...document.querySelectorAll('#runs tbody tr')].some(r => r.innerText.includes('greet') && r.innerText.includes('succeeded') && r.innerText.includes('manual by admin'))",
    )
    .await;

    // A run started elsewhere (a script, a webhook) appears without a reload, through
    // the change feed.
    let wf = admin.get("/api/workflows").await.body[0]["id"]
        .as_i64()
        .expect("workflow");
    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    let second = r.body["runId"].as_i64().expect("run");
    b.until(
        "the API's run in the history",
        &format!("[...document.querySelectorAll('#runs tbody tr')].some(r => r.innerText.includes('#{second}') && r.innerText.includes('succeeded'))"),
    )
    .await;
    // Filtered by status: a deep link that Back/Forward keep.
    b.js("const s = document.querySelector('#run-filters select[name=status]'); s.value = 'failed'; s.dispatchEvent(new Event('change')); return 1;").await;
    b.until("the filtered history", "location.hash.includes('status=failed') && document.querySelector('#view .empty')?.textContent === 'No runs match these filters.'").await;
    b.js("history.back(); return 1;").await;
    b.until("the unfiltered history", "!location.hash.includes('status') && document.querySelectorAll('#runs tbody tr').length === 2").await;

    // Idle, the panel asks nothing: no polling, only its one open event stream.
    let count = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/')).length;";
    let before = b.js(count).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(b.js(count).await, before, "requests while idle");

    // Edit the workflow: rename its step, save (PATCH), and the API has it.
    b.open(&format!("{}/#/workflows/{wf}", ctl.base)).await;
    page(&b, "the workflow page", "greet").await;
    b.js("const n = document.querySelector('[data-path=\"definition.steps[0].name\"]'); n.value = 'renamed'; n.dispatchEvent(new Event('input')); return 1;").await;
    b.click("#workflow-form button[type=submit]").await;
    b.until(
        "the saved toast",
        "document.querySelector('#toasts').textContent.includes('Saved.')",
    )
    .await;
    let got = admin.get(&format!("/api/workflows/{wf}")).await.body;
    assert_eq!(got["definition"]["steps"][0]["name"], "renamed", "{got}");
    assert!(got["definition"]["steps"][0]["with"]["script"]
        .as_str()
        .is_some_and(|s| s.contains("hello-from-the-panel")));
}

/// Every page by its deep link: it renders, logs no console error, passes axe-core's WCAG
/// A/AA rules in both themes, and has no horizontal scroll at 390 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_by_deep_link_is_accessible_and_fits_a_phone() {
    let axe_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/axe/axe.min.js");
    let axe = std::fs::read_to_string(&axe_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (tests/run fetches axe-core there)",
            axe_path.display()
        )
    });
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (server, _agent, _proc) = mezzanine_tests::attached_agent(&mut admin, "box-1", 1).await;
    ctl.user(&mut admin, "vera", "viewer").await;
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "site", "server_id": server, "definition": { "steps": [
                { "name": "build", "uses": "shell", "with": { "script": "echo built" } },
                { "name": "check", "uses": "shell", "with": { "script": "echo checked; exit 3" } }
            ] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post(&format!("/api/workflows/{wf}/run"), json!({}))
        .await;
    let run = r.body["runId"].as_i64().expect("run");
    crate::deploys::wait_run(&mut admin, run, Duration::from_secs(60)).await;
    let r = admin
        .post("/api/pools", json!({ "name": "web", "workflow_id": wf }))
        .await;
    let pool = r.body["id"].as_i64().expect("pool");
    // A member that deploys but has no edge to be checked from: it shows as failed.
    let r = admin
        .post(
            &format!("/api/pools/{pool}/scale-out"),
            json!({ "server_id": server }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);

    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    page(&b, "the dashboard", "Dashboard").await;
    let pages = [
        ("/", "Dashboard", "#attention"),
        ("/servers", "Servers", "#servers"),
        (&*format!("/servers/{server}"), "box-1", "#server-facts div"),
        ("/workflows", "Workflows", "#workflows"),
        ("/workflows/new", "New workflow", "#step-editor li"),
        (&*format!("/workflows/{wf}"), "site", "#runs"),
        ("/runs", "Runs", "#runs"),
        (&*format!("/runs/{run}"), "Run #", "#step-output-1 .line"),
        ("/pools", "Pools", "#pools"),
        (&*format!("/pools/{pool}"), "web", "#member-table"),
        ("/providers", "Providers", "#provider-table"),
        ("/dns", "DNS and e-mail", "#view p.muted"),
        ("/users", "Users", "#users"),
        ("/notifiers", "Notifiers", "#notifier-form"),
        ("/audit", "Audit log", "#audit"),
        ("/account", "Account", "#totp-setup"),
        ("/nowhere", "Not found", "#view"),
    ];
    b.console_errors().await;
    for dark in [false, true] {
        b.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            json!({ "cmd": "Emulation.setEmulatedMedia", "params": { "features": [ { "name": "prefers-color-scheme", "value": if dark { "dark" } else { "light" } } ] } }),
        )
        .await;
        for (hash, heading, content) in pages {
            let theme = if dark { "dark" } else { "light" };
            b.open("about:blank").await;
            b.open(&format!("{}/#{hash}", ctl.base)).await;
            page(&b, &format!("{hash} ({theme})"), heading).await;
            b.until(
                &format!("the content of {hash}"),
                &format!("!!document.querySelector({content:?})"),
            )
            .await;
            // Let the page's own requests settle before judging it.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let errors = b.console_errors().await;
            assert!(errors.is_empty(), "console errors on {hash}: {errors:?}");
            let violations = b.accessibility_violations(&axe).await;
            if !violations.is_empty() {
                let shot = b.screenshot(&format!("axe {hash} {theme}")).await;
                panic!("accessibility violations on {hash} ({theme}; {shot}): {violations:#?}");
            }
        }
    }
    // A phone's width: every page fits without scrolling sideways.
    b.set_width(390).await;
    for (hash, heading, content) in pages {
        b.open("about:blank").await;
        b.open(&format!("{}/#{hash}", ctl.base)).await;
        page(&b, &format!("{hash} at 390 px"), heading).await;
        b.until(
            &format!("the content of {hash}"),
            &format!("!!document.querySelector({content:?})"),
        )
        .await;
        let (page_width, viewport) = (
            b.js("return document.documentElement.scrollWidth;").await,
            b.js("return window.innerWidth;").await,
        );
        if page_width.as_i64() > viewport.as_i64() {
            let shot = b.screenshot(&format!("390 {hash}")).await;
            let wide = b.js("const out = []; const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT); let n; while ((n = w.nextNode())) { const r = document.createRange(); r.selectNodeContents(n); const b = r.getBoundingClientRect(); if (b.right > window.innerWidth + 1) out.push(n.parentElement.tagName + '#' + n.parentElement.id + '.' + n.parentElement.className + ' ' + Math.round(b.right) + ' ' + n.textContent.slice(0, 40)); } for (const e of document.querySelectorAll('body *')) { const b = e.getBoundingClientRect(); if (b.right > window.innerWidth + 1) out.push(e.tagName + '#' + e.id + ' ' + Math.round(b.right)); } return out.slice(0, 6).join(' | ');").await;
            panic!("{hash} is {page_width} px wide in a {viewport} px window ({shot}); too wide: {wide}");
        }
    }
    // The pool page's settings: a value the API refuses is said next to its field; a
    // good one is saved.
    b.set_width(1280).await;
    b.open(&format!("{}/#/pools/{pool}", ctl.base)).await;
    page(&b, "the pool page", "web").await;
    b.until(
        "the failed member",
        "document.querySelector('#member-table').innerText.includes('failed')",
    )
    .await;
    // A member's weight is set in its row.
    b.js("const w = document.querySelector('#member-table input.weight'); w.value = '7'; w.dispatchEvent(new Event('change')); return 1;").await;
    b.until(
        "the weight toast",
        "document.querySelector('#toasts').textContent.includes('set to 7')",
    )
    .await;
    let p = admin.get(&format!("/api/pools/{pool}")).await.body;
    assert_eq!(p["members"][0]["weight"], 7, "{p}");
    b.js("const f = document.querySelector('#pool-settings'); f.elements.path.value = 'no-slash'; f.elements.lb_strategy.value = 'ip_hash'; return 1;").await;
    b.click("#pool-settings button[type=submit]").await;
    b.until(
        "the error next to the health path",
        "document.querySelector('#pool-settings [name=path]').getAttribute('aria-invalid') === 'true' && document.querySelector('#pool-settings .field-error').textContent.includes('a path starting with /')",
    )
    .await;
    b.js("document.querySelector('#pool-settings').elements.path.value = '/healthz'; return 1;")
        .await;
    b.click("#pool-settings button[type=submit]").await;
    b.until(
        "the saved toast",
        "document.querySelector('#toasts').textContent.includes('Saved')",
    )
    .await;
    let p = admin.get(&format!("/api/pools/{pool}")).await.body;
    assert_eq!(
        (p["lb_strategy"].as_str(), p["health"]["path"].as_str()),
        (Some("ip_hash"), Some("/healthz")),
        "{p}"
    );

    // TOTP enrolment shows the QR code the controller drew (a data: image the CSP allows)
    // and the secret, and a code from it enables TOTP. (The console so far holds the
    // refused PATCH above, which Chromium logs as a failed load.)
    let refused = b.console_errors().await;
    assert!(refused.iter().all(|e| e.contains("400")), "{refused:?}");
    b.open(&format!("{}/#/account", ctl.base)).await;
    page(&b, "the account page", "Account").await;
    b.type_into("#totp-setup input[name=password]", ADMIN_PASSWORD)
        .await;
    b.click("#totp-setup button[type=submit]").await;
    b.until(
        "the QR code, drawn",
        "document.querySelector('#totp-qr')?.complete && document.querySelector('#totp-qr').naturalWidth >= 200",
    )
    .await;
    let secret = b
        .js("return document.querySelector('#totp-secret').textContent;")
        .await;
    let code = mezzanine_tests::totp_code(secret.as_str().expect("secret"), 0);
    b.type_into("#totp-enable-form input[name=code]", &code)
        .await;
    b.click("#totp-enable-form button[type=submit]").await;
    b.until(
        "TOTP enabled",
        "document.querySelector('#totp-status')?.textContent === 'Enabled.'",
    )
    .await;
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");

    // An API token made on the account page: shown once, works as a bearer token, listed
    // without its secret, revoked from its row.
    b.type_into("#token-form input[name=name]", "ci deploys")
        .await;
    // (Submitted from the page: the "TOTP enabled" toast may still cover the button.)
    b.js("const f = document.querySelector('#token-form'); f.elements.role.value = 'moderator'; f.requestSubmit(); return 1;")
        .await;
    b.until(
        "the new token",
        "document.querySelector('#token-value')?.textContent.startsWith('mz_') && document.querySelector('#token-table')?.textContent.includes('ci deploys')",
    )
    .await;
    let token = b
        .js("return document.querySelector('#token-value').textContent;")
        .await;
    let token = token.as_str().expect("token").to_owned();
    let mut script = mezzanine_tests::Client::new(&ctl.base);
    let req = script
        .request(reqwest::Method::GET, "/api/servers")
        .header("authorization", format!("Bearer {token}"));
    assert_eq!(script.raw(req).await.status, 200);
    let listed = b
        .js("return document.querySelector('#token-table').textContent;")
        .await;
    assert!(!listed.as_str().unwrap_or_default().contains(&token));
    b.js("[...document.querySelectorAll('#token-table button')].find(x => x.textContent === 'Revoke').click(); return 1;").await;
    b.until(
        "the confirmation",
        "!!document.querySelector('dialog[open]')",
    )
    .await;
    b.js("document.querySelector('dialog[open] button[value=ok]').click(); return 1;")
        .await;
    b.until(
        "the revoked token",
        "document.querySelector('#toasts').textContent.includes('revoked') && document.querySelector('#tokens').textContent.includes('No API tokens.')",
    )
    .await;
    let req = script
        .request(reqwest::Method::GET, "/api/servers")
        .header("authorization", format!("Bearer {token}"));
    assert_eq!(script.raw(req).await.status, 401);
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");

    // A viewer is told what a page needs instead of seeing a broken one.
    let viewer = Browser::start().await;
    viewer.open(&format!("{}/", ctl.base)).await;
    viewer
        .until(
            "the login form",
            "!document.querySelector('#view-login').hidden",
        )
        .await;
    viewer
        .type_into("#login-form input[name=username]", "vera")
        .await;
    viewer
        .type_into("#login-form input[name=password]", "vera-password-1")
        .await;
    viewer.click("#login-form button[type=submit]").await;
    page(&viewer, "the viewer's dashboard", "Dashboard").await;
    assert_eq!(
        viewer
            .js("return document.querySelector('#nav a[href=\"#/users\"]').closest('li').hidden;")
            .await,
        json!(true)
    );
    viewer.open(&format!("{}/#/users", ctl.base)).await;
    page(&viewer, "the refusal", "Not allowed").await;
}
