//! Pools on real nodes: an edge with Debian's nginx and members that the pool's workflow
//! deploys, checked from the edge, behind the edge's upstream.

use mezzanine_tests::{
    admin_login, adopt, first_admin, fleet_controller, fleet_controller_process, Client, Fleet,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PW: &str = "pool-node-pw-31";

/// The page the edge answers at `ip:port`, as (status, body).
fn get(ip: &str, port: u16) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://{ip}:{port}/"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim().to_owned())
}

async fn pool(admin: &mut Client, id: i64) -> Value {
    let r = admin.get(&format!("/api/pools/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits until the member's state is `want`.
async fn member_state(
    admin: &mut Client,
    id: i64,
    server: i64,
    want: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = pool(admin, id).await;
        let m = p["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["server_id"] == server).cloned())
            .unwrap_or(Value::Null);
        if m["state"] == want {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "member {server} never became {want}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The distinct pages `n` requests to the edge got; panics on any non-200.
fn pages(ip: &str, port: u16, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| {
            let (code, body) = get(ip, port);
            assert_eq!(code, 200, "{body}");
            body
        })
        .collect()
}

/// The distinct pages the edge served while asked until every page of `want` was seen (or
/// 30 s passed): other clients share nginx's round robin (and each worker keeps its own),
/// so a fixed number of requests need not reach every member; a page outside `want` seen
/// meanwhile still shows in the result.
fn pages_until(ip: &str, port: u16, want: &[&str]) -> std::collections::BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = std::collections::BTreeSet::new();
    while !want.iter().all(|w| seen.contains(*w)) && Instant::now() < deadline {
        let (code, body) = get(ip, port);
        assert_eq!(code, 200, "{body}");
        seen.insert(body);
    }
    seen
}

/// The members' site: the page, and `/ws` passed to the echo server with the upgrade.
const APP_SITE: &str = "server {
    listen 8080;
    root /srv/app;
    location /ws {
        proxy_pass http://127.0.0.1:9001;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection upgrade;
    }
}
";

/// A WebSocket echo server (RFC 6455, text frames) on the member's 127.0.0.1:9001 with
/// Python's standard library: each message comes back as `echo <hostname>: <message>`.
const WS_ECHO: &str = r#"import base64, hashlib, socket, threading
NAME = socket.gethostname().encode()
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def frame(payload):
    n = len(payload)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + payload

def serve(conn):
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        key = b""
        for line in request.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        stream = conn.makefile("rb")
        while True:
            head = stream.read(2)
            if len(head) < 2:
                return
            opcode, size = head[0] & 0x0F, head[1] & 0x7F
            if size == 126:
                size = int.from_bytes(stream.read(2), "big")
            elif size == 127:
                size = int.from_bytes(stream.read(8), "big")
            mask = stream.read(4) if head[1] & 0x80 else bytes(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(stream.read(size)))
            if opcode == 8:
                conn.sendall(b"\x88\x00")
                return
            conn.sendall(frame(b"echo " + NAME + b": " + data))

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 9001))
listener.listen()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A WebSocket client on a plain TCP connection, enough for short text messages.
struct WebSocket(std::net::TcpStream);

impl WebSocket {
    /// Opens `ws://ip:port{path}` and checks the handshake. The key is RFC 6455's own
    /// example (§1.3), whose accept value the RFC gives.
    fn open(ip: &str, port: u16, path: &str) -> WebSocket {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((ip, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {ip}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("handshake answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        WebSocket(s)
    }

    /// Sends `text` (masked, as a client must) and returns the message that comes back.
    fn echo(&mut self, text: &str) -> String {
        use std::io::{Read, Write};
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let len = u8::try_from(text.len()).expect("short message");
        assert!(len < 126);
        let mut out = vec![0x81, 0x80 | len];
        out.extend_from_slice(&mask);
        out.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&out).expect("send");
        let mut head = [0u8; 2];
        self.0.read_exact(&mut head).expect("frame");
        assert_eq!(head[0], 0x81, "a final text frame");
        let size = match head[1] & 0x7F {
            126 => {
                let mut n = [0u8; 2];
                self.0.read_exact(&mut n).expect("size");
                usize::from(u16::from_be_bytes(n))
            }
            n => usize::from(n),
        };
        let mut body = vec![0u8; size];
        self.0.read_exact(&mut body).expect("payload");
        String::from_utf8(body).expect("text")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_its_healthy_members_through_the_edge() {
    let fleet = Fleet::new();
    let (edge_c, edge_ip) = fleet.node("edge", 11, &[("ROOT_PASSWORD", PW)]);
    let (m1_c, m1_ip) = fleet.node("m1", 12, &[("ROOT_PASSWORD", PW)]);
    let (_m2_c, m2_ip) = fleet.node("m2", 13, &[("ROOT_PASSWORD", PW)]);
    let (_ctl, base, _data) = fleet_controller(&fleet, false);
    let mut admin = first_admin(&base).await;
    let (mut a1, mut a2, mut a3) = (admin.clone(), admin.clone(), admin.clone());
    let (edge, m1, m2) = tokio::join!(
        adopt(&mut a1, "edge", &edge_ip, PW),
        adopt(&mut a2, "m1", &m1_ip, PW),
        adopt(&mut a3, "m2", &m2_ip, PW),
    );

    // The app: nginx on the member at 8080 serving a page that names it, and passing
    // `/ws` to a WebSocket echo server on the member.
    let script = format!(
        "mkdir -p /srv/app && echo \"member $(hostname) v1\" > /srv/app/index.html\n\
        cat > /srv/ws.py <<'EOF'\n{WS_ECHO}EOF\n\
        (setsid python3 /srv/ws.py </dev/null >/dev/null 2>&1 &)\n\
        cat > /etc/nginx/sites-enabled/app <<'EOF'\n{APP_SITE}EOF\n\
        nginx -t && (nginx -s reload 2>/dev/null || nginx)"
    );
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "site", "server_id": m1, "definition": { "steps": [
                { "name": "serve", "uses": "shell", "with": { "script": script } }
            ] } }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post("/api/domains", json!({ "name": "App.Example.com" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let domain = r.body["id"].as_i64().expect("domain");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "web", "workflow_id": wf, "max_replicas": 2 }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("pool");

    // Scale-out needs an edge to check members from; sync-lb needs an edge at all.
    let r = admin
        .post(&format!("/api/pools/{id}/sync-lb"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    "health": { "interval_s": 1, "timeout_s": 1, "healthy_after": 1, "unhealthy_after": 2 },
                    "drain_timeout_s": 1 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // No members yet: the edge answers, with 503.
    assert_eq!(get(&edge_ip, 8088).0, 503);

    // Scale out to both members: each deploys, passes its check, enters the upstream.
    for m in [m1, m2] {
        let r = admin
            .post(
                &format!("/api/pools/{id}/scale-out"),
                json!({ "server_id": m }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        member_state(&mut admin, id, m, "healthy", Duration::from_secs(90)).await;
    }
    let r = admin
        .post(
            &format!("/api/pools/{id}/scale-out"),
            json!({ "server_id": edge }),
        )
        .await;
    assert_eq!(r.status, 409, "beyond max_replicas: {}", r.body);
    let seen = pages(&edge_ip, 8088, 8);
    assert_eq!(
        seen,
        ["member m1 v1", "member m2 v1"].map(String::from).into(),
        "round robin"
    );
    // A WebSocket through the edge: the upgrade reaches the member, the handshake's
    // accept key comes back intact, and frames flow both ways on one long connection.
    // (Round robin is per nginx worker, so it may take a few connections to meet both.)
    let mut ws = WebSocket::open(&edge_ip, 8088, "/ws");
    let mut greeted: std::collections::BTreeSet<String> = [ws
        .echo("hello")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()]
    .into();
    std::thread::sleep(Duration::from_secs(2));
    assert!(ws.echo("still there").ends_with(": still there"));
    for _ in 0..10 {
        let mut other = WebSocket::open(&edge_ip, 8088, "/ws");
        greeted.insert(
            other
                .echo("hello")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(greeted, ["echo m1", "echo m2"].map(String::from).into());
    let p = pool(&mut admin, id).await;
    assert!(
        p["lb"]["applied_at"].is_string() && p["lb"]["error"].is_null(),
        "{p}"
    );
    let list = admin.get("/api/pools").await.body;
    assert_eq!(list[0]["members"], 2, "{list}");
    assert_eq!(list[0]["health"]["members"]["healthy"], 2, "{list}");

    // Injection through every field the config is made of: refused, nothing written,
    // and the edge's nginx still accepts its config.
    for (body, field) in [
        (
            json!({ "health": { "path": "/;include /etc/shadow" } }),
            "health.path",
        ),
        (json!({ "health": { "path": "/\n}" } }), "health.path"),
        (
            json!({ "lb_strategy": "cookie_hash", "sticky_cookie": "a;b" }),
            "sticky_cookie",
        ),
        (json!({ "lb_strategy": "cookie_hash" }), "sticky_cookie"),
        (json!({ "lb_strategy": "hash $remote_addr" }), "lb_strategy"),
        (json!({ "name": "web}\ninclude x;" }), "name"),
        (json!({ "ports": { "listen": 0 } }), "ports.listen"),
        (
            json!({ "members": [{ "server_id": m1, "weight": 0 }] }),
            "members[0].weight",
        ),
        (json!({ "min_replicas": 3 }), "min_replicas"),
    ] {
        let r = admin.patch(&format!("/api/pools/{id}"), body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(field)),
            "{body}: {}",
            r.body
        );
    }
    for name in [
        "a.com;",
        "a.com\ninclude",
        "{x}.com",
        "localhost",
        "10.0.0.1",
    ] {
        let r = admin.post("/api/domains", json!({ "name": name })).await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.body);
    }
    let (ok, out) = fleet.exec(
        &edge_c,
        "nginx -t 2>&1 && cat /etc/nginx/conf.d/mezzanine/pool-*.conf",
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("shadow") && out.contains("listen 8088;"),
        "{out}"
    );
    assert_eq!(pool(&mut admin, id).await["health"]["path"], "/");

    // A domain gives the server_name; ip_hash keeps one client on one member.
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "domain_id": domain, "lb_strategy": "ip_hash" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, conf) = fleet.exec(&edge_c, "cat /etc/nginx/conf.d/mezzanine/pool-*.conf");
    assert!(
        conf.contains("server_name app.example.com;") && conf.contains("ip_hash;"),
        "{conf}"
    );
    assert_eq!(pages(&edge_ip, 8088, 6).len(), 1, "ip_hash sticks");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "lb_strategy": "least_conn" }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2);

    // A member whose app stops is taken out within the window; it comes back with it.
    let stopped = Instant::now();
    let (ok, out) = fleet.exec(&m1_c, "rm /etc/nginx/sites-enabled/app && nginx -s reload");
    assert!(ok, "{out}");
    let m = member_state(&mut admin, id, m1, "unhealthy", Duration::from_secs(30)).await;
    println!("unhealthy after {:?}: {m}", stopped.elapsed());
    assert!(
        m["health_detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{m}"
    );
    assert_eq!(pages(&edge_ip, 8088, 6), ["member m2 v1".to_owned()].into());
    let (ok, out) = fleet.exec(
        &m1_c,
        "printf 'server {\\n listen 8080;\\n root /srv/app;\\n}\\n' > /etc/nginx/sites-enabled/app && nginx -s reload",
    );
    assert!(ok, "{out}");
    member_state(&mut admin, id, m1, "healthy", Duration::from_secs(30)).await;
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2);

    // Every member failing its check (a health path that answers 404 everywhere): the
    // edge fails open and keeps sending to them rather than answering 503 for all.
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "health": { "path": "/nowhere" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    member_state(&mut admin, id, m1, "unhealthy", Duration::from_secs(30)).await;
    member_state(&mut admin, id, m2, "unhealthy", Duration::from_secs(30)).await;
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2, "fail open: both serve");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "health": { "path": "/" } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    member_state(&mut admin, id, m1, "healthy", Duration::from_secs(30)).await;
    member_state(&mut admin, id, m2, "healthy", Duration::from_secs(30)).await;

    // The member's whole container stopped abruptly (frozen: no answer, no reset): out
    // within the window, back when it returns.
    let docker = |verb: &str| {
        let out = std::process::Command::new("docker")
            .args([verb, &m1_c])
            .output()
            .expect("docker");
        assert!(out.status.success(), "docker {verb}: {out:?}");
    };
    docker("pause");
    let frozen = Instant::now();
    let m = member_state(&mut admin, id, m1, "unhealthy", Duration::from_secs(30)).await;
    println!("frozen member out after {:?}: {m}", frozen.elapsed());
    assert_eq!(pages(&edge_ip, 8088, 6), ["member m2 v1".to_owned()].into());
    docker("unpause");
    member_state(&mut admin, id, m1, "healthy", Duration::from_secs(30)).await;
    assert_eq!(pages(&edge_ip, 8088, 8).len(), 2);

    // Removing a member drains it; the last one needs force (min_replicas 1).
    let r = admin.delete(&format!("/api/pools/{id}/members/{m2}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(pages(&edge_ip, 8088, 6), ["member m1 v1".to_owned()].into());
    let r = admin.delete(&format!("/api/pools/{id}/members/{m1}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin
        .delete(&format!("/api/pools/{id}/members/{m1}?force=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(get(&edge_ip, 8088).0, 503);

    // Without nginx, the edge says so.
    let (ok, out) = fleet.exec(&edge_c, "mv /usr/sbin/nginx /usr/sbin/nginx.off");
    assert!(ok, "{out}");
    let r = admin
        .post(&format!("/api/pools/{id}/sync-lb"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not installed")),
        "{}",
        r.body
    );
    assert!(pool(&mut admin, id).await["lb"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("not installed")));
    let (ok, out) = fleet.exec(&edge_c, "mv /usr/sbin/nginx.off /usr/sbin/nginx");
    assert!(ok, "{out}");

    // A domain in use cannot go; deleting the pool removes its config from the edge.
    let r = admin.delete(&format!("/api/domains/{domain}")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = admin.delete(&format!("/api/pools/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (ok, out) = fleet.exec(
        &edge_c,
        "test ! -e /etc/nginx/conf.d/mezzanine/pool-1.conf && nginx -t 2>&1",
    );
    assert!(ok, "{out}");
    let r = admin.delete(&format!("/api/domains/{domain}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// What a client hammering the edge saw: requests, failures, and the versions served.
#[derive(Default)]
struct Load {
    ok: u64,
    failed: Vec<String>,
    versions: std::collections::BTreeSet<String>,
}

/// Requests the edge's page as fast as one client can until `stop`, in the background,
/// each on a new connection: a reload makes nginx's old workers close their idle
/// keep-alive connections, and a request sent on one at that instant fails at the
/// transport (browsers and most clients retry such a GET; RFC 9110 §9.2.2) — nginx's own
/// behaviour, which this test does not measure. Failures of our own (a member deployed
/// while it served, an empty upstream) show on new connections too.
/// Now, as Unix seconds with milliseconds: failures line up with the controller's log.
fn wall() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:.3}", t.as_secs_f64())
}

fn hammer(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Load> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut load = Load::default();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    load.ok += 1;
                    let body = r.text().await.unwrap_or_default();
                    let version = body
                        .split_whitespace()
                        .last()
                        .unwrap_or_default()
                        .to_owned();
                    load.versions.insert(version);
                }
                Ok(r) => load
                    .failed
                    .push(format!("HTTP {} at {}", r.status(), wall())),
                Err(e) => load.failed.push(format!("{e} at {}", wall())),
            }
        }
        load
    })
}

async fn wait_rollout(admin: &mut Client, pool: i64, rollout: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let r = admin
            .get(&format!("/api/pools/{pool}/rollouts/{rollout}"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] != "running" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout never ended: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The step every member runs: its app answers 503 for two seconds while it switches (so
/// a member deployed without being drained first would leak errors), then serves its
/// version — or, when BROKEN is set, 500 on every path. Like a real app's deploy, the
/// step ends only once the new version serves: `nginx -s reload` returns as soon as the
/// master is signalled, while the old workers still accept for a moment, and a member
/// admitted on one good probe in that moment would answer the edge with the old 503.
const SWITCH: &str = r#"reload() {
    old=" $(pgrep -f 'nginx: worker process$' | tr '\n' ' ') "
    nginx -t || return 1
    nginx -s reload 2>/dev/null || { nginx; return; }
    for _ in $(seq 400); do
        now=$(pgrep -f 'nginx: worker process$' | tr '\n' ' ')
        fresh=1
        for p in $now; do case "$old" in *" $p "*) fresh=0;; esac; done
        [ -n "$now" ] && [ $fresh = 1 ] && return 0
        sleep 0.05
    done
    echo "nginx kept its old workers for 20 s" >&2
    return 1
}
printf 'server {\n listen 8080;\n return 503;\n}\n' > /etc/nginx/sites-enabled/app
reload
sleep 2
mkdir -p /srv/app && echo "member $(hostname) $VERSION" > /srv/app/index.html
if [ "$BROKEN" = 1 ]; then body=' return 500;'; else body=' root /srv/app;'; fi
printf 'server {\n listen 8080;\n%s\n}\n' "$body" > /etc/nginx/sites-enabled/app
reload"#;

fn definition(version: &str, broken: bool) -> Value {
    slow_definition(version, broken, 0)
}

/// `definition`, with the step first working for `pause` seconds (still serving the old
/// version, though drained) — a deploy long enough to restart the controller during.
fn slow_definition(version: &str, broken: bool, pause: u32) -> Value {
    let script = format!("echo working; sleep {pause}\n{SWITCH}");
    json!({ "env": { "VERSION": version, "BROKEN": if broken { "1" } else { "0" } },
            "steps": [{ "name": "switch", "uses": "shell", "with": { "script": script }, "timeout_s": 120 }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_replaces_every_member_without_a_failed_request() {
    let fleet = Fleet::new();
    let (_edge_c, edge_ip) = fleet.node("edge", 11, &[("ROOT_PASSWORD", PW)]);
    let (_, m1_ip) = fleet.node("r1", 12, &[("ROOT_PASSWORD", PW)]);
    let (_, m2_ip) = fleet.node("r2", 13, &[("ROOT_PASSWORD", PW)]);
    let (_, m3_ip) = fleet.node("r3", 14, &[("ROOT_PASSWORD", PW)]);
    let mut ctl = fleet_controller_process(&fleet, false);
    let mut admin = first_admin(&ctl.base).await;
    let (mut a1, mut a2, mut a3, mut a4) =
        (admin.clone(), admin.clone(), admin.clone(), admin.clone());
    let (edge, m1, m2, m3) = tokio::join!(
        adopt(&mut a1, "edge", &edge_ip, PW),
        adopt(&mut a2, "r1", &m1_ip, PW),
        adopt(&mut a3, "r2", &m2_ip, PW),
        adopt(&mut a4, "r3", &m3_ip, PW),
    );
    let r = admin
        .post(
            "/api/workflows",
            json!({ "name": "app", "server_id": m1, "definition": definition("v1", false) }),
        )
        .await;
    let wf = r.body["id"].as_i64().expect("workflow");
    let r = admin
        .post(
            "/api/pools",
            json!({ "name": "app", "workflow_id": wf, "min_replicas": 1, "max_replicas": 3 }),
        )
        .await;
    let id = r.body["id"].as_i64().expect("pool");
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "edge_server_id": edge, "ports": { "listen": 8088, "target": 8080 },
                    // Generous probes: on a loaded machine a slow answer must not take healthy
                    // members out (an empty upstream answers 503) while one is drained.
                    "health": { "interval_s": 2, "timeout_s": 2, "healthy_after": 1, "unhealthy_after": 3, "grace_s": 20 },
                    "drain_timeout_s": 1 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 409, "no members yet: {}", r.body);
    for m in [m1, m2, m3] {
        let r = admin
            .post(
                &format!("/api/pools/{id}/scale-out"),
                json!({ "server_id": m }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        member_state(&mut admin, id, m, "healthy", Duration::from_secs(90)).await;
    }
    assert_eq!(pages(&edge_ip, 8088, 9).len(), 3);

    // v2 under load: no failed request, both versions seen during, only v2 after.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = hammer(format!("http://{edge_ip}:8088/"), stop.clone());
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v2", false) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let started = Instant::now();
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rollout = r.body["rolloutId"].as_i64().expect("rollout");
    let mut stream = admin
        .open(&format!("/api/pools/{id}/rollouts/{rollout}/events"))
        .await;
    assert_eq!(stream.status(), 200);
    let watched = tokio::spawn(async move {
        crate::deploys::sse(&mut stream, Duration::from_secs(240), crate::deploys::ended).await
    });
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 409, "one rollout at a time: {}", r.body);
    let done = wait_rollout(&mut admin, id, rollout).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.expect("load");
    println!(
        "rollout of 3 members: {took:?}; {} requests served, {} failed; versions seen: {:?}",
        seen.ok,
        seen.failed.len(),
        seen.versions
    );
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        done["members"].as_array().is_some_and(|ms| ms.len() == 3
            && ms
                .iter()
                .all(|m| m["status"] == "succeeded" && m["runId"].is_i64())),
        "{done}"
    );
    // On a failure, what the controller decided meanwhile (health changes, applies).
    let decisions = || {
        ctl.proc
            .output()
            .lines()
            .filter(|l| l.contains("member health changed") || l.contains("pool"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        seen.failed.is_empty(),
        "failed requests: {:?}\n{}",
        seen.failed,
        decisions()
    );
    assert!(seen.ok > 20, "the client kept asking: {}", seen.ok);
    // The rollout's event stream told each member's steps as they happened, one member
    // at a time, and ended with the outcome.
    let events = watched.await.expect("stream");
    let (last, snapshots) = events.split_last().expect("events");
    assert_eq!(last.1, "end");
    assert_eq!(last.2["status"], "succeeded");
    assert_eq!(snapshots.last().expect("a snapshot").2, done);
    for (i, member) in [m1, m2, m3].iter().enumerate() {
        let steps: Vec<&str> = snapshots
            .iter()
            .map(|(_, _, r)| r["members"][i]["status"].as_str().unwrap_or_default())
            .fold(Vec::new(), |mut seen, s| {
                if seen.last() != Some(&s) {
                    seen.push(s);
                }
                seen
            });
        // The first member may be draining already when the stream opens.
        assert!(
            i == 0 || steps[0] == "pending",
            "member {member}: {steps:?}"
        );
        assert_eq!(
            steps
                .iter()
                .filter(|s| **s != "checking")
                .skip_while(|s| **s == "pending")
                .copied()
                .collect::<Vec<_>>(),
            ["draining", "deploying", "succeeded"],
            "member {member}: {steps:?}"
        );
    }
    assert!(
        snapshots.iter().all(|(_, e, r)| e == "rollout"
            && r["members"].as_array().is_some_and(|ms| ms
                .iter()
                .filter(|m| matches!(
                    m["status"].as_str(),
                    Some("draining" | "deploying" | "checking")
                ))
                .count()
                <= 1)),
        "one member out at a time: {snapshots:?}"
    );
    assert!(
        seen.versions.contains("v1") && seen.versions.contains("v2"),
        "{:?}",
        seen.versions
    );
    let want = ["member r1 v2", "member r2 v2", "member r3 v2"];
    assert_eq!(
        pages_until(&edge_ip, 8088, &want),
        want.map(String::from).into(),
        "{}",
        pool(&mut admin, id).await
    );

    // A broken version (the step succeeds, the app answers 500): the rollout stops at
    // the first member, which stays out; the others keep serving v2; nobody sees an error.
    let r = admin
        .patch(
            &format!("/api/pools/{id}"),
            json!({ "health": { "grace_s": 3 } }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v3", true) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let load = hammer(format!("http://{edge_ip}:8088/"), stop.clone());
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    let rollout = r.body["rolloutId"].as_i64().expect("rollout");
    let done = wait_rollout(&mut admin, id, rollout).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.expect("load");
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("r1") && e.contains("HTTP 500")),
        "{done}"
    );
    assert_eq!(done["members"][0]["status"], "failed", "{done}");
    assert_eq!(done["members"][1]["status"], "skipped", "{done}");
    assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
    let p = pool(&mut admin, id).await;
    assert_eq!(p["members"][0]["state"], "failed", "{p}");
    let want = ["member r2 v2", "member r3 v2"];
    assert_eq!(
        pages_until(&edge_ip, 8088, &want),
        want.map(String::from).into(),
        "{}",
        pool(&mut admin, id).await
    );

    // A signed push to the pool's workflow rolls the fixed version out, the failed member
    // included.
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": definition("v4", false) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin
        .post(&format!("/api/workflows/{wf}/webhook/rotate"), json!({}))
        .await;
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    let body = r#"{"ref":"refs/heads/main","after":"4444444444444444444444444444444444444444"}"#;
    let push = |admin: &Client| {
        admin
            .request(reqwest::Method::POST, &format!("/api/webhooks/{wf}"))
            .header("content-type", "application/json")
            .header("x-github-delivery", "d-4444")
            .header("x-hub-signature-256", crate::runs::signature(&secret, body))
            .body(body)
    };
    let r = admin.raw(push(&admin)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rollout = r.body["rolloutIds"][0].as_i64().expect("rollout");
    let done = wait_rollout(&mut admin, id, rollout).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["trigger_detail"]["commit"],
        "4444444444444444444444444444444444444444"
    );
    let want = ["member r1 v4", "member r2 v4", "member r3 v4"];
    assert_eq!(
        pages_until(&edge_ip, 8088, &want),
        want.map(String::from).into(),
        "{}",
        pool(&mut admin, id).await
    );
    // The provider redelivers the same push: nothing rolls out again.
    let r = admin.raw(push(&admin)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["duplicate"], true, "{}", r.body);

    // The controller is killed while the first member deploys v5 (drained, its step
    // still working), and comes back: the rollout ends failed saying why, the member's
    // run — which its agent kept going — finishes, the member is checked and put back,
    // and the others keep v4. The edge serves the whole time.
    let r = admin
        .patch(
            &format!("/api/workflows/{wf}"),
            json!({ "definition": slow_definition("v5", false, 6) }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    stop.store(false, std::sync::atomic::Ordering::Relaxed);
    let load = hammer(format!("http://{edge_ip}:8088/"), stop.clone());
    let r = admin
        .post(&format!("/api/pools/{id}/deploy"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let rollout = r.body["rolloutId"].as_i64().expect("rollout");
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let r = admin
            .get(&format!("/api/pools/{id}/rollouts/{rollout}"))
            .await
            .body;
        if let (Some("deploying"), Some(run)) = (
            r["members"][0]["status"].as_str(),
            r["members"][0]["runId"].as_i64(),
        ) {
            break run;
        }
        assert!(Instant::now() < deadline, "r1 never deployed: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    crate::deploys::first_output(&mut admin, run).await;
    ctl.proc.signal("KILL");
    let _ = ctl.proc.wait_exit(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    ctl.respawn();
    let mut admin = admin_login(&ctl.base).await;
    let done = wait_rollout(&mut admin, id, rollout).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("controller restarted")),
        "{done}"
    );
    member_state(&mut admin, id, m1, "healthy", Duration::from_secs(90)).await;
    let run = admin
        .get(&format!("/api/deployments/runs/{run}"))
        .await
        .body;
    assert_eq!(run["status"], "succeeded", "{run}");
    let want = ["member r1 v5", "member r2 v4", "member r3 v4"];
    assert_eq!(
        pages_until(&edge_ip, 8088, &want),
        want.map(String::from).into(),
        "{}",
        pool(&mut admin, id).await
    );

    // A member removed under load is drained first: still no failed request.
    let r = admin.delete(&format!("/api/pools/{id}/members/{m3}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.expect("load");
    println!(
        "restart and removal: {} requests served, {} failed",
        seen.ok,
        seen.failed.len()
    );
    assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
    let want = ["member r1 v5", "member r2 v4"];
    assert_eq!(
        pages_until(&edge_ip, 8088, &want),
        want.map(String::from).into(),
        "{}",
        pool(&mut admin, id).await
    );
}
