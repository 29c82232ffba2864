//! Generated types and gRPC stubs for `agent.proto`. Proto types stay at the edges: the
//! controller's gateway and the agent's session code convert them to their own types.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("mezzanine.agent.v1");
}
