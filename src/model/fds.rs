//! The fd cliff: every leaked socket is a descriptor, and a program that keeps leaking
//! ends at its RLIMIT_NOFILE (accept() fails with EMFILE, the server stops serving).
//! For the programs owning detail-state connections, the open descriptors and the soft
//! limit of the process nearest its limit; bounded like every per-process series.

use std::cmp::Reverse;

use foldhash::{HashMap, HashMapExt};

use crate::kernel::owners::FdUsage;
use crate::model::labels::OwnerKey;

/// The fd figures a program's series show: those of its process nearest its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessFds {
    pub pid: u32,
    pub open: u64,
    /// Soft RLIMIT_NOFILE; `None` when unlimited (no cliff).
    pub max: Option<u64>,
}

impl ProcessFds {
    /// "950/1024", "950/unlimited".
    pub fn figure(&self) -> String {
        match self.max {
            Some(max) => format!("{}/{max}", self.open),
            None => format!("{}/unlimited", self.open),
        }
    }

    /// How near the cliff, in millionths of the limit (0 when unlimited), then how many
    /// are open: what ranks processes.
    fn nearness(&self) -> (u64, u64) {
        let ratio = match self.max {
            Some(max) if max > 0 => self.open.saturating_mul(1_000_000) / max,
            _ => 0,
        };
        (ratio, self.open)
    }
}

/// Per label key, the process nearest its limit; at most `max_groups` series, the
/// programs nearest their limits first, the rest folded into `process="other"` (which
/// shows the nearest of those).
pub fn per_program(
    usages: Vec<(OwnerKey, u32, FdUsage)>,
    max_groups: usize,
) -> Vec<(OwnerKey, ProcessFds)> {
    let mut nearest: HashMap<OwnerKey, ProcessFds> = HashMap::new();
    for (key, pid, usage) in usages {
        let fds = ProcessFds {
            pid,
            open: usage.open,
            max: usage.soft_limit,
        };
        let slot = nearest.entry(key).or_insert(fds);
        if fds.nearness() > slot.nearness() {
            *slot = fds;
        }
    }
    let mut ranked: Vec<(OwnerKey, ProcessFds)> = nearest.into_iter().collect();
    ranked.sort_unstable_by_key(|(key, fds)| (Reverse(fds.nearness()), *key));
    if ranked.len() > max_groups {
        let folded = ranked.split_off(max_groups.saturating_sub(1));
        if let Some((_, nearest)) = folded.first() {
            ranked.push((OwnerKey::OTHER, *nearest));
        }
    }
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::ProcessId;

    fn key(process: u32) -> OwnerKey {
        OwnerKey {
            process: ProcessId(process),
            ..OwnerKey::default()
        }
    }

    fn usage(open: u64, max: Option<u64>) -> FdUsage {
        FdUsage {
            open,
            soft_limit: max,
        }
    }

    #[test]
    fn a_program_shows_its_process_nearest_the_cliff() {
        // A pre-fork server: three workers of one program.
        let fds = per_program(
            vec![
                (key(1), 10, usage(900, Some(65536))),
                (key(1), 11, usage(950, Some(1024))),
                (key(1), 12, usage(100, None)),
                (key(2), 20, usage(5000, None)),
            ],
            10,
        );
        assert_eq!(
            fds,
            vec![
                (
                    key(1),
                    ProcessFds {
                        pid: 11,
                        open: 950,
                        max: Some(1024)
                    }
                ),
                (
                    key(2),
                    ProcessFds {
                        pid: 20,
                        open: 5000,
                        max: None
                    }
                ),
            ]
        );
        assert_eq!(fds[0].1.figure(), "950/1024");
        assert_eq!(fds[1].1.figure(), "5000/unlimited");
    }

    #[test]
    fn programs_beyond_max_groups_fold_keeping_the_nearest() {
        let usages = (1..=5)
            .map(|p| (key(p), p, usage(u64::from(p) * 10, Some(100))))
            .collect();
        let fds = per_program(usages, 3);
        let keys: Vec<OwnerKey> = fds.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![key(5), key(4), OwnerKey::OTHER]);
        assert_eq!(fds[2].1.pid, 3, "the nearest of the folded ones");
    }
}
