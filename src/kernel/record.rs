//! One TCP socket as the kernel reported it, and the TCP state names.
//!
//! `SocketRecord` is decoded straight from a netlink buffer by `sockdiag` and handed, by
//! reference, down the pipeline; it is `Copy` and holds no heap data so that decoding a
//! socket allocates nothing.

use std::fmt;
use std::net::IpAddr;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
///
/// `NEW_SYN_RECV` (request sockets, 12) is folded into `SynRecv` when decoding, as `ss`
/// does: to an operator both are half-open connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
}

/// Number of distinct `TcpState` values; arrays indexed by `TcpState::index`.
pub const STATE_COUNT: usize = 11;

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; STATE_COUNT] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    /// Decodes the kernel's state number; `None` for a state this build does not know
    /// (a newer kernel), which the caller counts rather than guesses.
    pub fn from_kernel(value: u8) -> Option<TcpState> {
        match value {
            1..=11 => Some(Self::ALL[usize::from(value) - 1]),
            12 => Some(TcpState::SynRecv), // TCP_NEW_SYN_RECV
            _ => None,
        }
    }

    /// Position in `ALL`, for dense per-state arrays.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Bit of this state in an inet_diag `idiag_states` mask.
    pub fn kernel_mask(self) -> u32 {
        let mut mask = 1u32 << (self as u32);
        if self == TcpState::SynRecv {
            mask |= 1 << 12; // TCPF_NEW_SYN_RECV: request sockets
        }
        mask
    }

    /// The label value used in metrics and config: lower snake case.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
        }
    }

    /// Parses a config or flag value: the metric label name, case-insensitive, with `-`
    /// accepted for `_` so that `ss`-style spellings (`CLOSE-WAIT`) work too.
    pub fn parse(text: &str) -> Option<TcpState> {
        let wanted = text.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|state| state.name() == wanted)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The few `tcp_info` fields the pipeline uses, present only when asked for
/// (INET_DIAG_INFO is requested for CLOSE_WAIT sockets only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfoExcerpt {
    /// Milliseconds since the last ACK (the peer's FIN included) was received.
    pub last_ack_recv_ms: u32,
    /// Milliseconds since the last data segment was received.
    pub last_data_recv_ms: u32,
}

/// One socket from a sock_diag dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketRecord {
    pub state: TcpState,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    /// Listener: current accept-queue length. Otherwise: bytes in the receive queue
    /// (in CLOSE_WAIT the peer's unread FIN counts as one; see `unread_bytes`).
    pub recv_queue: u32,
    /// Listener: accept-queue limit (backlog). Otherwise: bytes not yet acknowledged.
    pub send_queue: u32,
    /// Socket inode; 0 for sockets no process holds a descriptor to (accept-queue
    /// children, orphans, time-wait and request sockets).
    pub inode: u32,
    pub uid: u32,
    /// The kernel's socket cookie: unique per socket for the life of the namespace.
    pub cookie: u64,
    /// A keepalive timer is armed on the socket.
    pub keepalive_armed: bool,
    /// The device the socket is bound to (SO_BINDTODEVICE, a VRF, an IPv6 link-local
    /// address; 0: none): an exact lookup must name it, or the kernel finds nothing.
    pub bound_dev_if: u32,
    pub tcp_info: Option<TcpInfoExcerpt>,
    /// The process whose descriptors showed this socket this round (a followed table's
    /// socket read through its holder, `HeldSocket`); 0: not read so. Its owner is then
    /// that process, without a lookup in the index of every socket on the host.
    pub held_by: u32,
}

/// A TCP socket as one of its holders' descriptors shows it (a BPF iterator over a
/// process's files): the figures an exact lookup without tcp_info would report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldSocket {
    pub cookie: u64,
    pub state: TcpState,
    pub recv_queue: u32,
    pub send_queue: u32,
    pub inode: u32,
    pub uid: u32,
    pub keepalive_armed: bool,
    /// The process whose descriptors were read (the lowest pid when several hold it).
    pub holder: u32,
}

