//! Shared helpers for the end-to-end suite: controllers started in-process on
//! `127.0.0.1:0` or as real `mezzanine` processes, an HTTP client that keeps the session
//! cookie, and `eventually` for waiting on conditions instead of sleeping.

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use reqwest::Method;

/// A controller running inside the test process on its own port and data dir.
pub struct Controller {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub agent_addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), mezzanine::StartError>>>,
}

impl Controller {
    pub async fn start() -> Controller {
        Self::start_with(&[]).await
    }

    /// Starts with extra `serve` flags, e.g. `&["--session-idle-secs", "1"]`.
    pub async fn start_with(extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Controller {
        Self::start_on(dir, "127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    /// Starts on given addresses (a restart reuses the ports of the previous run).
    pub async fn start_on(
        dir: tempfile::TempDir,
        http: &str,
        agents: &str,
        extra: &[&str],
    ) -> Controller {
        let listener = tokio::net::TcpListener::bind(http).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let agent_listener = tokio::net::TcpListener::bind(agents)
            .await
            .expect("bind agents");
        let agent_addr = agent_listener.local_addr().expect("agent addr");
        let data = dir.path().join("data");
        let mut argv = vec![
            "mezzanine".to_owned(),
            "serve".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--agent-binary".to_owned(),
            binary("mezzanine-agent", false).display().to_string(),
        ];
        argv.extend(database_args(dir.path()));
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let cli = <mezzanine::Cli as clap::Parser>::try_parse_from(argv).expect("flags");
        let mezzanine::Command::Serve(args) = cli.command else {
            panic!("not a serve command")
        };
        let config = args.validate().expect("config");
        let state = mezzanine::prepare(config).await.expect("prepare");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(mezzanine::serve(
            listener,
            agent_listener,
            state,
            async move {
                let _ = rx.await;
            },
        ));
        Controller {
            base: format!("http://{addr}"),
            addr,
            agent_addr,
            dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Runs `statement` on the controller's own database from a second connection.
    pub async fn sql(&self, statement: &str) {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&database_url(self.dir.path()))
            .await
            .expect("open the controller's database");
        sqlx::raw_sql(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    /// Makes the database refuse inserts into `table` (those matching `when`, an SQL
    /// condition on `NEW`) with "disk full (test)": how a test makes the store fail.
    pub async fn refuse_inserts(&self, name: &str, table: &str, when: Option<&str>) {
        let statement = if postgres_base().is_some() {
            let when = when.map(|w| format!("WHEN ({w})")).unwrap_or_default();
            format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'disk full (test)'; END $$;
                 CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW {when}
                 EXECUTE FUNCTION {name}();"
            )
        } else {
            let when = when.map(|w| format!("WHEN {w}")).unwrap_or_default();
            format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON {table} {when}
                 BEGIN SELECT RAISE(ABORT, 'disk full (test)'); END;"
            )
        };
        self.sql(&statement).await;
    }

    /// Undoes `refuse_inserts`.
    pub async fn allow_inserts(&self, name: &str, table: &str) {
        if postgres_base().is_some() {
            self.sql(&format!(
                "DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}();"
            ))
            .await;
        } else {
            self.sql(&format!("DROP TRIGGER {name};")).await;
        }
    }

    /// Stops gracefully and hands back the data dir (for restart tests).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Creates the first admin and returns a client logged in as it.
    pub async fn admin(&self) -> Client {
        first_admin(&self.base).await
    }

    /// Creates a user with `role` through `admin` and returns a client logged in as it.
    pub async fn user(&self, admin: &mut Client, username: &str, role: &str) -> Client {
        user(admin, username, role).await
    }
}

/// A client logged in as the first admin (made by `first_admin`) on `base`.
pub async fn admin_login(base: &str) -> Client {
    let mut c = Client::new(base);
    let r = c.login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(r.status, 200, "admin login: {}", r.body);
    c
}

/// Creates a user with `role` through `admin` (on `admin`'s controller) and returns a
/// client logged in as it.
pub async fn user(admin: &mut Client, username: &str, role: &str) -> Client {
    let password = format!("{username}-password-1");
    let r = admin
        .post(
            "/api/users",
            json!({ "username": username, "password": password, "role": role }),
        )
        .await;
    assert_eq!(r.status, 201, "create {username}: {}", r.body);
    let mut c = Client::new(&admin.base);
    let r = c.login(username, &password, None).await;
    assert_eq!(r.status, 200, "login {username}: {}", r.body);
    c
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub const ADMIN_PASSWORD: &str = "admin-password-1";

/// Runs first-time setup on the controller at `base` and returns the admin's client.
pub async fn first_admin(base: &str) -> Client {
    let mut c = Client::new(base);
    let r = c
        .post(
            "/api/auth/setup",
            json!({ "username": "admin", "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 201, "setup: {}", r.body);
    c
}

/// The answer to one request.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Resp {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP client that remembers the `cp_session` cookie like a browser would.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

impl Client {
    /// A client whose connections come from `source` (another loopback address, say).
    pub fn from_address(base: &str, source: std::net::IpAddr) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .local_address(source)
                .build()
                .expect("client"),
            base: base.to_owned(),
            cookie: None,
        }
    }

    /// Sends a request with extra headers.
    pub async fn send_with(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.raw(req).await
    }

    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: base.to_owned(),
            cookie: None,
        }
    }

    /// Sends a request; `body` goes as JSON with the JSON content type.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.raw(req).await
    }

    /// Sends a prepared request with the session cookie and records any new cookie.
    pub async fn raw(&mut self, mut req: reqwest::RequestBuilder) -> Resp {
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("cp_session={c}"));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap_or("");
            if let Some(rest) = v.strip_prefix("cp_session=") {
                let value = rest.split(';').next().unwrap_or("");
                self.cookie = (!value.is_empty()).then(|| value.to_owned());
            }
        }
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp {
            status,
            body,
            headers,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// A GET with the session whose body the caller reads as it arrives (event streams).
    pub async fn open(&self, path: &str) -> reqwest::Response {
        // No overall deadline: a stream lasts as long as its source.
        let mut req = self
            .request(Method::GET, path)
            .timeout(Duration::from_secs(24 * 3600));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("cp_session={c}"));
        }
        req.send().await.expect("request")
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        self.send(Method::GET, path, None).await
    }
    pub async fn post(&mut self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&mut self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&mut self, path: &str) -> Resp {
        self.send(Method::DELETE, path, Some(json!({}))).await
    }

    pub async fn login(&mut self, username: &str, password: &str, totp: Option<&str>) -> Resp {
        let mut body = json!({ "username": username, "password": password });
        if let Some(code) = totp {
            body["totp"] = json!(code);
        }
        self.post("/api/auth/login", body).await
    }
}

/// The TOTP code for now plus `offset` steps, for a base32 secret.
pub fn totp_code(secret_b32: &str, offset: i64) -> String {
    use mezzanine::auth::totp;
    let secret = totp::base32_decode(secret_b32).expect("base32");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let step = (totp::step_at(now) as i64 + offset) as u64;
    format!("{:06}", totp::hotp(&secret, step))
}

/// Polls `check` until it returns `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Path of a workspace binary built by `cargo build` (debug, or release when asked).
pub fn binary(name: &str, release: bool) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir");
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build{} --bins`; the README test command does)",
        path.display(),
        if release { " --release" } else { "" }
    );
    path
}

/// The PostgreSQL server the suite runs against, when `MEZZANINE_TEST_DATABASE=postgres`
/// (`tests/run` runs the end-to-end suite once on SQLite and once so): a base URL
/// (`postgres://user:pw@host:port`) from `MEZZANINE_TEST_POSTGRES`.
pub fn postgres_base() -> Option<String> {
    if std::env::var("MEZZANINE_TEST_DATABASE").ok().as_deref() != Some("postgres") {
        return None;
    }
    let base = std::env::var("MEZZANINE_TEST_POSTGRES").expect(
        "MEZZANINE_TEST_DATABASE=postgres needs MEZZANINE_TEST_POSTGRES (tests/run sets both)",
    );
    Some(base.trim_end_matches('/').to_owned())
}

/// A new, empty database on the test PostgreSQL server; its URL.
pub fn create_postgres_database(base: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "mz_t_{}_{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let out = std::process::Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql (apt-get install postgresql-client)");
    assert!(out.status.success(), "create database {name}: {out:?}");
    format!("{base}/{name}")
}

