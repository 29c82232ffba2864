//! A pool's nginx config on its edge server. The controller sends values; this module
//! checks each against a strict grammar (again: the agent trusts no string it did not
//! validate) and renders the file itself, so nothing a user typed becomes a directive.
//! Applying is atomic (temp file + rename), tested with `nginx -t`, and reloaded; a config
//! nginx refuses is rolled back to the previous file, and nginx's own message returned.

use mezzanine_proto::v1::{AcmeChallenge, ApplyPool, LbStrategy, PoolApplied, PoolError};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where the pools' files live, the file that includes them from nginx's `conf.d`, the
/// pools' certificates, and the directory ACME challenges are answered from.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub include: PathBuf,
    pub tls: PathBuf,
    pub acme: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            dir: PathBuf::from("/etc/nginx/conf.d/mezzanine"),
            include: PathBuf::from("/etc/nginx/conf.d/mezzanine.conf"),
            // Outside conf.d: nginx includes `conf.d/*.conf` and the pools' `*.conf`.
            tls: PathBuf::from("/etc/nginx/mezzanine-tls"),
            acme: PathBuf::from("/var/lib/mezzanine-acme"),
        }
    }
}

impl Layout {
    fn cert(&self, id: u64) -> PathBuf {
        self.tls.join(format!("pool-{id}.crt"))
    }
    fn key(&self, id: u64) -> PathBuf {
        self.tls.join(format!("pool-{id}.key"))
    }
}

/// A PEM document of `label` blocks only (`CERTIFICATE`, or a private key): marker lines
/// and base64 between them, nothing else — what goes into the files nginx reads.
fn pem(text: &str, labels: &[&str], max_blocks: usize) -> bool {
    let mut blocks = 0;
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() && open.is_none() {
            continue;
        }
        match open {
            None => {
                let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                    .filter(|l| labels.contains(l))
                else {
                    return false;
                };
                open = Some(label);
            }
            Some(label) => {
                if line == format!("-----END {label}-----") {
                    open = None;
                    blocks += 1;
                } else if line.is_empty()
                    || line.len() > 80
                    || !line
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
                {
                    return false;
                }
            }
        }
    }
    open.is_none() && (1..=max_blocks).contains(&blocks)
}

