//! The controller-agent contract: generated types and gRPC stubs for `agent.proto`, and
//! the rules both sides must apply the same way (image references, secret masking, the
//! cost of an output chunk against credit). Proto types stay at the edges: the
//! controller's gateway and the agent's session code convert them to their own types.

pub mod image;
pub mod mask;

/// What one output chunk costs against a stream's credit beyond its bytes (framing and
/// fields), so that many tiny chunks cannot outrun the window.
pub const CHUNK_OVERHEAD: u64 = 64;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mezzanine.agent.v1");
}
