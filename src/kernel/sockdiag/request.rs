//! The request messages: `struct inet_diag_req` (legacy, both families in one walk) and
//! `struct inet_diag_req_v2` (one family, or one exact socket), behind a netlink header.

use std::net::IpAddr;

use crate::kernel::record::{SocketRecord, TcpState};

/// The `INET_DIAG_INFO` attribute (`struct tcp_info`), asked for and decoded.
pub(super) const INET_DIAG_INFO: u16 = 2;
const IPPROTO_TCP: u8 = 6;

/// What to ask the kernel for.
#[derive(Clone, Copy, Debug)]
pub struct DumpRequest {
    /// Bitmask of `TcpState::kernel_mask` values.
    pub states: u32,
    /// Ask for `tcp_info` (INET_DIAG_INFO) with every socket: costly (the kernel locks
    /// each socket to fill it), so only for the states that need it.
    pub with_tcp_info: bool,
}

impl DumpRequest {
    pub fn for_states(states: impl IntoIterator<Item = TcpState>, with_tcp_info: bool) -> Self {
        let states = states.into_iter().fold(0, |mask, s| mask | s.kernel_mask());
        DumpRequest {
            states,
            with_tcp_info,
        }
    }
}

/// Appends one netlink message (header, then `payload`) to `out`: a request datagram
/// may carry several.
pub(super) fn push_message(
    out: &mut Vec<u8>,
    message_type: u16,
    flags: u16,
    sequence: u32,
    payload: &[u8],
) {
    out.extend_from_slice(&netlink_header(
        payload.len(),
        message_type,
        flags,
        sequence,
    ));
    out.extend_from_slice(payload);
}

fn netlink_header(payload_len: usize, message_type: u16, flags: u16, sequence: u32) -> [u8; 16] {
    let mut header = [0u8; 16];
    let length = (16 + payload_len) as u32;
    header[0..4].copy_from_slice(&length.to_ne_bytes());
    header[4..6].copy_from_slice(&message_type.to_ne_bytes());
    header[6..8].copy_from_slice(&flags.to_ne_bytes());
    header[8..12].copy_from_slice(&sequence.to_ne_bytes());
    header
}

fn extensions(request: DumpRequest) -> u8 {
    if request.with_tcp_info {
        1 << (INET_DIAG_INFO - 1)
    } else {
        0
    }
}

/// `struct inet_diag_req` (legacy): family, src_len, dst_len, ext, id, states, dbs.
pub(super) fn legacy_request(request: DumpRequest) -> [u8; 60] {
    let mut message = [0u8; 60];
    message[0] = libc::AF_UNSPEC as u8;
    message[3] = extensions(request);
    // bytes 4..52: inet_diag_sockid, all zero (no filter); cookie "no cookie" = ~0.
    message[44..52].copy_from_slice(&[0xff; 8]);
    message[52..56].copy_from_slice(&request.states.to_ne_bytes());
    message
}

/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id. With `exact`, the
/// id names one socket (addresses, ports, cookie) for a non-dump lookup.
pub(super) fn by_family_request(
    family: u8,
    request: DumpRequest,
    exact: Option<&SocketRecord>,
) -> [u8; 56] {
    let mut message = [0u8; 56];
    message[0] = family;
    message[1] = IPPROTO_TCP;
    message[2] = extensions(request);
    message[4..8].copy_from_slice(&request.states.to_ne_bytes());
    let id = &mut message[8..56];
    match exact {
        None => id[40..48].copy_from_slice(&[0xff; 8]),
        Some(record) => {
            id[0..2].copy_from_slice(&record.local_port.to_be_bytes());
            id[2..4].copy_from_slice(&record.remote_port.to_be_bytes());
            write_address(&mut id[4..20], record.local_addr);
            write_address(&mut id[20..36], record.remote_addr);
            id[36..40].copy_from_slice(&record.bound_dev_if.to_ne_bytes());
            id[40..48].copy_from_slice(&record.cookie.to_ne_bytes());
        }
    }
    message
}

fn write_address(target: &mut [u8], address: IpAddr) {
    match address {
        IpAddr::V4(v4) => target[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => target.copy_from_slice(&v6.octets()),
    }
}
