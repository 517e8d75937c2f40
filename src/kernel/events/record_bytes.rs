//! Reading the fixed-layout records our BPF programs write (bpf/*.h): native-endian
//! integers at known offsets, and a socket address from its family and 16 bytes. One
//! place for the three decoders (events, descriptors, the TCP table). A record is first
//! fixed to its length by the caller (`Record::new`), so every read below is in bounds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const AF_INET6: u16 = 10;

/// A record of exactly `N` bytes.
pub(super) struct Record<'a, const N: usize>(&'a [u8; N]);

impl<'a, const N: usize> Record<'a, N> {
    /// The first `N` bytes of `bytes`; `None` when there are fewer.
    pub(super) fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.get(..N)?.try_into().ok().map(Record)
    }

    /// `M` bytes from `at`. Panics on an offset past the record: the offsets are
    /// constants of the layout, checked by the decoders' tests.
    pub(super) fn array<const M: usize>(&self, at: usize) -> [u8; M] {
        let mut out = [0u8; M];
        out.copy_from_slice(&self.0[at..at + M]);
        out
    }

    pub(super) fn u8_at(&self, at: usize) -> u8 {
        self.0[at]
    }

    pub(super) fn u16_at(&self, at: usize) -> u16 {
        u16::from_ne_bytes(self.array(at))
    }

    pub(super) fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.array(at))
    }

    pub(super) fn u64_at(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.array(at))
    }

    /// The address of `family` in the 16 bytes at `at` (IPv4: the first 4), as the
    /// programs write it from `skc_rcv_saddr`/`skc_v6_rcv_saddr` and their peers.
    pub(super) fn ip_at(&self, family: u16, at: usize) -> IpAddr {
        if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>(at)))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>(at)))
        }
    }
}
