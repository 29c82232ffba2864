//! The server's Docker engine, through its Engine API (bollard): container listing and
//! actions, image listing, and log streaming with credit-based flow control. Nothing here
//! builds a command line; names and ids travel as API path segments.

use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, LogsOptions, RemoveContainerOptions,
    RestartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use mezzanine_proto::v1::{
    reply, Container, ContainerAction, DockerActionResult, DockerContainerAction, DockerContainers,
    DockerError, DockerImages, DockerLogs, Image, LogChunk, LogStream, PortMapping, StreamEnd,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex, Semaphore};

/// The largest chunk of log output sent in one message.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Shared with the controller: see `mezzanine_proto::CHUNK_OVERHEAD`.
pub const CHUNK_OVERHEAD: usize = mezzanine_proto::CHUNK_OVERHEAD as usize;
/// The longest a log line waits to share a chunk with the lines after it.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Engine calls that take longer than this fail (the controller gives up sooner).
const ENGINE_TIMEOUT_SECS: u64 = 120;

/// A lazily connected engine client; reconnects after the engine goes away.
#[derive(Debug)]
pub struct Engine {
    socket: String,
    client: Mutex<Option<Docker>>,
    /// One `docker.run` at a time per container name: a step the controller gave up on
    /// must not race the next run's replacement of the same container.
    replacing: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn err(status: u16, message: impl Into<String>) -> reply::Body {
    reply::Body::DockerError(DockerError {
        status: u32::from(status),
        message: message.into(),
    })
}

impl Engine {
    pub fn new(socket: &str) -> Engine {
        Engine {
            socket: socket.trim_start_matches("unix://").to_owned(),
            client: Mutex::new(None),
            replacing: Default::default(),
        }
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// A client speaking the engine's API version (negotiated once per connection).
    async fn client(&self) -> Result<Docker, reply::Body> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let unreachable = |detail: String| {
            err(
                0,
                format!("no Docker engine answers at {}: {detail}", self.socket),
            )
        };
        if !std::path::Path::new(&self.socket).exists() {
            return Err(err(
                0,
                format!(
                    "no Docker engine on this server (no socket at {})",
                    self.socket
                ),
            ));
        }
        let docker = Docker::connect_with_unix(
            &self.socket,
            ENGINE_TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| unreachable(crate::error_chain(&e)))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(crate::error_chain(&e)))?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// Maps an engine error to a reply; a connection failure forgets the client so the next
    /// call renegotiates (the engine may have been upgraded or restarted).
    async fn fail(&self, e: EngineError) -> reply::Body {
        match e {
            EngineError::DockerResponseServerError {
                status_code,
                message,
            } => err(status_code, message),
            other => {
                *self.client.lock().await = None;
                err(
                    0,
                    format!(
                        "the Docker engine at {} did not answer: {}",
                        self.socket,
                        crate::error_chain(&other)
                    ),
                )
            }
        }
    }

    pub async fn list_containers(&self, all: bool) -> reply::Body {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return e,
        };
        let options = ListContainersOptions {
            all,
            ..Default::default()
        };
        match docker.list_containers(Some(options)).await {
            Ok(list) => reply::Body::DockerContainers(DockerContainers {
                containers: list.into_iter().map(container).collect(),
            }),
            Err(e) => self.fail(e).await,
        }
    }

