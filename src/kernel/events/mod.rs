//! Kernel edge of the events mode: every TCP state change, as it happens, from the
//! tracepoint `sock:inet_sock_set_state` through an eBPF program (bpf/state_change.bpf.c,
//! built by build.rs).
//!
//! What the kernel side keeps, and why:
//! - transition counts, globally (per CPU) and per network namespace, updated for every
//!   TCP transition the program runs for: exact whatever happens to the event stream.
//!   The kernel skips the program for a transition in a softirq that interrupts it on
//!   the same CPU (a tracing program never runs nested); it counts those in the
//!   program's `recursion_misses`, which `Counts::skipped` reports and user space
//!   treats as lost events;
//! - a bounded ring buffer of `StateChange` events for the transitions the config asks
//!   for (by default those from or to CLOSE_WAIT: that is what ages need, and it keeps
//!   the ring small); a full ring drops the event and counts it in `lost`, the TCP stack
//!   never waits.
//!
//! Events carry the socket cookie and the network namespace: the same identity sock_diag
//! reports, so they join the socket table. The tracepoint fires in softirq context, so
//! there is no owning process here; attribution comes from the join.
//!
//! With the namespace filter on (`EventsConfig::netns_filter`), the program counts and
//! sends only the transitions of the namespaces user space put in the filter
//! (`EventMaps::filter_netns`): the daemon keeps it equal to the namespaces it samples,
//! so churn elsewhere on the host costs one hash lookup per transition and never fills
//! the ring.
//!
//! The ring ([`EventRing`]) can be split off (`EventSource::split`) and moved to a
//! thread of its own that only drains it, so a busy sampler never lets it fill; the
//! maps ([`EventMaps`]) stay with the sampler. The program wakes that reader once
//! `EventsConfig::wakeup_bytes` wait in the ring, so a burst costs a few wake-ups, not
//! one per event.
//!
//! Needs: kernel BTF (/sys/kernel/btf/vmlinux), CAP_BPF + CAP_PERFMON (or
//! CAP_SYS_ADMIN), Linux 5.8+ (ring buffer; BTF tracepoints 5.5, socket cookies in
//! tracing programs 5.12).

mod abi;
mod btf_prune;
pub use abi::{NETNS_EVERY_TRANSITION, NETNS_SAMPLED};
mod clock;
mod core_type_ids;
mod counts;
mod error;
mod iter_link;
mod iter_load;
mod kernel_btf;
mod kfunc;
mod record_bytes;
mod ring;
pub mod socket_fds;
pub mod tcp_table;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::kernel::record::TcpState;

pub use abi::STATE_SLOTS;
pub use clock::{WallOffset, monotonic_now_ns};
pub use counts::{Counts, Transitions};
pub use error::EventsError;
pub use ring::{EventRing, Wake};

