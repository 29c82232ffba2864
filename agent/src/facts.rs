//! What the agent reports about its host: facts once per session, metrics with every
//! heartbeat. Read from /proc, /etc/os-release, statvfs and the Docker socket.

use mezzanine_proto::v1::{Facts, Heartbeat};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn meminfo(key: &str) -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// `(total, used)` bytes of the filesystem holding `/`.
fn disk() -> (u64, u64) {
    match rustix::fs::statvfs("/") {
        Ok(s) => {
            let total = s.f_blocks.saturating_mul(s.f_frsize);
            let free = s.f_bfree.saturating_mul(s.f_frsize);
            (total, total.saturating_sub(free))
        }
        Err(_) => (0, 0),
    }
}

fn os_name() -> String {
    let text = read("/etc/os-release");
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The engine's version from `GET /version` on its socket, if one answers quickly.
async fn docker_version(socket: &str) -> String {
    let probe = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let start = text.find("\"Version\":\"")? + "\"Version\":\"".len();
        let end = text[start..].find('"')? + start;
        Some(text[start..end].to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub async fn facts(docker_socket: &str) -> Facts {
    Facts {
        hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
        os: os_name(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: meminfo("MemTotal"),
        disk_bytes: disk().0,
        docker_version: docker_version(docker_socket).await,
    }
}

pub fn heartbeat() -> Heartbeat {
    let load = read("/proc/loadavg");
    let mut parts = load
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0));
    let total = meminfo("MemTotal");
    let available = meminfo("MemAvailable");
    let (disk_total, disk_used) = disk();
    let uptime = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Heartbeat {
        load1: parts.next().unwrap_or(0.0),
        load5: parts.next().unwrap_or(0.0),
        load15: parts.next().unwrap_or(0.0),
        memory_used_bytes: total.saturating_sub(available),
        memory_total_bytes: total,
        disk_used_bytes: disk_used,
        disk_total_bytes: disk_total,
        uptime_secs: uptime as u64,
    }
}
