//! Agent upgrades from the controller, on real machines: containers from the node image
//! with the agent installed detached by SSH adoption. Versions are told apart by the
//! marker each agent binary carries (`mezzanine_proto::binary`): the suite's agent build
//! rewritten to say `0.0.1` stands in for an older release, and `/bin/false` with a marker
//! appended for a release that is broken (it exits at once).

use mezzanine_tests::{adopt, binary, first_admin, fleet_controller_serving, Client, Fleet};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const PW: &str = "node-root-password-3e51";
const MARK: &[u8] = b"\0MEZZANINE-AGENT-VERSION:";

/// The suite's agent with its version marker rewritten to `version` (same length).
fn agent_claiming(version: &str, out: &Path) {
    let built = std::fs::read(binary("mezzanine-agent", false)).expect("agent binary");
    let ours = env!("CARGO_PKG_VERSION");
    assert_eq!(version.len(), ours.len(), "a marker keeps its length");
    let from = [MARK, ours.as_bytes(), b"\n"].concat();
    let to = [MARK, version.as_bytes(), b"\n"].concat();
    let at = built
        .windows(from.len())
        .position(|w| w == from.as_slice())
        .expect("the agent carries its version marker");
    let mut bytes = built;
    bytes[at..at + to.len()].copy_from_slice(&to);
    install(out, &bytes);
}

/// Puts `bytes` at `out` as the controller's agent binary (replaced, not rewritten in
/// place: the controller may be reading the old one).
fn install(out: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write agent");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, out).expect("rename agent");
}

