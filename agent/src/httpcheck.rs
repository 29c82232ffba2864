//! The `http.check` deploy step: GET a URL until it answers with the expected status, a
//! bounded number of times. Plain HTTP/1.1 over TCP, or over TLS (rustls with the
//! system's roots) for `https://`. Only the status line is read.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `(tls, host, port, path)` of an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("the URL must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        let port = after.strip_prefix(':').map(str::parse::<u16>).transpose();
        (h.to_owned(), port.map_err(|_| "bad port".to_owned())?)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                Some(p.parse::<u16>().map_err(|_| "bad port".to_owned())?),
            ),
            None => (authority.to_owned(), None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    let path_ok = path.len() <= 2048 && path.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !host_ok || !path_ok {
        return Err("the URL has characters that are not allowed".into());
    }
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    Ok((tls, host, port, path))
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn status_of<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> Result<u16, String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mezzanine-agent/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        crate::version()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut byte).await.map_err(|e| e.to_string())?;
        if n == 0 || buf.len() > 4096 {
            return Err("the server closed the connection without an HTTP status".into());
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| "the answer is not HTTP".into())
}

/// One GET: the status, or why there is none.
pub async fn get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let (tls, host, port, path) = parse_url(url)?;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let host_header = if port == if tls { 443 } else { 80 } {
            host.clone()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if tls {
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            status_of(stream, &host_header, &path).await
        } else {
            status_of(tcp, &host_header, &path).await
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// Runs the check, reporting each attempt on `say` (the channel closes when it is done).
/// True when the status was seen.
pub async fn check(
    url: &str,
    expect: u16,
    retries: u32,
    interval: Duration,
    say: tokio::sync::mpsc::Sender<String>,
) -> bool {
    for attempt in 0..=retries {
        let t = Instant::now();
        let got = get_status(url, Duration::from_secs(10)).await;
        let ms = t.elapsed().as_millis();
        let line = match &got {
            Ok(code) => format!("GET {url} → {code} ({ms} ms)"),
            Err(e) => format!("GET {url} → {e}"),
        };
        if got == Ok(expect) {
            let _ = say.send(line).await;
            return true;
        }
        let more = attempt < retries;
        let line = if more {
            format!("{line}; retrying in {} s", interval.as_secs())
        } else {
            format!("{line}; giving up after {} attempts", attempt + 1)
        };
        if say.send(line).await.is_err() {
            return false;
        }
        if more {
            tokio::time::sleep(interval).await;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("http://10.0.0.5:8080/healthz?x=1").unwrap(),
            (false, "10.0.0.5".into(), 8080, "/healthz?x=1".into())
        );
        assert_eq!(
            parse_url("https://api.example.com").unwrap(),
            (true, "api.example.com".into(), 443, "/".into())
        );
        assert_eq!(parse_url("http://[::1]:81/").unwrap().1, "::1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://user:pw@host/").is_err());
        assert!(parse_url("http://host/a b").is_err());
        assert!(parse_url("http://host:99999/").is_err());
    }
}
