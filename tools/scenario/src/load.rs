//! Bulk loads for benchmarks: many loopback connections with both ends in this
//! process, left in one chosen state.
//!
//! Connections are made in batches of non-blocking connects followed by accepts. On
//! loopback the handshake completes inside the connect call's softirq, so a batch
//! costs a few syscalls per connection and 10k connections take well under a second.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::command::LoadState;
use crate::net::{self, STEP_TIMEOUT};
use crate::process;

/// Connections made per round; also the listener's backlog outside `accept_queue`.
const BATCH: usize = 512;

pub struct Built {
    pub listener: TcpListener,
    pub port: u16,
    /// Every fd the load keeps open (the listener excluded).
    pub streams: Vec<TcpStream>,
    pub elapsed: Duration,
}

/// Builds `count` connections to a new listener on `addr` and leaves them in `state`.
pub fn build(addr: SocketAddr, count: usize, state: LoadState) -> Result<Built, String> {
    let start = Instant::now();
    check_fds(count, state)?;
    let backlog = if state == LoadState::AcceptQueue {
        check_somaxconn(count)?;
        count
    } else {
        BATCH
    };
    let backlog = i32::try_from(backlog).map_err(|_| format!("count {count} is too large"))?;
    let listener = net::listen(addr, backlog).map_err(|e| format!("listen {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("getsockname: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let dial = net::dial_address(bound);

    let mut kept = Vec::with_capacity(count * fds_per_connection(state));
    let mut made = 0;
    while made < count {
        let n = BATCH.min(count - made);
        let clients = (0..n)
            .map(|_| net::connect_start(dial))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("connect {dial} after {made} connections: {e}"))?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        if state == LoadState::AcceptQueue {
            for c in &clients {
                net::wait_connected(c, deadline)
                    .map_err(|e| format!("connect {dial} after {made} connections: {e}"))?;
            }
            kept.extend(clients);
        } else {
            let servers = (0..n)
                .map(|_| net::accept_until(&listener, deadline))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("accept after {made} connections: {e}"))?;
            settle(state, clients, servers, &mut kept)?;
        }
        made += n;
    }
    Ok(Built {
        listener,
        port: bound.port(),
        streams: kept,
        elapsed: start.elapsed(),
    })
}

/// Moves one batch of accepted pairs into `state`, keeping the fds that state holds.
fn settle(
    state: LoadState,
    clients: Vec<TcpStream>,
    servers: Vec<TcpStream>,
    kept: &mut Vec<TcpStream>,
) -> Result<(), String> {
    match state {
        LoadState::Established => {
            kept.extend(clients);
            kept.extend(servers);
        }
        LoadState::CloseWait => {
            // The client half-closes and keeps its fd, so its FIN_WAIT2 end never times
            // out and the table stays the same for as long as the load is held.
            for c in &clients {
                c.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
            }
            kept.extend(clients);
            kept.extend(servers);
        }
        LoadState::FinWait2 => {
            // Orphaned FIN_WAIT2 clients; they vanish after net.ipv4.tcp_fin_timeout.
            drop(clients);
            kept.extend(servers);
        }
        LoadState::TimeWait => {
            // Client closes first (its FIN is delivered during close on loopback), so
            // the server's close goes through LAST_ACK and the client lands in TIME_WAIT.
            drop(clients);
            drop(servers);
        }
        LoadState::AcceptQueue => unreachable!("accept-queue loads never accept"),
    }
    Ok(())
}

fn fds_per_connection(state: LoadState) -> usize {
    match state {
        LoadState::Established | LoadState::CloseWait => 2,
        LoadState::FinWait2 | LoadState::AcceptQueue => 1,
        LoadState::TimeWait => 0,
    }
}

/// Fails before building anything when the load cannot fit in the fd limit, rather
/// than leaving a half-built table behind.
fn check_fds(count: usize, state: LoadState) -> Result<(), String> {
    let batch = BATCH.min(count);
    let transient = match state {
        LoadState::FinWait2 => batch,
        LoadState::TimeWait => 2 * batch,
        _ => 0,
    };
    let peak = 1 + count * fds_per_connection(state) + transient;
    let limit = process::raise_fd_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let open = process::open_fds().map_err(|e| format!("/proc/self/fd: {e}"))?;
    let free = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(open);
    if peak > free {
        return Err(format!(
            "{count} connections in {state:?} need {peak} fds, {free} are free \
             (limit {limit}): spread the load over more actors"
        ));
    }
    Ok(())
}

/// An accept queue holds at most net.core.somaxconn connections (the backlog is
/// clamped to it); past that SYNs are dropped and connects hang.
fn check_somaxconn(count: usize) -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map_err(|e| format!("net.core.somaxconn: {e}"))?;
    let max: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("net.core.somaxconn is {text:?}"))?;
    if count > max {
        return Err(format!(
            "accept_queue of {count} exceeds net.core.somaxconn={max} in this namespace: raise it first"
        ));
    }
    Ok(())
}