/// The compiled program, embedded at build time (see build.rs).
static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/state_change.bpf.o"));

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// The tracepoint, and the name of the main program on it.
const TRACEPOINT: &str = "inet_sock_set_state";
/// The program on the same tracepoint that handles what the kernel skipped the main one
/// for (see bpf/state_change.bpf.c).
const NESTED_PROGRAM: &str = "inet_sock_set_state_nested";
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
/// times (8 bytes per CPU + about 64) preallocated, plus with `netns_filter`,
/// `filter_keys` times about 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Ring buffer size: a power of two, at least one page. Default 1 MiB: about 13,000
    /// events (80 bytes each), 6,500 connections through CLOSE_WAIT, that the reader
    /// may fall behind by. User space maps the data pages twice (for reads across the
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
    /// Count and send only the transitions of the namespaces in the filter
    /// (`EventMaps::filter_netns`; empty at attach: nothing passes until it is set).
    pub netns_filter: bool,
    /// Namespaces the filter holds at most. Default 4,096.
    pub filter_keys: u32,
    /// Wake the reader once this many bytes wait in the ring (0: whenever an event
    /// arrives after the reader caught up, the kernel's default). The reader must then
    /// poll with a timeout for what stays below the mark.
    pub wakeup_bytes: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            ring_bytes: 1 << 20,
            count_per_netns: false,
            netns_keys: 4096,
            events: EventFilter::touching([TcpState::CloseWait]),
            netns_filter: false,
            filter_keys: 4096,
            wakeup_bytes: 0,
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
        if self.netns_keys == 0 || self.filter_keys == 0 {
            return Err(EventsError::Config(
                "the per-namespace maps need at least one key".into(),
            ));
        }
        if self.wakeup_bytes >= self.ring_bytes {
            return Err(EventsError::Config(format!(
                "the wake-up mark ({} bytes) must be below the ring's size ({})",
                self.wakeup_bytes, self.ring_bytes
            )));
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
    /// The device the socket is bound to (0: none); exact lookups need it.
    pub bound_dev_if: u32,
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

/// The attached program: its maps and its ring. Dropping it (or, after `split`, its
/// `EventMaps`) detaches the program.
pub struct EventSource {
    maps: EventMaps,
    ring: EventRing,
}

/// The program's link and its maps: counters, per-namespace counts, the namespace filter.
pub struct EventMaps {
    // Owns the program and its link; kept for the lifetime of the maps.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, abi::Counters>,
    netns: PerCpuHashMap<MapData, abi::NetnsTransition, u64>,
    filter: BpfHashMap<MapData, u32, u8>,
    /// What the filter holds, as last set.
    filtered: BTreeMap<u32, u8>,
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
        let mut ebpf = load(config)?;
        let load_error = |e: aya::maps::MapError| EventsError::Load(e.to_string());
        let ring = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(load_error)?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(load_error)?;
        let netns = PerCpuHashMap::try_from(take_map(&mut ebpf, "NETNS_TRANSITIONS")?)
            .map_err(load_error)?;
        let filter =
            BpfHashMap::try_from(take_map(&mut ebpf, "NETNS_FILTER")?).map_err(load_error)?;
        Ok(EventSource {
            maps: EventMaps {
                ebpf,
                counters,
                netns,
                filter,
                filtered: BTreeMap::new(),
            },
            ring: EventRing::new(ring, (config.ring_bytes / RING_BYTES_PER_EVENT) as usize)
                .map_err(|e| EventsError::Load(format!("events ring reader: {e}")))?,
        })
    }

    /// The maps and the ring apart, so the ring can be drained on a thread of its own.
    pub fn split(self) -> (EventMaps, EventRing) {
        (self.maps, self.ring)
    }

    /// Hands every event waiting in the ring to `on_event` (see `EventRing::drain`).
    pub fn drain(&mut self, on_event: impl FnMut(&StateChange)) -> usize {
        self.ring.drain(on_event)
    }

    pub fn maps(&self) -> &EventMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut EventMaps {
        &mut self.maps
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counts(&self) -> io::Result<Counts> {
        self.maps.counts()
    }

    /// Events lost to a full ring buffer since attach.
    pub fn lost(&self) -> io::Result<u64> {
        Ok(self.maps.counts()?.lost)
    }

    /// Ring records that did not decode (a program/loader mismatch; should stay 0).
    pub fn malformed(&self) -> u64 {
        self.ring.malformed()
    }

    /// See `EventMaps::transitions_by_netns`.
    pub fn transitions_by_netns(&self) -> io::Result<HashMap<u32, Transitions>> {
        self.maps.transitions_by_netns()
    }
}

/// Loads and attaches the program, its constants and map sizes set from `config`.
fn load(config: &EventsConfig) -> Result<Ebpf, EventsError> {
    // The kernel's BTF is parsed twice, never both at once: EbpfLoader::new() parses its
    // own copy for the CO-RE relocations (freed with the loader at the end of the
    // statement), then ours names the attach target. A parsed vmlinux BTF peaks at
    // ~19 MB; handing ours to the loader kept two alive: a 38 MB peak, more than the
    // exporter needs for 500k sockets.
    let loaded = EbpfLoader::new()
        .map_max_entries("EVENTS", config.ring_bytes)
        .map_max_entries("NETNS_TRANSITIONS", config.netns_keys)
        .map_max_entries("NETNS_FILTER", config.filter_keys)
        .override_global("event_states", &config.events.mask, true)
        .override_global("count_per_netns", &u32::from(config.count_per_netns), true)
        .override_global("filter_netns", &u32::from(config.netns_filter), true)
        .override_global("wakeup_bytes", &config.wakeup_bytes, true)
        .load(PROGRAM);
    let btf = Btf::from_sys_fs().map_err(|e| EventsError::NoBtf {
        path: BTF_PATH.into(),
        source: io::Error::other(e),
    })?;
    let mut ebpf = loaded.map_err(|e| EventsError::classify(&e, EventsError::Load))?;

    for name in [TRACEPOINT, NESTED_PROGRAM] {
        tracepoint_program(&mut ebpf, name)?
            .load(TRACEPOINT, &btf)
            .map_err(|e| match e {
                ProgramError::Btf(_) => {
                    EventsError::TracepointMissing(format!("no btf_trace_{TRACEPOINT} in BTF"))
                }
                e => EventsError::classify(&e, EventsError::Load),
            })?;
    }
    drop(btf);
    release_freed_heap();
    // Either order works: the nested program acts only while the main one runs.
    for name in [TRACEPOINT, NESTED_PROGRAM] {
        tracepoint_program(&mut ebpf, name)?
            .attach()
            .map_err(|e| EventsError::classify(&e, EventsError::Attach))?;
    }
    Ok(ebpf)
}

fn tracepoint_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut BtfTracePoint, EventsError> {
    ebpf.program_mut(name)
        .ok_or_else(|| EventsError::Load(format!("no program {name} in the object")))?
        .try_into()
        .map_err(|e: ProgramError| EventsError::Load(e.to_string()))
}

impl EventMaps {
    /// Makes `inodes` the namespaces whose transitions the program counts and sends
    /// (with `EventsConfig::netns_filter`; without it the filter is not read). Only
    /// the difference to the last call reaches the kernel. Namespaces beyond
    /// `EventsConfig::filter_keys` are left out and named in the error; the others
    /// are in.
    pub fn filter_netns(&mut self, inodes: &BTreeSet<u32>) -> io::Result<()> {
        let flags = inodes
            .iter()
            .map(|inode| (*inode, abi::NETNS_SAMPLED))
            .collect();
        self.filter_netns_with_flags(&flags)
    }

    /// As `filter_netns`, with each namespace's flags (`abi::NETNS_SAMPLED`, plus
    /// `abi::NETNS_EVERY_TRANSITION` for one followed socket by socket).
    pub fn filter_netns_with_flags(&mut self, wanted: &BTreeMap<u32, u8>) -> io::Result<()> {
        let gone: Vec<u32> = self
            .filtered
            .keys()
            .filter(|inode| !wanted.contains_key(inode))
            .copied()
            .collect();
        for inode in gone {
            // Already absent is what was wanted.
            let _ = self.filter.remove(&inode);
            self.filtered.remove(&inode);
        }
        let mut refused = Vec::new();
        for (inode, flags) in wanted {
            if self.filtered.get(inode) == Some(flags) {
                continue;
            }
            match self.filter.insert(inode, flags, 0) {
                Ok(()) => {
                    self.filtered.insert(*inode, *flags);
                }
                Err(e) => refused.push(format!("{inode}: {e}")),
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "namespaces left out of the events filter: {}",
                refused.join(", ")
            )))
        }
    }

    /// The namespaces the filter holds now, with their flags.
    pub fn filtered(&self) -> &BTreeMap<u32, u8> {
        &self.filtered
    }

    /// Transition counts per network namespace inode, the main and the nested
    /// program's summed (empty unless `EventsConfig::count_per_netns`).
    pub fn transitions_by_netns(&self) -> io::Result<HashMap<u32, Transitions>> {
        let mut by_netns: HashMap<u32, Transitions> = HashMap::new();
        for entry in self.netns.iter() {
            let (key, per_cpu) = entry.map_err(io::Error::other)?;
            let count: u64 = per_cpu.iter().sum();
            let (from, to) = (usize::from(key.from), usize::from(key.to));
            if from < STATE_SLOTS && to < STATE_SLOTS {
                by_netns.entry(key.netns_inum).or_default().counts[from][to] += count;
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
}