async fn server(admin: &mut Client, id: i64) -> Value {
    let r = admin.get(&format!("/api/servers/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits until server `id`'s upgrade has ended; the server.
async fn upgrade_ended(admin: &mut Client, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        let s = server(admin, id).await;
        let status = s["agent_upgrade"]["status"].as_str().unwrap_or_default();
        if status != "upgrading" && s["status"] == "online" {
            return s;
        }
        assert!(Instant::now() < deadline, "the upgrade never ended: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_upgrade_over_their_session_and_a_broken_release_is_rolled_back() {
    let fleet = Fleet::new();
    let (c1, n1_ip) = fleet.node("up1", 11, &[("ROOT_PASSWORD", PW)]);
    let (c2, n2_ip) = fleet.node("up2", 12, &[("ROOT_PASSWORD", PW)]);
    let dir = tempfile::tempdir().expect("tmp");
    let served = dir.path().join("mezzanine-agent");
    agent_claiming("0.0.1", &served);
    let ctl = fleet_controller_serving(&fleet, false, &served, &[]);
    let mut admin = first_admin(&ctl.base).await;
    let (mut a1, mut a2) = (admin.clone(), admin.clone());
    let (n1, n2) = tokio::join!(
        adopt(&mut a1, "up1", &n1_ip, PW),
        adopt(&mut a2, "up2", &n2_ip, PW)
    );
    let (rx, seen) = crate::notify::receiver().await;
    let r = admin
        .post(
            "/api/notifiers",
            json!({ "name": "ops", "kind": "webhook", "url": format!("{rx}/hook"),
                    "events": ["agent.upgrade_rolled_back", "server.offline"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Installed as 0.0.1, which is what the controller serves: up to date.
    let s = server(&mut admin, n1).await;
    assert_eq!(s["agent_version"], "0.0.1", "{s}");
    assert_eq!(s["agent_outdated"], false, "{s}");
    assert_eq!(s["agent_upgrade"], Value::Null, "{s}");
    let r = admin
        .post(&format!("/api/servers/{n1}/agent/upgrade"), json!({}))
        .await;
    assert_eq!(r.status, 409, "already on it: {}", r.body);
    assert!(r.error().contains("already runs agent 0.0.1"), "{}", r.body);

    // A binary for another architecture is refused before anything is sent.
    let mut foreign = std::fs::read(&served).expect("read");
    foreign[18..20].copy_from_slice(&183u16.to_le_bytes());
    install(&served, &foreign);
    let r = admin
        .post(&format!("/api/servers/{n1}/agent/upgrade"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.error().contains("aarch64") && r.error().contains("x86_64"),
        "{}",
        r.body
    );

    // A broken release (exits at once): the agent tries it, takes it back, and is online
    // on 0.0.1 again; the API and a notifier say so.
    let mut broken = std::fs::read("/bin/false").expect("/bin/false");
    broken.extend_from_slice(b"\0MEZZANINE-AGENT-VERSION:9.9.9-broken\n");
    install(&served, &broken);
    let s = server(&mut admin, n1).await;
    assert_eq!(s["agent_outdated"], true, "{s}");
    let r = admin
        .post(&format!("/api/servers/{n1}/agent/upgrade"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["from"], "0.0.1");
    assert_eq!(r.body["to"], "9.9.9-broken");
    let s = upgrade_ended(&mut admin, n1).await;
    let u = &s["agent_upgrade"];
    assert_eq!(u["status"], "rolled_back", "{s}");
    assert!(
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("9.9.9-broken") && e.contains("exited")),
        "{s}"
    );
    assert_eq!(s["agent_version"], "0.0.1", "{s}");
    let (_, body) = crate::notify::received(
        &seen,
        "/hook",
        "agent.upgrade_rolled_back",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(body["server"], "up1", "{body}");
    assert_eq!(body["to"], "9.9.9-broken", "{body}");
    let (ok, out) = fleet.exec(
        &c1,
        "/usr/local/bin/mezzanine-agent --version; ls -a /usr/local/bin",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("mezzanine-agent 0.0.1"),
        "the old binary stayed: {out}"
    );
    assert!(
        !out.contains(".mezzanine-agent.upgrade"),
        "the new one went: {out}"
    );
    let r = admin
        .post(&format!("/api/servers/{n1}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The real release: one agent upgraded from the panel, then the rest rolled over one
    // at a time.
    install(
        &served,
        &std::fs::read(binary("mezzanine-agent", false)).expect("agent"),
    );
    let ours = env!("CARGO_PKG_VERSION");
    // From the panel: the server's page says what happened and offers the upgrade.
    let b = mezzanine_tests::browser::Browser::start().await;
    b.log_in_as_admin(&ctl.base).await;
    crate::panel::page(&b, "the dashboard", "Dashboard").await;
    b.open(&format!("{}/#/servers/{n1}", ctl.base)).await;
    b.until(
        "the rolled-back upgrade and the newer build",
        "(t => t.includes('0.0.1 → 9.9.9-broken: rolled back') && t.includes('(a newer build is served)'))(document.querySelector('#server-facts').innerText)",
    )
    .await;
    b.js("document.querySelector('#agent-upgrade').click(); return 1;")
        .await;
    b.until_within(
        "the upgrade done",
        &format!("document.querySelector('#server-facts').innerText.includes('0.0.1 → {ours}: succeeded')"),
        Duration::from_secs(300),
    )
    .await;
    b.until(
        "no upgrade offered",
        "!document.querySelector('#agent-upgrade') && !document.querySelector('#server-facts').innerText.includes('newer build')",
    )
    .await;
    // The list says which one is still behind, and offers to upgrade it.
    b.open(&format!("{}/#/servers", ctl.base)).await;
    b.until(
        "the outdated agent in the list",
        "(rows => rows.some(r => r.innerText.includes('up2') && r.innerText.includes('(update available)')) && rows.some(r => r.innerText.includes('up1') && !r.innerText.includes('update available')))([...document.querySelectorAll('#servers tbody tr')]) && (document.querySelector('#upgrade-agents') || {}).textContent === 'Upgrade 1 outdated agent'",
    )
    .await;
    drop(b);

    let r = admin
        .post("/api/servers/agent/upgrade", json!({ "batch_size": 0 }))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.error().starts_with("batch_size"), "{}", r.body);
    let r = admin
        .post(
            "/api/servers/agent/upgrade",
            json!({ "server_ids": [n1], "tag": "x" }),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = admin
        .post(
            "/api/servers/agent/upgrade",
            json!({ "server_ids": [n1, n2] }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Only the outdated one; the one upgraded from the panel is left out, with why.
    assert_eq!(r.body["server_ids"], json!([n2]), "{}", r.body);
    assert_eq!(
        r.body["skipped"],
        json!([{ "server_id": n1, "reason": format!("already runs agent {ours}") }]),
        "{}",
        r.body
    );
    for id in [n1, n2] {
        let deadline = Instant::now() + Duration::from_secs(300);
        let s = loop {
            let s = server(&mut admin, id).await;
            if s["agent_upgrade"]["to"] == ours
                && s["agent_upgrade"]["status"] != "upgrading"
                && s["status"] == "online"
            {
                break s;
            }
            assert!(Instant::now() < deadline, "never upgraded: {s}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        assert_eq!(s["agent_upgrade"]["status"], "succeeded", "{s}");
        assert_eq!(s["agent_upgrade"]["from"], "0.0.1", "{s}");
        assert_eq!(s["agent_version"], ours, "{s}");
        assert_eq!(s["agent_outdated"], false, "{s}");
    }
    // On the server: the binary in place is the new one and the pid file names the
    // running agent (a detached install finds it there), which keeps its identity.
    for c in [&c1, &c2] {
        let (ok, out) = fleet.exec(
            c,
            "/usr/local/bin/mezzanine-agent --version; kill -0 \"$(cat /var/lib/mezzanine-agent/agent.pid)\" && echo alive; ls -a /usr/local/bin",
        );
        assert!(ok, "{out}");
        assert!(out.contains(&format!("mezzanine-agent {ours}")), "{out}");
        assert!(out.contains("alive"), "{out}");
        assert!(!out.contains(".mezzanine-agent.upgrade"), "{out}");
    }
    for id in [n1, n2] {
        let r = admin
            .post(&format!("/api/servers/{id}/ping"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Restarting into an upgrade was not reported as the server going offline.
    assert!(
        !seen
            .lock()
            .expect("seen")
            .iter()
            .any(|(_, _, ev, _)| ev.as_deref() == Some("server.offline")),
        "{:?}",
        seen.lock().expect("seen")
    );
    // With nothing named, every outdated agent: none is left.
    let r = admin.post("/api/servers/agent/upgrade", json!({})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["server_ids"], json!([]), "{}", r.body);
    let listed = admin.get("/api/servers").await.body;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().all(|s| s["agent_outdated"] == false)),
        "{listed}"
    );
}
