//! Agent failover benchmark (issue: several controllers). Real release `mezzanine-agent`
//! processes whose join token names two endpoints, two relays in front of one release
//! controller. Each round cuts the relay the agents are attached through — their
//! connections close, the endpoint stops answering, as when a controller dies — and
//! measures, per server, the time until the controller has registered its new session
//! (through the other relay; the controller's "agent attached" log line, read as it is
//! written).
//! Rounds alternate between the relays.
//!
//! Run: `cargo build --release --bins && cargo bench -p mezzanine-tests --bench failover`
//! (`BENCH_AGENTS`, default 200; each agent is a process of about 6 MiB).

use mezzanine_tests::{add_server, binary, first_admin, Agent, ControllerProcess, Relay};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn main() {
    mezzanine_tests::bench_main(bench());
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Every server's status.
async fn sessions(admin: &mut mezzanine_tests::Client) -> HashMap<i64, String> {
    let list = admin.get("/api/servers").await.body;
    list.as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            (
                s["id"].as_i64().expect("id"),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn bench() {
    let n: usize = std::env::var("BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut relays = [Relay::start(0).await, Relay::start(0).await];
    let ports = [relays[0].port, relays[1].port];
    let endpoints = format!(
        "https://127.0.0.1:{},https://127.0.0.1:{}",
        ports[0], ports[1]
    );
    // One address for the whole fleet: lift the per-address cap on connections that have
    // not presented a certificate yet (a reconnect burst is all of them at once).
    let ctl = ControllerProcess::start(
        true,
        &[
            "--agent-endpoint",
            &endpoints,
            "--agent-anonymous-per-ip",
            "100000",
        ],
    );
    let agent_port: u16 = ctl
        .proc
        .ready_field("agent_listen")
        .and_then(|a| a.rsplit(':').next().and_then(|p| p.parse().ok()))
        .expect("agent port");
    for r in &relays {
        r.set_target(agent_port);
    }
    let mut admin = first_admin(&ctl.base).await;
    let mut agents = Vec::new();
    let mut procs = Vec::new();
    for i in 0..n {
        let (_, token, _) = add_server(&mut admin, &format!("fo-{i}")).await;
        let mut agent = Agent::new();
        agent.bin = binary("mezzanine-agent", true);
        let (ok, out) = agent.enroll(&token);
        assert!(ok, "{out}");
        procs.push(agent.run(10));
        agents.push(agent);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sessions(&mut admin)
        .await
        .values()
        .any(|status| status != "online")
    {
        assert!(Instant::now() < deadline, "not all online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{n} agents online; through the first relay: {}",
        relays[0].open_connections()
    );

    let mut all = Vec::new();
    for round in 0..4usize {
        let cut = round % 2;
        // Everyone is attached through the relay about to be cut.
        let deadline = Instant::now() + Duration::from_secs(60);
        while relays[cut].open_connections() < n {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {n} through relay {cut}",
                relays[cut].open_connections()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Sessions older than 10 s reset the agent's backoff; a controller that dies after
        // serving a while is the case measured (a flapping one meets growing backoff).
        tokio::time::sleep(Duration::from_secs(12)).await;
        // The controller logs each attach as it registers the session ("agent attached
        // server_id=N"); the time a line is read is the time that server is online again.
        let seen_lines = ctl.proc.lines.lock().expect("lines").len();
        relays[cut].cut();
        let started = Instant::now();
        let mut back: HashMap<i64, f64> = HashMap::new();
        let mut read = seen_lines;
        while back.len() < n {
            if started.elapsed() > Duration::from_secs(120) {
                let tail = {
                    let lines = ctl.proc.lines.lock().expect("lines");
                    lines[lines.len().saturating_sub(10)..].join("\n")
                };
                let mut statuses: HashMap<String, usize> = HashMap::new();
                for s in sessions(&mut admin).await.into_values() {
                    *statuses.entry(s).or_default() += 1;
                }
                panic!(
                    "round {round}: {} of {n} back; statuses {statuses:?}; log tail:\n{tail}",
                    back.len()
                );
            }
            let at = started.elapsed().as_secs_f64();
            let fresh: Vec<String> = {
                let lines = ctl.proc.lines.lock().expect("lines");
                let fresh = lines[read..].to_vec();
                read = lines.len();
                fresh
            };
            for l in fresh.iter().filter(|l| l.contains("agent attached")) {
                // JSON lines (`"server_id":12`) or plain ones (`server_id=12`).
                let id = l
                    .split("\"server_id\":")
                    .nth(1)
                    .or_else(|| l.split("server_id=").nth(1))
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse::<i64>().ok());
                if let Some(id) = id {
                    back.entry(id).or_insert(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // And the API agrees: every server online.
        let now = sessions(&mut admin).await;
        assert!(
            now.values().all(|status| status == "online"),
            "round {round}: {now:?}"
        );
        let mut secs: Vec<f64> = back.into_values().collect();
        secs.sort_by(f64::total_cmp);
        println!(
            "round {round} (cut relay {cut}): {n} online again — p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            pct(&secs, 0.5),
            pct(&secs, 0.99),
            secs[secs.len() - 1]
        );
        all.extend(secs);
        // The cut relay comes back on its port for the next round's agents to move to.
        tokio::time::sleep(Duration::from_millis(500)).await;
        relays[cut] = Relay::start(ports[cut]).await;
        relays[cut].set_target(agent_port);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "all rounds ({} reattachments): p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        all.len(),
        pct(&all, 0.5),
        pct(&all, 0.99),
        all[all.len() - 1]
    );
    drop(procs);
}
