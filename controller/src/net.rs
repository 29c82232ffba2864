//! Connection hygiene for both listeners: how many connections one address and everyone
//! together may hold, a deadline for connections that have not proved who they are, and
//! the process's descriptor limit. Without these, ~1000 idle sockets from one host took
//! the whole controller down (each costs a descriptor; the default soft limit is 1024).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Raises the soft limit on open descriptors to the hard limit (what systemd's
/// `LimitNOFILE` or the shell allows) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if cur < max {
            lim.current = Some(max);
            if setrlimit(Resource::Nofile, lim).is_err() {
                lim.current = Some(cur);
            }
        }
    }
    lim.current.unwrap_or(u64::MAX)
}

/// Caps on concurrent connections, in all and per client address.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// The soft limit on open descriptors now in force.
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The soft descriptor limit as a count.
pub fn fd_limit_count() -> usize {
    usize::try_from(fd_limit()).unwrap_or(usize::MAX)
}

/// Connections the API port may hold: `--max-connections`, or by default a quarter of
/// the descriptor limit, between 64 and 4096. The agent gateway leaves this share free.
pub fn api_connection_cap(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| (fd_limit_count() / 4).clamp(64, 4096))
}

/// A held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a connection from `ip`, or `None` when either cap is reached (the
    /// caller closes the connection at once).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnSlot> {
        let mut map = self.map();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip || self.total.load(Ordering::Acquire) >= self.max_total {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut map = self.limits.map();
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that holds its slot for as long as it lives and, with a deadline, fails
/// every read and write once the deadline passes (the peer is then disconnected) — unless
/// the peer has sent `disarm_after` bytes by then.
pub struct Guarded<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read after which the deadline no longer applies (`usize::MAX`: never).
    disarm_after: usize,
    read: usize,
    _slot: ConnSlot,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, slot: ConnSlot, deadline: Option<std::time::Duration>) -> Guarded<S> {
        Guarded {
            inner,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
            disarm_after: usize::MAX,
            read: 0,
            _slot: slot,
        }
    }

    /// The deadline stops applying once the peer has sent `bytes`.
    pub fn disarm_after(mut self, bytes: usize) -> Self {
        self.disarm_after = bytes;
        self
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

fn expired_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connection deadline passed before the peer identified itself",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() {
            this.read = this.read.saturating_add(buf.filled().len() - before);
            if this.read >= this.disarm_after {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_in_all() {
        let l = ConnLimits::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = l.try_acquire(a).expect("1");
        let _s2 = l.try_acquire(a).expect("2");
        assert!(l.try_acquire(a).is_none(), "per address");
        let _s3 = l.try_acquire(b).expect("3");
        assert!(l.try_acquire(b).is_none(), "in all");
        drop(s1);
        let _s4 = l.try_acquire(b).expect("released on drop");
        assert_eq!(l.open(), 3);
    }
}

/// An IP network (`10.0.0.0/8`; a bare address is a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Network, String> {
        let raw = raw.trim();
        let (addr, bits) = match raw.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (a, b, width) = match (ip, canonical(self.addr)) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        if self.bits == 0 {
            return true;
        }
        let shift = width - u32::from(self.bits);
        (a >> shift) == (b >> shift)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) as
/// the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy; then
/// the nearest address in `X-Forwarded-For` (read from the right, as each proxy appends
/// the address it received from) that is not itself a trusted proxy. A header that does
/// not parse leaves the last address known for sure. With no trusted proxies the header
/// is ignored, so a client cannot choose its own address.
pub fn client_addr<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[Network],
) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    hop.trim_matches(['[', ']']).parse().ok().map(canonical)
}

#[cfg(test)]
mod address_tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Network::parse("10.1.0.0/16").expect("net");
        assert!(n.contains(ip("10.1.200.3")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(n.contains(ip("::ffff:10.1.0.9")), "mapped IPv4");
        assert!(Network::parse("192.0.2.7")
            .expect("one")
            .contains(ip("192.0.2.7")));
        assert!(Network::parse("fd00::/8")
            .expect("v6")
            .contains(ip("fd12::1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "proxy.local", "10.0.0.0/x", ""] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_address_is_the_nearest_untrusted_hop() {
        let trusted = [Network::parse("10.0.0.0/8").expect("net")];
        let peer = ip("10.0.0.2");
        let xff = |v: &'static str| std::iter::once(v);
        // Not from a proxy: the header is the client's own words and is ignored.
        assert_eq!(
            client_addr(ip("192.0.2.1"), xff("198.51.100.1"), &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(client_addr(ip("192.0.2.1"), xff("x"), &[]), ip("192.0.2.1"));
        // A spoofed left part does not win over what the proxy appended.
        assert_eq!(
            client_addr(peer, xff("203.0.113.9, 198.51.100.1, 10.0.0.5"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_addr(
                peer,
                ["198.51.100.1:4711", "10.0.0.5"].into_iter(),
                &trusted
            ),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_addr(peer, xff("[2001:db8::1]:80"), &trusted),
            ip("2001:db8::1")
        );
        // No header, or garbage: the last address known for sure.
        assert_eq!(client_addr(peer, std::iter::empty(), &trusted), peer);
        assert_eq!(
            client_addr(peer, xff("garbage, 10.0.0.7"), &trusted),
            ip("10.0.0.7")
        );
    }
}
