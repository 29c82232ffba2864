//! The panel in a real browser: headless Chromium driven over WebDriver (Debian's
//! chromium and chromium-driver), against a real controller, doing what a person does.

use mezzanine_tests::{Controller, ADMIN_PASSWORD};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Drop for Browser {
    /// Ends the browser with the test, pass or fail: the WebDriver session is deleted (so
    /// chromedriver quits Chromium), then the whole process group — chromedriver, Chromium
    /// and its helpers — is killed. Killing chromedriver alone left Chromium orphaned.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                self.session
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        // Its own process group, so the browser it starts can be ended with it.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("json");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Browser {
            driver,
            http,
            base,
            session,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r: Value = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        r["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs JavaScript in the page and returns its result.
    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// Opens the panel at `base` and logs in as the first admin.
    async fn log_in_as_admin(&self, base: &str) {
        self.open(&format!("{base}/")).await;
        self.until(
            "the login form",
            "!document.querySelector('#view-login').hidden",
        )
        .await;
        self.type_into("#login-form input[name=username]", "admin")
            .await;
        self.type_into("#login-form input[name=password]", ADMIN_PASSWORD)
            .await;
        self.click("#login-form button[type=submit]").await;
    }

    /// Waits until `script` (a JS expression) is truthy.
    async fn until(&self, what: &str, script: &str) {
        self.until_within(what, script, Duration::from_secs(10))
            .await;
    }

    /// Waits until `script` is truthy, at most `within`.
    async fn until_within(&self, what: &str, script: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.js(&format!("return !!({script});")).await == json!(true) {
                return;
            }
            let shown = self
                .js("return document.body.innerText.slice(0, 400);")
                .await;
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; page: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
    b.until(
        "the home view",
        "!document.querySelector('#view-home').hidden",
    )
    .await;
    b.until(
        "who am I",
        "document.querySelector('#whoami').textContent === 'admin (admin)'",
    )
    .await;

    // Add a server by install command.
    b.type_into("#server-form input[name=name]", "web-1").await;
    b.type_into("#server-form input[name=host]", "10.0.0.5")
        .await;
    b.type_into("#server-form input[name=tags]", "env=prod")
        .await;
    b.click("#server-form button[type=submit]").await;
    b.until(
        "the install command",
        "!document.querySelector('#install').hidden",
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
        .js("const w = document.querySelector('#install-loopback'); return w.hidden ? '' : w.innerText;")
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

    // The dark theme follows the system setting.
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

    // A reload keeps the session; logging out ends it.
    b.open(&format!("{}/", ctl.base)).await;
    b.until(
        "the home view after reload",
        "!document.querySelector('#view-home').hidden",
    )
    .await;
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
        "document.querySelector('#flash').textContent.includes('invalid username or password')",
    )
    .await;
    b.js("document.querySelector('#login-form').reset(); return 1;")
        .await;
    b.type_into("#login-form input[name=username]", "admin")
        .await;
    b.type_into("#login-form input[name=password]", ADMIN_PASSWORD)
        .await;
    b.click("#login-form button[type=submit]").await;
    b.until(
        "the home view again",
        "!document.querySelector('#view-home').hidden",
    )
    .await;

    let mut api = ctl.client();
    assert_eq!(api.login("admin", ADMIN_PASSWORD, None).await.status, 200);
    let servers = api.get("/api/servers").await.body;
    assert_eq!(servers[0]["name"], "web-1");
}

/// The Docker view on a node with its own engine: containers, a live log, stop, images.
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
    b.until(
        "the Docker button of the online server",
        "[...document.querySelectorAll('#servers button')].some(x => x.textContent === 'Docker')",
    )
    .await;
    b.js("[...document.querySelectorAll('#servers button')].find(x => x.textContent === 'Docker').click(); return 1;")
        .await;
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

/// A workflow created, run and watched from the panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_creates_runs_and_watches_a_workflow() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (_id, _agent, _proc) = mezzanine_tests::attached_agent(&mut admin, "box-1", 1).await;
    let b = Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    b.until(
        "the server in the workflow form",
        "[...document.querySelectorAll('#workflow-server option')].some(o => o.textContent === 'box-1')",
    )
    .await;
    b.type_into("#workflow-form input[name=name]", "greet")
        .await;
    b.js("document.querySelector('#workflow-form textarea').value = JSON.stringify({ steps: [ { name: 'hi', uses: 'shell', with: { script: 'echo hello-from-the-panel; echo careful >&2' } } ] }); return 1;")
        .await;
    b.click("#workflow-form button[type=submit]").await;
    b.until(
        "the workflow row",
        "[...document.querySelectorAll('#workflows tbody tr')].some(r => r.innerText.includes('greet') && r.innerText.includes('never'))",
    )
    .await;
    b.js("[...[...document.querySelectorAll('#workflows tbody tr')].find(r => r.innerText.includes('greet')).querySelectorAll('button')].find(x => x.textContent === 'Run').click(); return 1;")
        .await;
    b.until(
        "the live output",
        "document.querySelector('#run-output').textContent.includes('hello-from-the-panel')",
    )
    .await;
    b.until(
        "the run's end",
        "document.querySelector('#run-status').textContent === 'succeeded'",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#run-output .stderr').textContent;")
            .await,
        json!("careful\n")
    );
    b.until(
        "the last run in the table",
        "[...document.querySelectorAll('#workflows tbody tr')].some(r => r.innerText.includes('greet') && r.innerText.includes('succeeded'))",
    )
    .await;
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

    // Idle, the panel asks nothing: no polling, only its one open event stream.
    let count = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/')).length;";
    let before = b.js(count).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(b.js(count).await, before, "requests while idle");
}
