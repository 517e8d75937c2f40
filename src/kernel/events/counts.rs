//! The kernel's counters, summed over CPUs, and the transitions it skipped the program for.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use super::abi::{SLOT_MAIN, SLOT_NESTED};
use super::{EventMaps, STATE_SLOTS, TRACEPOINT};
use crate::kernel::record::TcpState;

/// Transition counts by kernel state number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transitions {
    pub(super) counts: [[u64; STATE_SLOTS]; STATE_SLOTS],
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

/// The kernel's counters, summed over CPUs. All only go up. The transition counts are
/// exact but for `skipped`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every TCP transition in every namespace (with the filter on: in the namespaces
    /// of the filter).
    pub transitions: Transitions,
    /// Events not sent because the ring buffer was full.
    pub lost: u64,
    /// Transitions neither program handled. The kernel does not run a tracing program
    /// on a CPU where it is already running: a transition in a softirq that interrupts
    /// the main program there skips it (`recursion_misses` in its fdinfo, Linux 5.12+;
    /// 0 where the kernel does not report it), and the nested program handles it
    /// (`rescued`), unless the same socket made the same transition among the main
    /// program's last 16 on that CPU.
    pub skipped: u64,
    /// Transitions the nested program handled because the kernel skipped the main one
    /// (counted in `transitions` and sent like the others).
    pub rescued: u64,
    /// Transitions not counted per namespace because that map was full (they are in
    /// `transitions`).
    pub netns_overflow: u64,
    /// Transitions to or from a state number this program does not know.
    pub unknown_states: u64,
    /// Transitions of namespaces outside the filter (`EventsConfig::netns_filter`):
    /// neither counted above nor sent.
    pub filtered: u64,
}

impl EventMaps {
    /// The kernel's counters, summed over CPUs and over what the main and the nested
    /// program counted.
    pub fn counts(&self) -> io::Result<Counts> {
        // The skips first, the rescues after: the kernel counts a skip just before the
        // nested program rescues it, so a skip read before its rescue (read the other
        // way round, ~550 a second under graceful churn) would count as lost and make
        // every followed namespace dump again.
        let skips = self.main_program_skips()?;
        let mut counts = Counts::default();
        let mut rescued = 0;
        for slot in [SLOT_MAIN, SLOT_NESTED] {
            let per_cpu = self.counters.get(&slot, 0).map_err(io::Error::other)?;
            for cpu in per_cpu.iter() {
                for (from, row) in cpu.transitions.iter().enumerate() {
                    for (to, n) in row.iter().enumerate() {
                        counts.transitions.counts[from][to] += n;
                    }
                }
                counts.lost += cpu.lost;
                counts.netns_overflow += cpu.netns_overflow;
                counts.unknown_states += cpu.unknown_states;
                counts.filtered += cpu.filtered;
                rescued += cpu.rescued;
            }
        }
        counts.rescued = rescued;
        counts.skipped = skips.saturating_sub(rescued);
        Ok(counts)
    }

    /// Transitions the kernel skipped the main program for, from its fdinfo: one small
    /// /proc read.
    fn main_program_skips(&self) -> io::Result<u64> {
        let program = self
            .ebpf
            .program(TRACEPOINT)
            .ok_or_else(|| io::Error::other(format!("no program {TRACEPOINT}")))?;
        let fd = program.fd().map_err(io::Error::other)?;
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        Ok(recursion_misses(&std::fs::read_to_string(path)?).unwrap_or(0))
    }
}

/// The `recursion_misses` line of a BPF program's fdinfo (`None` before Linux 5.12).
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::events::{EventSource, EventsConfig};

    #[test]
    fn transitions_list_nonzero_counts_by_state_number() {
        let mut t = Transitions::default();
        t.counts[1][8] = 3;
        t.counts[8][9] = 2;
        assert_eq!(t.get(TcpState::Established, TcpState::CloseWait), 3);
        assert_eq!(t.nonzero().collect::<Vec<_>>(), vec![(1, 8, 3), (8, 9, 2)]);
        assert_eq!(t.total(), 5);
    }

    /// A program's fdinfo as Linux 6.x prints it; older kernels lack the line.
    #[test]
    fn recursion_misses_are_read_from_the_program_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\n\
                      run_cnt:\t0\nrecursion_misses:\t7\nverified_insns:\t93\n";
        assert_eq!(recursion_misses(fdinfo), Some(7));
        assert_eq!(recursion_misses("prog_type:\t26\nrun_cnt:\t0\n"), None);
        assert_eq!(recursion_misses("recursion_misses:\tmany\n"), None);
    }

    /// Needs root and kernel BTF (as the events mode does): the attached program's
    /// fdinfo has the line on this kernel (6.x), so skips would be seen, not read as 0.
    #[test]
    fn the_attached_program_reports_its_skips() {
        let source = EventSource::attach(&EventsConfig::default()).expect("attach (root, BTF)");
        let program = source.maps.ebpf.program(TRACEPOINT).expect("the program");
        let fd = program.fd().expect("its descriptor").as_fd().as_raw_fd();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        assert!(recursion_misses(&fdinfo).is_some(), "{fdinfo}");
        source.counts().expect("the counters, skips included");
    }
}
