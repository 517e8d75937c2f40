//! What holds a CLOSE_WAIT group's sockets, and where they lead: per group, the pids
//! holding them (a pre-fork server holds its sockets in many workers of one program; the
//! verdict is the program's, the pids say where to look) and, outbound, the peers they
//! were connected to (the backend that closed on them). Both are counted the same way:
//! per (group, item), the top few with their counts, the rest summed.
//!
//! Pids are never labels of the daemon's series (they would churn on every restart);
//! peers are only behind an opt-in with a hard top-K (`close_wait.peers_per_group`).

use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt};

use crate::model::labels::AgeGroup;

/// How many pids a group lists; the others are only counted.
pub const TOP_PIDS: usize = 5;
/// How many peers the page, the drill-down and `snapshot` list per outbound group.
pub const TOP_PEERS: usize = 5;
/// Distinct (group, item) pairs one sample counts; past it, new items of a group are
/// summed into its `others` (memory stays bounded whatever the table holds).
pub const MAX_PAIRS: usize = 65_536;

/// CLOSE_WAIT sockets per (group, item), as a sample finds them.
#[derive(Clone, Debug)]
pub struct TopCounts<T> {
    counts: HashMap<(AgeGroup, T), u64>,
    /// Sockets of a group not counted by item (`MAX_PAIRS` reached).
    overflow: HashMap<AgeGroup, u64>,
}

/// CLOSE_WAIT sockets per owning pid.
pub type PidCounts = TopCounts<u32>;
/// Outbound CLOSE_WAIT sockets per peer (remote address and port).
pub type PeerCounts = TopCounts<SocketAddr>;

/// The items of one group: the top ones with their counts, most first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Top<T> {
    pub top: Vec<(T, u64)>,
    /// Sockets of the group not in `top`.
    pub others: u64,
    /// Distinct items counted (a lower bound when `MAX_PAIRS` was reached).
    pub distinct: u64,
}

/// The pids holding one group's CLOSE_WAIT sockets.
pub type PidEvidence = Top<u32>;
/// The peers of one outbound group's CLOSE_WAIT sockets.
pub type PeerEvidence = Top<SocketAddr>;

impl<T: Copy + Eq + std::hash::Hash + Ord> Default for TopCounts<T> {
    fn default() -> Self {
        TopCounts {
            counts: HashMap::new(),
            overflow: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + std::hash::Hash + Ord> TopCounts<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One CLOSE_WAIT socket of `group` with `item`.
    pub fn add(&mut self, group: AgeGroup, item: T) {
        if self.counts.len() >= MAX_PAIRS && !self.counts.contains_key(&(group, item)) {
            *self.overflow.entry(group).or_default() += 1;
            return;
        }
        *self.counts.entry((group, item)).or_default() += 1;
    }

    /// Per group (after `fold`, which maps a group to the one it is reported as), its top
    /// `keep` items; in group order.
    pub fn finish(
        self,
        fold: impl Fn(AgeGroup) -> AgeGroup,
        keep: usize,
    ) -> Vec<(AgeGroup, Top<T>)> {
        let mut per_group: HashMap<AgeGroup, (HashMap<T, u64>, u64)> = HashMap::new();
        for ((group, item), count) in self.counts {
            *per_group
                .entry(fold(group))
                .or_default()
                .0
                .entry(item)
                .or_default() += count;
        }
        for (group, count) in self.overflow {
            per_group.entry(fold(group)).or_default().1 += count;
        }
        let mut out: Vec<(AgeGroup, Top<T>)> = per_group
            .into_iter()
            .map(|(group, (items, overflow))| {
                let mut top: Vec<(T, u64)> = items.into_iter().collect();
                top.sort_unstable_by_key(|(item, count)| (std::cmp::Reverse(*count), *item));
                let distinct = top.len() as u64;
                let others = top.iter().skip(keep).map(|(_, n)| n).sum::<u64>() + overflow;
                top.truncate(keep);
                (
                    group,
                    Top {
                        top,
                        others,
                        distinct,
                    },
                )
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
        pids.add(group(9000), 7);
        let evidence = pids.finish(|g| g, TOP_PIDS);
        assert_eq!(
            evidence[0],
            (
                group(8000),
                Top {
                    top: vec![(102, 3), (104, 2), (101, 1), (103, 1), (105, 1)],
                    others: 1,
                    distinct: 6,
                }
            )
        );
        assert_eq!(evidence[1].1.top, vec![(7, 1)]);
    }

    #[test]
    fn folded_groups_pool_their_items() {
        let mut pids = PidCounts::new();
        pids.add(group(1), 7);
        pids.add(group(2), 7);
        let evidence = pids.finish(|g| g.folded(), TOP_PIDS);
        assert_eq!(evidence.len(), 1);
        assert_eq!(evidence[0].1.top, vec![(7, 2)]);
    }

    #[test]
    fn pairs_are_bounded_and_the_rest_still_counted() {
        let mut peers = PeerCounts::new();
        for i in 0..MAX_PAIRS as u32 + 10 {
            let peer = SocketAddr::from((i.to_be_bytes(), 3306));
            peers.add(group(3306), peer);
        }
        let evidence = peers.finish(|g| g, 2);
        let top = &evidence[0].1;
        assert_eq!(top.top.len(), 2);
        assert_eq!(top.distinct, MAX_PAIRS as u64);
        assert_eq!(
            top.others,
            MAX_PAIRS as u64 + 10 - 2,
            "every socket counted"
        );
    }
}