/// An ACME token: base64url (RFC 8555 §8.1), bounded.
fn acme_token(s: &str) -> bool {
    (1..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Writes or removes the file that answers one HTTP-01 challenge.
pub async fn challenge(layout: &Layout, c: &AcmeChallenge) -> Result<(), String> {
    if !acme_token(&c.token) {
        return Err("token: not an ACME token (base64url)".into());
    }
    let dir = layout.acme.join(".well-known/acme-challenge");
    let path = dir.join(&c.token);
    if c.remove {
        return match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let ka = &c.key_authorization;
    let ok = ka
        .split_once('.')
        .is_some_and(|(t, thumb)| t == c.token && !thumb.is_empty() && acme_token(thumb));
    if !ok {
        return Err("key_authorization: not <token>.<thumbprint>".into());
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // nginx's workers (another user) read it: world-readable, as the file is public.
    set_mode(&layout.acme, 0o755).await;
    set_mode(&layout.acme.join(".well-known"), 0o755).await;
    set_mode(&dir, 0o755).await;
    tokio::fs::write(&path, ka)
        .await
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    set_mode(&path, 0o644).await;
    Ok(())
}

async fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await {
        tracing::warn!(path = %path.display(), error = %e, "cannot set permissions");
    }
}

/// A host name: dot-separated labels of letters, digits and `-` (not at either end), at
/// most 253 bytes; with `wildcard`, an optional leading `*.`.
pub fn host_name(s: &str, wildcard: bool) -> bool {
    let s = if wildcard {
        s.strip_prefix("*.").unwrap_or(s)
    } else {
        s
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn cookie_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn within(name: &str, v: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, String> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{name}: {v} is not in {}-{}",
            range.start(),
            range.end()
        ))
    }
}

/// The config for `p` (its certificate files, if any, named by `layout`), or which value
/// is not acceptable.
pub fn render(p: &ApplyPool, layout: &Layout) -> Result<String, String> {
    let id = p.pool_id;
    let listen = within("listen_port", p.listen_port, 1..=65535)?;
    let tls = !p.tls_certificate_pem.is_empty();
    if tls {
        within("tls_port", p.tls_port, 1..=65535)?;
        if p.tls_port == listen {
            return Err("tls_port: the same as the plain HTTP port".into());
        }
        if !pem(&p.tls_certificate_pem, &["CERTIFICATE"], 8) {
            return Err("tls_certificate_pem: not a PEM certificate chain".into());
        }
        if !pem(
            &p.tls_key_pem,
            &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
            1,
        ) {
            return Err("tls_key_pem: not one PEM private key".into());
        }
    }
    if !p.server_name.is_empty() && !host_name(&p.server_name, true) {
        return Err("server_name: not a host name".into());
    }
    let max_fails = within("max_fails", p.max_fails, 0..=100)?;
    let fail_timeout = within("fail_timeout_s", p.fail_timeout_s, 1..=3600)?;
    let body = within("client_max_body_mb", p.client_max_body_mb, 0..=10240)?;
    let connect = within("connect_timeout_s", p.connect_timeout_s, 1..=75)?;
    let read = within("read_timeout_s", p.read_timeout_s, 1..=86400)?;
    let keepalive = within("keepalive", p.keepalive, 0..=1024)?;
    if p.members.len() > 256 {
        return Err("members: at most 256".into());
    }
    let strategy = LbStrategy::try_from(p.strategy).map_err(|_| "strategy: unknown".to_owned())?;
    if strategy == LbStrategy::LbCookieHash && !cookie_name(&p.sticky_cookie) {
        return Err("sticky_cookie: letters, digits and _ (1 to 64)".into());
    }
    // The name only in a comment, reduced to characters that cannot end it.
    let label: String = p
        .pool_name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Managed by Mezzanine: pool {id} ({label}). Rewritten on every change; edits here are lost."
    );
    let upstream = format!("mz_pool_{id}");
    if !p.members.is_empty() {
        let _ = writeln!(out, "upstream {upstream} {{");
        match strategy {
            LbStrategy::LbRoundRobin => {}
            LbStrategy::LbLeastConn => out.push_str("    least_conn;\n"),
            LbStrategy::LbIpHash => out.push_str("    ip_hash;\n"),
            LbStrategy::LbRandom => out.push_str("    random two least_conn;\n"),
            LbStrategy::LbCookieHash => {
                let _ = writeln!(out, "    hash $cookie_{} consistent;", p.sticky_cookie);
            }
        }
        for (i, m) in p.members.iter().enumerate() {
            let addr = if let Ok(ip) = m.address.parse::<IpAddr>() {
                match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                }
            } else if host_name(&m.address, false) {
                m.address.clone()
            } else {
                return Err(format!(
                    "members[{i}].address: not an IP address or host name"
                ));
            };
            let port = within(&format!("members[{i}].port"), m.port, 1..=65535)?;
            let weight = within(&format!("members[{i}].weight"), m.weight, 1..=100)?;
            let _ = writeln!(
                out,
                "    server {addr}:{port} weight={weight} max_fails={max_fails} fail_timeout={fail_timeout}s;"
            );
        }
        if keepalive > 0 {
            let _ = writeln!(out, "    keepalive {keepalive};");
        }
        out.push_str("}\n");
    }
    let name = if p.server_name.is_empty() {
        "_"
    } else {
        p.server_name.as_str()
    };
    let challenges = if p.acme_challenges {
        format!(
            "    location ^~ /.well-known/acme-challenge/ {{\n        root {};\n        default_type text/plain;\n        try_files $uri =404;\n    }}\n",
            layout.acme.display()
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "server {{\n    listen {listen};\n    listen [::]:{listen};"
    );
    let _ = writeln!(out, "    server_name {name};");
    out.push_str(&challenges);
    if tls {
        // Everything else moves to HTTPS (the port named unless it is the default).
        let port = if p.tls_port == 443 {
            String::new()
        } else {
            format!(":{}", p.tls_port)
        };
        let _ = writeln!(
            out,
            "    location / {{\n        return 308 https://$host{port}$request_uri;\n    }}\n}}"
        );
        let tls_port = p.tls_port;
        let _ = writeln!(
            out,
            "server {{\n    listen {tls_port} ssl http2;\n    listen [::]:{tls_port} ssl http2;\n    server_name {name};\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;\n    ssl_prefer_server_ciphers off;\n    ssl_session_cache shared:mz_tls:10m;\n    ssl_session_timeout 1d;\n    ssl_session_tickets off;",
            layout.cert(id).display(),
            layout.key(id).display()
        );
    }
    let _ = writeln!(out, "    client_max_body_size {body}m;");
    if p.members.is_empty() {
        out.push_str("    location / {\n        return 503;\n    }\n}\n");
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "    location / {{
        proxy_pass http://{upstream};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $mz_connection_upgrade;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_connect_timeout {connect}s;
        proxy_read_timeout {read}s;
        proxy_send_timeout {read}s;
        proxy_next_upstream error timeout;
    }}
}}"
    );
    Ok(out)
}

