//! Prometheus metrics (`GET /metrics`, the text exposition format, through the
//! `prometheus-client` crate): HTTP requests by route template, method and status with
//! latency histograms, counted as they happen; the rest (agents, commands, runs, SSE
//! viewers, the database pool, memory) read when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    /// The route template (`/api/servers/{id}`), never the concrete path: bounded labels.
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunState {
    state: String,
}

fn latency() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<Route, Histogram, fn() -> Histogram>,
    agents: Gauge,
    commands: Gauge,
    runs: Family<RunState, Gauge>,
    queued: Gauge,
    sse: Gauge,
    /// Event streams open now (changed by the streams themselves).
    sse_open: AtomicI64,
    db_size: Gauge,
    db_idle: Gauge,
    rss: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mezzanine");
        let requests = Family::<Request, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let latency = Family::<Route, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response head; streams not included), by route template",
            latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let agents = gauge(&mut registry, "agents_attached", "Agents attached now");
        let commands = gauge(
            &mut registry,
            "agent_commands_in_flight",
            "Commands sent to agents and not answered yet",
        );
        let runs = Family::<RunState, Gauge>::default();
        registry.register("runs", "Deploy runs kept, by state", runs.clone());
        let queued = gauge(
            &mut registry,
            "run_queue_depth",
            "Runs waiting for their turn",
        );
        let sse = gauge(
            &mut registry,
            "sse_viewers",
            "Server-Sent Events streams open (change feed, run output, logs, rollouts)",
        );
        let db_size = gauge(
            &mut registry,
            "db_pool_connections",
            "Database connections open",
        );
        let db_idle = gauge(
            &mut registry,
            "db_pool_idle_connections",
            "Database connections idle",
        );
        let rss = gauge(
            &mut registry,
            "process_resident_memory_bytes",
            "Resident memory of the controller",
        );
        Metrics {
            registry,
            requests,
            latency,
            agents,
            commands,
            runs,
            queued,
            sse,
            sse_open: AtomicI64::new(0),
            db_size,
            db_idle,
            rss,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&Request {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&Route {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// An event stream opened; the guard counts it closed when dropped.
    pub fn stream_opened(self: &std::sync::Arc<Self>) -> StreamGuard {
        self.sse_open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// The exposition text, after reading the gauges that are read when scraped.
    pub async fn render(&self, state: &crate::state::AppState) -> Result<String, String> {
        let agents = state.gateway_handles().gateway.registry.clone();
        self.agents.set(agents.attached_count() as i64);
        self.commands.set(agents.commands_in_flight() as i64);
        let counts = state
            .store()
            .run_counts()
            .await
            .map_err(|e| e.to_string())?;
        for (s, n) in &counts {
            self.runs
                .get_or_create(&RunState { state: s.clone() })
                .set(*n);
        }
        self.queued.set(
            counts
                .iter()
                .find(|(s, _)| s == "queued")
                .map_or(0, |(_, n)| *n),
        );
        self.sse.set(self.sse_open.load(Ordering::Relaxed));
        let (size, idle) = state.store().pool_use();
        self.db_size.set(i64::from(size));
        self.db_idle.set(idle as i64);
        self.rss.set(resident_bytes());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// Counts an event stream as closed when dropped.
pub struct StreamGuard(std::sync::Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.sse_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `VmRSS` of this process, in bytes (0 where /proc is not there).
fn resident_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_template() {
        let m = Metrics::new();
        m.request("/api/servers/{id}", "GET", 200, 0.004);
        m.request("/api/servers/{id}", "GET", 200, 0.002);
        m.request("/api/servers/{id}", "GET", 404, 0.001);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("encode");
        assert!(
            out.contains("mezzanine_http_requests_total{route=\"/api/servers/{id}\",method=\"GET\",status=\"200\"} 2"),
            "{out}"
        );
        assert!(
            out.contains(
                "mezzanine_http_request_duration_seconds_count{route=\"/api/servers/{id}\"} 3"
            ),
            "{out}"
        );
        assert!(resident_bytes() > 0);
    }
}