impl HeldSocket {
    /// `record` with this socket's figures; its identity (addresses, ports, device) is kept.
    pub fn refresh(&self, record: &SocketRecord) -> SocketRecord {
        SocketRecord {
            state: self.state,
            recv_queue: self.recv_queue,
            send_queue: self.send_queue,
            inode: self.inode,
            uid: self.uid,
            keepalive_armed: self.keepalive_armed,
            tcp_info: None,
            held_by: self.holder,
            ..*record
        }
    }
}

impl SocketRecord {
    /// Bytes of data the program has not read.
    ///
    /// In CLOSE_WAIT the kernel reports `rcv_nxt - copied_seq` as Recv-Q
    /// (tcp_diag_get_info), and the peer's FIN advanced rcv_nxt by one sequence number:
    /// until the program reads EOF, Recv-Q is one more than the unread data.
    /// Measured: 5 unread bytes show Recv-Q 6, a bare FIN shows 1, and 0 once recv()
    /// returned EOF (copied_seq then steps over the FIN).
    pub fn unread_bytes(&self) -> u64 {
        match self.state {
            TcpState::Listen => 0,
            TcpState::CloseWait => u64::from(self.recv_queue.saturating_sub(1)),
            _ => u64::from(self.recv_queue),
        }
    }

    /// In CLOSE_WAIT: the program has already read the EOF (Recv-Q 0) and still not
    /// closed: it saw the peer leave and ignored it.
    pub fn eof_read(&self) -> bool {
        self.state == TcpState::CloseWait && self.recv_queue == 0
    }

    /// Still waiting in a listener's accept queue: a connection no process holds yet.
    /// Inode 0 alone does not say it (orphans have 0 too); the caller pairs this with
    /// the local port being a listening port.
    pub fn unowned(&self) -> bool {
        self.inode == 0
    }
}

#[cfg(test)]
impl SocketRecord {
    /// A loopback socket 127.0.0.1:80 <- :40000 for unit tests of the stages.
    pub(crate) fn for_tests(state: TcpState, recv_queue: u32, send_queue: u32) -> Self {
        SocketRecord {
            state,
            local_addr: IpAddr::from([127, 0, 0, 1]),
            local_port: 80,
            remote_addr: IpAddr::from([127, 0, 0, 1]),
            remote_port: 40000,
            recv_queue,
            send_queue,
            inode: 5,
            uid: 0,
            cookie: 1,
            keepalive_armed: false,
            bound_dev_if: 0,
            tcp_info: None,
            held_by: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_kernel_number_and_name() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(state as u8), Some(state));
            assert_eq!(TcpState::parse(state.name()), Some(state));
            assert_eq!(TcpState::ALL[state.index()], state);
        }
        assert_eq!(TcpState::from_kernel(12), Some(TcpState::SynRecv));
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::parse("CLOSE-WAIT"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("closewait"), None);
    }

    #[test]
    fn syn_recv_mask_includes_request_sockets() {
        assert_eq!(TcpState::SynRecv.kernel_mask(), (1 << 3) | (1 << 12));
        assert_eq!(TcpState::CloseWait.kernel_mask(), 1 << 8);
    }

    fn record(state: TcpState, recv_queue: u32) -> SocketRecord {
        SocketRecord::for_tests(state, recv_queue, 0)
    }

    #[test]
    fn close_wait_recv_queue_counts_the_fin_as_one_byte() {
        assert_eq!(record(TcpState::CloseWait, 6).unread_bytes(), 5);
        assert_eq!(record(TcpState::CloseWait, 1).unread_bytes(), 0);
        assert_eq!(record(TcpState::CloseWait, 0).unread_bytes(), 0);
        assert!(record(TcpState::CloseWait, 0).eof_read());
        assert!(!record(TcpState::CloseWait, 1).eof_read());
        assert_eq!(record(TcpState::Established, 6).unread_bytes(), 6);
        assert_eq!(record(TcpState::Listen, 6).unread_bytes(), 0);
    }
}
