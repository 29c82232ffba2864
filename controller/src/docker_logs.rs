//! Container logs from a server's agent, without HTTP: opening the agent's log stream,
//! reading a bounded log to its end, and following one with flow control (credit goes
//! back to the agent only as the viewer takes chunks, so a slow viewer holds the agent
//! back instead of filling this process). The HTTP layer only encodes what this yields.

use crate::gateway::{CallError, Fleet, FleetStream};
use mezzanine_proto::v1::{command, reply, DockerError, DockerLogs, LogStream};
use mezzanine_proto::CHUNK_OVERHEAD;
use std::future::Future;
use std::time::Duration;

/// Credit the agent may run ahead of a viewer by.
const WINDOW: u64 = mezzanine_proto::DEFAULT_WINDOW;
/// A follower that hears nothing this long gets `Piece::Idle` (a keep-alive).
const IDLE: Duration = Duration::from_secs(15);

/// What to read.
#[derive(Debug, Clone)]
pub struct LogRequest {
    pub container: String,
    /// Last lines to start from; `None` for the whole log.
    pub tail: Option<u32>,
    pub follow: bool,
    pub timestamps: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Call(#[from] CallError),
    /// The engine refused (its status and message).
    #[error("{}", .0.message)]
    Engine(DockerError),
    #[error("{0}")]
    Agent(String),
    #[error("{0}")]
    Timeout(&'static str),
    #[error("the agent sent an unexpected answer; is it up to date?")]
    Unexpected,
}

/// One of a follower's pieces.
#[derive(Debug)]
pub enum Piece {
    /// Output (`stdout` or `stderr`), as the engine gave it.
    Output { stream: &'static str, data: Vec<u8> },
    /// The log ended (the container stopped): the engine's reason. Last piece.
    End(String),
    /// The stream failed. Last piece.
    Failed(LogError),
    /// Nothing happened for a while.
    Idle,
}

/// An open log stream whose container is known to exist.
#[derive(Debug)]
pub struct Logs {
    stream: FleetStream,
    first: Option<reply::Body>,
    timeout: Duration,
}

fn stream_name(kind: i32) -> &'static str {
    if kind == LogStream::Stderr as i32 {
        "stderr"
    } else {
        "stdout"
    }
}

/// Opens `req` on `server_id`'s agent. The agent's first message says whether the
/// container exists (an empty chunk) or why not; `timeout` bounds each wait for it.
pub async fn open(
    agents: &Fleet,
    server_id: i64,
    req: LogRequest,
    timeout: Duration,
) -> Result<Logs, LogError> {
    let cmd = command::Body::DockerLogs(DockerLogs {
        container: req.container,
        tail: req.tail,
        follow: req.follow,
        timestamps: req.timestamps,
        window: WINDOW,
    });
    let mut stream = agents.open_stream(server_id, cmd).await?;
    let first = tokio::time::timeout(timeout, stream.next())
        .await
        .map_err(|_| LogError::Timeout("the agent did not start the log stream in time"))?
        .ok_or(LogError::Call(CallError::Disconnected))?;
    match first {
        reply::Body::DockerError(e) => Err(LogError::Engine(e)),
        reply::Body::Error(e) => Err(LogError::Agent(e.message)),
        first => Ok(Logs {
            stream,
            first: Some(first),
            timeout,
        }),
    }
}

/// A whole (non-follow) log, as the body of a JSON array of `{stream, line}` objects,
/// encoded as it arrives: memory is the size of the answer, not a value per line.
#[derive(Debug)]
pub struct Collected {
    /// `[{"stream":…,"line":…},…]`.
    pub lines_json: Vec<u8>,
    /// The log was longer than the limit; what is here is its beginning.
    pub truncated: bool,
}

impl Logs {
    /// Reads the log to its end, or until `max_bytes` of log were read.
    pub async fn collect(mut self, max_bytes: usize) -> Result<Collected, LogError> {
        let mut out = Vec::with_capacity(4096);
        out.push(b'[');
        let mut total = 0usize;
        let mut truncated = false;
        let mut next = self.first.take();
        while let Some(body) = next.take() {
            match body {
                reply::Body::LogChunk(c) => {
                    total += c.data.len();
                    if total > max_bytes {
                        truncated = true;
                        break;
                    }
                    if !c.data.is_empty() {
                        self.stream
                            .credit(c.data.len() as u64 + CHUNK_OVERHEAD, 0)
                            .await;
                        encode_lines(&mut out, stream_name(c.stream), &c.data);
                    }
                }
                reply::Body::StreamEnd(_) => break,
                reply::Body::DockerError(e) => return Err(LogError::Engine(e)),
                _ => return Err(LogError::Unexpected),
            }
            next = match tokio::time::timeout(self.timeout, self.stream.next()).await {
                Ok(Some(b)) => Some(b),
                Ok(None) => return Err(LogError::Call(CallError::Disconnected)),
                Err(_) => return Err(LogError::Timeout("the log did not arrive in time")),
            };
        }
        out.push(b']');
        Ok(Collected {
            lines_json: out,
            truncated,
        })
    }

    /// Hands the log to `deliver` piece by piece until the log ends or fails (that piece
    /// is delivered last), `deliver` answers false, or `left` resolves (the viewer went
    /// away; noticed even while the container is silent). Returning drops the stream,
    /// which stops the agent's side.
    pub async fn follow<F, Fut>(mut self, left: impl Future<Output = ()>, mut deliver: F)
    where
        F: FnMut(Piece) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut left = std::pin::pin!(left);
        let mut owed = 0u64;
        let mut next = self.first.take();
        loop {
            let body = match next.take() {
                Some(b) => b,
                None => tokio::select! {
                    b = tokio::time::timeout(IDLE, self.stream.next()) => match b {
                        Ok(Some(b)) => b,
                        Ok(None) => {
                            deliver(Piece::Failed(LogError::Call(CallError::Disconnected))).await;
                            return;
                        }
                        Err(_) => {
                            if !deliver(Piece::Idle).await {
                                return;
                            }
                            continue;
                        }
                    },
                    () = &mut left => return,
                },
            };
            let (piece, cost) = match body {
                // The empty first chunk was sent without credit.
                reply::Body::LogChunk(c) if c.data.is_empty() => continue,
                reply::Body::LogChunk(c) => {
                    let cost = c.data.len() as u64 + CHUNK_OVERHEAD;
                    let piece = Piece::Output {
                        stream: stream_name(c.stream),
                        data: c.data,
                    };
                    (piece, cost)
                }
                reply::Body::StreamEnd(e) => {
                    deliver(Piece::End(e.reason)).await;
                    return;
                }
                reply::Body::DockerError(e) => {
                    deliver(Piece::Failed(LogError::Engine(e))).await;
                    return;
                }
                _ => {
                    deliver(Piece::Failed(LogError::Unexpected)).await;
                    return;
                }
            };
            let delivered = tokio::select! {
                d = deliver(piece) => d,
                () = &mut left => false,
            };
            if !delivered {
                return;
            }
            // Credit for what the viewer has taken, returned in batches.
            owed += cost;
            if owed >= WINDOW / 4 {
                if !self.stream.credit(owed, 0).await {
                    return;
                }
                owed = 0;
            }
        }
    }
}

/// Appends a chunk's lines as `{"stream":…,"line":…}` objects (comma-separated after the
/// array's first element). A trailing newline ends the last line; `\r\n` counts as one.
fn encode_lines(out: &mut Vec<u8>, stream: &str, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"stream\":\"");
        out.extend_from_slice(stream.as_bytes());
        out.extend_from_slice(b"\",\"line\":");
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, line);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_encode_as_a_json_array() {
        let mut out = vec![b'['];
        encode_lines(&mut out, "stdout", b"one\r\ntwo \"q\"\n");
        encode_lines(&mut out, "stderr", b"\xff three");
        out.push(b']');
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!([
                { "stream": "stdout", "line": "one" },
                { "stream": "stdout", "line": "two \"q\"" },
                { "stream": "stderr", "line": "\u{fffd} three" },
            ])
        );
    }
}