/// The `--database-url` a controller whose state lives under `root` (its data dir is
/// `root/data`) is started with: none for SQLite (the file in the data dir); in
/// PostgreSQL mode a database of its own, made on first start and kept for restarts.
pub fn database_args(root: &Path) -> Vec<String> {
    let Some(base) = postgres_base() else {
        return Vec::new();
    };
    let file = root.join("database-url");
    let url = match std::fs::read_to_string(&file) {
        Ok(url) => url,
        Err(_) => {
            let url = create_postgres_database(&base);
            std::fs::write(&file, &url).expect("remember the database URL");
            url
        }
    };
    vec!["--database-url".into(), url]
}

/// The database URL of the controller whose state lives under `root`.
pub fn database_url(root: &Path) -> String {
    match std::fs::read_to_string(root.join("database-url")) {
        Ok(url) => url,
        Err(_) => format!(
            "sqlite://{}",
            root.join("data").join("mezzanine.db").display()
        ),
    }
}

/// Everything the database of the controller under `root` holds, as bytes a test can
/// search for a secret that must not be there: SQLite's file and its WAL; PostgreSQL's
/// `pg_dump` of the database, with every `bytea` value (dumped as `\x` hex) decoded too.
pub fn stored_bytes(root: &Path) -> Vec<u8> {
    let url = database_url(root);
    if !url.starts_with("postgres") {
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(root.join("data")).expect("data dir") {
            let path = entry.expect("entry").path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mezzanine.db"))
            {
                bytes.extend(std::fs::read(&path).expect("db"));
            }
        }
        return bytes;
    }
    let out = std::process::Command::new("pg_dump")
        .args(["--data-only", &url])
        .output()
        .expect("pg_dump (apt-get install postgresql-client)");
    assert!(out.status.success(), "pg_dump: {out:?}");
    let mut bytes = out.stdout.clone();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for chunk in text.split("\\x").skip(1) {
        let hex: String = chunk.chars().take_while(char::is_ascii_hexdigit).collect();
        bytes.extend(hex::decode(&hex[..hex.len() / 2 * 2]).unwrap_or_default());
    }
    bytes
}

