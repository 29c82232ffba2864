//! The agent's one process-spawning module: a deploy step's script runs as
//! `/bin/sh -e -c <script>` in its own process group, with a clean environment made of a
//! fixed base plus the step's variables (trigger values and secrets arrive only this way),
//! its output read line by line, masked, and sent against credit. Timeouts and cancels
//! end the whole process group: SIGTERM, then SIGKILL five seconds later.

use crate::runs::Slot;
use mezzanine_proto::mask::Masker;
use mezzanine_proto::v1::{reply, LogStream, RunStep, StepResult};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

/// The largest chunk of step output sent in one message.
const MAX_CHUNK: usize = 64 * 1024;
/// A line longer than this is cut (and says so).
const MAX_LINE: usize = 64 * 1024;
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn result(exit_code: i32, timed_out: bool, cancelled: bool, error: String) -> reply::Body {
    reply::Body::StepResult(StepResult {
        exit_code,
        timed_out,
        cancelled,
        error,
    })
}

/// Where a step without a `workdir` runs: one directory per run under the state dir.
pub fn default_workdir(work_root: &Path, run_id: u64) -> PathBuf {
    work_root.join(format!("run-{run_id}"))
}

fn signal_group(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// What every step's processes start with: a fixed PATH, HOME and LANG.
fn base_env() -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("PATH".into(), BASE_PATH.into());
    env.insert(
        "HOME".into(),
        std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
    );
    env.insert("LANG".into(), "C.UTF-8".into());
    env
}

/// Shell-quotes a path of our own for GIT_SSH_COMMAND (which git runs through a shell).
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The `git` step: init on first use, shallow fetch of the ref, forced detached checkout.
#[allow(clippy::too_many_arguments)]
async fn git(
    g: &mezzanine_proto::v1::GitStep,
    deploy_key: &Path,
    mut env: HashMap<String, String>,
    secrets: &Masker,
    deadline: tokio::time::Instant,
    out: &Slot,
    cancel: &mut watch::Receiver<bool>,
) -> reply::Body {
    let path = Path::new(&g.path);
    if !path.is_absolute() {
        return result(-1, false, false, format!("path {} is not absolute", g.path));
    }
    if let Err(e) = std::fs::create_dir_all(path) {
        return result(-1, false, false, format!("cannot create {}: {e}", g.path));
    }
    // Host keys given with the step are the only ones trusted; otherwise the agent's own
    // file pins each host on first use.
    let (known_hosts, checking) = if g.known_hosts.trim().is_empty() {
        (deploy_key.with_file_name("known_hosts"), "accept-new")
    } else {
        let file = path.with_file_name(format!(
            ".{}.mz-known-hosts",
            path.file_name()
                .map_or_else(|| "checkout".into(), |n| n.to_string_lossy().into_owned())
        ));
        if let Err(e) = std::fs::write(&file, format!("{}\n", g.known_hosts.trim())) {
            return result(
                -1,
                false,
                false,
                format!("cannot write {}: {e}", file.display()),
            );
        }
        (file, "yes")
    };
    env.insert(
        "GIT_SSH_COMMAND".into(),
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking={checking} -o HashKnownHosts=no -o BatchMode=yes -o ConnectTimeout=15",
            quote(deploy_key),
            quote(&known_hosts)
        ),
    );
    env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
    let mut commands: Vec<Vec<&str>> = Vec::new();
    if !path.join(".git").exists() {
        commands.push(vec!["init", "-q"]);
    }
    commands.push(vec![
        "fetch",
        "--depth",
        "1",
        "--force",
        "--end-of-options",
        &g.repo,
        &g.git_ref,
    ]);
    commands.push(vec!["checkout", "-q", "--force", "--detach", "FETCH_HEAD"]);
    commands.push(vec!["log", "-1", "--format=checked out %H: %s"]);
    let mut last = result(0, false, false, String::new());
    for args in commands {
        last = exec("git", &args, path, &env, secrets, deadline, out, cancel).await;
        let failed = match &last {
            reply::Body::StepResult(r) => r.exit_code != 0 || r.timed_out || r.cancelled,
            _ => true,
        };
        if failed {
            return last;
        }
    }
    last
}

