//! Decoding: netlink messages of one read into `SocketRecord`s, straight from the receive
//! buffer, with the de-duplication a non-atomic dump needs.

use std::io;

use netlink_packet_core::{NetlinkBuffer, Parseable};
use netlink_packet_sock_diag::inet::InetResponseHeader;
use netlink_packet_sock_diag::inet::Timer;

use crate::kernel::record::{SocketRecord, TcpInfoExcerpt, TcpState};
use crate::kernel::sockdiag::error::DumpError;
use crate::kernel::sockdiag::request::INET_DIAG_INFO;

pub(super) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;
/// `struct inet_diag_msg` without attributes.
const INET_DIAG_MSG_LEN: usize = 72;
/// Offsets into `struct tcp_info` of the fields we read (linux/tcp.h, stable ABI).
const TCP_INFO_LAST_DATA_RECV: usize = 52;
const TCP_INFO_LAST_ACK_RECV: usize = 56;
/// How many cookies of the previous read are kept for de-duplication (see `Deduper`).
const DEDUP_WINDOW: usize = 64;

/// Counts of what a dump passed over without failing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Sockets reported twice by a non-atomic dump and dropped.
    pub duplicates: u64,
    /// Sockets in a state this build does not know (a newer kernel).
    pub unknown_states: u64,
    /// Walks of every state but LISTEN made by a BPF iterator pass, and by a sock_diag
    /// dump (set by the sampler's table source; other dumps leave both at 0).
    pub walks_by_iterator: u64,
    pub walks_by_sock_diag: u64,
}

impl DumpStats {
    pub fn add(&mut self, other: DumpStats) {
        self.duplicates += other.duplicates;
        self.unknown_states += other.unknown_states;
        self.walks_by_iterator += other.walks_by_iterator;
        self.walks_by_sock_diag += other.walks_by_sock_diag;
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReadOutcome {
    More,
    Done,
}

/// Decodes one `recv` worth of netlink messages.
pub(super) fn decode_read(
    data: &[u8],
    sequence: u32,
    deduper: &mut Deduper,
    stats: &mut DumpStats,
    on_record: &mut dyn FnMut(&SocketRecord),
) -> Result<ReadOutcome, DumpError> {
    let mut offset = 0;
    while offset < data.len() {
        let message = NetlinkBuffer::new_checked(&data[offset..])
            .map_err(|e| DumpError::Decode(format!("netlink header: {e}")))?;
        let length = message.length() as usize;
        if message.sequence_number() != sequence {
            // A late answer to an earlier, abandoned request: not ours.
            offset += align4(length);
            continue;
        }
        if message.flags() & NLM_F_DUMP_INTR != 0 {
            return Err(DumpError::Interrupted);
        }
        match message.message_type() {
            NLMSG_DONE => return Ok(ReadOutcome::Done),
            NLMSG_ERROR => {
                let code = error_code(&message)?;
                if code == 0 {
                    return Ok(ReadOutcome::Done); // an ACK
                }
                return Err(DumpError::Kernel(io::Error::from_raw_os_error(-code)));
            }
            _ => {
                if let Some(record) = decode_socket(message.payload(), stats)? {
                    if deduper.is_duplicate(record.cookie) {
                        stats.duplicates += 1;
                    } else {
                        on_record(&record);
                    }
                }
            }
        }
        offset += align4(length);
    }
    Ok(ReadOutcome::More)
}

/// The (negative) errno of an NLMSG_ERROR message; 0 is an ACK.
pub(super) fn error_code(message: &NetlinkBuffer<&[u8]>) -> Result<i32, DumpError> {
    message
        .payload()
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| DumpError::Decode("truncated NLMSG_ERROR".into()))
}

/// Decodes one `inet_diag_msg` and its attributes. `Ok(None)` for a socket skipped on
/// purpose (unknown state), `Err` for a malformed message.
pub fn decode_socket(
    payload: &[u8],
    stats: &mut DumpStats,
) -> Result<Option<SocketRecord>, DumpError> {
    let header = InetResponseHeader::parse(payload)
        .map_err(|e| DumpError::Decode(format!("inet_diag_msg: {e}")))?;
    let Some(state) = TcpState::from_kernel(header.state) else {
        stats.unknown_states += 1;
        return Ok(None);
    };
    let attributes = payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    let tcp_info = match find_attribute(attributes, INET_DIAG_INFO)? {
        Some(value) => Some(decode_tcp_info(value)?),
        None => None,
    };
    let id = &header.socket_id;
    Ok(Some(SocketRecord {
        state,
        local_addr: id.source_address,
        local_port: id.source_port,
        remote_addr: id.destination_address,
        remote_port: id.destination_port,
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        inode: header.inode,
        uid: header.uid,
        cookie: u64::from_ne_bytes(id.cookie),
        keepalive_armed: matches!(header.timer, Some(Timer::KeepAlive(_))),
        bound_dev_if: id.interface_id,
        tcp_info,
        held_by: 0,
    }))
}

/// The value of the first attribute of `kind` among `attributes` (netlink TLVs, each
/// 4-byte aligned). The kernel puts four or five attributes on every socket whatever
/// was asked (shutdown, mark, cgroup, socket options); a walk of their headers costs a
/// few loads, where netlink-packet-core's generic `NlasIterator` cost ~2 % of the
/// daemon's CPU at 100 pods beside a 100k-socket table (perf, 2026-12-02). Other
/// attributes, and ones newer than this build, are skipped; one whose length does not
/// fit is an error, trailing bytes too few for a header are ignored.
fn find_attribute(attributes: &[u8], kind: u16) -> Result<Option<&[u8]>, DumpError> {
    /// The nested and byte-order flags of `nla_type`.
    const NLA_TYPE_MASK: u16 = 0x3fff;
    let mut offset = 0;
    while let Some(header) = attributes.get(offset..offset + 4) {
        let length = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let this_kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let value = attributes
            .get(offset + 4..offset + length)
            .filter(|_| length >= 4)
            .ok_or_else(|| {
                DumpError::Decode(format!(
                    "attribute {this_kind} of {length} bytes at {offset} of {}",
                    attributes.len()
                ))
            })?;
        if this_kind == kind {
            return Ok(Some(value));
        }
        offset += (length + 3) & !3;
    }
    Ok(None)
}

fn decode_tcp_info(value: &[u8]) -> Result<TcpInfoExcerpt, DumpError> {
    let field = |offset: usize| {
        value
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| DumpError::Decode(format!("tcp_info of {} bytes", value.len())))
    };
    Ok(TcpInfoExcerpt {
        last_data_recv_ms: field(TCP_INFO_LAST_DATA_RECV)?,
        last_ack_recv_ms: field(TCP_INFO_LAST_ACK_RECV)?,
    })
}

