//! SSH adoption on real machines: containers from the node image, each with its own sshd,
//! adopted by a real `mezzanine` process through the public API only.

use mezzanine_tests::{
    first_admin, fleet_controller, ssh_keypair, stored_bytes, wait_status, Client, Fleet, Process,
};
use serde_json::json;
use std::time::{Duration, Instant};

const NODE_PASSWORD: &str = "node-root-password-7c1f";
const PASSPHRASE: &str = "key-passphrase-91ab";

/// A controller process reachable from the fleet's network at its gateway address.
struct Ctl {
    proc: Process,
    base: String,
    data: tempfile::TempDir,
}

fn start_controller(fleet: &Fleet) -> Ctl {
    let (proc, base, data) = fleet_controller(fleet, false);
    Ctl { proc, base, data }
}

async fn admin(ctl: &Ctl) -> Client {
    first_admin(&ctl.base).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_adoption_end_to_end() {
    let fleet = Fleet::new();
    let keys = tempfile::tempdir().expect("tmp");
    let (plain_key, plain_pub) = ssh_keypair(keys.path(), "plain", "");
    let (locked_key, locked_pub) = ssh_keypair(keys.path(), "locked", PASSPHRASE);
    let (_, n1) = fleet.node("pw", 11, &[("ROOT_PASSWORD", NODE_PASSWORD)]);
    let (_, n2) = fleet.node("key", 12, &[("AUTHORIZED_KEY", &plain_pub)]);
    let (c3, n3) = fleet.node("locked", 13, &[("AUTHORIZED_KEY", &locked_pub)]);
    let ctl = start_controller(&fleet);
    let mut admin = admin(&ctl).await;
    let mut seen: Vec<String> = Vec::new();

    // 1. Three nodes adopted in parallel: password, key, key with passphrase.
    let bodies = [
        json!({ "name": "pw", "host": n1, "username": "root", "auth_type": "password", "password": NODE_PASSWORD }),
        json!({ "name": "key", "host": n2, "username": "root", "auth_type": "key", "private_key": plain_key }),
        json!({ "name": "locked", "host": n3, "username": "root", "auth_type": "key", "private_key": locked_key, "passphrase": PASSPHRASE, "keep_credentials": true }),
    ];
    let t = Instant::now();
    let mut ids = Vec::new();
    for b in &bodies {
        let r = admin.post("/api/servers", b.clone()).await;
        assert_eq!(r.status, 201, "{}", r.body);
        seen.push(r.body.to_string());
        ids.push(r.body["id"].as_i64().expect("id"));
    }
    for id in &ids {
        let s = wait_status(&mut admin, *id, "online", Duration::from_secs(90)).await;
        assert!(s["facts"]["hostname"].is_string(), "{s}");
        assert!(
            s["host_key_fingerprint"]
                .as_str()
                .is_some_and(|f| f.starts_with("SHA256:")),
            "{s}"
        );
        let events: Vec<&str> = s["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        assert!(events.iter().any(|e| e.contains("pinned")), "{events:?}");
        assert!(
            events.iter().any(|e| e.contains("adopted in")) || s["status"] == "online",
            "{events:?}"
        );
    }
    println!("three nodes adopted in {:.1} s", t.elapsed().as_secs_f64());
    let r = admin
        .post(&format!("/api/servers/{}/ping", ids[1]), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 2. Wrong password: failed with a reason; the controller and the others are fine.
    let r = admin
        .post("/api/servers", json!({ "name": "wrong", "host": n1, "username": "root", "auth_type": "password", "password": "not-the-password" }))
        .await;
    let wrong = r.body["id"].as_i64().expect("id");
    let s = wait_status(&mut admin, wrong, "failed", Duration::from_secs(30)).await;
    assert!(
        s["status_detail"]
            .as_str()
            .unwrap_or("")
            .contains("authentication failed"),
        "{s}"
    );
    assert_eq!(admin.get("/healthz").await.status, 200);
    for id in &ids {
        assert_eq!(
            admin.get(&format!("/api/servers/{id}")).await.body["status"],
            "online"
        );
    }

    // 3. Unreachable host: failed within the configured timeout (4 s).
    let t = Instant::now();
    let nobody = format!("{}250", fleet.prefix);
    let r = admin
        .post("/api/servers", json!({ "name": "ghost", "host": nobody, "username": "root", "auth_type": "password", "password": "x" }))
        .await;
    let ghost = r.body["id"].as_i64().expect("id");
    let s = wait_status(&mut admin, ghost, "failed", Duration::from_secs(10)).await;
    let detail = s["status_detail"].as_str().unwrap_or("").to_owned();
    assert!(
        detail.contains("timed out") || detail.contains("unreachable"),
        "{s}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "failed after {:?}",
        t.elapsed()
    );

    // 5. A restarted node comes back by itself: a new session (`docker restart` returns
    // once the node runs again, so the offline moment in between may already be over).
    let before =
        admin.get(&format!("/api/servers/{}", ids[2])).await.body["connected_since"].clone();
    fleet.restart(&c3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin.get(&format!("/api/servers/{}", ids[2])).await.body;
        if s["status"] == "online" && s["connected_since"] != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new session after the restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 4. The node is rebuilt with new host keys at the same address: reinstall (with the
    // kept credentials) refuses it and names both fingerprints.
    let pinned = admin.get(&format!("/api/servers/{}", ids[2])).await.body["host_key_fingerprint"]
        .as_str()
        .expect("fp")
        .to_owned();
    fleet.remove(&c3);
    let (_, _) = fleet.node("locked", 13, &[("AUTHORIZED_KEY", &locked_pub)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = admin
        .post(&format!("/api/servers/{}/reinstall", ids[2]), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_status(&mut admin, ids[2], "failed", Duration::from_secs(30)).await;
    let detail = s["status_detail"].as_str().unwrap_or("").to_owned();
    assert!(detail.contains("host key mismatch"), "{s}");
    assert!(detail.contains(&pinned), "names the pinned key: {detail}");
    let presented = detail.split("presented ").nth(1).unwrap_or("");
    assert!(
        presented.starts_with("SHA256:") && !presented.starts_with(&pinned),
        "{detail}"
    );
    // Where kept credentials go is an admin's decision: a moderator cannot repoint the
    // server or forget its host key (then an admin's reinstall would log into the
    // moderator's host with the kept key).
    let mut moderator = mezzanine_tests::user(&mut admin, "mod-nodes", "moderator").await;
    for body in [
        json!({ "host": "10.99.0.1" }),
        json!({ "port": 2222 }),
        json!({ "forget_host_key": true }),
    ] {
        let r = moderator
            .patch(&format!("/api/servers/{}", ids[2]), body.clone())
            .await;
        assert_eq!(r.status, 403, "{body}: {}", r.body);
    }
    let r = moderator
        .patch(
            &format!("/api/servers/{}", ids[2]),
            json!({ "tags": ["web"] }),
        )
        .await;
    assert_eq!(r.status, 200, "a moderator still edits tags: {}", r.body);
    // An admin forgets the key: kept credentials are not sent to an unconfirmed host.
    let r = admin
        .patch(
            &format!("/api/servers/{}", ids[2]),
            json!({ "forget_host_key": true }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["keep_credentials"], true, "{}", r.body);
    let r = admin
        .post(&format!("/api/servers/{}/reinstall", ids[2]), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("host_key_fingerprint"), "{}", r.body);
    // Moving the server elsewhere drops the credentials kept for the old host.
    let r = admin
        .patch(&format!("/api/servers/{}", ids[2]), json!({ "port": 2222 }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["keep_credentials"], false, "{}", r.body);
    // Without kept credentials, reinstall needs them in the body.
    let r = admin
        .post(&format!("/api/servers/{}/reinstall", ids[0]), json!({}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // 7. Deleting a server stops its agent, which cannot attach again.
    let (c2, _) = (format!("{}-key", fleet.network), ());
    let r = admin.delete(&format!("/api/servers/{}", ids[1])).await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (running, _) = fleet.exec(&c2, "pgrep -x mezzanine-agent");
        if !running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent still running after delete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = fleet.exec(
        &c2,
        "rm -f /var/lib/mezzanine-agent/removed; timeout 20 /usr/local/bin/mezzanine-agent run --state-dir /var/lib/mezzanine-agent; echo exit=$?",
    );
    assert!(ok && out.contains("exit=78"), "{out}");
    assert!(out.contains("revoked"), "{out}");

    // 8. No password, key or passphrase in any response, the log or the database.
    let mut texts = seen;
    texts.push(admin.get("/api/servers").await.body.to_string());
    for id in ids.iter().chain([wrong, ghost].iter()) {
        texts.push(
            admin
                .get(&format!("/api/servers/{id}"))
                .await
                .body
                .to_string(),
        );
    }
    texts.push(admin.get("/api/audit?per_page=500").await.body.to_string());
    texts.push(ctl.proc.output());
    let db = stored_bytes(ctl.data.path());
    texts.push(String::from_utf8_lossy(&db).into_owned());
    let secret_lines: Vec<String> = [plain_key.as_str(), locked_key.as_str()]
        .iter()
        .flat_map(|k| {
            k.lines()
                .filter(|l| l.len() > 20 && !l.starts_with("-----"))
                .map(str::to_owned)
        })
        .collect();
    for text in &texts {
        for secret in [NODE_PASSWORD, PASSPHRASE, "not-the-password"] {
            assert!(
                !text.contains(secret),
                "found a secret ({secret}) in: {}",
                &text[..text.len().min(300)]
            );
        }
        for line in &secret_lines {
            assert!(!text.contains(line.as_str()), "found private key material");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_one_liner_pasted_in_a_node() {
    let fleet = Fleet::new();
    let (container, ip) = fleet.node("pasted", 21, &[]);
    let ctl = start_controller(&fleet);
    let mut admin = admin(&ctl).await;
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": "pasted", "host": ip, "auth_type": "manual" }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    let command = r.body["install_command"]
        .as_str()
        .expect("command")
        .to_owned();
    // Pasted into a root shell (a file run by sh stands in for the terminal), while a
    // poller records every process's arguments that hold a join token: a local user could
    // read those and enroll first.
    let (ok, out) = fleet.exec(
        &container,
        "setsid sh -c 'while [ ! -e /tmp/stop-watch ]; do cat /proc/[0-9]*/cmdline 2>/dev/null | tr \"\\000\" \" \" | grep -o \"MZ1\\.[A-Za-z0-9._-]*\" >> /tmp/seen-tokens; done; touch /tmp/watch-done' >/dev/null 2>&1 </dev/null &",
    );
    assert!(ok, "{out}");
    let paste = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(paste.path(), format!("{command}\n")).expect("write");
    let cp = std::process::Command::new("docker")
        .args([
            "cp",
            &paste.path().display().to_string(),
            &format!("{container}:/root/paste.sh"),
        ])
        .output()
        .expect("docker cp");
    assert!(cp.status.success(), "{cp:?}");
    let (ok, out) = fleet.exec(&container, "sh /root/paste.sh");
    assert!(ok, "{out}");
    let s = wait_status(&mut admin, id, "online", Duration::from_secs(30)).await;
    let (ok, seen) = fleet.exec(
        &container,
        "touch /tmp/stop-watch; while [ ! -e /tmp/watch-done ]; do sleep 0.1; done; cat /tmp/seen-tokens",
    );
    assert!(ok, "{seen}");
    assert!(
        seen.trim().is_empty(),
        "the token was visible in process arguments: {seen}"
    );
    assert_eq!(s["facts"]["hostname"], "pasted");
    assert!(
        s["facts"]["os"].as_str().unwrap_or("").contains("Debian"),
        "{s}"
    );
}
