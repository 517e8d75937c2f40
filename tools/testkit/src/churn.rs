//! Connection churn and CPU hogs: what a busy host looks like to the exporter.
//!
//! Churn opens and closes loopback connections in the calling thread's network
//! namespace, the way CLOSE_WAIT sockets come and go: the client closes first (the
//! server end enters CLOSE_WAIT), then the server closes with a reset (SO_LINGER 0), so
//! no TIME_WAIT piles up and the table stays the same size however long it runs. Every
//! connection makes two CLOSE_WAIT transitions (in and out): the events mode's worst
//! case. A rate paces it; without one it runs flat out.
//!
//! Used by `tcpstate-churn` (the busy-host CI step, the benchmark) and by the events
//! overhead test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Listeners per churning thread: connections rotate over them.
const LISTENERS: usize = 4;
/// Connections made between two looks at the clock.
const BATCH: u64 = 16;

/// What one churning thread did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Churn {
    /// Connections opened and closed (each passed through CLOSE_WAIT).
    pub made: u64,
    pub wall: Duration,
    /// CPU time of the churning thread (loopback softirq work, BPF programs on the TCP
    /// path included, is charged to it when the kernel has no IRQ time accounting).
    pub cpu: Duration,
}

impl Churn {
    pub fn per_wall_second(&self) -> f64 {
        self.made as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn per_cpu_second(&self) -> f64 {
        self.made as f64 / self.cpu.as_secs_f64().max(1e-9)
    }

    /// Sums threads that ran side by side: connections and CPU add up, the wall time is
    /// the longest.
    pub fn add(&mut self, other: Churn) {
        self.made += other.made;
        self.wall = self.wall.max(other.wall);
        self.cpu += other.cpu;
    }
}

/// How one thread churns.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Stop after this long (`None`: until `stop` is set).
    pub duration: Option<Duration>,
    /// Connections per second for this thread (`None`: as fast as it can).
    pub rate: Option<f64>,
}

/// Churns on the calling thread per `plan`, until its duration passes or `stop` is set.
pub fn churn(plan: Plan, stop: &AtomicBool) -> Result<Churn, String> {
    let (listeners, addrs) = listeners()?;
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    let mut made = 0u64;
    loop {
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed) || plan.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if let Some(rate) = plan.rate {
            // Ahead of the schedule: wait for it (a millisecond at most, to stay on time).
            let due = (rate * elapsed.as_secs_f64()) as u64;
            if made >= due {
                let wait = (made + BATCH - due) as f64 / rate;
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.001)));
                continue;
            }
        }
        for _ in 0..BATCH {
            let i = made as usize % LISTENERS;
            one_connection(&listeners[i], addrs[i])?;
            made += 1;
        }
    }
    Ok(Churn {
        made,
        wall: start.elapsed(),
        cpu: thread_cpu_time().saturating_sub(cpu_start),
    })
}

/// `LISTENERS` loopback listeners whose accepted sockets reset on close, and their
/// addresses.
fn listeners() -> Result<(Vec<TcpListener>, Vec<SocketAddr>), String> {
    let listeners: Vec<TcpListener> = (0..LISTENERS)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("churn: bind 127.0.0.1:0: {e}"))?;
    for listener in &listeners {
        // Accepted sockets inherit SO_LINGER: one system call less per connection.
        linger_zero(listener.as_raw_fd())?;
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("churn: getsockname: {e}"))?;
    Ok((listeners, addrs))
}

/// A burst of closes: opens `pairs` connections (two fds each), calls `ready` once they
/// are open, then closes every client (each server end enters CLOSE_WAIT) and then
/// every server end (each leaves it, with a reset), as fast as the calling thread can.
/// The figures cover the closes only: a full connection's handshake costs this 2-CPU
/// machine ~100 µs, so flat-out churn stops near 18,500 connections/s, while closes
/// already open connections reach CLOSE_WAIT (and leave it) several times faster: the
/// way to put 50,000 CLOSE_WAIT transitions a second and more through the kernel here,
/// as when a peer drops thousands of connections at once.
pub fn burst(pairs: usize, ready: impl FnOnce() -> Result<(), String>) -> Result<Churn, String> {
    let (listeners, addrs) = listeners()?;
    let mut open = Vec::with_capacity(pairs);
    for k in 0..pairs {
        let i = k % LISTENERS;
        let client = TcpStream::connect(addrs[i])
            .map_err(|e| format!("burst: connect {} ({k} open): {e}", addrs[i]))?;
        let (server, _) = listeners[i]
            .accept()
            .map_err(|e| format!("burst: accept: {e}"))?;
        open.push((client, server));
    }
    ready()?;
    let start = Instant::now();
    let cpu_start = thread_cpu_time();
    let (clients, servers): (Vec<TcpStream>, Vec<TcpStream>) = open.into_iter().unzip();
    drop(clients);
    drop(servers);
    Ok(Churn {
        made: pairs as u64,
        wall: start.elapsed(),
        cpu: thread_cpu_time().saturating_sub(cpu_start),
    })
}

/// One connection through CLOSE_WAIT: connect, accept, client close (FIN: the server end
/// enters CLOSE_WAIT), server close with a reset (it leaves CLOSE_WAIT, no TIME_WAIT):
/// the accepted socket inherited SO_LINGER 0 from its listener.
fn one_connection(listener: &TcpListener, addr: SocketAddr) -> Result<(), String> {
    let client = TcpStream::connect(addr).map_err(|e| format!("churn: connect {addr}: {e}"))?;
    let (server, _) = listener
        .accept()
        .map_err(|e| format!("churn: accept: {e}"))?;
    drop(client);
    drop(server);
    Ok(())
}

/// Spins on the calling thread until `stop` is set: one CPU's worth of competition.
pub fn hog(stop: &AtomicBool) {
    let mut x = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// SO_LINGER 0 on a socket: close() resets the connection instead of sending a FIN.
pub fn linger_zero(fd: std::os::fd::RawFd) -> Result<(), String> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a linger struct of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_LINGER: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}
