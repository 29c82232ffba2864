//! The browser panel: static HTML, CSS and JS modules embedded in the binary. The panel
//! talks to the controller only through `/api`, like any other client. No build step: the
//! browser loads the ES modules as they are written.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the panel is made of: its URL path, its type and its text.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../panel/index.html"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../panel/style.css"),
    ),
    ("/js/main.js", JS, include_str!("../panel/js/main.js")),
    ("/js/api.js", JS, include_str!("../panel/js/api.js")),
    ("/js/ui.js", JS, include_str!("../panel/js/ui.js")),
    ("/js/feed.js", JS, include_str!("../panel/js/feed.js")),
    ("/js/chart.js", JS, include_str!("../panel/js/chart.js")),
    ("/js/logview.js", JS, include_str!("../panel/js/logview.js")),
    ("/js/widgets.js", JS, include_str!("../panel/js/widgets.js")),
    ("/js/install.js", JS, include_str!("../panel/js/install.js")),
    ("/js/steps.js", JS, include_str!("../panel/js/steps.js")),
    (
        "/js/pages/dashboard.js",
        JS,
        include_str!("../panel/js/pages/dashboard.js"),
    ),
    (
        "/js/pages/servers.js",
        JS,
        include_str!("../panel/js/pages/servers.js"),
    ),
    (
        "/js/pages/server.js",
        JS,
        include_str!("../panel/js/pages/server.js"),
    ),
    (
        "/js/pages/workflows.js",
        JS,
        include_str!("../panel/js/pages/workflows.js"),
    ),
    (
        "/js/pages/workflow.js",
        JS,
        include_str!("../panel/js/pages/workflow.js"),
    ),
    (
        "/js/pages/pools.js",
        JS,
        include_str!("../panel/js/pages/pools.js"),
    ),
    (
        "/js/pages/pool.js",
        JS,
        include_str!("../panel/js/pages/pool.js"),
    ),
    (
        "/js/pages/providers.js",
        JS,
        include_str!("../panel/js/pages/providers.js"),
    ),
    (
        "/js/pages/dns.js",
        JS,
        include_str!("../panel/js/pages/dns.js"),
    ),
    (
        "/js/pages/runs.js",
        JS,
        include_str!("../panel/js/pages/runs.js"),
    ),
    (
        "/js/pages/run.js",
        JS,
        include_str!("../panel/js/pages/run.js"),
    ),
    (
        "/js/pages/users.js",
        JS,
        include_str!("../panel/js/pages/users.js"),
    ),
    (
        "/js/pages/notifiers.js",
        JS,
        include_str!("../panel/js/pages/notifiers.js"),
    ),
    (
        "/js/pages/audit.js",
        JS,
        include_str!("../panel/js/pages/audit.js"),
    ),
    (
        "/js/pages/account.js",
        JS,
        include_str!("../panel/js/pages/account.js"),
    ),
];

/// Scripts and styles only from this origin, images also as data: URLs (the TOTP QR code),
/// no framing, no inline script or style.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(path, get(move || async move { asset(content_type, body) }))
        })
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// Every module a panel file imports is served: a missing entry here would be a 404 in
    /// the browser, found only by the page that needs it.
    #[test]
    fn every_imported_module_is_served() {
        for (path, _, body) in ASSETS {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let Some(rest) = line.split("from \"").nth(1) else {
                    continue;
                };
                let Some(spec) = rest.split('"').next() else {
                    continue;
                };
                let mut parts: Vec<&str> = dir.split('/').collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    ASSETS.iter().any(|(p, _, _)| *p == target),
                    "{path} imports {spec} ({target}), which is not served"
                );
            }
        }
        // The pages the router loads by name.
        let main = ASSETS
            .iter()
            .find(|(p, _, _)| *p == "/js/main.js")
            .map(|a| a.2)
            .unwrap_or_default();
        for (path, _, _) in ASSETS {
            if let Some(page) = path.strip_prefix("/js/pages/") {
                let name = page.trim_end_matches(".js");
                assert!(
                    main.contains(&format!("\"{name}\"")),
                    "{path} is not routed"
                );
            }
        }
    }
}