/// Drops sockets a non-atomic dump reports twice.
///
/// inet_diag resumes each read at (hash bucket, position in bucket); a socket inserted at
/// the head of that bucket meanwhile shifts the chain, and the last socket of the previous
/// read comes again at the start of the next. Duplicates can therefore only pair the
/// first sockets of a read with the last ones of the read before, so a small window of
/// cookies suffices and memory stays flat whatever the table size. A chain longer than
/// the window (never seen: the kernel sizes the hash to the socket count) could let one
/// through.
pub(crate) struct Deduper {
    /// The last `DEDUP_WINDOW` cookies of the previous read and of this one (rings).
    previous: [u64; DEDUP_WINDOW],
    current: [u64; DEDUP_WINDOW],
    previous_len: usize,
    position_in_read: usize,
}

impl Default for Deduper {
    fn default() -> Self {
        Deduper {
            previous: [0; DEDUP_WINDOW],
            current: [0; DEDUP_WINDOW],
            previous_len: 0,
            position_in_read: 0,
        }
    }
}

impl Deduper {
    pub(crate) fn start_read(&mut self) {
        std::mem::swap(&mut self.previous, &mut self.current);
        self.previous_len = self.position_in_read.min(DEDUP_WINDOW);
        self.position_in_read = 0;
    }

    pub(crate) fn is_duplicate(&mut self, cookie: u64) -> bool {
        let early = self.position_in_read < DEDUP_WINDOW;
        self.current[self.position_in_read % DEDUP_WINDOW] = cookie;
        self.position_in_read += 1;
        early && self.previous[..self.previous_len].contains(&cookie)
    }
}

