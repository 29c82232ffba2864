//! The controller-agent contract: generated types and gRPC stubs for `agent.proto`, and
//! the rules both sides must apply the same way (image references, secret masking, the
//! join token format, credit windows and the cost of an output chunk against credit). Proto types stay at the edges: the
//! controller's gateway and the agent's session code convert them to their own types.

pub mod binary;
pub mod image;
pub mod mask;
pub mod token;

/// What one output chunk costs against a stream's credit beyond its bytes (framing and
/// fields), so that many tiny chunks cannot outrun the window.
pub const CHUNK_OVERHEAD: u64 = 64;

/// Bounds on the credit window a streaming command may ask for (the agent clamps to them).
pub const MIN_WINDOW: u64 = 256 * 1024;
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;
/// The window the controller asks for (deploy steps, log streams) and assumes for a
/// resumed step, whose command names none.
pub const DEFAULT_WINDOW: u64 = 4 * 1024 * 1024;

/// The name agents verify the gateway's certificate against, whatever address they
/// dial: every gateway certificate carries it. The certificate must still chain to the
/// CA pinned in the join token (a private CA that issues no other server certificate),
/// so a controller reached by any address — a LAN IP, a new DNS name — is recognised
/// without re-issuing anything.
pub const GATEWAY_SERVER_NAME: &str = "gateway.mezzanine.invalid";

/// The most a stream may have in flight beyond what it was credited, as the controller
/// counts it: a resumed step re-sends what was unacknowledged (up to one window) on top
/// of a fresh window, plus slack for framing. An agent past this is misbehaving.
pub fn in_flight_limit(window: u64) -> u64 {
    2 * window.clamp(MIN_WINDOW, MAX_WINDOW) + 1024 * 1024
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("mezzanine.agent.v1");
}
