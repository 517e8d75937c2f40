//! Kernel edge of the events mode: every TCP state change, as it happens, from the
//! tracepoint `sock:inet_sock_set_state` through an eBPF program (bpf/state_change.bpf.c,
//! built by build.rs).
//!
//! What the kernel side keeps, and why:
//! - transition counts, globally (per CPU) and per network namespace, updated for every
//!   TCP transition: exact whatever happens to the event stream;
//! - a bounded ring buffer of `StateChange` events for the transitions the config asks
//!   for (by default those from or to CLOSE_WAIT: that is what ages need, and it keeps
//!   the ring small); a full ring drops the event and counts it in `lost`, the TCP stack
//!   never waits.
//!
//! Events carry the socket cookie and the network namespace: the same identity sock_diag
//! reports, so they join the socket table. The tracepoint fires in softirq context, so
//! there is no owning process here; attribution comes from the join.
//!
//! User space reads without a thread of its own: the sampler thread calls `drain`
//! (non-blocking) before each sample and every quarter second between samples, which
//! keeps tracking state on that thread with no locks. The ring must then hold a quarter
//! second of events (`EventsConfig::ring_bytes`), not a whole sample interval; a caller
//! that wants to drain on demand can wait for data on the ring's fd (`AsFd`).
//!
//! Needs: kernel BTF (/sys/kernel/btf/vmlinux), CAP_BPF + CAP_PERFMON (or
//! CAP_SYS_ADMIN), Linux 5.8+ (ring buffer; BTF tracepoints 5.5, socket cookies in
//! tracing programs 5.12).

mod abi;
mod clock;
mod error;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::kernel::record::TcpState;

pub use abi::STATE_SLOTS;
pub use clock::{WallOffset, monotonic_now_ns};
pub use error::EventsError;

/// The compiled program, embedded at build time (see build.rs).
static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/state_change.bpf.o"));

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEPOINT: &str = "inet_sock_set_state";
/// Bytes one event takes in the ring: the record and the ring's 8-byte header.
pub const RING_BYTES_PER_EVENT: u32 = abi::STATE_CHANGE_LEN as u32 + 8;

/// Which transitions are sent as events (all of them are counted regardless).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// Bit n: send transitions from or to kernel state n.
    mask: u32,
}

impl EventFilter {
    /// Every transition.
    pub fn all() -> Self {
        EventFilter { mask: u32::MAX }
    }

    /// Transitions from or to any of `states`.
    pub fn touching(states: impl IntoIterator<Item = TcpState>) -> Self {
        EventFilter {
            mask: states
                .into_iter()
                .fold(0, |mask, state| mask | (1 << state as u32)),
        }
    }
}

/// Kernel-side sizes and what to send. Kernel memory is about `ring_bytes`, plus
/// 1.4 KiB per CPU for the global counts, plus, with `count_per_netns`, `netns_keys`
/// times (8 bytes per CPU + about 64) preallocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Ring buffer size: a power of two, at least one page. Default 1 MiB: about 13,000
    /// events (80 bytes each) between two drains, 52,000 a second at the daemon's
    /// quarter-second drains. User space maps the data pages twice (for reads across the
    /// wrap), so a ring that has wrapped counts twice its size in the exporter's RSS.
    pub ring_bytes: u32,
    /// Count transitions per network namespace too (`transitions_by_netns`). Costs
    /// one hash lookup per transition: measured, about 1.5% more CPU per connection
    /// under loopback churn, so off by default (the global matrix is always exact).
    pub count_per_netns: bool,
    /// (namespace, from, to) keys counted per namespace. Default 4,096: about 270
    /// namespaces with every transition TCP makes in practice (about 15 each).
    pub netns_keys: u32,
    pub events: EventFilter,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            ring_bytes: 1 << 20,
            count_per_netns: false,
            netns_keys: 4096,
            events: EventFilter::touching([TcpState::CloseWait]),
        }
    }
}

impl EventsConfig {
    fn validate(&self) -> Result<(), EventsError> {
        let page = page_size();
        if !self.ring_bytes.is_power_of_two() || (self.ring_bytes as usize) < page {
            return Err(EventsError::Config(format!(
                "ring buffer size {} must be a power of two of at least {page} bytes",
                self.ring_bytes
            )));
        }
        if self.netns_keys == 0 {
            return Err(EventsError::Config(
                "the per-namespace transition map needs at least one key".into(),
            ));
        }
        Ok(())
    }
}

/// A network namespace as the kernel names it. `inum` is the inode of
/// /proc/PID/ns/net (what per-namespace series are keyed by); `cookie` is never
/// reused, where an inode number can be once its namespace is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    pub inum: u32,
    pub cookie: u64,
}