pub(super) fn align4(length: usize) -> usize {
    (length.max(16) + 3) & !3
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::kernel::sockdiag::request::push_message;

    /// Builds an inet_diag_msg as the kernel lays it out.
    fn diag_message(state: u8, local_port: u16, recv_queue: u32, cookie: u64) -> Vec<u8> {
        let mut m = vec![0u8; INET_DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = state;
        m[4..6].copy_from_slice(&local_port.to_be_bytes());
        m[6..8].copy_from_slice(&40000u16.to_be_bytes());
        m[8..12].copy_from_slice(&[127, 0, 0, 1]);
        m[24..28].copy_from_slice(&[127, 0, 0, 2]);
        m[44..52].copy_from_slice(&cookie.to_ne_bytes());
        m[56..60].copy_from_slice(&recv_queue.to_ne_bytes());
        m[68..72].copy_from_slice(&77u32.to_ne_bytes()); // inode
        m
    }

    fn with_netlink_header(payload: &[u8], message_type: u16, sequence: u32) -> Vec<u8> {
        let mut m = Vec::new();
        push_message(&mut m, message_type, 0, sequence, payload);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn decodes_the_fixed_header() {
        let mut stats = DumpStats::default();
        let record = decode_socket(&diag_message(8, 8080, 6, 42), &mut stats)
            .expect("valid")
            .expect("known state");
        assert_eq!(record.state, TcpState::CloseWait);
        assert_eq!(record.local_port, 8080);
        assert_eq!(record.remote_port, 40000);
        assert_eq!(record.local_addr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(record.remote_addr, IpAddr::from([127, 0, 0, 2]));
        assert_eq!(record.recv_queue, 6);
        assert_eq!(record.inode, 77);
        assert_eq!(record.cookie, 42);
        assert_eq!(record.tcp_info, None);
    }

    #[test]
    fn reads_last_ack_recv_from_tcp_info_attribute() {
        let mut payload = diag_message(8, 80, 1, 1);
        let mut info = vec![0u8; 232];
        info[TCP_INFO_LAST_DATA_RECV..][..4].copy_from_slice(&9000u32.to_ne_bytes());
        info[TCP_INFO_LAST_ACK_RECV..][..4].copy_from_slice(&1500u32.to_ne_bytes());
        payload.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        payload.extend_from_slice(&info);
        let record = decode_socket(&payload, &mut DumpStats::default())
            .expect("valid")
            .expect("known state");
        let info = record.tcp_info.expect("tcp_info present");
        assert_eq!(info.last_ack_recv_ms, 1500);
        assert_eq!(info.last_data_recv_ms, 9000);
    }

    /// tcp_info found behind the attributes the kernel always adds (one of an odd
    /// length, padded; one with a flag bit in its type), whatever their order.
    #[test]
    fn finds_tcp_info_among_other_attributes() {
        let attribute = |kind: u16, value: &[u8]| {
            let mut bytes = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
            bytes.extend_from_slice(&kind.to_ne_bytes());
            bytes.extend_from_slice(value);
            while !bytes.len().is_multiple_of(4) {
                bytes.push(0);
            }
            bytes
        };
        let mut info = vec![0u8; 232];
        info[TCP_INFO_LAST_ACK_RECV..][..4].copy_from_slice(&700u32.to_ne_bytes());
        let mut payload = diag_message(8, 80, 1, 1);
        payload.extend(attribute(8, &[1])); // INET_DIAG_SHUTDOWN: 5 bytes, padded
        payload.extend(attribute(0x4000 | 21, &[0; 8])); // a flag bit on another kind
        payload.extend(attribute(INET_DIAG_INFO, &info));
        let record = decode_socket(&payload, &mut DumpStats::default())
            .expect("valid")
            .expect("known state");
        assert_eq!(record.tcp_info.map(|i| i.last_ack_recv_ms), Some(700));
        let mut without = diag_message(8, 80, 1, 1);
        without.extend(attribute(8, &[1]));
        without.extend_from_slice(&[0, 0]); // too few bytes for another header
        let record = decode_socket(&without, &mut DumpStats::default()).expect("valid");
        assert_eq!(record.and_then(|r| r.tcp_info), None);
        let mut zero_length = diag_message(8, 80, 1, 1);
        zero_length.extend_from_slice(&[0, 0, 8, 0]);
        assert!(matches!(
            decode_socket(&zero_length, &mut DumpStats::default()),
            Err(DumpError::Decode(_))
        ));
    }

    #[test]
    fn skips_and_counts_unknown_states() {
        let mut stats = DumpStats::default();
        let result = decode_socket(&diag_message(13, 80, 0, 1), &mut stats).expect("valid");
        assert!(result.is_none());
        assert_eq!(stats.unknown_states, 1);
    }

    #[test]
    fn rejects_truncated_messages_and_attributes() {
        let mut stats = DumpStats::default();
        let message = diag_message(1, 80, 0, 1);
        for cut in [0, 10, INET_DIAG_MSG_LEN - 1] {
            assert!(matches!(
                decode_socket(&message[..cut], &mut stats),
                Err(DumpError::Decode(_))
            ));
        }
        let mut with_bad_attribute = message.clone();
        with_bad_attribute.extend_from_slice(&[200, 0, 2, 0, 1, 2, 3, 4]); // claims 200 bytes
        assert!(matches!(
            decode_socket(&with_bad_attribute, &mut stats),
            Err(DumpError::Decode(_))
        ));
        let mut short_info = message;
        short_info.extend_from_slice(&[8, 0, 2, 0, 1, 2, 3, 4]); // 4-byte tcp_info
        assert!(matches!(
            decode_socket(&short_info, &mut stats),
            Err(DumpError::Decode(_))
        ));
    }

    #[test]
    fn drops_a_socket_repeated_at_the_start_of_the_next_read() {
        let mut deduper = Deduper::default();
        let mut stats = DumpStats::default();
        let mut seen = Vec::new();
        let first: Vec<u8> = [1u64, 2, 3]
            .iter()
            .flat_map(|&c| with_netlink_header(&diag_message(1, 80, 0, c), 20, 7))
            .collect();
        let second: Vec<u8> = [3u64, 4]
            .iter()
            .flat_map(|&c| with_netlink_header(&diag_message(1, 80, 0, c), 20, 7))
            .collect();
        for read in [first, second] {
            deduper.start_read();
            let outcome = decode_read(&read, 7, &mut deduper, &mut stats, &mut |r| {
                seen.push(r.cookie)
            })
            .expect("valid read");
            assert_eq!(outcome, ReadOutcome::More);
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert_eq!(stats.duplicates, 1);
    }

    #[test]
    fn done_error_and_interrupted_messages_end_the_read() {
        let mut deduper = Deduper::default();
        let mut stats = DumpStats::default();
        let done = with_netlink_header(&[0; 4], NLMSG_DONE, 1);
        assert_eq!(
            decode_read(&done, 1, &mut deduper, &mut stats, &mut |_| {}).expect("done"),
            ReadOutcome::Done
        );
        let refused = with_netlink_header(&(-libc::EPERM).to_ne_bytes(), NLMSG_ERROR, 1);
        match decode_read(&refused, 1, &mut deduper, &mut stats, &mut |_| {}) {
            Err(DumpError::Kernel(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
            other => panic!("expected a kernel error, got {other:?}"),
        }
        let mut interrupted = with_netlink_header(&diag_message(1, 80, 0, 1), 20, 1);
        interrupted[6..8].copy_from_slice(&NLM_F_DUMP_INTR.to_ne_bytes());
        assert!(matches!(
            decode_read(&interrupted, 1, &mut deduper, &mut stats, &mut |_| {}),
            Err(DumpError::Interrupted)
        ));
        let truncated = &with_netlink_header(&diag_message(1, 80, 0, 1), 20, 1)[..40];
        assert!(matches!(
            decode_read(truncated, 1, &mut deduper, &mut stats, &mut |_| {}),
            Err(DumpError::Decode(_))
        ));
    }

    /// A deterministic fuzz: random bytes, and every truncation of valid messages, must
    /// decode or fail with an error, never panic or loop.
    #[test]
    fn malformed_input_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut stats = DumpStats::default();
        for _ in 0..20_000 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_socket(&bytes, &mut stats);
            let _ = decode_read(&bytes, 1, &mut Deduper::default(), &mut stats, &mut |_| {});
        }
        let mut valid = with_netlink_header(&diag_message(8, 80, 1, 1), 20, 1);
        valid.extend(with_netlink_header(&diag_message(1, 81, 0, 2), 20, 1));
        for cut in 0..valid.len() {
            let _ = decode_read(
                &valid[..cut],
                1,
                &mut Deduper::default(),
                &mut stats,
                &mut |_| {},
            );
            // A lying length field (claims more than there is, or less than a header).
            let mut lying = valid.clone();
            lying[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            let _ = decode_read(&lying, 1, &mut Deduper::default(), &mut stats, &mut |_| {});
        }
    }

    #[test]
    fn messages_of_another_sequence_are_ignored() {
        let mut seen = 0;
        let stale = with_netlink_header(&diag_message(1, 80, 0, 1), 20, 99);
        decode_read(
            &stale,
            1,
            &mut Deduper::default(),
            &mut DumpStats::default(),
            &mut |_| seen += 1,
        )
        .expect("valid");
        assert_eq!(seen, 0);
    }
}