/// A `mezzanine serve` process with its stderr collected line by line.
pub struct Process {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub started: Instant,
    /// Set when the process's stderr reached its end (every line is in `lines`).
    drained: Arc<std::sync::atomic::AtomicBool>,
}

impl Process {
    /// Spawns `mezzanine` with `args` (JSON logs, so the harness can read fields).
    pub fn spawn(bin: &Path, args: &[&str]) -> Process {
        let started = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(args)
            .env("MEZZANINE_LOG_FORMAT", "json")
            .env_remove("MEZZANINE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mezzanine");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        let drained = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = drained.clone();
        // MEZZANINE_TEST_LOG_DIR keeps each process's log in a file too (for debugging a
        // failure the test's message does not explain).
        let mut copy = std::env::var_os("MEZZANINE_TEST_LOG_DIR").and_then(|d| {
            std::fs::File::create(Path::new(&d).join(format!("{}.log", child.id()))).ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    let _ = std::io::Write::write_all(f, format!("{line}\n").as_bytes());
                }
                sink.lock().expect("lines").push(line);
            }
            done.store(true, std::sync::atomic::Ordering::Release);
        });
        Process {
            child,
            lines,
            started,
            drained,
        }
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// A field of the "ready" log line (once it was logged), e.g. `agent_listen`.
    pub fn ready_field(&self, name: &str) -> Option<String> {
        self.lines.lock().expect("lines").iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["fields"]["listen"].as_str()?;
            Some(v["fields"][name].as_str()?.to_owned())
        })
    }

    /// Waits for the "ready" log line and returns the address it says it listens on.
    pub fn wait_ready(&mut self, within: Duration) -> std::net::SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            let found = self.lines.lock().expect("lines").iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                v["fields"]["listen"].as_str()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mezzanine exited with {status} before it was ready:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not ready in {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines may still be on their way through the pipe: read them all
                // (bounded, in case a child process still holds the pipe open).
                let drain_by = Instant::now() + Duration::from_secs(5);
                while !self.drained.load(std::sync::atomic::Ordering::Acquire)
                    && Instant::now() < drain_by
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {pid}");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        self.signal("TERM");
        self.wait_exit(within)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid`, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile (0..=1) of `v` (sorted in place; `v` must not be empty).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A benchmark's `main`: nothing for `--list` (cargo's test listing), otherwise `bench`
/// on a two-worker runtime.
pub fn bench_main<F: std::future::Future<Output = ()>>(bench: F) {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench);
}

/// A `mezzanine serve` process on loopback ports of its own with its own data dir, which a
/// test can kill and start again on the same ports (its agents find it there).
pub struct ControllerProcess {
    _data: tempfile::TempDir,
    bin: PathBuf,
    args: Vec<String>,
    pub proc: Process,
    /// `http://127.0.0.1:<port>`
    pub base: String,
}