/// One TCP state change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateChange {
    /// CLOCK_MONOTONIC nanoseconds, as the kernel took it.
    pub monotonic_ns: u64,
    /// The same moment in Unix seconds.
    pub unix_seconds: f64,
    /// Socket cookie: sock_diag reports the same value for the same socket.
    pub cookie: u64,
    pub netns: NetnsId,
    /// Kernel state numbers (include/net/tcp_states.h).
    pub from: u8,
    pub to: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl StateChange {
    pub fn from_state(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.from)
    }

    pub fn to_state(&self) -> Option<TcpState> {
        TcpState::from_kernel(self.to)
    }
}

/// Transition counts by kernel state number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transitions {
    counts: [[u64; STATE_SLOTS]; STATE_SLOTS],
}

impl Default for Transitions {
    fn default() -> Self {
        Transitions {
            counts: [[0; STATE_SLOTS]; STATE_SLOTS],
        }
    }
}

impl Transitions {
    pub fn get(&self, from: TcpState, to: TcpState) -> u64 {
        self.counts[from as usize][to as usize]
    }

    /// Every non-zero count, by kernel state number.
    pub fn nonzero(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
        self.counts.iter().enumerate().flat_map(|(from, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(move |(to, count)| (from as u8, to as u8, *count))
        })
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }
}

/// The kernel's counters, summed over CPUs. All only go up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every TCP transition in every namespace.
    pub transitions: Transitions,
    /// Events not sent because the ring buffer was full.
    pub lost: u64,
    /// Transitions not counted per namespace because that map was full (they are in
    /// `transitions`).
    pub netns_overflow: u64,
    /// Transitions to or from a state number this program does not know.
    pub unknown_states: u64,
}

/// The attached program and its maps. Dropping it detaches the program.
pub struct EventSource {
    // Owns the program and its link; kept for the lifetime of the source.
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, abi::Counters>,
    netns: PerCpuHashMap<MapData, abi::NetnsTransition, u64>,
    max_per_drain: usize,
    malformed: u64,
}

impl EventSource {
    /// Loads the program and attaches it to `sock:inet_sock_set_state`. Errors name
    /// what is missing (BTF, privileges, the tracepoint).
    pub fn attach(config: &EventsConfig) -> Result<EventSource, EventsError> {
        config.validate()?;
        if let Err(source) = std::fs::metadata(BTF_PATH) {
            return Err(EventsError::NoBtf {
                path: BTF_PATH.into(),
                source,
            });
        }
        // The kernel's BTF is parsed twice, never both at once: EbpfLoader::new() parses
        // its own copy for the CO-RE relocations (freed with the loader at the end of the
        // statement), then ours names the attach target. A parsed vmlinux BTF peaks at
        // ~19 MB; handing ours to the loader kept two alive: a 38 MB peak, more than
        // the exporter needs for 500k sockets.
        let loaded = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_bytes)
            .map_max_entries("NETNS_TRANSITIONS", config.netns_keys)
            .override_global("event_states", &config.events.mask, true)
            .override_global("count_per_netns", &u32::from(config.count_per_netns), true)
            .load(PROGRAM);
        let btf = Btf::from_sys_fs().map_err(|e| EventsError::NoBtf {
            path: BTF_PATH.into(),
            source: io::Error::other(e),
        })?;
        let mut ebpf = loaded.map_err(|e| EventsError::classify(&e, EventsError::Load))?;

        let program: &mut BtfTracePoint = ebpf
            .program_mut(TRACEPOINT)
            .ok_or_else(|| EventsError::Load(format!("no program {TRACEPOINT} in the object")))?
            .try_into()
            .map_err(|e: ProgramError| EventsError::Load(e.to_string()))?;
        program.load(TRACEPOINT, &btf).map_err(|e| match e {
            ProgramError::Btf(_) => {
                EventsError::TracepointMissing(format!("no btf_trace_{TRACEPOINT} in BTF"))
            }
            e => EventsError::classify(&e, EventsError::Load),
        })?;
        drop(btf);
        release_freed_heap();
        program
            .attach()
            .map_err(|e| EventsError::classify(&e, EventsError::Attach))?;

