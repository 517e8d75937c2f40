//! The records the BPF program shares with user space, mirrored from
//! bpf/state_change.h (change both together), and the decoding of ring buffer records.
//!
//! Ring buffer records are decoded field by field from bytes, so a short or malformed
//! record is an error, never undefined behaviour. Map values are plain `#[repr(C)]`
//! structs of integers, which aya copies in and out as bytes (`Pod`).

use std::net::SocketAddr;

use super::record_bytes::Record;

/// Kernel TCP state numbers 0..=12 (0 unused, 12 is NEW_SYN_RECV): `TCP_STATE_SLOTS`.
pub const STATE_SLOTS: usize = 13;

/// NETNS_FILTER value: the namespace's transitions are counted, and sent per
/// `event_states`.
pub const NETNS_SAMPLED: u8 = 1;
/// NETNS_FILTER flag: every transition of the namespace is sent (it is followed socket
/// by socket between full dumps).
pub const NETNS_EVERY_TRANSITION: u8 = 2;

/// `struct state_change` as sent through the ring buffer.
pub const STATE_CHANGE_LEN: usize = 72;

/// `struct counters`: one copy per CPU in a per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub transitions: [[u64; STATE_SLOTS]; STATE_SLOTS],
    pub lost: u64,
    pub netns_overflow: u64,
    pub unknown_states: u64,
    pub filtered: u64,
    /// `SLOT_NESTED` only: transitions the nested program handled for the main one.
    pub rescued: u64,
    /// `SLOT_MAIN` only: the transitions the main program began last, a ring.
    pub handled: [u64; HANDLED_KEYS],
    pub handled_next: u64,
}
const _: () =
    assert!(std::mem::size_of::<Counters>() == (STATE_SLOTS * STATE_SLOTS + 6 + HANDLED_KEYS) * 8);

/// `HANDLED_KEYS`: transitions the main program remembers for the nested one.
const HANDLED_KEYS: usize = 16;

/// COUNTERS slots, and `NetnsTransition::slot`: what the main program counted, and what
/// the nested program counted for it.
pub const SLOT_MAIN: u32 = 0;
pub const SLOT_NESTED: u32 = 1;

// SAFETY: integers only, no padding, any bit pattern is valid.
unsafe impl aya::Pod for Counters {}

/// `struct netns_transition`: the key of the per-namespace transition counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsTransition {
    pub netns_inum: u32,
    pub from: u8,
    pub to: u8,
    /// `SLOT_MAIN` or `SLOT_NESTED`: summed by user space.
    pub slot: u16,
}
const _: () = assert!(std::mem::size_of::<NetnsTransition>() == 8);

// SAFETY: integers only, no padding (4 + 1 + 1 + 2), any bit pattern is valid.
unsafe impl aya::Pod for NetnsTransition {}

/// One decoded ring buffer record, before its timestamp is put on the wall clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawStateChange {
    pub timestamp_ns: u64,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub netns_inum: u32,
    pub old_state: u8,
    pub new_state: u8,
    /// The device the socket is bound to (0: none).
    pub bound_dev_if: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Decodes `struct state_change`. `None` when the record is too short.
pub fn decode(bytes: &[u8]) -> Option<RawStateChange> {
    let record = Record::<STATE_CHANGE_LEN>::new(bytes)?;
    let family = record.u16_at(28);
    Some(RawStateChange {
        timestamp_ns: record.u64_at(0),
        cookie: record.u64_at(8),
        netns_cookie: record.u64_at(16),
        netns_inum: record.u32_at(24),
        local: SocketAddr::new(record.ip_at(family, 40), record.u16_at(30)),
        remote: SocketAddr::new(record.ip_at(family, 56), record.u16_at(32)),
        old_state: record.u8_at(34),
        new_state: record.u8_at(35),
        bound_dev_if: record.u32_at(36),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn record(family: u16) -> Vec<u8> {
        let mut r = vec![0u8; STATE_CHANGE_LEN];
        r[0..8].copy_from_slice(&123u64.to_ne_bytes());
        r[8..16].copy_from_slice(&0xC00C1Eu64.to_ne_bytes());
        r[16..24].copy_from_slice(&4096u64.to_ne_bytes());
        r[24..28].copy_from_slice(&4026531840u32.to_ne_bytes());
        r[28..30].copy_from_slice(&family.to_ne_bytes());
        r[30..32].copy_from_slice(&8080u16.to_ne_bytes());
        r[32..34].copy_from_slice(&40000u16.to_ne_bytes());
        r[34] = 1; // ESTABLISHED
        r[35] = 8; // CLOSE_WAIT
        r
    }

    #[test]
    fn decodes_an_ipv4_record() {
        let mut r = record(2);
        r[40..44].copy_from_slice(&[127, 0, 0, 1]);
        r[56..60].copy_from_slice(&[10, 0, 0, 2]);
        r[36..40].copy_from_slice(&3u32.to_ne_bytes());
        let e = decode(&r).expect("a full record");
        assert_eq!(e.bound_dev_if, 3);
        assert_eq!(e.timestamp_ns, 123);
        assert_eq!(e.cookie, 0xC00C1E);
        assert_eq!(e.netns_cookie, 4096);
        assert_eq!(e.netns_inum, 4026531840);
        assert_eq!((e.old_state, e.new_state), (1, 8));
        assert_eq!(e.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.remote, "10.0.0.2:40000".parse().unwrap());
    }

    #[test]
    fn decodes_an_ipv6_record() {
        let mut r = record(10);
        r[40..56].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        r[56..72].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        let e = decode(&r).expect("a full record");
        assert_eq!(e.local, "[::1]:8080".parse().unwrap());
        assert_eq!(e.remote, "[fd00::2]:40000".parse().unwrap());
    }

    #[test]
    fn a_short_record_is_rejected() {
        assert_eq!(decode(&record(2)[..71]), None);
        // The ring buffer rounds records up to 8 bytes: trailing bytes are ignored.
        let mut long = record(2);
        long.extend_from_slice(&[0; 8]);
        assert!(decode(&long).is_some());
    }
}