impl ControllerProcess {
    /// Starts the debug or `release` binary with `extra` flags and waits until it is ready.
    pub fn start(release: bool, extra: &[&str]) -> ControllerProcess {
        Self::start_on("127.0.0.1", release, extra)
    }

    /// `start`, listening (API and agents) on `ip` (`0.0.0.0`: every address).
    pub fn start_on(ip: &str, release: bool, extra: &[&str]) -> ControllerProcess {
        let data = tempfile::tempdir().expect("tmp");
        let any = format!("{ip}:0");
        Self::launch(data, &any, &any, release, extra)
    }

    /// A controller sharing `first`'s database and master key (several controllers on
    /// one PostgreSQL), its agent gateway on `agent_listen` (port 0: any).
    pub fn start_sharing(
        first: &ControllerProcess,
        agent_listen: &str,
        release: bool,
        extra: &[&str],
    ) -> ControllerProcess {
        let data = tempfile::tempdir().expect("tmp");
        std::fs::write(data.path().join("database-url"), first.database_url())
            .expect("share the database URL");
        // The same master key, in this controller's own data dir (0700, the key 0600).
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = data.path().join("data");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("data dir");
        let key = dir.join("master.key");
        std::fs::copy(first.data_dir().join("master.key"), &key).expect("copy the master key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        Self::launch(data, "127.0.0.1:0", agent_listen, release, extra)
    }

    /// `start` with an explicit agent listen address (`IP:PORT`).
    pub fn start_with_agent_port(
        agent_listen: &str,
        release: bool,
        extra: &[&str],
    ) -> ControllerProcess {
        let data = tempfile::tempdir().expect("tmp");
        Self::launch(data, "127.0.0.1:0", agent_listen, release, extra)
    }

    fn launch(
        data: tempfile::TempDir,
        any: &str,
        agent_listen: &str,
        release: bool,
        extra: &[&str],
    ) -> ControllerProcess {
        let dir = data.path().join("data");
        // Port 0: the controller binds and says in its ready line what it got; a respawn
        // then asks for those same ports (agents know the agent port from their token).
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            any.to_owned(),
            "--agent-listen".into(),
            agent_listen.to_owned(),
            "--data-dir".into(),
            dir.to_str().expect("utf8").into(),
        ];
        args.extend(database_args(data.path()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let bin = binary("mezzanine", release);
        let proc = Self::spawn(&bin, &args);
        let http = proc.ready_field("listen").expect("listen");
        let agents = proc.ready_field("agent_listen").expect("agent_listen");
        args[2] = http.clone();
        args[4] = agents;
        ControllerProcess {
            _data: data,
            bin,
            args,
            proc,
            base: format!("http://{http}"),
        }
    }

    fn spawn(bin: &Path, args: &[String]) -> Process {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut proc = Process::spawn(bin, &args);
        proc.wait_ready(Duration::from_secs(15));
        proc
    }

    /// Its data directory (with SQLite, the database file is `mezzanine.db` in it).
    pub fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }

    /// Its database's URL (SQLite's file, or its own PostgreSQL database).
    pub fn database_url(&self) -> String {
        database_url(self._data.path())
    }

    /// Everything its database holds, as bytes to search (see `stored_bytes`).
    pub fn stored_bytes(&self) -> Vec<u8> {
        stored_bytes(self._data.path())
    }

    /// Starts it again (after it was killed or stopped) with the same ports and data.
    pub fn respawn(&mut self) {
        self.proc = Self::spawn(&self.bin, &self.args);
    }
}

/// A `mezzanine-agent` with its own state dir.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    pub fn new() -> Agent {
        Agent {
            dir: tempfile::tempdir().expect("tempdir"),
            bin: binary("mezzanine-agent", false),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.args(args)
            .arg("--state-dir")
            .arg(self.state_dir())
            .env_remove("MEZZANINE_AGENT_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `enroll TOKEN`; returns (success, stdout + stderr).
    pub fn enroll(&self, token: &str) -> (bool, String) {
        let out = self
            .command(&["enroll", token])
            .output()
            .expect("run agent");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn status(&self) -> String {
        let out = self.command(&["status"]).output().expect("run agent");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `run` with a heartbeat every `heartbeat_secs`.
    pub fn run(&self, heartbeat_secs: u64) -> Process {
        self.run_with(heartbeat_secs, &[])
    }

    /// `run` with extra flags (e.g. `--docker-socket`).
    pub fn run_with(&self, heartbeat_secs: u64, extra: &[&str]) -> Process {
        let hb = heartbeat_secs.to_string();
        let dir = self.state_dir();
        let mut args = vec![
            "run",
            "--heartbeat-secs",
            &hb,
            "--state-dir",
            dir.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        Process::spawn(&self.bin, &args)
    }
}

/// How many servers `GET /api/servers` lists.
pub async fn server_count(admin: &mut Client) -> usize {
    admin
        .get("/api/servers")
        .await
        .body
        .as_array()
        .expect("server list")
        .len()
}

/// Adds a server without SSH; returns `(id, token, install_command)`.
pub async fn add_server(admin: &mut Client, name: &str) -> (i64, String, String) {
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": name, "host": "127.0.0.1", "auth_type": "manual" }),
        )
        .await;
    assert_eq!(r.status, 201, "add server {name}: {}", r.body);
    (
        r.body["id"].as_i64().expect("id"),
        r.body["token"].as_str().expect("token").to_owned(),
        r.body["install_command"]
            .as_str()
            .expect("command")
            .to_owned(),
    )
}

/// Adds a server, enrolls a fresh agent for it and runs it (heartbeat every
/// `heartbeat_secs`) until the API says online: `(server id, agent, its process)`.
pub async fn attached_agent(
    admin: &mut Client,
    name: &str,
    heartbeat_secs: u64,
) -> (i64, Agent, Process) {
    attached_agent_with(admin, name, heartbeat_secs, Agent::new()).await
}

/// `attached_agent` with a given agent (benchmarks run the release binary).
pub async fn attached_agent_with(
    admin: &mut Client,
    name: &str,
    heartbeat_secs: u64,
    agent: Agent,
) -> (i64, Agent, Process) {
    let (id, token, _) = add_server(admin, name).await;
    let (ok, out) = agent.enroll(&token);
    assert!(ok, "enroll {name}: {out}");
    let proc = agent.run(heartbeat_secs);
    wait_server(admin, id, Duration::from_secs(10), "online", |v| {
        v["status"] == "online"
    })
    .await;
    (id, agent, proc)
}

/// Waits until `GET /api/servers/{id}` satisfies `pred`; returns that body.
pub async fn wait_server(
    admin: &mut Client,
    id: i64,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = admin.get(&format!("/api/servers/{id}")).await;
        if r.status == 200 && pred(&r.body) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "server {id}: timed out after {within:?} waiting for {what}; last: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Test servers: containers from the project's own node image (debootstrapped Debian 12
/// with sshd) on a private Docker network created for the run. Removed on drop, also
/// after a failure.
pub struct Fleet {
    pub network: String,
    /// The network's gateway: where the host (and the controller) is reachable.
    pub gateway: String,
    /// `a.b.c.` — the first three octets of the network's /24.
    pub prefix: String,
    pub image: String,
    containers: Mutex<Vec<String>>,
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds (once per machine: the tag carries the recipe's hash) the node image.
pub fn node_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/build-image.sh");
            let out = std::process::Command::new("sh")
                .arg(&script)
                .stdin(Stdio::null())
                .output()
                .expect("build-image.sh");
            assert!(
                out.status.success(),
                "building the node image failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .clone()
}

impl Fleet {
    pub fn new() -> Fleet {
        let image = node_image();
        let tag: u32 = {
            let mut b = [0u8; 4];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
                .expect("urandom");
            u32::from_le_bytes(b)
        };
        for attempt in 0..20u32 {
            let octet = (tag.wrapping_add(attempt * 7919) % 200) + 20;
            let name = format!("mz-test-{:08x}-{attempt}", tag);
            let subnet = format!("10.213.{octet}.0/24");
            let out = docker(&["network", "create", "--subnet", &subnet, &name]);
            if out.status.success() {
                return Fleet {
                    network: name,
                    gateway: format!("10.213.{octet}.1"),
                    prefix: format!("10.213.{octet}."),
                    image,
                    containers: Mutex::new(Vec::new()),
                };
            }
        }
        panic!("could not create a Docker network for the test fleet");
    }

    /// Starts a node at `.host` of the network with `env` (ROOT_PASSWORD,
    /// AUTHORIZED_KEY, HEARTBEAT_SECS); returns its container name and address.
    pub fn node(&self, name: &str, host: u8, env: &[(&str, &str)]) -> (String, String) {
        self.node_with(name, host, env, &[])
    }

    fn node_with(
        &self,
        name: &str,
        host: u8,
        env: &[(&str, &str)],
        flags: &[&str],
    ) -> (String, String) {
        let container = format!("{}-{name}", self.network);
        let ip = format!("{}{host}", self.prefix);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            container.clone(),
            "--hostname".into(),
            name.into(),
            "--network".into(),
            self.network.clone(),
            "--ip".into(),
            ip.clone(),
        ];
        for (k, v) in env {
            args.push("-e".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        args.push(self.image.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&refs);
        self.containers
            .lock()
            .expect("lock")
            .push(container.clone());
        // A node is started once its sshd answers: on a loaded machine the container's
        // init can take seconds, and an adoption sent earlier meets a refused connection.
        wait_port(&ip, 22, Duration::from_secs(60));
        (container, ip)
    }

    /// A node running its own Docker engine (Debian's docker.io, dockerd started by
    /// node-init with writable cgroups and `/var/lib/docker` on a volume). The capability
    /// set is `--privileged`'s minus CAP_SYS_RESOURCE, which this machine's engine cannot
    /// grant. Returns once the node's engine answers.
    pub fn docker_node(&self, name: &str, host: u8, env: &[(&str, &str)]) -> (String, String) {
        let mut all: Vec<(&str, &str)> = env.to_vec();
        all.push(("DOCKERD", "1"));
        let (container, ip) = self.node_with(name, host, &all, DOCKER_NODE_FLAGS);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, out) = self.exec(&container, "docker version --format '{{.Server.Version}}'");
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the engine in {container} did not start: {out}\n{}",
                self.exec(&container, "tail -20 /var/log/dockerd.log").1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        (container, ip)
    }

    /// Loads a workload image (from `workload_image_tar`) into a node's engine as `tag`.
    pub fn load_image(&self, container: &str, tar: &Path, tag: &str) {
        let file = std::fs::File::open(tar).expect("image tar");
        let out = std::process::Command::new("docker")
            .args([
                "exec",
                "-i",
                container,
                "docker",
                "import",
                "--change",
                r#"ENTRYPOINT ["/bin/busybox"]"#,
                "--change",
                r#"CMD ["httpd", "-f", "-p", "80", "-h", "/www"]"#,
                "-",
                tag,
            ])
            .stdin(file)
            .output()
            .expect("docker import");
        assert!(
            out.status.success(),
            "importing {tag} into {container}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn remove(&self, container: &str) {
        docker(&["rm", "-f", "-v", container]);
    }

    pub fn restart(&self, container: &str) {
        docker_ok(&["restart", "-t", "1", container]);
    }

    /// Runs a shell command in a node; returns (success, output).
    pub fn exec(&self, container: &str, script: &str) -> (bool, String) {
        let out = docker(&["exec", container, "sh", "-c", script]);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self
            .containers
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
        {
            docker(&["rm", "-f", "-v", &c]);
        }
        docker(&["network", "rm", &self.network]);
    }
}

const DOCKER_NODE_FLAGS: &[&str] = &[
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "-v",
    "/var/lib/docker",
];

/// A workload image as a tar for `docker import`: Debian's static busybox (the
/// busybox-static package) with `/www/index.html` and `/etc/mz-version` saying `version`.
/// Run as `httpd -f -p 80 -h /www` it serves the version.
pub fn workload_image_tar(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("rootfs-{version}"));
    for d in ["bin", "www", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a static busybox (apt-get install busybox-static)");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    std::fs::write(root.join("www/index.html"), format!("{version}\n")).expect("write");
    std::fs::write(root.join("etc/mz-version"), format!("{version}\n")).expect("write");
    for applet in ["sh", "echo", "sleep", "cat", "yes", "head"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let tar = dir.join(format!("workload-{version}.tar"));
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success(), "tar failed");
    tar
}

/// Debian's `docker-registry` (the CNCF distribution registry) on the fleet's gateway,
/// optionally behind HTTP basic auth (an htpasswd file made with `htpasswd -B`).
pub struct LocalRegistry {
    pub addr: String,
    _proc: Process,
    _dir: tempfile::TempDir,
}

/// How a `LocalRegistry` authenticates clients.
pub enum RegistryAuth<'a> {
    Anonymous,
    /// HTTP basic against an htpasswd file with this account.
    Basic(&'a str, &'a str),
    /// Bearer tokens from this token service (the Docker Hub / GHCR scheme).
    Token(&'a token::TokenService),
}

impl LocalRegistry {
    pub fn start(fleet: &Fleet, auth: RegistryAuth<'_>) -> LocalRegistry {
        let dir = tempfile::tempdir().expect("tmp");
        let port = free_port(&fleet.gateway);
        let addr = format!("{}:{port}", fleet.gateway);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let RegistryAuth::Token(t) = &auth {
            let bundle = dir.path().join("token-root.pem");
            std::fs::write(&bundle, &t.cert_pem).expect("write bundle");
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                token::SERVICE,
                token::ISSUER,
                bundle.display()
            ));
        }
        if let RegistryAuth::Basic(user, pass) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = std::process::Command::new("htpasswd")
                .args(["-B", "-b", "-c"])
                .arg(&htpasswd)
                .args([user, pass])
                .output()
                .expect("htpasswd (apt-get install apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: mezzanine-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let file = dir.path().join("config.yml");
        std::fs::write(&file, config).expect("write config");
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("docker-registry (apt-get install docker-registry)");
        let proc = Process::spawn(bin, &["serve", file.to_str().expect("utf8")]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        LocalRegistry {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }
}

pub mod browser;
pub mod pebble;
pub mod sim;
pub mod token;

/// Adopts a node over SSH as root with a password and waits until it is online; returns
/// the server id.
pub async fn adopt(admin: &mut Client, name: &str, ip: &str, password: &str) -> i64 {
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": name, "host": ip, "username": "root", "auth_type": "password", "password": password }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    wait_status(admin, id, "online", Duration::from_secs(90)).await;
    id
}

/// Waits until something accepts TCP connections on `ip:port`.
pub fn wait_port(ip: &str, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {ip}:{port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls a server until its status is `want` (panics on `failed` or after `within`).
pub async fn wait_status(c: &mut Client, id: i64, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = c.get(&format!("/api/servers/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let status = r.body["status"].as_str().unwrap_or("").to_owned();
        if status == want {
            return r.body;
        }
        if status == "failed" && want != "failed" {
            panic!("server {id} failed: {}", r.body);
        }
        assert!(
            Instant::now() < deadline,
            "server {id} not {want} after {within:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on `ip` (bound and released; the caller binds it right away).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// An ed25519 key pair made with ssh-keygen: (private key PEM, public key line).
pub fn ssh_keypair(dir: &Path, name: &str, passphrase: &str) -> (String, String) {
    let path = dir.join(name);
    let out = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            "mezzanine-test",
            "-f",
        ])
        .arg(&path)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(&path).expect("key"),
        std::fs::read_to_string(path.with_extension("pub"))
            .expect("pub")
            .trim()
            .to_owned(),
    )
}

/// A `mezzanine serve` process reachable from the fleet at the network's gateway, with
/// its HTTP API at the returned base URL. `release` picks the release binaries.
pub fn fleet_controller(fleet: &Fleet, release: bool) -> (Process, String, tempfile::TempDir) {
    let c = fleet_controller_process(fleet, release);
    (c.proc, c.base, c._data)
}

/// `fleet_controller` as a process the test can kill and `respawn` on the same ports
/// (the fleet's agents know the agent port from their install).
pub fn fleet_controller_process(fleet: &Fleet, release: bool) -> ControllerProcess {
    fleet_controller_with(fleet, release, &[])
}

/// `fleet_controller_process` with `extra` flags.
pub fn fleet_controller_with(fleet: &Fleet, release: bool, extra: &[&str]) -> ControllerProcess {
    fleet_controller_serving(fleet, release, &binary("mezzanine-agent", release), extra)
}

/// `fleet_controller_with`, serving the agent binary at `agent`.
pub fn fleet_controller_serving(
    fleet: &Fleet,
    release: bool,
    agent: &Path,
    extra: &[&str],
) -> ControllerProcess {
    let mut args = vec![
        "--agent-binary",
        agent.to_str().expect("utf8"),
        "--ssh-timeout-secs",
        "4",
        "--insecure-registry",
        "10.213.0.0/16",
        "--private-registry",
        "10.213.0.0/16",
        "--docker-timeout-secs",
        "4",
    ];
    args.extend_from_slice(extra);
    ControllerProcess::start_on(&fleet.gateway, release, &args)
}

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS`, `VmHWM`: the peak), in MiB.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb / 1024.0
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A TCP relay on a loopback port to another loopback port (set with `set_target`, so it
/// can stand in front of a controller that is not started yet): an agent endpoint that
/// `cut` makes vanish — it closes its listener and every connection it carries, as a
/// controller that died would.
pub struct Relay {
    pub port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `port` (0: any free one).
    pub async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("addr").port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (t, ts) = (target.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = t.load(std::sync::atomic::Ordering::SeqCst);
                if to == 0 {
                    continue;
                }
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                ts.lock().expect("tasks").push(conn);
            }
        });
        tasks.lock().expect("tasks").push(accept);
        Relay {
            port,
            target,
            tasks,
        }
    }

    pub fn set_target(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections it carries now.
    pub fn open_connections(&self) -> usize {
        self.tasks
            .lock()
            .expect("tasks")
            .iter()
            .skip(1)
            .filter(|t| !t.is_finished())
            .count()
    }

    pub fn cut(&self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