/// Runs one step; sends its output through `out` and returns the final reply.
pub async fn run(
    step: RunStep,
    engine: &crate::docker::Engine,
    deploy_key: &Path,
    work_root: &Path,
    out: &Slot,
) -> reply::Body {
    let mut cancel = out.cancelled();
    let masker = Masker::new(step.mask.iter().map(String::as_str));
    let shell = match step.kind {
        Some(mezzanine_proto::v1::run_step::Kind::Shell(shell)) => shell,
        Some(mezzanine_proto::v1::run_step::Kind::Git(g)) => {
            let timeout = Duration::from_secs(u64::from(step.timeout_secs.max(1)));
            let deadline = tokio::time::Instant::now() + timeout;
            let mut env = base_env();
            env.extend(step.env);
            return git(&g, deploy_key, env, &masker, deadline, out, &mut cancel).await;
        }
        Some(mezzanine_proto::v1::run_step::Kind::DockerBuild(b)) => {
            let timeout = Duration::from_secs(u64::from(step.timeout_secs.max(1)));
            return docker_build(engine, &b, &masker, timeout, out, cancel).await;
        }
        Some(mezzanine_proto::v1::run_step::Kind::DockerRun(d)) => {
            let interrupt = crate::docker::Interrupt {
                deadline: tokio::time::Instant::now()
                    + Duration::from_secs(u64::from(step.timeout_secs.max(1))),
                cancel,
            };
            return docker_run(engine, &d, step.run_id, &masker, interrupt, out).await;
        }
        Some(mezzanine_proto::v1::run_step::Kind::HttpCheck(h)) => {
            return http_check(h, &masker, step.timeout_secs, out, cancel).await
        }
        None => {
            return result(
                -1,
                false,
                false,
                "this agent cannot run that kind of step; upgrade it".into(),
            )
        }
    };
    let workdir = if shell.workdir.is_empty() {
        default_workdir(work_root, step.run_id)
    } else {
        PathBuf::from(&shell.workdir)
    };
    if !workdir.is_absolute() {
        return result(
            -1,
            false,
            false,
            format!("workdir {} is not absolute", workdir.display()),
        );
    }
    if let Err(e) = std::fs::create_dir_all(&workdir) {
        return result(
            -1,
            false,
            false,
            format!("cannot create workdir {}: {e}", workdir.display()),
        );
    }
    let mut env = base_env();
    env.extend(step.env);
    let timeout = Duration::from_secs(u64::from(step.timeout_secs.max(1)));
    let deadline = tokio::time::Instant::now() + timeout;
    exec(
        "/bin/sh",
        &["-e", "-c", &shell.script],
        &workdir,
        &env,
        &masker,
        deadline,
        out,
        &mut cancel,
    )
    .await
}

