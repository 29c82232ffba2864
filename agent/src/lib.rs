//! The Mezzanine agent as a library: enrollment, the controller session, TLS toward
//! the controller and host facts. The `mezzanine-agent` binary is a thin CLI over it;
//! tests and the load generator reuse the same connection code.

pub mod docker;
pub mod facts;
pub mod httpcheck;
pub mod identity;
pub mod runs;
pub mod session;
pub mod steps;
pub mod tls;

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An error with its causes, for messages a person can act on.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
