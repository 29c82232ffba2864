//! Replacing this agent with a binary the controller sends over the session.
//!
//! The pieces are written next to the running executable (so the final rename stays on
//! one filesystem and is atomic), checked at the end (length, SHA-256, ELF architecture),
//! and then *tried*: the agent ends its session and starts the new binary with its own
//! arguments. Only when that process has attached to the controller is it renamed over the
//! old binary and the old process exits (under systemd the unit restarts on the new
//! binary; detached, the new process simply carries on). If the new process exits, or
//! has not attached within [`TRIAL_BOUND`], it is killed, the file is removed, and the old
//! agent — which never stopped running and whose binary was never touched — reattaches and
//! says why in its hello. The identity (key, certificate) lives in the state directory and
//! is shared by both.

use crate::identity::StateDir;
use mezzanine_proto::v1::UpgradeChunk;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set for a new binary under trial: it prints `attached` once its first session is up.
pub const TRIAL_ENV: &str = "MEZZANINE_AGENT_UPGRADE_TRIAL";
/// How long a new binary has to attach before it is taken back.
pub const TRIAL_BOUND: Duration = Duration::from_secs(60);
/// No agent binary is this large; a bigger upload is refused before it fills a disk.
const MAX_BYTES: u64 = 256 * 1024 * 1024;
const STAGED_NAME: &str = ".mezzanine-agent.upgrade";

/// A new binary that passed its checks, waiting to be tried.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub version: String,
}

struct Receiving {
    file: std::fs::File,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
    total: u64,
    sha256_hex: String,
    version: String,
}

/// An upload in progress (at most one; a piece at offset 0 starts over).
#[derive(Default)]
pub struct Upload(Option<Receiving>);

impl Drop for Upload {
    fn drop(&mut self) {
        // A session that ended mid-upload leaves no partial file behind.
        if let Some(r) = self.0.take() {
            let _ = std::fs::remove_file(&r.path);
        }
    }
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
}

impl Upload {
    /// Takes one piece: `Ok(None)` while more are to come, the staged binary after the
    /// last one checked out. Any error drops the upload (and its file). `held_steps`:
    /// deploy steps this agent holds, which an upgrade would end.
    pub fn piece(&mut self, c: UpgradeChunk, held_steps: usize) -> Result<Option<Staged>, String> {
        let result = self.take(c, held_steps);
        if result.is_err() {
            if let Some(r) = self.0.take() {
                let _ = std::fs::remove_file(&r.path);
            }
        }
        result
    }

    fn take(&mut self, c: UpgradeChunk, held_steps: usize) -> Result<Option<Staged>, String> {
        if c.offset == 0 {
            if let Some(old) = self.0.take() {
                let _ = std::fs::remove_file(&old.path);
            }
            if !valid_version(&c.version) {
                return Err("the upgrade names no valid version".into());
            }
            if c.sha256_hex.len() != 64 || !c.sha256_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("the upgrade's SHA-256 is not 64 hex digits".into());
            }
            if c.total_bytes == 0 || c.total_bytes > MAX_BYTES {
                return Err(format!(
                    "an agent binary of {} bytes is refused (at most {MAX_BYTES})",
                    c.total_bytes
                ));
            }
            if held_steps > 0 && !c.force {
                return Err(busy(held_steps));
            }
            let path = staged_path()?;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            self.0 = Some(Receiving {
                file,
                path,
                hasher: Sha256::new(),
                written: 0,
                total: c.total_bytes,
                sha256_hex: c.sha256_hex.to_ascii_lowercase(),
                version: c.version.clone(),
            });
        }
        let Some(r) = self.0.as_mut() else {
            return Err(format!(
                "a piece at offset {} of an upgrade that never started",
                c.offset
            ));
        };
        if c.offset != r.written || r.written + c.data.len() as u64 > r.total {
            return Err(format!(
                "a piece at offset {} of {} bytes does not follow the {} bytes received of {}",
                c.offset,
                c.data.len(),
                r.written,
                r.total
            ));
        }
        r.file
            .write_all(&c.data)
            .map_err(|e| format!("cannot write {}: {e}", r.path.display()))?;
        r.hasher.update(&c.data);
        r.written += c.data.len() as u64;
        if !c.last {
            return Ok(None);
        }
        let Some(r) = self.0.take() else {
            return Err("the upgrade ended before it started".into());
        };
        let path = r.path.clone();
        let staged = finish(r, held_steps, c.force);
        if staged.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        staged.map(Some)
    }
}