/// Runs one process in its own group and streams its output; the final reply says how
/// it ended. `deadline` is the step's (a step may run several processes).
#[allow(clippy::too_many_arguments)]
async fn exec(
    program: &str,
    args: &[&str],
    workdir: &Path,
    env: &HashMap<String, String>,
    secrets: &Masker,
    deadline: tokio::time::Instant,
    out: &Slot,
    cancel: &mut watch::Receiver<bool>,
) -> reply::Body {
    // Started through the agent's own binary (`exec-step`), which arms a death signal and
    // then becomes `program`: if the agent is killed, the step's shell dies with it.
    let mut child = match tokio::process::Command::new("/proc/self/exe")
        .arg("exec-step")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .arg(program)
        .args(args)
        .current_dir(workdir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return result(-1, false, false, format!("cannot start {program}: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    // Small: the pipes, not this queue, hold back a process that outpaces the controller.
    let (lines_tx, mut lines) = mpsc::channel::<(LogStream, String)>(16);
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            out,
            LogStream::Stdout,
            lines_tx.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            err,
            LogStream::Stderr,
            lines_tx.clone(),
        )));
    }
    drop(lines_tx);

    let started = tokio::time::Instant::now();
    let deadline = tokio::time::sleep_until(deadline);
    tokio::pin!(deadline);
    let mut ended: Option<(bool, bool)> = None; // (timed_out, cancelled)
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut status = None;
    let mut open = true;
    loop {
        let kill_timer = async {
            match kill_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.recv(), if open => match line {
                Some((kind, text)) => {
                    let mut batch = text;
                    secrets.apply(&mut batch);
                    let mut next = None;
                    while batch.len() < MAX_CHUNK {
                        match lines.try_recv() {
                            Ok((k, mut t)) if k == kind => {
                                secrets.apply(&mut t);
                                batch.push_str(&t);
                            }
                            Ok(other) => { next = Some(other); break; }
                            Err(_) => break,
                        }
                    }
                    if !out.output(kind, batch).await {
                        ended.get_or_insert((false, true));
                    }
                    if let Some((k, mut t)) = next {
                        secrets.apply(&mut t);
                        if !out.output(k, t).await {
                            ended.get_or_insert((false, true));
                        }
                    }
                }
                None => open = false,
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s);
            }
            () = &mut deadline, if ended.is_none() => {
                ended = Some((true, false));
                signal_group(pid, rustix::process::Signal::TERM);
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            () = until_cancelled(cancel), if ended.is_none() => {
                ended = Some((false, true));
                signal_group(pid, rustix::process::Signal::TERM);
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            }
            () = kill_timer => {
                signal_group(pid, rustix::process::Signal::KILL);
                kill_at = None;
            }
        }
        if status.is_some() && !open {
            break;
        }
        // The shell exited but something it started still holds the pipes: end the group.
        if status.is_some() && kill_at.is_none() && ended.is_none() {
            kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            ended = Some((false, false));
        }
    }
    for r in readers {
        let _ = r.await;
    }
    let (timed_out, cancelled) = ended.unwrap_or((false, false));
    match status {
        Some(Ok(s)) => {
            let code = s.code().unwrap_or(-1);
            let error = if timed_out {
                format!("timed out after {} s", started.elapsed().as_secs())
            } else if cancelled {
                "cancelled".into()
            } else if s.code().is_none() {
                "killed by a signal".into()
            } else {
                String::new()
            };
            result(code, timed_out, cancelled, error)
        }
        Some(Err(e)) => result(
            -1,
            timed_out,
            cancelled,
            format!("waiting for the step failed: {e}"),
        ),
        None => result(-1, timed_out, cancelled, "the step did not finish".into()),
    }
}

/// The `docker.build` step: the engine's build output as lines.
async fn docker_build(
    engine: &crate::docker::Engine,
    b: &mezzanine_proto::v1::DockerBuildStep,
    secrets: &Masker,
    limit: Duration,
    out: &Slot,
    mut cancel: watch::Receiver<bool>,
) -> reply::Body {
    let (tx, lines) = mpsc::channel::<String>(64);
    let build = engine.build(b, tx);
    match pump_lines(build, lines, secrets, limit, out, &mut cancel).await {
        Ended::Done(Ok(())) => result(0, false, false, String::new()),
        Ended::Done(Err(why)) => {
            let mut line = format!("build failed: {why}\n");
            secrets.apply(&mut line);
            let _ = out.output(LogStream::Stderr, line).await;
            result(1, false, false, format!("the build of {} failed", b.tag))
        }
        Ended::TimedOut => result(
            -1,
            true,
            false,
            format!("timed out after {} s", limit.as_secs()),
        ),
        Ended::Cancelled => result(-1, false, true, "cancelled".into()),
    }
}

/// The `docker.run` step: the engine's work, reported as lines.
async fn docker_run(
    engine: &crate::docker::Engine,
    d: &mezzanine_proto::v1::DockerRunStep,
    run_id: u64,
    secrets: &Masker,
    interrupt: crate::docker::Interrupt,
    out: &Slot,
) -> reply::Body {
    use crate::docker::Stopped;
    let (lines, failure) = match engine.run_replace(d, run_id, interrupt).await {
        Ok(lines) => (lines, None),
        Err(f) => (f.log.clone(), Some(f)),
    };
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Some(f) = &failure {
        text.push_str(&format!("{}\n", f.reason));
    }
    secrets.apply(&mut text);
    if !text.is_empty() && !out.output(LogStream::Stdout, text).await {
        return result(-1, false, true, "cancelled".into());
    }
    match failure {
        None => result(0, false, false, String::new()),
        Some(f) => match f.stopped {
            Some(Stopped::TimedOut) => result(-1, true, false, f.reason),
            Some(Stopped::Cancelled) => result(-1, false, true, f.reason),
            None => result(1, false, false, f.reason),
        },
    }
}