    pub async fn list_images(&self) -> reply::Body {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return e,
        };
        match docker.list_images(Some(ListImagesOptions::default())).await {
            Ok(list) => reply::Body::DockerImages(DockerImages {
                images: list
                    .into_iter()
                    .map(|i| Image {
                        id: i.id,
                        repo_tags: i
                            .repo_tags
                            .into_iter()
                            .filter(|t| t != "<none>:<none>")
                            .collect(),
                        repo_digests: i
                            .repo_digests
                            .into_iter()
                            .filter(|d| !d.starts_with("<none>@"))
                            .collect(),
                        size: i.size,
                        created: i.created,
                    })
                    .collect(),
            }),
            Err(e) => self.fail(e).await,
        }
    }

    /// `(full id, state)` of a container, or the reply to send when there is none.
    async fn state_of(&self, docker: &Docker, name: &str) -> Result<(String, String), reply::Body> {
        match docker.inspect_container(name, None).await {
            Ok(c) => Ok((
                c.id.unwrap_or_default(),
                c.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            )),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(err(404, format!("no such container: {name}"))),
            Err(e) => Err(self.fail(e).await),
        }
    }

    pub async fn container_action(&self, cmd: DockerContainerAction) -> reply::Body {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return e,
        };
        let name = cmd.container.as_str();
        let action = ContainerAction::try_from(cmd.action).unwrap_or(ContainerAction::Unspecified);
        let (id, before) = match self.state_of(&docker, name).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let up = matches!(before.as_str(), "running" | "restarting" | "paused");
        let t = Some(i32::try_from(cmd.stop_timeout_secs).unwrap_or(i32::MAX));
        let done = |unchanged: bool, detail: &str, state: String| {
            reply::Body::DockerActionResult(DockerActionResult {
                unchanged,
                detail: detail.to_owned(),
                id: id.clone(),
                state,
            })
        };
        let result = match action {
            ContainerAction::Start if before == "running" => {
                return done(true, "already running", before)
            }
            ContainerAction::Stop if !up => return done(true, "already stopped", before),
            ContainerAction::Start => docker.start_container(&id, None).await,
            ContainerAction::Stop => {
                docker
                    .stop_container(
                        &id,
                        Some(StopContainerOptions {
                            t,
                            ..Default::default()
                        }),
                    )
                    .await
            }
            ContainerAction::Restart => {
                docker
                    .restart_container(
                        &id,
                        Some(RestartContainerOptions {
                            t,
                            ..Default::default()
                        }),
                    )
                    .await
            }
            ContainerAction::Remove => {
                let removed = docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: cmd.force,
                            v: false,
                            link: false,
                        }),
                    )
                    .await;
                return match removed {
                    Ok(()) => done(false, "removed", String::new()),
                    Err(e) => self.fail(e).await,
                };
            }
            ContainerAction::Unspecified => return err(400, "unknown container action"),
        };
        if let Err(e) = result {
            return self.fail(e).await;
        }
        let after = match self.state_of(&docker, &id).await {
            Ok((_, s)) => s,
            Err(e) => return e,
        };
        let detail = match action {
            ContainerAction::Start => "started",
            ContainerAction::Stop => "stopped",
            _ => "restarted",
        };
        done(false, detail, after)
    }

    /// Streams a container's log as chunks, sending only while `credit` allows, until the
    /// log ends (the container stopped, for `follow`), the engine fails, or `cancel` fires.
    /// Returns the last reply: a `StreamEnd` or an error.
    pub async fn logs<F, Fut>(
        &self,
        cmd: DockerLogs,
        credit: Arc<Semaphore>,
        mut cancel: watch::Receiver<bool>,
        mut send: F,
    ) -> reply::Body
    where
        F: FnMut(reply::Body) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return e,
        };
        let (id, _) = match self.state_of(&docker, &cmd.container).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        let options = LogsOptions {
            follow: cmd.follow,
            stdout: true,
            stderr: true,
            timestamps: cmd.timestamps,
            tail: cmd.tail.map_or_else(|| "all".to_owned(), |n| n.to_string()),
            ..Default::default()
        };
        // An empty first chunk tells the controller the container exists and the log began.
        let started = reply::Body::LogChunk(LogChunk {
            stream: LogStream::Stdout as i32,
            data: Vec::new(),
        });
        if !send(started).await {
            return end("cancelled");
        }
        let mut stream = docker.logs(&id, Some(options));
        // Output is gathered into chunks of up to MAX_CHUNK, each sent at most BATCH_WINDOW
        // after its first byte arrived: a busy log travels in few large messages, a quiet
        // one line by line without noticeable delay.
        let mut pending: Option<(LogStream, Vec<u8>)> = None;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = async {
                match deadline {
                    None => Some(stream.next().await),
                    Some(d) => tokio::time::timeout_at(d, stream.next()).await.ok(),
                }
            };
            let item = tokio::select! {
                item = next => item,
                _ = cancel.wait_for(|c| *c) => return end("cancelled"),
            };
            let item = match item {
                // The batch window closed: send what was gathered.
                None => {
                    deadline = None;
                    if let Some((k, data)) = pending.take() {
                        if !flush(&credit, &mut send, k, data).await {
                            return end("cancelled");
                        }
                    }
                    continue;
                }
                Some(item) => item,
            };
            let (kind, bytes) = match item {
                None => {
                    if let Some((k, data)) = pending.take() {
                        if !flush(&credit, &mut send, k, data).await {
                            return end("cancelled");
                        }
                    }
                    return end(if cmd.follow {
                        "container stopped"
                    } else {
                        "end of log"
                    });
                }
                Some(Ok(LogOutput::StdErr { message })) => (LogStream::Stderr, message),
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    (LogStream::Stdout, message)
                }
                Some(Ok(LogOutput::StdIn { .. })) => continue,
                Some(Err(e)) => {
                    if let Some((k, data)) = pending.take() {
                        let _ = flush(&credit, &mut send, k, data).await;
                    }
                    return self.fail(e).await;
                }
            };
            match pending.as_mut() {
                Some((k, data)) if *k == kind && data.len() + bytes.len() <= MAX_CHUNK => {
                    data.extend_from_slice(&bytes);
                }
                _ => {
                    if let Some((k, data)) = pending.take() {
                        if !flush(&credit, &mut send, k, data).await {
                            return end("cancelled");
                        }
                    }
                    pending = Some((kind, bytes.to_vec()));
                }
            }
            if pending
                .as_ref()
                .is_some_and(|(_, d)| d.len() >= MAX_CHUNK / 2)
            {
                deadline = None;
                if let Some((k, data)) = pending.take() {
                    if !flush(&credit, &mut send, k, data).await {
                        return end("cancelled");
                    }
                }
            } else if deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + BATCH_WINDOW);
            }
        }
    }
}

