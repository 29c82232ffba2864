//! The API contract: schemathesis generates requests from `GET /api/openapi.json` for every
//! operation and checks every answer against the document (status, body schema, content
//! type, headers), that no answer is a 5xx, that schema-valid input is accepted and
//! schema-invalid input refused, and that auth is not ignored. Configuration and the few
//! documented exceptions are in `tests/contract/schemathesis.toml`; `tests/run` installs the
//! pinned schemathesis into `target/contract-venv`.

use mezzanine_tests::ControllerProcess;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The pinned schemathesis CLI (`MEZZANINE_SCHEMATHESIS` overrides).
fn schemathesis() -> PathBuf {
    if let Ok(p) = std::env::var("MEZZANINE_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = manifest.join("../target/contract-venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: tests/run installs the pinned schemathesis there (python3 -m venv target/contract-venv && target/contract-venv/bin/pip install schemathesis==4.32.5)",
        st.display()
    );
    st
}

/// Runs schemathesis for `secs` against `base` with `session` as the cookie; panics with
/// its failure report when it finds anything.
fn run(st: &Path, base: &str, session: &str, secs: u64, extra: &[&str], label: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    let report = tempfile::NamedTempFile::new().expect("report file");
    let out = Command::new(st)
        .current_dir(&dir)
        .env("MZ_SESSION", session)
        .env("NO_COLOR", "1")
        .args([
            "run",
            &format!("{base}/api/openapi.json"),
            "--checks",
            "all",
            // One worker: CPython 3.11's ast module is not safe across threads
            // (python/cpython#106905, "AST constructor recursion depth mismatch"), which
            // hypothesis hits when it describes strategies in parallel workers.
            "--workers",
            "1",
            "--max-time",
            &secs.to_string(),
            "--request-timeout",
            "30",
        ])
        .args(extra)
        .stdout(report.reopen().expect("report"))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run schemathesis");
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let summary = text.rfind("SUMMARY").map_or(text.as_str(), |i| &text[i..]);
    eprintln!("contract run ({label}):\n{summary}");
    if !out.status.success() {
        // The failures section names each operation, check and reproducing curl.
        let from = text
            .find("FAILURES")
            .or_else(|| text.find("ERRORS"))
            .unwrap_or(0);
        let report: String = text[from..].chars().take(20_000).collect();
        panic!(
            "the API breaks its contract ({label}):\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        summary.contains("passed"),
        "schemathesis ran no test ({label}):\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_contract() {
    let st = schemathesis();
    let budget: u64 = std::env::var("MEZZANINE_CONTRACT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut ctl = ControllerProcess::start(false, &[]);
    let admin = mezzanine_tests::first_admin(&ctl.base).await;
    let session = admin.cookie.clone().expect("session cookie");
    let base = ctl.base.clone();
    // Signed in as the admin: everything but logout, which would end the run's session,
    // and the change feed, a stream that lasts as long as its session.
    let st2 = st.clone();
    let b2 = base.clone();
    tokio::task::spawn_blocking(move || {
        run(
            &st2,
            &b2,
            &session,
            budget,
            // The change feed never ends by design (tests/e2e/events.rs covers it).
            // Setting a provider's credentials calls that provider (its real API, or any
            // https `api_url` generated data names), and a notifier delivers to the URL it
            // is given (its test button at once): tests send traffic only to loopback, so
            // those routes are covered by tests/e2e/providers.rs and notify.rs against
            // local receivers.
            &[
                "--exclude-path",
                "/api/auth/logout",
                "--exclude-path",
                "/api/events",
                "--exclude-path",
                "/api/providers/{provider}",
                "--exclude-path",
                "/api/notifiers",
            ],
            "signed in as admin",
        )
    })
    .await
    .expect("join");
    // With a session that is not one: every operation, logout included.
    tokio::task::spawn_blocking(move || {
        run(
            &st,
            &base,
            "not-a-session",
            budget / 3 + 1,
            &[],
            "without a session",
        )
    })
    .await
    .expect("join");
    ctl.proc.terminate(Duration::from_secs(10));
}