/// The `http.check` step: each attempt is a line of output.
async fn http_check(
    h: mezzanine_proto::v1::HttpCheckStep,
    secrets: &Masker,
    timeout_secs: u32,
    out: &Slot,
    mut cancel: watch::Receiver<bool>,
) -> reply::Body {
    let expect = u16::try_from(h.expect_status).unwrap_or(200);
    let interval = Duration::from_secs(u64::from(h.interval_secs.max(1)));
    let limit = Duration::from_secs(u64::from(timeout_secs.max(1)));
    let (tx, lines) = mpsc::channel::<String>(16);
    let check = crate::httpcheck::check(&h.url, expect, h.retries, interval, tx);
    match pump_lines(check, lines, secrets, limit, out, &mut cancel).await {
        Ended::Done(true) => result(0, false, false, String::new()),
        Ended::Done(false) => result(
            1,
            false,
            false,
            format!("{} did not answer {expect}", h.url),
        ),
        Ended::TimedOut => result(
            -1,
            true,
            false,
            format!("timed out after {} s", limit.as_secs()),
        ),
        Ended::Cancelled => result(-1, false, true, "cancelled".into()),
    }
}

/// How work reporting lines ended.
enum Ended<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Drives `work`, which reports lines on the channel `lines` reads, sending them as step
/// output (masked, batched) until the work is done and every line is out, the time
/// `limit` passes, or the step is cancelled.
async fn pump_lines<T, W>(
    work: W,
    mut lines: mpsc::Receiver<String>,
    secrets: &Masker,
    limit: Duration,
    out: &Slot,
    cancel: &mut watch::Receiver<bool>,
) -> Ended<T>
where
    W: std::future::Future<Output = T>,
{
    tokio::pin!(work);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut outcome: Option<T> = None;
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(mut line) => {
                    while let Ok(more) = lines.try_recv() {
                        line.push('\n');
                        line.push_str(&more);
                        if line.len() > MAX_CHUNK {
                            break;
                        }
                    }
                    secrets.apply(&mut line);
                    line.push('\n');
                    if !out.output(LogStream::Stdout, line).await {
                        return Ended::Cancelled;
                    }
                }
                // The work is done (its sender dropped) and every line was sent.
                None => break,
            },
            r = &mut work, if outcome.is_none() => outcome = Some(r),
            () = &mut deadline => return Ended::TimedOut,
            () = until_cancelled(cancel) => return Ended::Cancelled,
        }
    }
    match outcome {
        Some(r) => Ended::Done(r),
        // The channel closed before the work returned: finish it.
        None => Ended::Done(work.await),
    }
}

/// Resolves once the step is cancelled (never, if its switch is gone).
async fn until_cancelled(rx: &mut watch::Receiver<bool>) {
    let cancelled = rx.wait_for(|c| *c).await.is_ok();
    if !cancelled {
        std::future::pending::<()>().await;
    }
}

/// Reads a pipe in blocks and passes on whole lines (several per message when the
/// process writes fast); a line longer than MAX_LINE is cut.
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    kind: LogStream,
    tx: mpsc::Sender<(LogStream, String)>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(2 * MAX_CHUNK);
    let mut block = vec![0u8; MAX_CHUNK];
    loop {
        // A read error ends the stream like end-of-file does.
        let n: usize = r.read(&mut block).await.unwrap_or_default();
        if n == 0 {
            if !buf.is_empty() {
                let mut text = String::from_utf8_lossy(&buf).into_owned();
                text.push('\n');
                let _ = tx.send((kind, text)).await;
            }
            return;
        }
        buf.extend_from_slice(&block[..n]);
        let cut = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if buf.len() >= MAX_LINE => {
                buf.push(b'\n');
                buf.len()
            }
            None => continue,
        };
        let rest = buf.split_off(cut);
        let text = String::from_utf8_lossy(&buf).into_owned();
        buf = rest;
        if tx.send((kind, text)).await.is_err() {
            return;
        }
    }
}
