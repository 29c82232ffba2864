//! Docker through the agent, on nodes that each run their own engine (Debian's docker.io
//! inside the node container), with workload images built from Debian's static busybox
//! and update checks against Debian's `docker-registry` on the fleet network.

use mezzanine_tests::token::TokenService;
use mezzanine_tests::{
    add_server, first_admin, wait_status, workload_image_tar, Agent, Client, Controller, Fleet,
    LocalRegistry, RegistryAuth,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NODE_PASSWORD: &str = "docker-node-password-3d2a";

fn by_name<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| {
        c["names"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == name))
    })
}

/// Reads an SSE response until `done` says so (or `within` passes); returns the events
/// as (event, data) pairs.
async fn read_events(
    resp: &mut reqwest::Response,
    within: Duration,
    mut done: impl FnMut(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + within;
    let mut buf = String::new();
    let mut events: Vec<(String, String)> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "events so far: {events:?}");
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event in time; so far: {events:?}"))
            .expect("read SSE");
        let Some(chunk) = chunk else {
            return events;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            if !data.is_empty() {
                events.push((event, data.join("\n")));
            }
        }
        if done(&events) {
            return events;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_on_nodes_end_to_end() {
    let fleet = Fleet::new();
    let images = tempfile::tempdir().expect("tmp");
    let v1 = workload_image_tar(images.path(), "v1");
    let v2 = workload_image_tar(images.path(), "v2");
    let (dk1, ip1) = fleet.docker_node("dk1", 11, &[("ROOT_PASSWORD", NODE_PASSWORD)]);
    let (dk2, ip2) = fleet.docker_node("dk2", 12, &[("ROOT_PASSWORD", NODE_PASSWORD)]);
    // Images are checked every two seconds, so the watch's notification is seen here.
    let controller = mezzanine_tests::fleet_controller_with(
        &fleet,
        false,
        &["--image-check-interval-secs", "2"],
    );
    let (ctl, base) = (&controller.proc, controller.base.clone());
    let mut admin = first_admin(&base).await;
    let (rx, seen) = crate::notify::receiver().await;
    let r = admin
        .post(
            "/api/notifiers",
            json!({ "name": "images", "kind": "webhook", "url": format!("{rx}/images"),
                    "events": ["image.update_available"] }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut moderator = {
        let r = admin
            .post(
                "/api/users",
                json!({ "username": "mod", "password": "moderator-pass-1", "role": "moderator" }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let mut c = Client::new(&base);
        assert_eq!(c.login("mod", "moderator-pass-1", None).await.status, 200);
        c
    };
    let mut viewer = {
        let r = admin
            .post(
                "/api/users",
                json!({ "username": "view", "password": "viewer-pass-12", "role": "viewer" }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let mut c = Client::new(&base);
        assert_eq!(c.login("view", "viewer-pass-12", None).await.status, 200);
        c
    };
    let s1 = mezzanine_tests::adopt(&mut admin, "dk1", &ip1, NODE_PASSWORD).await;
    let s2 = mezzanine_tests::adopt(&mut admin, "dk2", &ip2, NODE_PASSWORD).await;
    for id in [s1, s2] {
        let s = wait_status(&mut admin, id, "online", Duration::from_secs(90)).await;
        assert!(
            s["facts"]["docker_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "facts carry the engine version: {s}"
        );
    }

    // Workloads on dk1: a web server, a process writing to stdout and stderr, a stopped one.
    fleet.load_image(&dk1, &v1, "web:v1");
    let (ok, out) = fleet.exec(
        &dk1,
        "docker run -d --name web -p 8080:80 --label tier=front web:v1 \
         && docker run -d --name talker web:v1 sh -c 'i=0; while true; do echo out-$i; echo err-$i >&2; i=$((i+1)); sleep 0.1; done' \
         && docker create --name idle web:v1",
    );
    assert!(ok, "{out}");

    // 1. List, with stopped containers by default and without them on request.
    let path = format!("/api/servers/{s1}/docker/containers");
    let r = viewer.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let web = by_name(&r.body, "web").expect("web listed");
    assert_eq!(web["state"], "running", "{web}");
    assert_eq!(web["image"], "web:v1");
    assert!(web["id"].as_str().is_some_and(|i| i.len() == 64), "{web}");
    assert!(web["image_id"]
        .as_str()
        .is_some_and(|i| i.starts_with("sha256:")));
    assert_eq!(web["labels"]["tier"], "front");
    assert!(
        web["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["private_port"] == 80 && p["public_port"] == 8080 && p["type"] == "tcp"),
        "{web}"
    );
    assert!(web["created"].as_str().is_some_and(|c| c.ends_with('Z')));
    assert_eq!(
        by_name(&r.body, "idle").expect("idle listed")["state"],
        "created"
    );
    let running = viewer.get(&format!("{path}?all=false")).await;
    assert_eq!(running.status, 200);
    assert!(by_name(&running.body, "idle").is_none(), "{}", running.body);
    assert!(by_name(&running.body, "talker").is_some());
    // dk2's engine has its own (empty) set: each server's containers are its own.
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/containers"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!([]));

    // 2. Actions with every role.
    let act = |a: &str, c: &str| format!("/api/servers/{s1}/docker/containers/{c}/{a}");
    for a in ["start", "stop", "restart", "remove"] {
        let r = viewer.post(&act(a, "web"), json!({})).await;
        assert_eq!(r.status, 403, "viewer {a}: {}", r.body);
    }
    let r = moderator
        .post(&act("stop", "web"), json!({ "timeout_secs": 1 }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["changed"].clone(), r.body["state"].clone()),
        (json!(true), json!("exited"))
    );
    let r = moderator.post(&act("stop", "web"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["changed"], false);
    assert_eq!(r.body["detail"], "already stopped");
    let r = moderator.post(&act("start", "web"), json!({})).await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (200, json!("running")),
        "{}",
        r.body
    );
    let r = moderator.post(&act("start", "web"), json!({})).await;
    assert_eq!(
        (r.body["changed"].clone(), r.body["detail"].clone()),
        (json!(false), json!("already running"))
    );
    let r = moderator
        .post(&act("restart", "web"), json!({ "timeout_secs": 1 }))
        .await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (200, json!("running")),
        "{}",
        r.body
    );
    let (ok, out) = fleet.exec(&dk1, "curl -fsS http://127.0.0.1:8080/");
    assert!(
        ok && out.trim() == "v1",
        "the restarted web server answers: {out}"
    );
    let r = moderator.post(&act("remove", "idle"), json!({})).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["required"], "admin");
    let r = admin.post(&act("remove", "web"), json!({})).await;
    assert_eq!(
        r.status, 409,
        "a running container is not removed without force: {}",
        r.body
    );
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("running")),
        "{}",
        r.body
    );
    let r = admin.post(&act("remove", "idle"), json!({})).await;
    assert_eq!(
        (r.status, r.body["detail"].clone()),
        (200, json!("removed")),
        "{}",
        r.body
    );
    let r = admin.post(&act("remove", "idle"), json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.body["error"].as_str().is_some_and(|e| e.contains("idle")),
        "names it: {}",
        r.body
    );
    let r = moderator.post(&act("explode", "web"), json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("start, stop, restart, remove")));
    let r = moderator
        .post(&act("stop", "no;such$(thing)"), json!({}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = moderator
        .post(&act("stop", "web"), json!({ "timeout_secs": "soon" }))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A name must start alphanumeric: `.` and `..` used to reach the engine's URL and
    // break the agent's engine client (HTTP clients fold those two in the path, so the
    // test sends other names the rule refuses for the same reason).
    for name in [".hidden", "...", "-x"] {
        let r = moderator.post(&act("stop", name), json!({})).await;
        assert_eq!(r.status, 400, "{name}: {}", r.body);
        assert!(
            r.error().contains("not a container id or name"),
            "{}",
            r.body
        );
    }
    let r = viewer.get("/api/servers/999/docker/containers").await;
    assert_eq!(r.status, 404, "{}", r.body);

    // 3. Logs: tail, then follow until the container stops.
    let logs = format!("/api/servers/{s1}/docker/containers/talker/logs");
    let r = viewer.get(&format!("{logs}?tail=6")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lines = r.body["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 6, "{}", r.body);
    assert!(lines
        .iter()
        .any(|l| l["stream"] == "stdout"
            && l["line"].as_str().is_some_and(|t| t.starts_with("out-"))));
    assert!(lines
        .iter()
        .any(|l| l["stream"] == "stderr"
            && l["line"].as_str().is_some_and(|t| t.starts_with("err-"))));
    assert_eq!(r.body["truncated"], false);
    let r = viewer.get(&format!("{logs}?tail=soon")).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // A whole log of 400,000 short lines costs the controller about its size, not a JSON
    // value per line (~700 bytes each: four such answers at once used to take ~1 GiB).
    let (ok, out) = fleet.exec(
        &dk1,
        "docker run --name chatter web:v1 seq 1 400000 >/dev/null",
    );
    assert!(ok, "{out}");
    let peak_before = mezzanine_tests::memory_mib(ctl.pid(), "VmHWM");
    let chatter = format!("/api/servers/{s1}/docker/containers/chatter/logs?tail=all");
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut c = viewer.clone();
        let chatter = chatter.clone();
        // Four 400,000-line answers at once on a loaded 2-core machine can take longer
        // than the client's usual 30 s: the bound here is for a hung controller only.
        readers.push(tokio::spawn(async move {
            let req = c
                .request(reqwest::Method::GET, &chatter)
                .timeout(Duration::from_secs(300));
            c.raw(req).await
        }));
    }
    for r in readers {
        let r = r.await.expect("join");
        assert_eq!(r.status, 200, "{}", r.body);
        let lines = r.body["lines"].as_array().expect("lines");
        assert_eq!(lines.len(), 400_000);
        assert_eq!(lines[0]["line"], "1");
        assert_eq!(lines[399_999]["line"], "400000");
        assert_eq!(r.body["truncated"], false);
    }
    let grown = mezzanine_tests::memory_mib(ctl.pid(), "VmHWM") - peak_before;
    assert!(
        grown < 150.0,
        "four whole logs took the controller's peak up {grown:.0} MiB"
    );
    let r = viewer
        .get(&format!("/api/servers/{s1}/docker/containers/ghost/logs"))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    let mut resp = viewer.open(&format!("{logs}?follow=true&tail=2")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ct"),
        "text/event-stream"
    );
    let events = read_events(&mut resp, Duration::from_secs(20), |ev| {
        ev.iter().filter(|(e, _)| e == "stdout").count() >= 5
            && ev.iter().any(|(e, _)| e == "stderr")
    })
    .await;
    assert!(
        events.iter().all(|(e, d)| match e.as_str() {
            "stdout" => d.starts_with("out-"),
            "stderr" => d.starts_with("err-"),
            _ => false,
        }),
        "{events:?}"
    );
    let r = moderator
        .post(&act("stop", "talker"), json!({ "timeout_secs": 1 }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = read_events(&mut resp, Duration::from_secs(20), |ev| {
        ev.iter().any(|(e, _)| e == "end" || e == "error")
    })
    .await;
    let last = events.last().expect("an end event");
    assert_eq!(last.0, "end", "{events:?}");
    assert!(last.1.contains("container stopped"), "{last:?}");
    assert!(
        resp.chunk().await.expect("eof").is_none(),
        "the stream ends after `end`"
    );

    // A follower that leaves: the agent stops streaming, and the session carries on.
    assert_eq!(
        moderator
            .post(&act("start", "talker"), json!({}))
            .await
            .status,
        200
    );
    for _ in 0..3 {
        let mut resp = viewer.open(&format!("{logs}?follow=true")).await;
        read_events(&mut resp, Duration::from_secs(20), |ev| !ev.is_empty()).await;
        drop(resp);
    }
    let r = viewer
        .post(&format!("/api/servers/{s1}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 403);
    let r = moderator
        .post(&format!("/api/servers/{s1}/ping"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // 4. Image update checks against a real registry (anonymous, then basic auth).
    let open_reg = LocalRegistry::start(&fleet, RegistryAuth::Anonymous);
    let reg = &open_reg.addr;
    let (ok, out) = fleet.exec(
        &dk1,
        &format!(
            "docker tag web:v1 {reg}/app:stable && docker push -q {reg}/app:stable \
             && docker run -d --name app {reg}/app:stable"
        ),
    );
    assert!(ok, "{out}");
    fleet.load_image(&dk1, &v2, "local:only");
    fleet.load_image(&dk2, &v2, "web:v2");
    let (ok, out) = fleet.exec(
        &dk2,
        &format!("docker tag web:v2 {reg}/app:stable && docker push -q {reg}/app:stable"),
    );
    assert!(ok, "{out}");
    let (ok, new_digest) = fleet.exec(
        &dk2,
        &format!("docker image inspect --format '{{{{index .RepoDigests 0}}}}' {reg}/app:stable"),
    );
    assert!(ok, "{new_digest}");
    let new_digest = new_digest
        .trim()
        .split('@')
        .nth(1)
        .expect("digest")
        .to_owned();

    // The watch found dk1's image outdated on its own and said so, once.
    let (_, news) = crate::notify::received(
        &seen,
        "/images",
        "image.update_available",
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(news["server"], "dk1", "{news}");
    assert_eq!(news["server_id"], s1, "{news}");
    assert_eq!(news["image"], format!("{reg}/app:stable"), "{news}");
    assert_eq!(news["remote_digest"], new_digest.as_str(), "{news}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let announced = seen
        .lock()
        .expect("seen")
        .iter()
        .filter(|(p, ..)| p == "/images")
        .count();
    assert_eq!(announced, 1, "each update is news once");

    let image_of = |list: &Value, tag: &str| -> Value {
        list.as_array()
            .expect("images")
            .iter()
            .find(|i| {
                i["repo_tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == tag))
            })
            .cloned()
            .unwrap_or_else(|| panic!("{tag} not in {list}"))
    };
    let tag = format!("{reg}/app:stable");
    let r = viewer
        .get(&format!("/api/servers/{s1}/docker/images?check=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let old = image_of(&r.body, &tag);
    assert_eq!(old["update"]["status"], "update_available", "{old}");
    assert_eq!(old["update"]["remote_digest"], new_digest.as_str(), "{old}");
    assert!(old["update"]["checked_at"].is_string());
    assert!(old["size"].as_i64().is_some_and(|s| s > 0));
    let local = image_of(&r.body, "local:only");
    assert_eq!(local["update"]["status"], "unknown", "{local}");
    assert!(
        local["update"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("never pulled")),
        "{local}"
    );
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = image_of(&r.body, &tag);
    assert_eq!(new["update"]["status"], "up_to_date", "{new}");
    assert_eq!(new["update"]["remote_digest"], new_digest.as_str());
    // Cached: a plain listing answers from the last check.
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images"))
        .await;
    assert_eq!(
        image_of(&r.body, &tag)["update"]["checked_at"],
        new["update"]["checked_at"]
    );

    let locked = LocalRegistry::start(&fleet, RegistryAuth::Basic("ci", "registry-pass-5e"));
    let reg2 = &locked.addr;
    fleet.load_image(&dk2, &v1, "secret:1");
    let (ok, out) = fleet.exec(
        &dk2,
        &format!(
            "echo registry-pass-5e | docker login -u ci --password-stdin {reg2} >/dev/null \
             && docker tag secret:1 {reg2}/private:1 && docker push -q {reg2}/private:1"
        ),
    );
    assert!(ok, "{out}");
    let tag2 = format!("{reg2}/private:1");
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    let private = image_of(&r.body, &tag2);
    assert_eq!(private["update"]["status"], "error", "{private}");
    assert!(
        private["update"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/api/registries/")),
        "says how to add credentials: {private}"
    );
    let r = moderator
        .raw(
            moderator
                .request(reqwest::Method::PUT, &format!("/api/registries/{reg2}"))
                .json(&json!({ "username": "ci", "password": "registry-pass-5e" })),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin
        .raw(
            admin
                .request(reqwest::Method::PUT, &format!("/api/registries/{reg2}"))
                .json(&json!({ "username": "ci", "password": "wrong-password" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    assert_eq!(
        image_of(&r.body, &tag2)["update"]["status"],
        "error",
        "a wrong password is an error"
    );
    let r = admin
        .raw(
            admin
                .request(reqwest::Method::PUT, &format!("/api/registries/{reg2}"))
                .json(&json!({ "username": "ci", "password": "registry-pass-5e" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = admin.get("/api/registries").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["host"], reg2.as_str());
    assert_eq!(r.body[0]["username"], "ci");
    assert!(
        !r.body.to_string().contains("registry-pass-5e"),
        "never the password"
    );
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    let private = image_of(&r.body, &tag2);
    assert_eq!(private["update"]["status"], "up_to_date", "{private}");

    // The bearer-token exchange, as Docker Hub and GHCR do it: a public repository
    // anonymously, a private one only with the account's credentials.
    let tokens = TokenService::start(&fleet.gateway, "robot", "token-pass-81").await;
    let token_reg = LocalRegistry::start(&fleet, RegistryAuth::Token(&tokens));
    let reg3 = &token_reg.addr;
    fleet.load_image(&dk2, &v1, "pub:1");
    fleet.load_image(&dk2, &v2, "priv:1");
    let (ok, out) = fleet.exec(
        &dk2,
        &format!(
            "echo token-pass-81 | docker login -u robot --password-stdin {reg3} >/dev/null \
             && docker tag pub:1 {reg3}/team/app:1 && docker push -q {reg3}/team/app:1 \
             && docker tag priv:1 {reg3}/private/app:1 && docker push -q {reg3}/private/app:1"
        ),
    );
    assert!(ok, "{out}");
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    let public = image_of(&r.body, &format!("{reg3}/team/app:1"));
    assert_eq!(
        public["update"]["status"], "up_to_date",
        "anonymous bearer token: {public}"
    );
    let private = image_of(&r.body, &format!("{reg3}/private/app:1"));
    assert_eq!(private["update"]["status"], "error", "{private}");
    let r = admin
        .raw(
            admin
                .request(reqwest::Method::PUT, &format!("/api/registries/{reg3}"))
                .json(&json!({ "username": "robot", "password": "token-pass-81" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/images?check=true"))
        .await;
    let private = image_of(&r.body, &format!("{reg3}/private/app:1"));
    assert_eq!(
        private["update"]["status"], "up_to_date",
        "token for the account: {private}"
    );

    // 5. An engine that hangs: a bounded 504. An engine that is gone: 409.
    let (ok, out) = fleet.exec(&dk2, "pkill -STOP -x dockerd");
    assert!(ok, "{out}");
    let t = Instant::now();
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/containers"))
        .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        t.elapsed()
    );
    fleet.exec(&dk2, "pkill -CONT -x dockerd");
    let (ok, out) = fleet.exec(
        &dk2,
        "pkill -TERM -x dockerd; for i in $(seq 100); do pgrep -x dockerd >/dev/null || exit 0; sleep 0.1; done; exit 1",
    );
    assert!(ok, "dockerd stopped: {out}");
    let r = viewer
        .get(&format!("/api/servers/{s2}/docker/containers"))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Docker is not available")),
        "{}",
        r.body
    );
    let r = admin
        .post(
            &format!("/api/servers/{s2}/docker/containers/x/start"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // 6. An offline server answers 409 `server offline` at once.
    let (ok, out) = fleet.exec(&dk1, "pkill -KILL -x mezzanine-agent");
    assert!(ok, "{out}");
    wait_status(&mut admin, s1, "offline", Duration::from_secs(10)).await;
    for p in [
        format!("/api/servers/{s1}/docker/containers"),
        format!("/api/servers/{s1}/docker/images"),
        format!("/api/servers/{s1}/docker/containers/talker/logs?follow=true"),
    ] {
        let t = Instant::now();
        let r = viewer.get(&p).await;
        assert_eq!(r.status, 409, "{p}: {}", r.body);
        assert_eq!(r.body["error"], "server offline");
        // Without waiting for the Docker timeout (4 s here): a ceiling, not a latency.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{p}: {:?}",
            t.elapsed()
        );
    }
}

/// A server with no engine at all says so in its facts and the Docker routes answer 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_docker() {
    let ctl = Controller::start().await;
    let mut admin = ctl.admin().await;
    let (id, token, _) = add_server(&mut admin, "bare").await;
    let agent = Agent::new();
    let (ok, out) = agent.enroll(&token);
    assert!(ok, "{out}");
    let missing = agent.state_dir().join("no-docker.sock");
    let _proc = agent.run_with(1, &["--docker-socket", missing.to_str().expect("utf8")]);
    let s = mezzanine_tests::wait_server(&mut admin, id, Duration::from_secs(10), "online", |v| {
        v["status"] == "online"
    })
    .await;
    assert!(s["facts"]["docker_version"].is_null(), "{s}");
    for p in ["containers", "images", "containers/web/logs"] {
        let r = admin.get(&format!("/api/servers/{id}/docker/{p}")).await;
        assert_eq!(r.status, 409, "{p}: {}", r.body);
        assert!(
            r.body["error"]
                .as_str()
                .is_some_and(|e| e.contains("no Docker engine on this server")),
            "{p}: {}",
            r.body
        );
    }
}