fn end(reason: &str) -> reply::Body {
    reply::Body::StreamEnd(StreamEnd {
        reason: reason.to_owned(),
    })
}

/// Waits for credit, then sends one chunk. False once the stream is cancelled (the
/// credit semaphore is closed) or the session is gone.
async fn flush<F, Fut>(credit: &Semaphore, send: &mut F, kind: LogStream, data: Vec<u8>) -> bool
where
    F: FnMut(reply::Body) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let pieces: Vec<Vec<u8>> = if data.len() <= MAX_CHUNK {
        vec![data]
    } else {
        data.chunks(MAX_CHUNK).map(<[u8]>::to_vec).collect()
    };
    for piece in pieces {
        let cost = u32::try_from(piece.len() + CHUNK_OVERHEAD).unwrap_or(u32::MAX);
        match credit.acquire_many(cost).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        let chunk = reply::Body::LogChunk(LogChunk {
            stream: kind as i32,
            data: piece,
        });
        if !send(chunk).await {
            return false;
        }
    }
    true
}

fn container(c: bollard::models::ContainerSummary) -> Container {
    Container {
        id: c.id.unwrap_or_default(),
        names: c
            .names
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect(),
        image: c.image.unwrap_or_default(),
        image_id: c.image_id.unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.unwrap_or_default(),
        created: c.created.unwrap_or_default(),
        ports: c
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| PortMapping {
                ip: p.ip.unwrap_or_default(),
                private_port: u32::from(p.private_port),
                public_port: p.public_port.map_or(0, u32::from),
                protocol: p.typ.map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect(),
        labels: c.labels.unwrap_or_default().into_iter().collect(),
    }
}

/// The reply of a `docker.run` step: `Ok(lines)` when the new container runs under the
/// name, or why not.
pub type RunOutcome = Result<Vec<String>, RunFailure>;

#[derive(Debug)]
pub struct RunFailure {
    pub log: Vec<String>,
    pub reason: String,
    /// Set when the step's time ran out or it was cancelled (else it failed).
    pub stopped: Option<Stopped>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    TimedOut,
    Cancelled,
}

/// A step's deadline and cancel switch, checked while a `docker.run` waits (for its
/// container name, for a pull). Once the old container is being replaced the step is no
/// longer interrupted: that part is short and bounded, and stopping in the middle of it
/// would leave neither container running.
pub struct Interrupt {
    pub deadline: tokio::time::Instant,
    pub cancel: watch::Receiver<bool>,
}

impl Interrupt {
    /// Whether the step may go on now.
    fn check(&self) -> Result<(), Stopped> {
        if *self.cancel.borrow() {
            Err(Stopped::Cancelled)
        } else if tokio::time::Instant::now() >= self.deadline {
            Err(Stopped::TimedOut)
        } else {
            Ok(())
        }
    }

    async fn run<F: std::future::Future>(&mut self, f: F) -> Result<F::Output, Stopped> {
        self.check()?;
        tokio::select! {
            out = f => Ok(out),
            () = tokio::time::sleep_until(self.deadline) => Err(Stopped::TimedOut),
            _ = self.cancel.wait_for(|c| *c) => Err(Stopped::Cancelled),
        }
    }
}

impl Engine {
    /// Replaces container `step.name` with a new one from `step.image` (see the proto's
    /// `DockerRunStep` for the order of operations and the rollback).
    pub async fn run_replace(
        &self,
        step: &mezzanine_proto::v1::DockerRunStep,
        run_id: u64,
        mut interrupt: Interrupt,
    ) -> RunOutcome {
        use bollard::models::{
            ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
        };
        use bollard::query_parameters::{
            CreateContainerOptions, CreateImageOptions, RenameContainerOptions,
        };
        let mut log: Vec<String> = Vec::new();
        let fail = |log: Vec<String>, reason: String| {
            Err(RunFailure {
                log,
                reason,
                stopped: None,
            })
        };
        let stopped = |log: Vec<String>, how: Stopped, doing: &str| {
            let reason = match how {
                Stopped::TimedOut => format!("the step ran out of time while {doing}"),
                Stopped::Cancelled => format!("cancelled while {doing}"),
            };
            Err(RunFailure {
                log,
                reason,
                stopped: Some(how),
            })
        };
        let name_lock = self
            .replacing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(step.name.clone())
            .or_default()
            .clone();
        let _replacing = match name_lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                log.push(format!(
                    "waiting for another deploy of {} to finish",
                    step.name
                ));
                match interrupt.run(name_lock.lock()).await {
                    Ok(g) => g,
                    Err(how) => return stopped(log, how, "waiting for the other deploy"),
                }
            }
        };
        let engine_err = |e: bollard::errors::Error| match e {
            EngineError::DockerResponseServerError { message, .. } => message,
            other => crate::error_chain(&other),
        };
        let docker = match self.client().await {
            Ok(d) => d,
            Err(reply::Body::DockerError(e)) => return fail(log, e.message),
            Err(_) => return fail(log, "no Docker engine".into()),
        };
        // The image: here already, or pulled.
        if docker.inspect_image(&step.image).await.is_err() {
            log.push(format!("pulling {}", step.image));
            // The controller validated the reference with the same parser.
            let (from, tag) = match mezzanine_proto::image::parse(&step.image) {
                Ok(r) => r.pull_args(),
                Err(e) => return fail(log, e),
            };
            let options = CreateImageOptions {
                from_image: Some(from),
                tag: Some(tag),
                ..Default::default()
            };
            let mut pull = docker.create_image(Some(options), None, None);
            loop {
                match interrupt.run(pull.next()).await {
                    Ok(None) => break,
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => {
                        return fail(
                            log,
                            format!("cannot pull {}: {}", step.image, engine_err(e)),
                        );
                    }
                    // Dropping the stream ends the pull request.
                    Err(how) => return stopped(log, how, &format!("pulling {}", step.image)),
                }
            }
            log.push(format!("pulled {}", step.image));
        }
        if let Err(how) = interrupt.check() {
            return stopped(log, how, "preparing the container");
        }
        let old = match docker.inspect_container(&step.name, None).await {
            Ok(c) => Some((
                c.id.unwrap_or_default(),
                c.state.and_then(|s| s.running).unwrap_or(false),
            )),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => {
                return fail(
                    log,
                    format!("cannot inspect {}: {}", step.name, engine_err(e)),
                )
            }
        };
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed = Vec::new();
        for p in &step.ports {
            let key = format!(
                "{}/{}",
                p.container_port,
                if p.protocol.is_empty() {
                    "tcp"
                } else {
                    &p.protocol
                }
            );
            exposed.push(key.clone());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let restart = match step.restart.as_str() {
            "always" => RestartPolicyNameEnum::ALWAYS,
            "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
            "no" => RestartPolicyNameEnum::NO,
            _ => RestartPolicyNameEnum::UNLESS_STOPPED,
        };
        let mut env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.sort();
        let body = ContainerCreateBody {
            image: Some(step.image.clone()),
            env: Some(env),
            exposed_ports: Some(exposed),
            labels: Some(HashMap::from([(
                "mezzanine.run".to_owned(),
                run_id.to_string(),
            )])),
            host_config: Some(HostConfig {
                binds: Some(step.volumes.clone()),
                port_bindings: Some(bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(restart),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let temp = format!("{}-mz-{run_id}", step.name);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(temp.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        let new_id = match created {
            Ok(c) => c.id,
            Err(e) => {
                return fail(
                    log,
                    format!("cannot create the new container: {}", engine_err(e)),
                )
            }
        };
        log.push(format!(
            "created {} from {}",
            &new_id[..12.min(new_id.len())],
            step.image
        ));
        if let Some((id, true)) = &old {
            if let Err(e) = docker
                .stop_container(
                    id,
                    Some(StopContainerOptions {
                        t: Some(10),
                        ..Default::default()
                    }),
                )
                .await
            {
                let _ = docker
                    .remove_container(
                        &new_id,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
                return fail(
                    log,
                    format!("cannot stop the running {}: {}", step.name, engine_err(e)),
                );
            }
            log.push(format!("stopped the previous {}", step.name));
        }
        let mut started = docker
            .start_container(&new_id, None)
            .await
            .map_err(engine_err);
        if started.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let running = docker
                .inspect_container(&new_id, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false);
            if !running {
                started = Err("it exited right after starting".into());
            }
        }
        if let Err(why) = started {
            let _ = docker
                .remove_container(
                    &new_id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            let mut reason = format!("the new container did not start: {why}");
            if let Some((id, true)) = &old {
                match docker.start_container(id, None).await {
                    Ok(()) => reason.push_str("; the previous one was started again"),
                    Err(e) => reason.push_str(&format!(
                        "; restarting the previous one failed too: {}",
                        engine_err(e)
                    )),
                }
            }
            return fail(log, reason);
        }
        if let Some((id, _)) = &old {
            if let Err(e) = docker
                .remove_container(
                    id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
            {
                return fail(log, format!("the new container runs as {temp}, but the previous {} could not be removed: {}", step.name, engine_err(e)));
            }
        }
        if let Err(e) = docker
            .rename_container(
                &new_id,
                RenameContainerOptions {
                    name: step.name.clone(),
                },
            )
            .await
        {
            return fail(
                log,
                format!(
                    "the new container runs as {temp}, but could not take the name {}: {}",
                    step.name,
                    engine_err(e)
                ),
            );
        }
        log.push(format!(
            "{} is running ({})",
            step.name,
            &new_id[..12.min(new_id.len())]
        ));
        Ok(log)
    }
}

/// The largest build context sent to the engine.
pub const MAX_CONTEXT: u64 = 256 * 1024 * 1024;

/// A tar of `dir` for the engine (symlinks kept as links, `.git` left out).
fn tar_context(dir: &std::path::Path) -> Result<Vec<u8>, String> {
    fn add(
        b: &mut tar::Builder<Vec<u8>>,
        root: &std::path::Path,
        dir: &std::path::Path,
        total: &mut u64,
    ) -> Result<(), String> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
            if rel == std::path::Path::new(".git") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            *total += meta.len();
            if *total > MAX_CONTEXT {
                return Err(format!(
                    "the build context is larger than {} MiB",
                    MAX_CONTEXT >> 20
                ));
            }
            b.append_path_with_name(&path, rel)
                .map_err(|e| format!("cannot add {}: {e}", rel.display()))?;
            if meta.is_dir() {
                add(b, root, &path, total)?;
            }
        }
        Ok(())
    }
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut total = 0;
    add(&mut b, dir, dir, &mut total)?;
    b.into_inner().map_err(|e| e.to_string())
}

impl Engine {
    /// Builds an image; each line of the engine's output goes to `say`. `Err` says why
    /// the build failed.
    pub async fn build(
        &self,
        step: &mezzanine_proto::v1::DockerBuildStep,
        say: tokio::sync::mpsc::Sender<String>,
    ) -> Result<(), String> {
        use bollard::query_parameters::BuildImageOptions;
        let docker = match self.client().await {
            Ok(d) => d,
            Err(reply::Body::DockerError(e)) => return Err(e.message),
            Err(_) => return Err("no Docker engine".into()),
        };
        let dir = std::path::PathBuf::from(&step.context);
        let tar = tokio::task::spawn_blocking(move || tar_context(&dir))
            .await
            .map_err(|e| e.to_string())??;
        let _ = say
            .send(format!("sending a {} KiB build context", tar.len() / 1024))
            .await;
        let options = BuildImageOptions {
            dockerfile: if step.dockerfile.is_empty() {
                "Dockerfile".into()
            } else {
                step.dockerfile.clone()
            },
            t: Some(step.tag.clone()),
            rm: true,
            forcerm: true,
            buildargs: (!step.build_args.is_empty()).then(|| step.build_args.clone()),
            ..Default::default()
        };
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(tar.into())));
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(detail);
                    }
                    let text = info.stream.or(info.status).unwrap_or_default();
                    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                        let _ = say.send(line.to_owned()).await;
                    }
                }
                Err(EngineError::DockerStreamError { error }) => return Err(error),
                Err(EngineError::DockerResponseServerError { message, .. }) => return Err(message),
                Err(e) => return Err(crate::error_chain(&e)),
            }
        }
        Ok(())
    }
}
