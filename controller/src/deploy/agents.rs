//! The engine's view of agents: starting a step, following its replies, and one-shot
//! commands. The gateway's `Fleet` implements it (this controller's sessions and those
//! of the controllers sharing its database); the engine's unit tests implement it with a
//! scripted fake, so queueing, cancel, acknowledgement and interruption are tested
//! without agent processes.

use crate::gateway::CallError;
use mezzanine_proto::v1::{command, reply};
use std::time::Duration;

#[tonic::async_trait]
pub trait Agents: Send + Sync + std::fmt::Debug {
    /// Whether the server's agent has a session now.
    async fn is_attached(&self, server_id: i64) -> bool;

    /// Starts a streaming command (a step, or a resumed one).
    async fn open(
        &self,
        server_id: i64,
        cmd: command::Body,
    ) -> Result<Box<dyn StepStream>, CallError>;

    /// Sends one command and waits for its answer.
    async fn call(
        &self,
        server_id: i64,
        cmd: command::Body,
        timeout: Duration,
    ) -> Result<reply::Body, CallError>;
}

/// A step's replies: output chunks, then its result (or an error). Dropping it before the
/// end cancels the step.
#[tonic::async_trait]
pub trait StepStream: Send {
    async fn next(&mut self) -> Option<reply::Body>;
    /// Asks the agent to stop the step; its result still arrives.
    fn cancel(&self);
    /// Returns `bytes` of credit and acknowledges every chunk up to `acked_seq` as stored.
    async fn credit(&self, bytes: u64, acked_seq: u64);
}
