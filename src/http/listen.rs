//! The HTTP listen address, claimed in two steps: `reserve` binds it at the very start,
//! so that a busy, foreign or privileged address fails before any slow startup work
//! (netlink, the eBPF attach, the first sample), and `listen` opens it for connections
//! once there is something to serve. Between the two, a connection is refused rather
//! than queued, and the first sample sees neither a listener nor queued scrapes of the
//! exporter's own. (Reserving takes SO_REUSEADDR, as any listener does, so that a restart
//! is not refused for the last run's TIME_WAIT sockets; two exporters reserving the same
//! port at the same moment therefore both succeed, and the second to `listen` fails with
//! the same message.)

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel queues for the server.
const BACKLOG: u32 = 1024;

/// Binds the first of `candidates` that can be bound (`[::]` then `0.0.0.0` for
/// `:PORT`, so hosts without IPv6 still listen), with SO_REUSEADDR like a listener.
pub fn reserve(candidates: &[SocketAddr]) -> io::Result<TcpSocket> {
    let mut last_error = None;
    for address in candidates {
        let attempt = || -> io::Result<TcpSocket> {
            let socket = if address.is_ipv6() {
                TcpSocket::new_v6()?
            } else {
                TcpSocket::new_v4()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(*address)?;
            Ok(socket)
        };
        match attempt() {
            Ok(socket) => return Ok(socket),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no listen address")))
}

/// Starts accepting on a reserved socket. Must run inside the Tokio runtime.
pub fn listen(socket: TcpSocket) -> io::Result<TcpListener> {
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserved_port_refuses_connections_until_listen_and_a_listening_one_is_busy() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let socket = reserve(&["127.0.0.1:0".parse().expect("address")]).expect("reserve");
        let address = socket.local_addr().expect("local address");
        assert!(std::net::TcpStream::connect(address).is_err(), "refused");
        let _listener = runtime.block_on(async { listen(socket) }).expect("listen");
        assert!(std::net::TcpStream::connect(address).is_ok());
        let busy = reserve(&[address]).expect_err("a listening port is busy");
        assert_eq!(busy.kind(), io::ErrorKind::AddrInUse);
    }
}