/// Included once from nginx's `conf.d`: the pools' files, and the WebSocket `Connection`
/// header map they use (empty when the client asked for no upgrade, so keepalive to
/// members still works).
fn include_file(layout: &Layout) -> String {
    format!(
        "# Managed by Mezzanine: the pools' configs.\nmap $http_upgrade $mz_connection_upgrade {{\n    default upgrade;\n    '' '';\n}}\ninclude {}/*.conf;\n",
        layout.dir.display()
    )
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn nginx(bin: &Path, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run nginx: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&out.stderr);
        Err(text.trim().chars().take(2000).collect())
    }
}

/// nginx's master process, if it runs.
fn master() -> Option<u32> {
    std::fs::read_to_string("/run/nginx.pid")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// The master's workers that accept connections (not those finishing their requests after
/// a reload, which call themselves "shutting down").
fn workers(master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid …: the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            ppid == Some(master) && cmd.contains("worker process") && !cmd.contains("shutting down")
        })
        .collect()
}

/// Waits until nginx serves with the config just loaded: workers that were not there
/// before accept connections and the old ones only finish what they hold. `nginx -s
/// reload` returns as soon as the master is signalled, before that.
async fn settled(old: &[u32]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(m) = master() {
            let now = workers(m);
            if !now.is_empty() && now.iter().all(|w| !old.contains(w)) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(
                "nginx did not start workers with the new config within 10 s (see its error log)"
                    .into(),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn write_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("conf.tmp");
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// Writes the pool's certificate chain (0644) and key (0600, created so: never readable
/// by anyone else, even for an instant).
async fn write_tls(layout: &Layout, cert: &Path, key: &Path, p: &ApplyPool) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    tokio::fs::create_dir_all(&layout.tls)
        .await
        .map_err(|e| format!("cannot create {}: {e}", layout.tls.display()))?;
    set_mode(&layout.tls, 0o700).await;
    let key_tmp = key.with_extension("key.tmp");
    let _ = std::fs::remove_file(&key_tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_tmp)
        .and_then(|mut f| {
            f.write_all(p.tls_key_pem.as_bytes())
                .and_then(|()| f.sync_all())
        });
    written.map_err(|e| format!("cannot write {}: {e}", key_tmp.display()))?;
    tokio::fs::rename(&key_tmp, key)
        .await
        .map_err(|e| format!("cannot replace {}: {e}", key.display()))?;
    let cert_tmp = cert.with_extension("crt.tmp");
    tokio::fs::write(&cert_tmp, &p.tls_certificate_pem)
        .await
        .map_err(|e| format!("cannot write {}: {e}", cert_tmp.display()))?;
    tokio::fs::rename(&cert_tmp, cert)
        .await
        .map_err(|e| format!("cannot replace {}: {e}", cert.display()))
}

/// Puts back the certificate and key that were there (or none) after a refused config.
async fn restore_tls(cert: &Path, key: &Path, previous: (Option<Vec<u8>>, Option<Vec<u8>>)) {
    for (path, old) in [(cert, previous.0), (key, previous.1)] {
        let r = match old {
            Some(bytes) => tokio::fs::write(path, bytes).await,
            None => match tokio::fs::remove_file(path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        if let Err(e) = r {
            tracing::error!(path = %path.display(), error = %e, "could not restore a certificate file");
        }
    }
}

/// One apply at a time: two pools changing at once must not test each other's halves.
static APPLYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn refused(message: String) -> mezzanine_proto::v1::reply::Body {
    mezzanine_proto::v1::reply::Body::PoolError(PoolError {
        not_installed: false,
        message,
    })
}

/// Writes (or removes) the pool's file, tests the whole config, and reloads nginx
/// (starting it if it is not running). A refused config is rolled back.
pub async fn apply(layout: &Layout, p: &ApplyPool) -> mezzanine_proto::v1::reply::Body {
    use mezzanine_proto::v1::reply::Body;
    let text = if p.remove {
        None
    } else {
        match render(p, layout) {
            Ok(t) => Some(t),
            Err(e) => return refused(e),
        }
    };
    let Some(bin) = nginx_binary() else {
        return Body::PoolError(PoolError {
            not_installed: true,
            message: "nginx is not installed on this server (apt-get install nginx)".into(),
        });
    };
    let _one = APPLYING.lock().await;
    if let Err(e) = tokio::fs::create_dir_all(&layout.dir).await {
        return refused(format!("cannot create {}: {e}", layout.dir.display()));
    }
    let include = include_file(layout);
    if tokio::fs::read_to_string(&layout.include)
        .await
        .ok()
        .as_deref()
        != Some(&include)
    {
        if let Err(e) = write_atomic(&layout.include, &include).await {
            return refused(e);
        }
    }
    let path = layout.dir.join(format!("pool-{}.conf", p.pool_id));
    let previous = tokio::fs::read_to_string(&path).await.ok();
    // The certificate and key the config names, kept to put back if nginx refuses.
    let (cert, key) = (layout.cert(p.pool_id), layout.key(p.pool_id));
    let previous_tls = (
        tokio::fs::read(&cert).await.ok(),
        tokio::fs::read(&key).await.ok(),
    );
    if !p.remove && !p.tls_certificate_pem.is_empty() {
        if let Err(e) = write_tls(layout, &cert, &key, p).await {
            return refused(e);
        }
    }
    let written = match &text {
        Some(t) => write_atomic(&path, t).await,
        None => match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("cannot remove {}: {e}", path.display()))
            }
            _ => Ok(()),
        },
    };
    if let Err(e) = written {
        return refused(e);
    }
    if let Err(e) = nginx(&bin, &["-t", "-q"]).await {
        // Put back what was there, so the edge keeps serving what it served.
        let restored = match &previous {
            Some(old) => write_atomic(&path, old).await,
            None => tokio::fs::remove_file(&path)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(r) = restored {
            tracing::error!(error = %r, "could not restore the previous pool config");
        }
        restore_tls(&cert, &key, previous_tls).await;
        return refused(format!("nginx refused the config: {e}"));
    }
    let running = master();
    let old = running.map(workers).unwrap_or_default();
    let started = running.is_none();
    let result = if started {
        nginx(&bin, &[]).await
    } else {
        nginx(&bin, &["-s", "reload"]).await
    };
    let result = match result {
        Ok(()) => settled(&old).await,
        Err(e) => Err(e),
    };
    if p.remove {
        for f in [&cert, &key] {
            let _ = tokio::fs::remove_file(f).await;
        }
    }
    match result {
        Ok(()) => Body::PoolApplied(PoolApplied {
            path: path.display().to_string(),
            started,
        }),
        Err(e) => refused(format!(
            "nginx accepted the config but could not {}: {e}",
            if started { "start" } else { "reload" }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mezzanine_proto::v1::PoolMember;

    fn pool() -> ApplyPool {
        ApplyPool {
            pool_id: 7,
            pool_name: "web".into(),
            listen_port: 8088,
            server_name: "app.example.com".into(),
            strategy: LbStrategy::LbRoundRobin as i32,
            sticky_cookie: String::new(),
            members: vec![
                PoolMember {
                    address: "10.0.0.2".into(),
                    port: 8080,
                    weight: 1,
                },
                PoolMember {
                    address: "fd00::3".into(),
                    port: 8080,
                    weight: 5,
                },
            ],
            max_fails: 3,
            fail_timeout_s: 10,
            client_max_body_mb: 10,
            connect_timeout_s: 5,
            read_timeout_s: 60,
            keepalive: 16,
            remove: false,
            tls_port: 0,
            tls_certificate_pem: String::new(),
            tls_key_pem: String::new(),
            acme_challenges: false,
        }
    }

    #[test]
    fn renders_an_upstream_and_a_server() {
        let text = render(&pool(), &Layout::default()).expect("render");
        assert!(text.contains("upstream mz_pool_7 {"), "{text}");
        assert!(text.contains("server 10.0.0.2:8080 weight=1 max_fails=3 fail_timeout=10s;"));
        assert!(text.contains("server [fd00::3]:8080 weight=5"));
        assert!(text.contains("server_name app.example.com;"));
        assert!(text.contains("proxy_set_header Upgrade $http_upgrade;"));
        let mut p = pool();
        p.strategy = LbStrategy::LbCookieHash as i32;
        p.sticky_cookie = "session_id".into();
        assert!(render(&p, &Layout::default())
            .expect("render")
            .contains("hash $cookie_session_id consistent;"));
        p.members.clear();
        let empty = render(&p, &Layout::default()).expect("render");
        assert!(
            empty.contains("return 503;") && !empty.contains("upstream"),
            "{empty}"
        );
    }

    /// Nothing a user typed becomes a directive: every field refuses `;`, braces, quotes,
    /// newlines and spaces, and the name (the one free text) is reduced in its comment.
    #[test]
    fn injection_is_refused_or_neutralised() {
        for bad in [
            "a.com; include /etc/passwd",
            "a.com\nserver_name evil",
            "a{b}",
            "a com",
            "$host",
            "'a'",
            "-a.com",
            "",
        ] {
            let mut p = pool();
            p.members[0].address = bad.into();
            assert!(render(&p, &Layout::default()).is_err(), "address {bad:?}");
            if !bad.is_empty() {
                let mut p = pool();
                p.server_name = bad.into();
                assert!(
                    render(&p, &Layout::default()).is_err(),
                    "server_name {bad:?}"
                );
            }
            let mut p = pool();
            p.strategy = LbStrategy::LbCookieHash as i32;
            p.sticky_cookie = bad.into();
            assert!(render(&p, &Layout::default()).is_err(), "cookie {bad:?}");
        }
        let mut p = pool();
        p.pool_name = "x\n}\ninclude /etc/shadow; #".into();
        let text = render(&p, &Layout::default()).expect("render");
        assert_eq!(
            text.lines().count(),
            render(&pool(), &Layout::default())
                .expect("render")
                .lines()
                .count(),
            "{text}"
        );
        assert!(text
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("# Managed") && l.contains("shadow")));
        assert!(
            !text.lines().skip(1).any(|l| l.contains("shadow")),
            "{text}"
        );
        let mut p = pool();
        p.listen_port = 0;
        assert!(render(&p, &Layout::default()).is_err());
        p = pool();
        p.members[1].weight = 0;
        assert!(render(&p, &Layout::default()).is_err());
    }

    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0FGRQ==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEH\n-----END PRIVATE KEY-----\n";

    #[test]
    fn https_redirects_plain_http_but_answers_challenges() {
        let mut p = pool();
        p.acme_challenges = true;
        let plain = render(&p, &Layout::default()).expect("render");
        assert!(
            plain.contains(
                "location ^~ /.well-known/acme-challenge/ {\n        root /var/lib/mezzanine-acme;"
            ),
            "{plain}"
        );
        assert!(!plain.contains("ssl"), "{plain}");
        p.tls_port = 8443;
        p.tls_certificate_pem = CERT.into();
        p.tls_key_pem = KEY.into();
        let text = render(&p, &Layout::default()).expect("render");
        assert!(
            text.contains("return 308 https://$host:8443$request_uri;"),
            "{text}"
        );
        assert!(text.contains("listen 8443 ssl http2;"), "{text}");
        assert!(
            text.contains("ssl_certificate /etc/nginx/mezzanine-tls/pool-7.crt;"),
            "{text}"
        );
        assert!(text.contains("ssl_protocols TLSv1.2 TLSv1.3;"), "{text}");
        p.tls_port = 443;
        assert!(render(&p, &Layout::default())
            .expect("render")
            .contains("return 308 https://$host$request_uri;"));
        for (cert, key) in [
            ("not pem", KEY),
            (
                CERT,
                "-----BEGIN PRIVATE KEY-----\nabc;def\n-----END PRIVATE KEY-----\n",
            ),
            (
                CERT,
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            ),
            ("-----BEGIN CERTIFICATE-----\nMIIB\n", KEY),
            (&format!("{CERT}ssl_certificate_key /etc/shadow;\n"), KEY),
        ] {
            let mut q = p.clone();
            q.tls_certificate_pem = cert.into();
            q.tls_key_pem = key.into();
            assert!(render(&q, &Layout::default()).is_err(), "{cert:?} {key:?}");
        }
        p.tls_port = p.listen_port;
        assert!(render(&p, &Layout::default()).is_err());
    }

    #[tokio::test]
    async fn challenge_files_hold_checked_values_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let layout = Layout {
            acme: dir.path().join("acme"),
            ..Layout::default()
        };
        let c = |token: &str, ka: &str, remove: bool| AcmeChallenge {
            token: token.into(),
            key_authorization: ka.into(),
            remove,
        };
        challenge(&layout, &c("tok-EN_1", "tok-EN_1.thumb_PRINT", false))
            .await
            .expect("written");
        let file = layout.acme.join(".well-known/acme-challenge/tok-EN_1");
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            "tok-EN_1.thumb_PRINT"
        );
        for (token, ka) in [
            ("../x", "../x.y"),
            ("a", "b.c"),
            ("a", "a.b.c"),
            ("a", "a."),
            ("a/b", "a/b.c"),
        ] {
            assert!(
                challenge(&layout, &c(token, ka, false)).await.is_err(),
                "{token} {ka}"
            );
        }
        challenge(&layout, &c("tok-EN_1", "", true))
            .await
            .expect("removed");
        assert!(!file.exists());
    }
}
