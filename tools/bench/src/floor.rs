//! The floor: the least work that can count the TCP table by state. One raw netlink
//! socket with a large receive buffer, one legacy `TCPDIAG_GETSOCK` request for
//! `AF_UNSPEC` (one walk of the kernel's hashes for IPv4 and IPv6), and of each
//! message only the state byte. Nothing the exporter does can cost less, so every
//! other figure is a ratio to this one.

use std::io;

use tcpstate_exporter::kernel::record::TcpState;
use tcpstate_exporter::kernel::sockdiag::DumpRequest;

const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u8 = 2;
/// The kernel fills at most 32 KiB per dump read; 64 KiB leaves room.
const READ_LEN: usize = 64 * 1024;

/// Sockets per kernel state number (index = `idiag_state`, 0..=12).
#[derive(Clone, Copy, Debug, Default)]
pub struct StateCounts(pub [u64; 16]);

/// What a floor dump asks the kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    /// Every socket, no extension: the floor itself.
    States,
    /// CLOSE_WAIT sockets with tcp_info, as the exporter's first sample asks (the kernel
    /// still walks the whole established hash).
    CloseWaitInfo,
    /// Every socket with tcp_info: the one-walk alternative to `States` + `CloseWaitInfo`.
    AllInfo,
}

/// Kernel state names by `idiag_state` number (include/net/tcp_states.h).
pub const STATE_NAMES: [&str; 13] = [
    "",
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
];

impl StateCounts {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `established=.. close_wait=..` for every state present.
    pub fn describe(&self) -> String {
        STATE_NAMES
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A raw sock_diag socket of the calling thread's namespace.
pub struct FloorSocket {
    fd: i32,
    buffer: Vec<u8>,
    sequence: u32,
}

impl FloorSocket {
    pub fn open() -> io::Result<FloorSocket> {
        // SAFETY: plain socket(2) call; the fd is owned by the returned value.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = FloorSocket {
            fd,
            buffer: vec![0; READ_LEN],
            sequence: 0,
        };
        let size: libc::c_int = 4 << 20;
        // SAFETY: valid fd and option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(socket)
    }

    /// Counts sockets by state, in one dump of the kind `dump` names.
    pub fn count(&mut self, dump: Dump) -> io::Result<StateCounts> {
        self.sequence += 1;
        let mut request = [0u8; 16 + 60];
        let length = request.len() as u32;
        request[0..4].copy_from_slice(&length.to_ne_bytes());
        request[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
        request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request[8..12].copy_from_slice(&self.sequence.to_ne_bytes());
        let body = &mut request[16..];
        body[0] = libc::AF_UNSPEC as u8;
        body[44..52].copy_from_slice(&[0xff; 8]); // no cookie
        if dump != Dump::States {
            body[3] = 1 << (INET_DIAG_INFO - 1);
        }
        // Every state of the TCP table (1..=12, request sockets included), as the
        // exporter asks: not bit 13, TCP_BOUND_INACTIVE (Linux 6.7+), which makes the
        // kernel also walk the host-wide bind hash, ~5 ms here whatever the namespace.
        let states: u32 = match dump {
            Dump::CloseWaitInfo => TcpState::CloseWait.kernel_mask(),
            Dump::States | Dump::AllInfo => DumpRequest::for_states(TcpState::ALL, false).states,
        };
        body[52..56].copy_from_slice(&states.to_ne_bytes());
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: request and address are valid for the call.
        let sent = unsafe {
            libc::sendto(
                self.fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut counts = StateCounts::default();
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(self.fd, self.buffer.as_mut_ptr().cast(), READ_LEN, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let data = &self.buffer[..n as usize];
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let length =
                    u32::from_ne_bytes(data[offset..offset + 4].try_into().unwrap_or([0; 4]))
                        as usize;
                let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
                match kind {
                    NLMSG_DONE => return Ok(counts),
                    NLMSG_ERROR => {
                        return Err(io::Error::other("sock_diag refused the request"));
                    }
                    _ => {
                        if let Some(&state) = data.get(offset + 17) {
                            counts.0[usize::from(state & 15)] += 1;
                        }
                    }
                }
                if length < 16 {
                    return Err(io::Error::other("malformed netlink message"));
                }
                offset += (length + 3) & !3;
            }
        }
    }
}

impl Drop for FloorSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor asks for the table's states exactly as the exporter does: 1..=12, not
    /// TCP_BOUND_INACTIVE (13), whose dump also walks the host-wide bind hash.
    #[test]
    fn the_floor_asks_for_the_exporters_states() {
        assert_eq!(DumpRequest::for_states(TcpState::ALL, false).states, 0x1ffe);
    }
}