        let ring = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)
            .map_err(|e| EventsError::Load(e.to_string()))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?)
            .map_err(|e| EventsError::Load(e.to_string()))?;
        let netns = PerCpuHashMap::try_from(take_map(&mut ebpf, "NETNS_TRANSITIONS")?)
            .map_err(|e| EventsError::Load(e.to_string()))?;
        Ok(EventSource {
            _ebpf: ebpf,
            ring,
            counters,
            netns,
            max_per_drain: (config.ring_bytes / RING_BYTES_PER_EVENT) as usize,
            malformed: 0,
        })
    }

    /// Hands every event waiting in the ring to `on_event`, oldest first, and returns
    /// how many there were. Never blocks; stops after one ring's worth so a producer
    /// faster than the callback cannot keep it looping.
    pub fn drain(&mut self, mut on_event: impl FnMut(&StateChange)) -> usize {
        let clock = WallOffset::now();
        let mut count = 0;
        while count < self.max_per_drain {
            let Some(item) = self.ring.next() else { break };
            let Some(raw) = abi::decode(&item) else {
                self.malformed += 1;
                continue;
            };
            drop(item);
            count += 1;
            on_event(&StateChange {
                monotonic_ns: raw.timestamp_ns,
                unix_seconds: clock.unix_seconds(raw.timestamp_ns),
                cookie: raw.cookie,
                netns: NetnsId {
                    inum: raw.netns_inum,
                    cookie: raw.netns_cookie,
                },
                from: raw.old_state,
                to: raw.new_state,
                local: raw.local,
                remote: raw.remote,
            });
        }
        count
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counts(&self) -> io::Result<Counts> {
        let per_cpu = self.counters.get(&0, 0).map_err(io::Error::other)?;
        let mut counts = Counts::default();
        for cpu in per_cpu.iter() {
            for (from, row) in cpu.transitions.iter().enumerate() {
                for (to, n) in row.iter().enumerate() {
                    counts.transitions.counts[from][to] += n;
                }
            }
            counts.lost += cpu.lost;
            counts.netns_overflow += cpu.netns_overflow;
            counts.unknown_states += cpu.unknown_states;
        }
        Ok(counts)
    }

    /// Events lost to a full ring buffer since attach.
    pub fn lost(&self) -> io::Result<u64> {
        Ok(self.counts()?.lost)
    }

    /// Ring records that did not decode (a program/loader mismatch; should stay 0).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Transition counts per network namespace inode (empty unless
    /// `EventsConfig::count_per_netns`).
    pub fn transitions_by_netns(&self) -> io::Result<HashMap<u32, Transitions>> {
        let mut by_netns: HashMap<u32, Transitions> = HashMap::new();
        for entry in self.netns.iter() {
            let (key, per_cpu) = entry.map_err(io::Error::other)?;
            let count: u64 = per_cpu.iter().sum();
            let (from, to) = (usize::from(key.from), usize::from(key.to));
            if from < STATE_SLOTS && to < STATE_SLOTS {
                by_netns.entry(key.netns_inum).or_default().counts[from][to] = count;
            }
        }
        Ok(by_netns)
    }

    /// Drops the per-namespace counts of a namespace that is gone, so the bounded map
    /// keeps room for live ones. Returns how many keys were removed.
    pub fn forget_netns(&mut self, inum: u32) -> io::Result<usize> {
        let keys: Vec<abi::NetnsTransition> = self
            .netns
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.netns_inum == inum)
            .collect();
        for key in &keys {
            self.netns.remove(key).map_err(io::Error::other)?;
        }
        Ok(keys.len())
    }
}

impl AsFd for EventSource {
    /// The ring buffer's fd: readable (epoll) when events are waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, EventsError> {
    ebpf.take_map(name)
        .ok_or_else(|| EventsError::Load(format!("no map {name} in the object")))
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Returns the heap freed by the BTF parses to the kernel. glibc keeps freed chunks
/// mapped for reuse, so without this the ~19 MB of a parse stay in the exporter's RSS
/// for its whole life (measured: 27 MB RSS after attaching, 12 MB after the trim).
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_sends_close_wait_transitions_only() {
        let filter = EventsConfig::default().events;
        assert_eq!(filter.mask, 1 << 8);
        assert_eq!(EventFilter::all().mask, u32::MAX);
    }

    #[test]
    fn ring_size_must_be_a_power_of_two_of_at_least_a_page() {
        let bad = EventsConfig {
            ring_bytes: 3 << 20,
            ..EventsConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().reason(), "config");
        let tiny = EventsConfig {
            ring_bytes: 1024,
            ..EventsConfig::default()
        };
        assert!(tiny.validate().is_err());
        assert!(EventsConfig::default().validate().is_ok());
    }

    #[test]
    fn transitions_list_nonzero_counts_by_state_number() {
        let mut t = Transitions::default();
        t.counts[1][8] = 3;
        t.counts[8][9] = 2;
        assert_eq!(t.get(TcpState::Established, TcpState::CloseWait), 3);
        assert_eq!(t.nonzero().collect::<Vec<_>>(), vec![(1, 8, 3), (8, 9, 2)]);
        assert_eq!(t.total(), 5);
    }
}
