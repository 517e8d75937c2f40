//! Which processes hold a group's CLOSE_WAIT sockets: the evidence `snapshot` lists
//! beside a verdict. A pre-fork server holds its sockets in many worker processes of one
//! program; the verdict is the program's, and the pids (the top few, with counts) say
//! where to look. Pids are never labels of the daemon's series (they would churn on
//! every restart), so only `snapshot` collects them.

use foldhash::{HashMap, HashMapExt};

use crate::model::labels::AgeGroup;

/// How many pids a group lists; the others are only counted.
pub const TOP_PIDS: usize = 5;

/// CLOSE_WAIT sockets per (group, pid), as a sample finds them.
#[derive(Clone, Debug, Default)]
pub struct PidCounts {
    counts: HashMap<(AgeGroup, u32), u64>,
}

/// The pids holding one group's CLOSE_WAIT sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PidEvidence {
    /// The pids holding the most sockets, with how many each, most first (at most
    /// `TOP_PIDS`).
    pub top: Vec<(u32, u64)>,
    /// Distinct pids holding the group's sockets.
    pub processes: u64,
}

impl PidCounts {
    pub fn new() -> Self {
        PidCounts {
            counts: HashMap::new(),
        }
    }

    /// One CLOSE_WAIT socket of `group` held by `pid` (0: no owner, not counted).
    pub fn add(&mut self, group: AgeGroup, pid: u32) {
        if pid != 0 {
            *self.counts.entry((group, pid)).or_default() += 1;
        }
    }

    /// Per group (after `fold`, which maps a group to the one it is reported as), its
    /// top pids; in group order.
    pub fn finish(self, fold: impl Fn(AgeGroup) -> AgeGroup) -> Vec<(AgeGroup, PidEvidence)> {
        let mut per_group: HashMap<AgeGroup, HashMap<u32, u64>> = HashMap::new();
        for ((group, pid), count) in self.counts {
            *per_group
                .entry(fold(group))
                .or_default()
                .entry(pid)
                .or_default() += count;
        }
        let mut out: Vec<(AgeGroup, PidEvidence)> = per_group
            .into_iter()
            .map(|(group, pids)| {
                let mut top: Vec<(u32, u64)> = pids.into_iter().collect();
                top.sort_unstable_by_key(|(pid, count)| (std::cmp::Reverse(*count), *pid));
                let processes = top.len() as u64;
                top.truncate(TOP_PIDS);
                (group, PidEvidence { top, processes })
            })
            .collect();
        out.sort_by_key(|(group, _)| *group);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::{Direction, OwnerKey, PortLabel};

    fn group(port: u16) -> AgeGroup {
        AgeGroup {
            direction: Direction::Inbound,
            port: PortLabel::Port(port),
            owner: OwnerKey::default(),
        }
    }

    #[test]
    fn a_pre_fork_server_is_one_group_with_its_workers_as_evidence() {
        let mut pids = PidCounts::new();
        for (pid, sockets) in [(101, 1), (102, 3), (103, 1), (104, 2), (105, 1), (106, 1)] {
            for _ in 0..sockets {
                pids.add(group(8000), pid);
            }
        }
        pids.add(group(8000), 0);
        pids.add(group(9000), 7);
        let evidence = pids.finish(|g| g);
        assert_eq!(
            evidence[0],
            (
                group(8000),
                PidEvidence {
                    top: vec![(102, 3), (104, 2), (101, 1), (103, 1), (105, 1)],
                    processes: 6,
                }
            )
        );
        assert_eq!(evidence[1].1.top, vec![(7, 1)]);
    }

    #[test]
    fn folded_groups_pool_their_pids() {
        let mut pids = PidCounts::new();
        pids.add(group(1), 7);
        pids.add(group(2), 7);
        let evidence = pids.finish(|g| g.folded());
        assert_eq!(evidence.len(), 1);
        assert_eq!(evidence[0].1.top, vec![(7, 2)]);
    }
}
