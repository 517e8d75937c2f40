//! One namespace's sample, assembled from what each stage produced (the aggregate, the
//! ages, the namespace's TCP settings), and the namespace it belongs to. This is what
//! the exposition and the snapshot read.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::kernel::record::{STATE_COUNT, TcpState};
use crate::kernel::sysctl::{ListenCounters, TcpSettings};
use crate::model::ages::{AgesReport, StuckCounts};
use crate::model::aggregate::{Aggregate, GroupKey, GroupStats, ListenerKey, ListenerStats};
use crate::model::fds::ProcessFds;
use crate::model::labels::{AgeGroup, OwnerKey, ProcessId};
use crate::model::sockets::SocketList;
use crate::model::top::{PeerCounts, PeerEvidence, PidCounts, PidEvidence, TOP_PIDS};

/// One complete, aggregated sample of a namespace.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// All sockets of the namespace per state, indexed by `TcpState::index`.
    pub state_counts: [u64; STATE_COUNT],
    /// Detail-state groups, largest first (after folding).
    pub groups: Vec<(GroupKey, GroupStats)>,
    pub listeners: Vec<(ListenerKey, ListenerStats)>,
    /// Groups folded into `port="other", process="other"` (connections and listeners).
    pub groups_folded: u64,
    /// Process names, indexed by `ProcessId`; entry 0 is "".
    pub processes: Vec<String>,
    /// CLOSE_WAIT ages and durations, from the tracker.
    pub ages: AgesReport,
    /// Which pids hold each CLOSE_WAIT group's sockets (collected for `snapshot` only).
    pub close_wait_pids: Vec<(AgeGroup, PidEvidence)>,
    /// The peers of each outbound CLOSE_WAIT group's sockets, the top ones first.
    pub close_wait_peers: Vec<(AgeGroup, PeerEvidence)>,
    /// CLOSE_WAIT sockets whose age is being tracked.
    pub close_wait_tracked: u64,
    /// The namespace's TCP settings and accept-queue overflow counters.
    pub tcp_settings: TcpSettings,
    pub listen_counters: Option<ListenCounters>,
    /// The sockets behind the groups (bounded; shared, as samples are cloned each round).
    pub sockets: Arc<SocketList>,
    /// The fd figures of the programs owning detail-state connections (folded).
    pub process_fds: Vec<(OwnerKey, ProcessFds)>,
}

/// What a sample holds besides the aggregate and the ages: read from the kernel and the
/// tracker at the end of a sample.
#[derive(Clone, Debug, Default)]
pub struct SampleContext {
    /// Process names, indexed by `ProcessId`; entry 0 is "".
    pub processes: Vec<String>,
    pub close_wait_tracked: u64,
    pub tcp_settings: TcpSettings,
    pub listen_counters: Option<ListenCounters>,
    /// CLOSE_WAIT sockets per owning pid, when collected.
    pub close_wait_pids: Option<PidCounts>,
    pub close_wait_peers: PeerCounts,
    /// How many peers each group keeps by address.
    pub peers_kept: usize,
    pub sockets: SocketList,
    pub process_fds: Vec<(OwnerKey, ProcessFds)>,
}

impl Sample {
    /// The sample of one round: the aggregate, the ages (folded like the groups, so the
    /// age series never outnumber the connection series) and the rest.
    pub fn assemble(aggregate: Aggregate, ages: AgesReport, context: SampleContext) -> Sample {
        let kept: HashSet<AgeGroup> = aggregate
            .groups
            .iter()
            .filter(|(key, _)| key.state == TcpState::CloseWait)
            .map(|(key, _)| key.close_wait_group())
            .collect();
        let fold = |group: AgeGroup| {
            if kept.contains(&group) {
                group
            } else {
                group.folded()
            }
        };
        let ages = fold_ages(ages, fold);
        let close_wait_pids = context
            .close_wait_pids
            .map(|pids| pids.finish(fold, TOP_PIDS))
            .unwrap_or_default();
        let close_wait_peers = context.close_wait_peers.finish(fold, context.peers_kept);
        Sample {
            state_counts: aggregate.state_counts,
            groups: aggregate.groups,
            listeners: aggregate.listeners,
            groups_folded: aggregate.groups_folded,
            processes: context.processes,
            ages,
            close_wait_pids,
            close_wait_peers,
            close_wait_tracked: context.close_wait_tracked,
            tcp_settings: context.tcp_settings,
            listen_counters: context.listen_counters,
            sockets: Arc::new(context.sockets),
            process_fds: context.process_fds,
        }
    }

    pub fn process_name(&self, id: ProcessId) -> &str {
        if id == ProcessId::OTHER {
            return "other";
        }
        self.processes
            .get(id.0 as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn state_count(&self, state: TcpState) -> u64 {
        self.state_counts[state.index()]
    }
}

/// Ages of groups that were folded in the aggregate go to their fold bucket too: the
/// oldest of the groups folded together, and the sum of their stuck sockets.
fn fold_ages(mut ages: AgesReport, fold: impl Fn(AgeGroup) -> AgeGroup) -> AgesReport {
    let mut oldest: HashMap<AgeGroup, f64> = HashMap::new();
    for (group, age) in ages.oldest {
        let slot = oldest.entry(fold(group)).or_insert(age);
        *slot = slot.max(age);
    }
    ages.oldest = oldest.into_iter().collect();
    ages.oldest.sort_by_key(|o| o.0);
    let mut stuck: HashMap<AgeGroup, StuckCounts> = HashMap::new();
    for (group, counts) in &ages.stuck {
        stuck.entry(fold(*group)).or_default().merge(counts);
    }
    ages.stuck = stuck.into_iter().collect();
    ages.stuck.sort_by_key(|s| s.0);
    ages
}

/// Labels that say which namespace a series belongs to (empty in "own" mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceLabels {
    pub netns: String,
    pub pod: String,
    pub namespace: String,
}

/// What is known about a sampled namespace, for `tcpstate_netns_info`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: NamespaceLabels,
    pub inode: u64,
    pub pid: Option<u32>,
    pub comm: String,
    pub pod_uid: String,
    pub container_id: String,
}

/// The last good sample of one namespace.
#[derive(Clone, Debug)]
pub struct NamespaceSample {
    pub info: NamespaceInfo,
    pub sample: Sample,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::{Direction, OwnerKey, PortLabel};

    fn group(port: PortLabel) -> AgeGroup {
        AgeGroup {
            direction: Direction::Inbound,
            port,
            owner: OwnerKey::default(),
        }
    }

    #[test]
    fn ages_of_folded_groups_go_to_other_keeping_the_oldest() {
        let kept = GroupKey {
            state: TcpState::CloseWait,
            direction: Direction::Inbound,
            port: PortLabel::Port(80),
            owner: OwnerKey::default(),
        };
        let aggregate = Aggregate {
            groups: vec![(kept, GroupStats::default())],
            ..Aggregate::default()
        };
        let ages = AgesReport {
            oldest: vec![
                (group(PortLabel::Port(80)), 5.0),
                (group(PortLabel::Port(81)), 7.0),
                (group(PortLabel::Port(82)), 9.0),
            ],
            ..AgesReport::default()
        };
        let sample = Sample::assemble(aggregate, ages, SampleContext::default());
        assert_eq!(
            sample.ages.oldest,
            vec![
                (group(PortLabel::Port(80)), 5.0),
                (group(PortLabel::Other).folded(), 9.0)
            ]
        );
    }
}
