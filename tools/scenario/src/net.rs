//! Thin libc wrappers for what `std::net` cannot express: a chosen listen backlog,
//! dual-stack `::` listeners, non-blocking connects, and waiting with a deadline.
//!
//! Sockets are handed back as `std` types so the rest of the actor reads, writes and
//! shuts them down through the ordinary API.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long any single blocking step (connect, accept, send) may take before the
/// command fails: a hung actor would hang the test that drives it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `ADDR:PORT` where ADDR is an IPv4 or IPv6 address, brackets optional
/// (`127.0.0.1:0`, `::1:8080`, `[::]:0`): the port is whatever follows the last colon.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("address {text:?} is not ADDR:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{host:?} in {text:?} is not an IP address"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} in {text:?} is not a port number"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Where a client should connect to reach a listener bound to `bound`: a wildcard
/// listener is reached through the loopback address of its family.
pub fn dial_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// A listening socket on `addr` with exactly `backlog` as its accept-queue limit
/// (the kernel still clamps it to `net.core.somaxconn`). `::` listens dual-stack.
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let fd = new_socket(addr, false)?;
    let one: libc::c_int = 1;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, one)?;
    if let IpAddr::V6(ip) = addr.ip()
        && ip.is_unspecified()
    {
        // Distributions may default net.ipv6.bindv6only to 1; say what we mean.
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: storage is a valid sockaddr of `len` bytes for the socket's family.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) })?;
    // SAFETY: fd is an open, bound socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(TcpListener::from(fd))
}

/// Starts a non-blocking connect to `addr` and returns at once; the socket is in
/// SYN_SENT (or already established on loopback). See [`wait_connected`].
pub fn connect_start(addr: SocketAddr) -> io::Result<TcpStream> {
    let fd = new_socket(addr, true)?;
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: storage is a valid sockaddr of `len` bytes for the socket's family.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(TcpStream::from(fd))
}

/// Waits until a connect started by [`connect_start`] has completed, or fails with
/// the connect error, or times out at `deadline`.
pub fn wait_connected(stream: &TcpStream, deadline: Instant) -> io::Result<()> {
    wait_ready(stream.as_raw_fd(), libc::POLLOUT, deadline)?;
    match stream.take_error()? {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Accepts one connection, waiting no later than `deadline`. The listener must be
/// non-blocking; the accepted socket is blocking.
pub fn accept_until(listener: &TcpListener, deadline: Instant) -> io::Result<TcpStream> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(listener.as_raw_fd(), libc::POLLIN, deadline)?;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Polls `fd` for `events` until `deadline`; a timeout is an error.
fn wait_ready(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let millis = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: pfd is one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
        if rc > 0 {
            return Ok(());
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Turns SO_KEEPALIVE on or off.
pub fn set_keepalive(stream: &TcpStream, on: bool) -> io::Result<()> {
    setsockopt(
        stream,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        libc::c_int::from(on),
    )
}

fn new_socket(addr: SocketAddr, nonblocking: bool) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut kind = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        kind |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(domain, kind, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a c_int and we pass its exact size.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families_with_and_without_brackets() {
        assert_eq!(
            parse_addr("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(parse_addr("::1:0").unwrap(), "[::1]:0".parse().unwrap());
        assert_eq!(parse_addr(":::9").unwrap(), "[::]:9".parse().unwrap());
        assert_eq!(parse_addr("[::]:9").unwrap(), "[::]:9".parse().unwrap());
        assert!(parse_addr("localhost:80").is_err());
        assert!(parse_addr("127.0.0.1").is_err());
        assert!(parse_addr("127.0.0.1:70000").is_err());
    }

    #[test]
    fn wildcard_listeners_are_dialled_on_loopback() {
        assert_eq!(
            dial_address("0.0.0.0:5".parse().unwrap()),
            "127.0.0.1:5".parse().unwrap()
        );
        assert_eq!(
            dial_address("[::]:5".parse().unwrap()),
            "[::1]:5".parse().unwrap()
        );
    }
}
