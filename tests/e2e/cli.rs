//! The `mezzanine` binary as an operator meets it: help, bad configuration (exit 64),
//! first start and restart on the same data dir, the ready line, and graceful shutdown.

use mezzanine_tests::{binary, Client, Process, ADMIN_PASSWORD};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

#[test]
fn help_documents_serve_and_its_flags() {
    let bin = binary("mezzanine", false);
    let out = Command::new(&bin).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve"), "{text}");
    let out = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--data-dir",
        "--database-url",
        "--public-url",
        "MEZZANINE_LISTEN",
    ] {
        assert!(text.contains(flag), "missing {flag} in:\n{text}");
    }
}

#[test]
fn bad_configuration_exits_64_with_a_message() {
    let bin = binary("mezzanine", false);
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("d");
    let data = data.to_str().expect("utf8");
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--public-url", "ftp://x", "--data-dir", data],
            "public-url",
        ),
        (
            &[
                "serve",
                "--database-url",
                "mysql://u:hunter2@db/x",
                "--data-dir",
                data,
            ],
            "postgres://",
        ),
        (
            &["serve", "--database-url", "mysql://db", "--data-dir", data],
            "database-url",
        ),
        (&["serve", "--listen", "not-an-address"], "listen"),
        (
            &["serve", "--max-body-bytes", "10", "--data-dir", data],
            "max-body-bytes",
        ),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = Command::new(&bin).args(*args).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("hunter2"),
            "a password is never echoed: {err}"
        );
    }
}

#[test]
fn world_readable_master_key_is_refused() {
    let bin = binary("mezzanine", false);
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("key");
    std::fs::write(&key, [1u8; 32]).expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let data = dir.path().join("d");
    let out = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--master-key-file")
        .arg(&key)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[tokio::test]
async fn first_start_creates_state_and_restart_reuses_it() {
    let bin = binary("mezzanine", false);
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("state");
    // Port 0 for agents too: the default 7443 would be shared with the other tests.
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("utf8"),
    ];

    let mut p = Process::spawn(&bin, &args);
    let addr = p.wait_ready(Duration::from_secs(10));
    assert!(
        p.output()
            .contains(&format!("open http://{}", "127.0.0.1:0"))
            || p.output().contains("open http://"),
        "{}",
        p.output()
    );
    let key_path = data.join("master.key");
    let mode = std::fs::metadata(&key_path)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read(&key_path).expect("key");
    assert_eq!(key.len(), 32);
    let dir_mode = std::fs::metadata(&data).expect("dir").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);

    let mut c = Client::new(&format!("http://{addr}"));
    let r = c
        .post(
            "/api/auth/setup",
            json!({ "username": "admin", "password": ADMIN_PASSWORD }),
        )
        .await;
    assert_eq!(r.status, 201);
    let status = p.terminate(Duration::from_secs(10));
    assert!(status.success(), "graceful exit: {status}\n{}", p.output());
    assert!(p.output().contains("shutting down"));

    let mut p = Process::spawn(&bin, &args);
    let addr = p.wait_ready(Duration::from_secs(10));
    assert_eq!(std::fs::read(&key_path).expect("key"), key, "key reused");
    let mut c = Client::new(&format!("http://{addr}"));
    assert_eq!(c.get("/api/auth/state").await.body["needs_setup"], false);
    assert_eq!(c.login("admin", ADMIN_PASSWORD, None).await.status, 200);
    assert!(
        !p.output().contains(ADMIN_PASSWORD),
        "log must not hold the password"
    );
    assert!(p.terminate(Duration::from_secs(10)).success());

    // A data dir left readable by others (0755) is closed again at start, with a warning.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut p = Process::spawn(&bin, &args);
    p.wait_ready(Duration::from_secs(10));
    let dir_mode = std::fs::metadata(&data).expect("dir").permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    assert!(
        p.output().contains("readable by other users"),
        "{}",
        p.output()
    );
    assert!(p.terminate(Duration::from_secs(10)).success());
}