fn busy(held_steps: usize) -> String {
    format!(
        "this agent holds {held_steps} deploy step(s): it upgrades once they end (or with force, which stops them)"
    )
}

fn staged_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot tell where this agent's binary is: {e}"))?;
    Ok(exe.with_file_name(STAGED_NAME))
}

fn finish(mut r: Receiving, held_steps: usize, force: bool) -> Result<Staged, String> {
    if r.written != r.total {
        return Err(format!(
            "the upgrade ended after {} of {} bytes",
            r.written, r.total
        ));
    }
    let sum = hex::encode(r.hasher.finalize_reset());
    // An integrity check against a digest that is no secret: a plain comparison.
    if sum != r.sha256_hex {
        return Err(format!(
            "the binary received has SHA-256 {sum}, not the {} announced",
            r.sha256_hex
        ));
    }
    r.file
        .sync_all()
        .map_err(|e| format!("cannot write {}: {e}", r.path.display()))?;
    let head = read_head(&r.path)?;
    let ours = std::env::consts::ARCH;
    match mezzanine_proto::binary::elf_arch(&head) {
        Some(arch) if arch == ours => {}
        Some(arch) => return Err(format!("the binary is for {arch}; this server is {ours}")),
        None => return Err(format!("the binary is not an ELF executable for {ours}")),
    }
    if held_steps > 0 && !force {
        return Err(busy(held_steps));
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&r.path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", r.path.display()))?;
    Ok(Staged {
        path: r.path,
        version: r.version,
    })
}

fn read_head(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut head = vec![0u8; 64];
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let n = f
        .read(&mut head)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    head.truncate(n);
    Ok(head)
}

/// How a trial ended.
#[derive(Debug)]
pub enum Trial {
    /// The new binary attached and now sits where the old one was.
    Took,
    /// The new binary was taken back; why.
    RolledBack(String),
}

/// Starts `staged` with this process's arguments and waits for it to attach (see the
/// module's comment).
pub async fn trial(staged: &Staged, state: &StateDir) -> Trial {
    let outcome = attempt(staged, state).await;
    if let Trial::RolledBack(why) = &outcome {
        let _ = std::fs::remove_file(&staged.path);
        tracing::warn!(version = %staged.version, "upgrade rolled back: {why}");
    }
    outcome
}

async fn attempt(staged: &Staged, state: &StateDir) -> Trial {
    use tokio::io::AsyncBufReadExt;
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return Trial::RolledBack(format!("cannot tell where this agent's binary is: {e}"))
        }
    };
    let mut child = match tokio::process::Command::new(&staged.path)
        .args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // Its own process group: it outlives this process (detached installs).
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Trial::RolledBack(format!("version {} did not start: {e}", staged.version))
        }
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill().await;
        return Trial::RolledBack(format!(
            "version {} started, but its output could not be read",
            staged.version
        ));
    };
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let bound = tokio::time::sleep(TRIAL_BOUND);
    tokio::pin!(bound);
    let attached = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() == "attached" => break Ok(()),
                Ok(Some(_)) => continue,
                // Output closed: it exited (or will); its status says how.
                Ok(None) | Err(_) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    break Err(match status {
                        Ok(Ok(s)) => format!("version {} exited ({s}) before attaching", staged.version),
                        _ => format!("version {} closed its output without attaching", staged.version),
                    });
                }
            },
            status = child.wait() => break Err(match status {
                Ok(s) => format!("version {} exited ({s}) before attaching", staged.version),
                Err(e) => format!("version {} could not be waited for: {e}", staged.version),
            }),
            () = &mut bound => break Err(format!(
                "version {} did not attach within {} s",
                staged.version,
                TRIAL_BOUND.as_secs()
            )),
        }
    };
    if let Err(why) = attached {
        let _ = child.kill().await;
        return Trial::RolledBack(why);
    }
    if let Err(e) = std::fs::rename(&staged.path, &exe) {
        let _ = child.kill().await;
        return Trial::RolledBack(format!(
            "version {} attached, but cannot replace {}: {e}",
            staged.version,
            exe.display()
        ));
    }
    // A detached install finds its agent by this file; the new process is the agent now.
    let pid_file = state.path("agent.pid");
    if let (true, Some(pid)) = (pid_file.exists(), child.id()) {
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
    }
    Trial::Took
}

/// Called once a session is up: a binary under trial tells the agent that started it.
pub fn report_attached() {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var_os(TRIAL_ENV).is_some()
        && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "attached");
        let _ = out.flush();
    }
}
