//! The agent channel end to end: real `mezzanine-agent` processes enrolling against a
//! controller on loopback, attaching over mutual TLS, heartbeating, renewing, being
//! revoked, surviving controller restarts, and the install one-liner.

use mezzanine_tests::{add_server, attached_agent, server_count, wait_server, Agent, Controller};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn online(v: &Value) -> bool {
    v["status"] == "online"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_enroll_attach_report_facts_and_answer_commands() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut agents = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (id, token, _) = add_server(&mut admin, name).await;
        let agent = Agent::new();
        let (ok, out) = agent.enroll(&token);
        assert!(ok, "enroll {name}: {out}");
        assert!(out.contains(&format!("enrolled as server {id}")), "{out}");
        let key = agent.state_dir().join("key.pem");
        let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private key mode");
        agents.push((id, agent));
    }
    let procs: Vec<_> = agents.iter().map(|(_, a)| a.run(1)).collect();
    for (id, _) in &agents {
        let s = wait_server(
            &mut admin,
            *id,
            Duration::from_secs(10),
            "online with metrics",
            |v| online(v) && v["metrics"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        )
        .await;
        let facts = &s["facts"];
        assert!(!facts["hostname"].as_str().unwrap_or("").is_empty(), "{s}");
        assert!(facts["cpus"].as_u64().unwrap_or(0) >= 1, "{s}");
        assert!(facts["memory_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(facts["disk_bytes"].as_u64().unwrap_or(0) > 0, "{s}");
        assert_eq!(facts["arch"], std::env::consts::ARCH);
        assert!(
            s["metrics"]["load"]
                .as_array()
                .is_some_and(|l| l.len() == 3),
            "{s}"
        );
        assert_eq!(s["agent_version"], env!("CARGO_PKG_VERSION"));
        assert!(s["cert_expires_at"].is_string());
        let r = admin
            .post(&format!("/api/servers/{id}/ping"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body["rtt_ms"].as_f64().is_some_and(|ms| ms < 1000.0),
            "{}",
            r.body
        );
    }
    let listed = admin.get("/api/servers").await.body;
    assert_eq!(listed.as_array().expect("list").len(), 3);
    assert!(
        listed.as_array().expect("list").iter().all(online),
        "{listed}"
    );
    let first = listed[0]["last_seen"]
        .as_str()
        .expect("last_seen")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let again = admin
        .get(&format!("/api/servers/{}", agents[0].0))
        .await
        .body;
    assert_ne!(
        again["last_seen"].as_str().expect("last_seen"),
        first,
        "heartbeats move last_seen"
    );

    let status = agents[0].1.status();
    assert!(
        status.contains(&format!("server id:    {}", agents[0].0)),
        "{status}"
    );
    assert!(status.contains("connected"), "{status}");
    // A date a person can read, not a Unix timestamp.
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("certificate:  expires 20") && l.contains('T')),
        "{status}"
    );

    // Once offline, the last heartbeat comes from the database.
    procs[0].signal("KILL");
    let s = wait_server(
        &mut admin,
        agents[0].0,
        Duration::from_secs(5),
        "offline",
        |v| v["status"] == "offline",
    )
    .await;
    assert!(
        s["metrics"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{s}"
    );
    assert!(s["last_seen"].is_string(), "{s}");
    drop(procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_single_use_expiring_and_replaced() {
    let ctl = Controller::start_with(&["--join-token-ttl-secs", "2"]).await;
    let mut admin = ctl.admin().await;
    let (id, token, _) = add_server(&mut admin, "one").await;

    let (ok, out) = Agent::new().enroll("MZ1.garbage");
    assert!(!ok);
    assert!(out.contains("malformed join token"), "{out}");

    let mut forged = token.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == '0' { '1' } else { '0' });
    let (ok, out) = Agent::new().enroll(&forged);
    assert!(!ok);
    assert!(out.contains("not valid"), "{out}");

    let (ok, out) = Agent::new().enroll(&token);
    assert!(ok, "{out}");
    let cert_before =
        admin.get(&format!("/api/servers/{id}")).await.body["cert_expires_at"].clone();
    let (ok, out) = Agent::new().enroll(&token);
    assert!(!ok, "a token works once");
    assert!(out.contains("already used"), "{out}");
    assert_eq!(server_count(&mut admin).await, 1);
    assert_eq!(
        admin.get(&format!("/api/servers/{id}")).await.body["cert_expires_at"],
        cert_before
    );

    // The server has an agent now: a new token would replace it, which a moderator may
    // not do and an admin does only on purpose.
    let mut moderator = ctl.user(&mut admin, "mod-enroll", "moderator").await;
    let r = moderator
        .post(
            &format!("/api/servers/{id}/install-command"),
            json!({ "reenroll": true }),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin
        .post(&format!("/api/servers/{id}/install-command"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.error().contains("reenroll"), "{}", r.body);
    // A fresh install command makes the older unused one useless.
    let reenroll = json!({ "reenroll": true });
    let r = admin
        .post(
            &format!("/api/servers/{id}/install-command"),
            reenroll.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let older = r.body["token"].as_str().expect("token").to_owned();
    let r = admin
        .post(&format!("/api/servers/{id}/install-command"), reenroll)
        .await;
    let newer = r.body["token"].as_str().expect("token").to_owned();
    let (ok, out) = Agent::new().enroll(&older);
    assert!(!ok);
    assert!(out.contains("not valid"), "{out}");

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, out) = Agent::new().enroll(&newer);
    assert!(!ok);
    assert!(out.contains("expired"), "{out}");

    let r = admin
        .post("/api/servers/999/install-command", json!({}))
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_fails_before_anything_is_sent() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, token, _) = add_server(&mut admin, "pinned").await;
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[2] = "00".repeat(32);
    let (ok, out) = Agent::new().enroll(&parts.join("."));
    assert!(!ok);
    assert!(out.contains("pin"), "{out}");
    // Nothing reached the controller: the same token still enrolls.
    let s = admin.get(&format!("/api/servers/{id}")).await.body;
    assert_eq!(s["status"], "pending");
    let (ok, out) = Agent::new().enroll(&token);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_enroll_is_reachable_without_a_client_certificate() {
    use mezzanine_proto::v1::session_client::SessionClient;
    use mezzanine_proto::v1::{AgentMessage, RenewRequest};
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, token, _) = add_server(&mut admin, "probe").await;
    let agent = Agent::new();
    assert!(agent.enroll(&token).0);
    let state = mezzanine_agent::identity::StateDir::new(&agent.state_dir());
    let ident = state.load().expect("identity");
    let endpoint = format!("https://127.0.0.1:{}", ctl.agent_addr.port());

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ident.ca.clone()).expect("root");
    let mut anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let channel = mezzanine_agent::tls::connect(&endpoint, anonymous)
        .await
        .expect("connect");
    let mut client = SessionClient::new(channel);
    let err = client
        .renew(RenewRequest {
            csr_der: vec![1, 2, 3],
        })
        .await
        .expect_err("renew without a certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client
        .attach(tokio_stream_once(AgentMessage::default()))
        .await
        .expect_err("attach without a certificate");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // A certificate from another CA, even with a plausible identity, fails the handshake.
    let other_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, other_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://mezzanine/server/{id}")
            .try_into()
            .expect("uri"),
    )];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
    let mut forged = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("client auth");
    forged.alpn_protocols = vec![b"h2".to_vec()];
    let refused = match mezzanine_agent::tls::connect(&endpoint, forged).await {
        Err(_) => true,
        Ok(channel) => SessionClient::new(channel)
            .renew(RenewRequest { csr_der: vec![] })
            .await
            .is_err_and(|s| {
                s.code() != tonic::Code::Unauthenticated
                    && s.code() != tonic::Code::PermissionDenied
            }),
    };
    assert!(refused, "a foreign certificate must fail at the TLS layer");
    assert_eq!(
        admin.get(&format!("/api/servers/{id}")).await.body["status"],
        "enrolling"
    );
}

fn tokio_stream_once(
    msg: mezzanine_proto::v1::AgentMessage,
) -> impl tonic::codegen::tokio_stream::Stream<Item = mezzanine_proto::v1::AgentMessage> {
    tonic::codegen::tokio_stream::iter(vec![msg])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_server_stops_its_agent_and_refuses_its_certificate() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, agent, mut proc) = attached_agent(&mut admin, "doomed", 1).await;

    let started = Instant::now();
    let r = admin.delete(&format!("/api/servers/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let status = proc.wait_exit(Duration::from_secs(5));
    let took = started.elapsed();
    // The session is closed at once; this bound also covers the agent process noticing
    // and exiting on a loaded machine.
    assert!(took < Duration::from_secs(2), "agent gone after {took:?}");
    assert_eq!(status.code(), Some(78), "{}", proc.output());
    assert!(proc.output().contains("deleted"), "{}", proc.output());
    assert_eq!(admin.get(&format!("/api/servers/{id}")).await.status, 404);

    // It stays stopped, and without the marker its certificate is refused at the handshake.
    let mut again = agent.run(1);
    assert_eq!(again.wait_exit(Duration::from_secs(5)).code(), Some(78));
    std::fs::remove_file(agent.state_dir().join("removed")).expect("marker");
    let mut again = agent.run(1);
    assert_eq!(
        again.wait_exit(Duration::from_secs(10)).code(),
        Some(78),
        "{}",
        again.output()
    );
    assert!(
        again.output().contains("certificate revoked"),
        "{}",
        again.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_without_dropping_the_session() {
    let ctl = Controller::start_with(&["--agent-cert-ttl-secs", "4"]).await;
    let mut admin = ctl.admin().await;
    let (id, _agent, _proc) = attached_agent(&mut admin, "renewer", 1).await;
    let first = admin.get(&format!("/api/servers/{id}")).await.body;
    let since = first["connected_since"].clone();
    let mut expiries = vec![first["cert_expires_at"].clone()];
    let deadline = Instant::now() + Duration::from_secs(12);
    while expiries.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} renewals seen",
            expiries.len() - 1
        );
        let s = admin.get(&format!("/api/servers/{id}")).await.body;
        assert!(online(&s), "session dropped during renewal: {s}");
        assert_eq!(s["connected_since"], since, "same session throughout");
        if s["cert_expires_at"] != *expiries.last().expect("last") {
            expiries.push(s["cert_expires_at"].clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the first certificate's lifetime, commands still flow on the same session.
    let r = admin
        .post(&format!("/api/servers/{id}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_come_back_after_a_controller_restart() {
    let ctl = Controller::start().await;
    let (http, agents_addr) = (ctl.addr.to_string(), ctl.agent_addr.to_string());
    let mut admin = ctl.admin().await;
    let (id, _agent, mut proc) = attached_agent(&mut admin, "survivor", 1).await;

    let dir = ctl.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proc.child.try_wait().expect("wait").is_none(),
        "agent keeps retrying"
    );
    let restarted = Instant::now();
    let ctl = Controller::start_on(dir, &http, &agents_addr, &[]).await;
    let mut admin = mezzanine_tests::admin_login(&ctl.base).await;
    wait_server(
        &mut admin,
        id,
        Duration::from_secs(8),
        "online again",
        online,
    )
    .await;
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(8), "back online after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_on_stream_close_and_after_three_missed_heartbeats() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (a, ta, _) = add_server(&mut admin, "killed").await;
    let (b, tb, _) = add_server(&mut admin, "frozen").await;
    let (agent_a, agent_b) = (Agent::new(), Agent::new());
    assert!(agent_a.enroll(&ta).0 && agent_b.enroll(&tb).0);
    let proc_a = agent_a.run(1);
    let proc_b = agent_b.run(1);
    wait_server(&mut admin, a, Duration::from_secs(10), "online", online).await;
    wait_server(&mut admin, b, Duration::from_secs(10), "online", online).await;

    let t = Instant::now();
    proc_a.signal("KILL");
    let s = wait_server(&mut admin, a, Duration::from_secs(2), "offline", |v| {
        v["status"] == "offline"
    })
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "offline {:?} after the stream closed",
        t.elapsed()
    );
    assert!(s["status_detail"].is_string(), "{s}");

    let t = Instant::now();
    proc_b.signal("STOP");
    let s = wait_server(&mut admin, b, Duration::from_secs(20), "offline", |v| {
        v["status"] == "offline"
    })
    .await;
    let took = t.elapsed();
    // Three 1 s heartbeats missed: the last one arrived up to a second before the stop,
    // so the session ends 2–3 s later. Not before (that would be a false alarm); the
    // 20 s ceiling only catches a detector that never fires, on a loaded machine too.
    assert!(
        took >= Duration::from_millis(1500),
        "offline after {took:?}"
    );
    assert_eq!(s["status_detail"], "missed three heartbeats");
    let r = admin
        .post(&format!("/api/servers/{b}/ping"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body),
        (409, json!({ "error": "server offline" }))
    );
    proc_b.signal("CONT");
    wait_server(
        &mut admin,
        b,
        Duration::from_secs(10),
        "back online",
        online,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_offline_servers_fail_fast() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, _, _) = add_server(&mut admin, "never").await;
    let t = Instant::now();
    let r = admin
        .post(&format!("/api/servers/{id}/ping"), json!({}))
        .await;
    assert_eq!(
        (r.status, r.body),
        (409, json!({ "error": "server offline" }))
    );
    // Fast means "without waiting for the command timeout" (10 s): a generous ceiling
    // below it, not a latency measurement.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(
        admin.post("/api/servers/4242/ping", json!({})).await.status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_one_liner_installs_upgrades_and_uninstalls() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, _, command) = add_server(&mut admin, "pasted").await;
    let root = tempfile::tempdir().expect("root");
    // The installer starts the agent detached: whatever happens below, it ends with the
    // test (declared after `root`, so it runs before the directory goes).
    let _detached = KillOnDrop(root.path().join("var/lib/mezzanine-agent/agent.pid"));
    let run = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("MZ_ROOT", root.path())
            .output()
            .expect("sh")
    };
    let out = run(&command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("systemd not found: started the agent detached"),
        "{text}"
    );
    let bin = root.path().join("usr/local/bin/mezzanine-agent");
    assert!(bin.exists());
    let state = root.path().join("var/lib/mezzanine-agent");
    let pid1 = std::fs::read_to_string(state.join("agent.pid")).expect("pid");
    wait_server(&mut admin, id, Duration::from_secs(10), "online", online).await;

    // Pasting it again upgrades in place and keeps the identity (the token is spent).
    let out = run(&command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("keeping the existing identity"), "{text}");
    assert!(text.contains("agent upgraded"), "{text}");
    let pid2 = std::fs::read_to_string(state.join("agent.pid")).expect("pid");
    assert_ne!(pid1, pid2, "a new process runs the new binary");
    let s = wait_server(
        &mut admin,
        id,
        Duration::from_secs(10),
        "online again",
        online,
    )
    .await;
    assert_eq!(s["id"], id);
    assert_eq!(server_count(&mut admin).await, 1);

    // A tampered script is refused by the one-liner's checksum: the pinned digest is
    // changed in one digit (always, not only when it happens to hold a given digit).
    let digest = command
        .split(['"', ' '])
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("the command pins a SHA-256 digest");
    let flipped = if digest.starts_with('0') { "1" } else { "0" };
    let tampered = command.replace(digest, &format!("{flipped}{}", &digest[1..]));
    assert_ne!(tampered, command);
    assert!(!run(&tampered).status.success());

    let script = root.path().join("install.sh");
    let body = reqwest::get(format!("{}/install.sh", ctl.base))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    std::fs::write(&script, body).expect("write");
    let out = run(&format!("sh {} --uninstall", script.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bin.exists() && !state.exists());
    wait_server(&mut admin, id, Duration::from_secs(5), "offline", |v| {
        v["status"] == "offline"
    })
    .await;
    let pid: u32 = pid2.trim().parse().expect("pid");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fields_are_validated() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let cases = [
        (
            json!({ "name": "a", "host": "bad host;", "auth_type": "manual" }),
            "host",
        ),
        (
            json!({ "name": "-a", "host": "h", "auth_type": "manual" }),
            "name",
        ),
        (
            json!({ "name": "a", "host": "h", "auth_type": "manual", "tags": ["no spaces"] }),
            "tag",
        ),
        (
            json!({ "name": "a", "host": "h", "auth_type": "manual", "port": 70000 }),
            "port",
        ),
        (
            json!({ "name": "a", "host": "h", "auth_type": "telepathy" }),
            "auth_type",
        ),
        (
            json!({ "name": "a", "host": "h", "auth_type": "password" }),
            "SSH",
        ),
        (json!({ "name": "a", "host": "h" }), "auth_type"),
    ];
    for (body, needle) in cases {
        let r = admin.post("/api/servers", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.error().contains(needle), "{body}: {}", r.body);
    }
    let (id, _, _) = add_server(&mut admin, "web-1").await;
    let r = admin
        .post(
            "/api/servers",
            json!({ "name": "WEB-1", "host": "h", "auth_type": "manual" }),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let (other, _, _) = add_server(&mut admin, "web-2").await;
    let r = admin
        .patch(&format!("/api/servers/{other}"), json!({ "name": "web-1" }))
        .await;
    assert_eq!(r.status, 409);
    let r = admin
        .patch(&format!("/api/servers/{id}"), json!({ "port": 0 }))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("port"));
    let r = admin
        .patch(
            &format!("/api/servers/{id}"),
            json!({ "username": "-oProxyCommand=x" }),
        )
        .await;
    assert_eq!(r.status, 400);
    // A PATCH of nothing is a no-op that answers the server as it is.
    let r = admin.patch(&format!("/api/servers/{id}"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["id"], id);
    let r = admin
        .patch(
            &format!("/api/servers/{id}"),
            json!({ "name": "web-one", "tags": ["env=prod"], "host": "10.0.0.5", "port": 2222 }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["name"], "web-one");
    assert_eq!(r.body["server"]["tags"], json!(["env=prod"]));
    assert_eq!(r.body["server"]["port"], 2222);
    assert_eq!(admin.get("/api/servers/777").await.status, 404);
    assert_eq!(admin.get("/api/servers/abc").await.status, 400);
}

fn public_of(private_key: &std::path::Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(private_key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_keys_are_generated_delivered_and_rotated() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let mut viewer = ctl.user(&mut admin, "vera", "viewer").await;
    let (id, agent, _proc) = attached_agent(&mut admin, "builder", 1).await;

    let first = viewer.get(&format!("/api/servers/{id}/deploy-key")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let public = first.body["public_key"]
        .as_str()
        .expect("public")
        .to_owned();
    assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    assert!(public.ends_with(" mezzanine@builder"), "{public}");
    assert!(first.body["fingerprint"]
        .as_str()
        .is_some_and(|f| f.starts_with("SHA256:")));
    assert!(
        !first.body.to_string().contains("PRIVATE"),
        "no private key in the answer"
    );
    let again = admin.get(&format!("/api/servers/{id}/deploy-key")).await;
    assert_eq!(
        again.body["public_key"], first.body["public_key"],
        "stable once made"
    );

    // The agent holds the private half, readable only by root.
    let key_file = agent.state_dir().join("deploy_key");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !key_file.exists() {
        assert!(Instant::now() < deadline, "deploy key not delivered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mode = std::fs::metadata(&key_file)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let short: String = public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(public_of(&key_file), short);

    assert_eq!(
        viewer
            .post(&format!("/api/servers/{id}/deploy-key/rotate"), json!({}))
            .await
            .status,
        403
    );
    let rotated = admin
        .post(&format!("/api/servers/{id}/deploy-key/rotate"), json!({}))
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let new_public = rotated.body["public_key"]
        .as_str()
        .expect("public")
        .to_owned();
    assert_ne!(new_public, public);
    let new_short: String = new_public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let deadline = Instant::now() + Duration::from_secs(5);
    while public_of(&key_file) != new_short {
        assert!(Instant::now() < deadline, "rotated key not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(admin.get("/api/servers/999/deploy-key").await.status, 404);
}

/// A compromised agent that ignores its credit and floods a log stream has its session
/// ended once it is past what it was credited (plus a re-send's worth), instead of the
/// controller buffering everything it sends (1 GiB cost +950 MiB before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_ignores_its_credit_loses_its_session() {
    use mezzanine_proto::v1::session_client::SessionClient;
    use mezzanine_proto::v1::{
        agent_message, command, controller_message, reply, AgentMessage, Hello, LogChunk,
        LogStream, Reply,
    };
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, token, _) = add_server(&mut admin, "flooder").await;
    let agent = Agent::new();
    assert!(agent.enroll(&token).0);
    let state = mezzanine_agent::identity::StateDir::new(&agent.state_dir());
    let ident = state.load().expect("identity");
    let key = state.key().expect("key");
    let config = mezzanine_agent::tls::session_config(
        &ident.ca,
        ident.cert.clone(),
        mezzanine_agent::identity::StateDir::rustls_key(&key),
    )
    .expect("tls");
    let endpoint = format!("https://127.0.0.1:{}", ctl.agent_addr.port());
    let channel = mezzanine_agent::tls::connect(&endpoint, config)
        .await
        .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(64);
    tx.send(AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "flooder".into(),
            heartbeat_secs: 30,
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut inbound = SessionClient::new(channel)
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("attach")
        .into_inner();
    wait_server(&mut admin, id, Duration::from_secs(10), "online", |v| {
        v["status"] == "online"
    })
    .await;
    // A viewer opens a log stream and does not read it: no credit comes back.
    let viewer = admin.clone();
    let follow = tokio::spawn(async move {
        viewer
            .open(&format!(
                "/api/servers/{id}/docker/containers/web/logs?follow=true"
            ))
            .await
    });
    let request = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbound.message())
            .await
            .expect("a command in time")
            .expect("stream")
            .expect("message");
        if let Some(controller_message::Kind::Command(c)) = m.kind {
            if matches!(c.body, Some(command::Body::DockerLogs(_))) {
                break c.request_id;
            }
        }
    };
    // 64 MiB in 64 KiB chunks, without waiting for credit.
    let chunk = move |data: Vec<u8>| AgentMessage {
        kind: Some(agent_message::Kind::Reply(Reply {
            request_id: request,
            body: Some(reply::Body::LogChunk(LogChunk {
                stream: LogStream::Stdout as i32,
                data,
            })),
        })),
    };
    let flood = tokio::spawn(async move {
        if tx.send(chunk(Vec::new())).await.is_err() {
            return;
        }
        for _ in 0..1024 {
            if tx.send(chunk(vec![b'x'; 64 * 1024])).await.is_err() {
                return;
            }
        }
    });
    let s = wait_server(&mut admin, id, Duration::from_secs(30), "offline", |v| {
        v["status"] == "offline"
    })
    .await;
    assert!(
        s["status_detail"]
            .as_str()
            .is_some_and(|d| d.contains("more output than it was credited")),
        "{s}"
    );
    flood.abort();
    follow.abort();
}

/// Kills the process whose pid a file holds, when dropped (pass or fail).
struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A renewal retires the certificate it replaced once the agent shows it holds the new
/// one: a copy of the old key (taken from a backup, say) is refused at the handshake.
/// Renewal used to leave every old certificate valid until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_retires_the_one_it_replaced() {
    // Long enough that the copied certificate is still valid when it is tried (so what
    // refuses it is the revocation, not its expiry), short enough to renew in the test.
    let ctl = Controller::start_with(&["--agent-cert-ttl-secs", "30"]).await;
    let mut admin = ctl.admin().await;
    let (id, agent, mut proc) = attached_agent(&mut admin, "renewed", 1).await;
    let copy = Agent::new();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(agent.state_dir())
        .arg(copy.state_dir())
        .status()
        .expect("cp");
    assert!(status.success());
    // The agent renews (at 70% of 30 s) and saves the new certificate: its `cert.pem`
    // then differs from the copy's (only a renewal writes it).
    let cert = |dir: std::path::PathBuf| std::fs::read(dir.join("cert.pem")).unwrap_or_default();
    let copied = cert(copy.state_dir());
    assert!(!copied.is_empty(), "the copy holds a certificate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cert(agent.state_dir()) == copied {
        assert!(Instant::now() < deadline, "no renewal was saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent reconnects with its renewed certificate: a new session.
    let since = admin.get(&format!("/api/servers/{id}")).await.body["connected_since"].clone();
    proc.signal("KILL");
    let _ = proc.wait_exit(Duration::from_secs(5));
    let _proc = agent.run(1);
    wait_server(
        &mut admin,
        id,
        Duration::from_secs(20),
        "a new session",
        |v| v["status"] == "online" && v["connected_since"] != since,
    )
    .await;
    let mut old = copy.run(1);
    assert_eq!(
        old.wait_exit(Duration::from_secs(15)).code(),
        Some(78),
        "{}",
        old.output()
    );
    assert!(
        old.output().contains("certificate revoked"),
        "{}",
        old.output()
    );
}

/// Listening on every address without `--public-url`, the controller hands out install
/// commands for the address the panel was opened by, and an agent attaches through it
/// (an address its gateway certificate does not name: agents verify the pinned CA and
/// the gateway's fixed name). It used to hand out `http://0.0.0.0:…`, which no server can
/// reach, and its ready line said to open that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_commands_name_the_address_the_panel_was_opened_by() {
    let mut ctl = mezzanine_tests::ControllerProcess::start_on("0.0.0.0", false, &[]);
    let ready = ctl.proc.output();
    assert!(ready.contains("an address of this machine"), "{ready}");
    assert!(!ready.contains("open http://0.0.0.0"), "{ready}");
    let port = ctl.base.rsplit(':').next().expect("port").to_owned();
    // Another loopback address stands for the LAN address a browser would use.
    let base = format!("http://127.0.0.2:{port}");
    let mut admin = mezzanine_tests::first_admin(&base).await;
    let (id, token, command) = add_server(&mut admin, "lan").await;
    assert!(command.contains(&format!("{base}/install.sh")), "{command}");
    let script = reqwest::get(format!("{base}/install.sh"))
        .await
        .expect("install.sh")
        .text()
        .await
        .expect("body");
    assert!(
        script.contains(&base),
        "the script downloads from there too"
    );
    let agent = Agent::new();
    let (ok, out) = agent.enroll(&token);
    assert!(ok, "{out}");
    let proc = agent.run(1);
    wait_server(&mut admin, id, Duration::from_secs(15), "online", |v| {
        v["status"] == "online"
    })
    .await;
    proc.signal("KILL");
    ctl.proc.terminate(Duration::from_secs(10));
}

/// A controller known at two endpoints: the token carries both, in order; an agent
/// enrolls and attaches through the first, and when that one goes away it attaches through
/// the second by itself; an agent enrolling while the first is down uses the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_endpoint() {
    let relay = mezzanine_tests::Relay::start(0).await;
    // The second endpoint names no port: the agent listener's own.
    let endpoints = format!("https://127.0.0.1:{},https://127.0.0.1", relay.port);
    let ctl = mezzanine_tests::ControllerProcess::start(false, &["--agent-endpoint", &endpoints]);
    let mut admin = mezzanine_tests::first_admin(&ctl.base).await;
    let (id, token, _) = add_server(&mut admin, "twofold").await;
    let parsed = mezzanine_proto::token::parse(&token).expect("token");
    assert_eq!(parsed.endpoints.len(), 2, "{:?}", parsed.endpoints);
    assert_eq!(
        parsed.endpoints[0],
        format!("https://127.0.0.1:{}", relay.port)
    );
    let direct: u16 = parsed.endpoints[1]
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{:?}", parsed.endpoints));
    relay.set_target(direct);

    let agent = Agent::new();
    let (ok, out) = agent.enroll(&token);
    assert!(ok, "{out}");
    let status = agent.status();
    assert!(
        status.contains(&format!(
            "https://127.0.0.1:{}, https://127.0.0.1:{direct}",
            relay.port
        )),
        "{status}"
    );
    let _proc = agent.run(1);
    let first = wait_server(&mut admin, id, Duration::from_secs(30), "online", online).await;
    assert!(relay.open_connections() >= 1, "attached through the first");

    // The first endpoint vanishes: the agent attaches through the second by itself.
    relay.cut();
    let cut_at = Instant::now();
    let again = wait_server(
        &mut admin,
        id,
        Duration::from_secs(60),
        "online through the second endpoint",
        |v| online(v) && v["connected_since"] != first["connected_since"],
    )
    .await;
    println!(
        "attached through the second endpoint {:?} after the first went away",
        cut_at.elapsed()
    );
    assert_eq!(relay.open_connections(), 0, "{again}");
    let r = admin
        .post(&format!("/api/servers/{id}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Enrolling while the first endpoint is down: the second one takes it.
    let (id2, token2, _) = add_server(&mut admin, "latecomer").await;
    let late = Agent::new();
    let (ok, out) = late.enroll(&token2);
    assert!(ok, "{out}");
    let _late = late.run(1);
    wait_server(&mut admin, id2, Duration::from_secs(60), "online", online).await;

    // Bad endpoint lists are refused at start (`timeout`: one that started would serve).
    let scratch = tempfile::tempdir().expect("tmp");
    for bad in [
        "http://127.0.0.1:1",
        "https://127.0.0.1:1/path",
        "https://a:1,,https://b:1",
    ] {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(mezzanine_tests::binary("mezzanine", false))
            .args(["serve", "--agent-endpoint", bad, "--listen", "127.0.0.1:0"])
            .args(["--agent-listen", "127.0.0.1:0", "--data-dir"])
            .arg(scratch.path())
            .output()
            .expect("mezzanine");
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--agent-endpoint"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
