//! The Mezzanine agent as a library: enrollment, the controller session, TLS toward
//! the controller and host facts. The `mezzanine-agent` binary is a thin CLI over it;
//! tests and the load generator reuse the same connection code.

pub mod docker;
pub mod facts;
pub mod httpcheck;
pub mod identity;
pub mod nginx;
pub mod runs;
pub mod session;
pub mod steps;
pub mod tls;
pub mod upgrade;

/// The marker the version is read from (see `mezzanine_proto::binary`).
static VERSION_MARKER: &str = mezzanine_proto::version_marker!();

/// The version this agent reports: read from its marker at run time (through
/// `black_box`, so the compiler cannot fold in a copy), so that it is whatever the
/// binary's bytes say — what the controller reads from a binary it serves.
pub fn version() -> &'static str {
    let marker: &'static str = std::hint::black_box(VERSION_MARKER);
    let prefix = mezzanine_proto::binary::VERSION_PREFIX.len();
    marker
        .get(prefix..marker.len().saturating_sub(1))
        .filter(|v| !v.is_empty())
        .unwrap_or(env!("CARGO_PKG_VERSION"))
}

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

/// `secs` (Unix time, UTC) as `YYYY-MM-DDTHH:MM:SSZ`, for people reading the CLI's output.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_read_as_people_write_them() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_600_883), "2026-12-06T23:48:03Z");
        assert_eq!(super::rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
