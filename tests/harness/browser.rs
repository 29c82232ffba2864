//! Headless Chromium driven over WebDriver (Debian's chromium and chromium-driver), for the
//! panel's end-to-end tests and its load benchmark.

use crate::ADMIN_PASSWORD;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// chromedriver's address.
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
    pub async fn start() -> Browser {
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
            "goog:loggingPrefs": { "browser": "ALL" },
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

    pub async fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = self.http.request(method, url);
        // A GET carries no body (chromedriver refuses one).
        let req = if body.is_null() { req } else { req.json(&body) };
        let r: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("json");
        r["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs JavaScript in the page and returns its result.
    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    pub async fn find(&self, css: &str) -> String {
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

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    /// Saves a screenshot as a test artifact (`target/test-artifacts/panel-<what>.png`);
    /// returns where it went.
    pub async fn screenshot(&self, what: &str) -> String {
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(60)
            .collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        let path = dir.join(format!("panel-{name}.png"));
        use base64::Engine;
        match v
            .as_str()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        {
            Some(png) => {
                let _ = std::fs::create_dir_all(&dir);
                match std::fs::write(&path, png) {
                    Ok(()) => path.display().to_string(),
                    Err(e) => format!("not saved ({e})"),
                }
            }
            None => format!("not taken ({v})"),
        }
    }

    /// The browser console's errors since the last call (Chromium's log).
    pub async fn console_errors(&self) -> Vec<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/se/log",
                json!({ "type": "browser" }),
            )
            .await;
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs axe-core (WCAG 2.0/2.1 A and AA rules) on the page; returns its violations.
    pub async fn accessibility_violations(&self, axe: &str) -> Vec<Value> {
        self.js(axe).await;
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/execute/async",
                json!({ "script": "const done = arguments[arguments.length - 1]; axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } }).then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ') + ' ' + (n.failureSummary || '')) })))).catch(e => done([{ id: 'axe-failed', help: String(e) }]));", "args": [] }),
            )
            .await;
        v.as_array().cloned().unwrap_or_else(|| vec![v])
    }

    pub async fn set_width(&self, width: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            json!({ "width": width, "height": 900 }),
        )
        .await;
    }

    /// Clicks the first element matching `css` whose text is `text`.
    pub async fn click_text(&self, css: &str, text: &str) {
        let script = format!(
            "const el = [...document.querySelectorAll({css:?})].find(x => x.textContent.trim() === {text:?}); if (!el) return false; el.click(); return true;"
        );
        let what = format!("{css} {text:?}");
        self.until(&what, &format!("[...document.querySelectorAll({css:?})].some(x => x.textContent.trim() === {text:?})")).await;
        assert_eq!(self.js(&script).await, json!(true), "click {what}");
    }

    /// Opens the panel at `base` and logs in as the first admin.
    pub async fn log_in_as_admin(&self, base: &str) {
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
    pub async fn until(&self, what: &str, script: &str) {
        self.until_within(what, script, Duration::from_secs(10))
            .await;
    }

    /// Waits until `script` is truthy, at most `within`.
    pub async fn until_within(&self, what: &str, script: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.js(&format!("return !!({script});")).await == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let shown = self
                    .js("return location.hash + ' | ' + document.body.innerText.slice(0, 400) + ' | requests: ' + performance.getEntriesByType('resource').slice(-6).map(e => e.name + ' ' + Math.round(e.responseEnd)).join(', ');")
                    .await;
                let shot = self.screenshot(what).await;
                let errors = self.console_errors().await;
                panic!("timed out waiting for {what}; page: {shown}; console errors: {errors:?}; screenshot: {shot}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
