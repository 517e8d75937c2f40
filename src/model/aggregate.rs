//! Aggregation: sockets in, bounded groups out.
//!
//! Every socket counts toward its state's total; sockets in a detail state also land in a
//! group keyed by (state, direction, port, process). Per state, groups beyond `max_groups`
//! are folded into `port="other", process="other"` (one bucket per direction), so a host
//! with thousands of peers or processes cannot explode the series count.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use crate::kernel::record::{STATE_COUNT, SocketRecord, TcpState};
use crate::model::labels::{AgeGroup, Direction, OwnerKey, PortLabel};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub state: TcpState,
    pub direction: Direction,
    pub port: PortLabel,
    pub owner: OwnerKey,
}

impl GroupKey {
    /// The group without its state: how CLOSE_WAIT ages and evidence are labelled.
    pub fn close_wait_group(&self) -> AgeGroup {
        AgeGroup {
            direction: self.direction,
            port: self.port,
            owner: self.owner,
        }
    }
}

/// Sums over the connections of one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub connections: u64,
    pub recv_queue_bytes: u64,
    pub send_queue_bytes: u64,
    /// Connections holding unread data (the FIN not counted).
    pub unread_connections: u64,
    /// CLOSE_WAIT connections whose program already read the EOF (Recv-Q 0).
    pub eof_read: u64,
    /// Connections still in a listener's accept queue.
    pub unaccepted: u64,
    /// Connections with a keepalive timer armed.
    pub keepalive: u64,
}

/// What a group needs of one connection: small, so connections waiting for
/// attribution cost little to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionFacts {
    pub unread_bytes: u32,
    pub send_queue: u32,
    pub eof_read: bool,
    pub unaccepted: bool,
    pub keepalive: bool,
}

impl ConnectionFacts {
    pub fn of(record: &SocketRecord, unaccepted: bool) -> Self {
        ConnectionFacts {
            unread_bytes: u32::try_from(record.unread_bytes()).unwrap_or(u32::MAX),
            send_queue: record.send_queue,
            eof_read: record.eof_read(),
            unaccepted,
            keepalive: record.keepalive_armed,
        }
    }
}

impl GroupStats {
    fn add(&mut self, facts: ConnectionFacts) {
        self.connections += 1;
        self.recv_queue_bytes += u64::from(facts.unread_bytes);
        self.send_queue_bytes += u64::from(facts.send_queue);
        self.unread_connections += u64::from(facts.unread_bytes > 0);
        self.eof_read += u64::from(facts.eof_read);
        self.unaccepted += u64::from(facts.unaccepted);
        self.keepalive += u64::from(facts.keepalive);
    }

    pub fn merge(&mut self, other: &GroupStats) {
        self.connections += other.connections;
        self.recv_queue_bytes += other.recv_queue_bytes;
        self.send_queue_bytes += other.send_queue_bytes;
        self.unread_connections += other.unread_connections;
        self.eof_read += other.eof_read;
        self.unaccepted += other.unaccepted;
        self.keepalive += other.keepalive;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub port: PortLabel,
    pub owner: OwnerKey,
}

/// Accept queues of the listeners on one port, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub queue_length: u64,
    pub queue_max: u64,
    pub listeners: u64,
}

impl ListenerStats {
    fn merge(&mut self, other: &ListenerStats) {
        self.queue_length += other.queue_length;
        self.queue_max += other.queue_max;
        self.listeners += other.listeners;
    }
}

/// The groups of one sample, folded and ordered: what the dump streamed into the builder.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    /// All sockets of the namespace per state, indexed by `TcpState::index`.
    pub state_counts: [u64; STATE_COUNT],
    /// Detail-state groups, largest first (after folding).
    pub groups: Vec<(GroupKey, GroupStats)>,
    pub listeners: Vec<(ListenerKey, ListenerStats)>,
    /// Groups folded into `port="other", process="other"` (connections and listeners).
    pub groups_folded: u64,
}

/// Accumulates one sample while the dump streams by.
#[derive(Default)]
pub struct SampleBuilder {
    state_counts: [u64; STATE_COUNT],
    groups: HashMap<GroupKey, GroupStats>,
    listeners: HashMap<ListenerKey, ListenerStats>,
}

impl SampleBuilder {
    pub fn count_state(&mut self, state: TcpState) {
        self.state_counts[state.index()] += 1;
    }

    /// Sockets counted so far, every state.
    pub fn sockets_seen(&self) -> u64 {
        self.state_counts.iter().sum()
    }

    pub fn add_connection(&mut self, key: GroupKey, facts: ConnectionFacts) {
        self.groups.entry(key).or_default().add(facts);
    }

    /// A listener: Recv-Q is its accept-queue length, Send-Q its backlog limit.
    pub fn add_listener(&mut self, key: ListenerKey, record: &SocketRecord) {
        let stats = self.listeners.entry(key).or_default();
        stats.queue_length += u64::from(record.recv_queue);
        stats.queue_max += u64::from(record.send_queue);
        stats.listeners += 1;
    }

    /// Folds and orders the groups: per state, at most `max_groups` connection groups,
    /// and at most `max_groups` listener groups, fold buckets included.
    pub fn finish(self, max_groups: usize) -> Aggregate {
        let (groups, folded_connections) = fold(
            self.groups,
            max_groups,
            |key| key.state,
            |key| GroupKey {
                port: PortLabel::Other,
                owner: OwnerKey::OTHER,
                ..key
            },
        );
        let (listeners, folded_listeners) = fold(
            self.listeners,
            max_groups,
            |_| (),
            |_| ListenerKey {
                port: PortLabel::Other,
                owner: OwnerKey::OTHER,
            },
        );
        Aggregate {
            state_counts: self.state_counts,
            groups,
            listeners,
            groups_folded: folded_connections + folded_listeners,
        }
    }
}

/// Statistics that can be ranked by size and merged when folded.
trait Foldable: Default {
    fn size(&self) -> u64;
    fn merge_into(&self, target: &mut Self);
}

impl Foldable for GroupStats {
    fn size(&self) -> u64 {
        self.connections
    }
    fn merge_into(&self, target: &mut Self) {
        target.merge(self);
    }
}

impl Foldable for ListenerStats {
    fn size(&self) -> u64 {
        self.queue_length.max(self.listeners)
    }
    fn merge_into(&self, target: &mut Self) {
        target.merge(self);
    }
}

/// Within each partition (a state, for connection groups), keeps the largest entries
/// (ties broken by key, so the choice is stable from sample to sample) and merges the
/// rest under `fold_key`, so that the partition holds at most `max_groups` entries with
/// its fold buckets. Returns the entries, per partition the kept ones largest first and
/// then the buckets, and how many were folded.
fn fold<K, S, P>(
    entries: HashMap<K, S>,
    max_groups: usize,
    partition: impl Fn(&K) -> P,
    fold_key: impl Fn(K) -> K,
) -> (Vec<(K, S)>, u64)
where
    K: Ord + Copy + std::hash::Hash,
    S: Foldable,
    P: Ord,
{
    let mut partitions: BTreeMap<P, Vec<(K, S)>> = BTreeMap::new();
    for (key, stats) in entries {
        partitions
            .entry(partition(&key))
            .or_default()
            .push((key, stats));
    }
    let mut out = Vec::new();
    let mut folded_count = 0;
    for (_, mut entries) in partitions {
        entries.sort_unstable_by_key(|(key, stats)| (Reverse(stats.size()), *key));
        if entries.len() <= max_groups {
            out.extend(entries);
            continue;
        }
        let folded = entries.split_off(kept_count(&entries, max_groups, &fold_key));
        folded_count += folded.len() as u64;
        let mut merged: BTreeMap<K, S> = BTreeMap::new();
        for (key, stats) in &folded {
            stats.merge_into(merged.entry(fold_key(*key)).or_default());
        }
        let mut merged: Vec<(K, S)> = merged.into_iter().collect();
        merged.sort_by_key(|(key, stats)| (Reverse(stats.size()), *key));
        out.extend(entries);
        out.extend(merged);
    }
    (out, folded_count)
}

/// How many of the ranked `entries` keep a series of their own when the rest is folded:
/// as many as leave room for the fold buckets the rest needs (one per direction for
/// connection groups). With `max_groups` 1 and both directions folded, the two buckets
/// are the only series.
fn kept_count<K: Ord + Copy, S>(
    entries: &[(K, S)],
    max_groups: usize,
    fold_key: &impl Fn(K) -> K,
) -> usize {
    let mut keep = max_groups.saturating_sub(1);
    loop {
        let buckets: BTreeSet<K> = entries[keep..].iter().map(|(k, _)| fold_key(*k)).collect();
        if keep == 0 || keep + buckets.len() <= max_groups {
            return keep;
        }
        keep -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        state: TcpState,
        recv_queue: u32,
        send_queue: u32,
        unaccepted: bool,
    ) -> ConnectionFacts {
        ConnectionFacts::of(
            &SocketRecord::for_tests(state, recv_queue, send_queue),
            unaccepted,
        )
    }

    fn key(state: TcpState, port: u16) -> GroupKey {
        GroupKey {
            state,
            direction: Direction::Inbound,
            port: PortLabel::Port(port),
            owner: OwnerKey::default(),
        }
    }

    #[test]
    fn sums_queues_and_counts_unread_connections() {
        let mut builder = SampleBuilder::default();
        let k = key(TcpState::CloseWait, 80);
        builder.add_connection(k, facts(TcpState::CloseWait, 6, 0, false));
        builder.add_connection(k, facts(TcpState::CloseWait, 1, 0, true));
        builder.add_connection(k, facts(TcpState::CloseWait, 0, 3, false));
        let sample = builder.finish(10);
        let stats = sample.groups[0].1;
        assert_eq!(stats.connections, 3);
        assert_eq!(stats.recv_queue_bytes, 5);
        assert_eq!(stats.send_queue_bytes, 3);
        assert_eq!(stats.unread_connections, 1);
        assert_eq!(stats.eof_read, 1);
        assert_eq!(stats.unaccepted, 1);
        assert_eq!(sample.groups_folded, 0);
    }

    #[test]
    fn folds_the_smallest_groups_into_other_per_state_keeping_direction() {
        let mut builder = SampleBuilder::default();
        for (port, count) in [(1u16, 5), (2, 4), (3, 3), (4, 2), (5, 1)] {
            for _ in 0..count {
                builder.add_connection(
                    key(TcpState::CloseWait, port),
                    facts(TcpState::CloseWait, 2, 0, false),
                );
            }
        }
        builder.add_connection(
            key(TcpState::Established, 9),
            facts(TcpState::Established, 0, 0, false),
        );
        let sample = builder.finish(3);
        let summary: Vec<(TcpState, PortLabel, u64, u64)> = sample
            .groups
            .iter()
            .map(|(k, s)| (k.state, k.port, s.connections, s.recv_queue_bytes))
            .collect();
        assert_eq!(
            summary,
            vec![
                (TcpState::Established, PortLabel::Port(9), 1, 0),
                (TcpState::CloseWait, PortLabel::Port(1), 5, 5),
                (TcpState::CloseWait, PortLabel::Port(2), 4, 4),
                (TcpState::CloseWait, PortLabel::Other, 6, 6),
            ]
        );
        assert_eq!(sample.groups_folded, 3);
        // Both directions folded: a bucket each, and one own group less to make room.
        let mut builder = SampleBuilder::default();
        for (port, direction, count) in [
            (1u16, Direction::Inbound, 4),
            (2, Direction::Outbound, 3),
            (3, Direction::Inbound, 2),
            (4, Direction::Outbound, 1),
        ] {
            let k = GroupKey {
                direction,
                ..key(TcpState::CloseWait, port)
            };
            for _ in 0..count {
                builder.add_connection(k, facts(TcpState::CloseWait, 0, 0, false));
            }
        }
        let sample = builder.finish(3);
        let summary: Vec<(Direction, PortLabel, u64)> = sample
            .groups
            .iter()
            .map(|(k, s)| (k.direction, k.port, s.connections))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Direction::Inbound, PortLabel::Port(1), 4),
                (Direction::Outbound, PortLabel::Other, 4),
                (Direction::Inbound, PortLabel::Other, 2),
            ]
        );
    }

    #[test]
    fn ties_fold_the_same_way_every_time() {
        let build = || {
            let mut builder = SampleBuilder::default();
            for port in 1..=50u16 {
                builder.add_connection(
                    key(TcpState::CloseWait, port),
                    facts(TcpState::CloseWait, 1, 0, false),
                );
            }
            builder.finish(10)
        };
        let kept: Vec<PortLabel> = build().groups.iter().map(|(k, _)| k.port).collect();
        assert_eq!(
            kept[..9],
            (1..=9).map(PortLabel::Port).collect::<Vec<_>>()[..]
        );
        assert_eq!(kept[9..], [PortLabel::Other]);
        assert_eq!(
            kept,
            build()
                .groups
                .iter()
                .map(|(k, _)| k.port)
                .collect::<Vec<_>>()
        );
    }

    /// The case: 30 processes on 50 ports each, and 20 series allowed. The fold
    /// must bound the series of each state, whatever the number of processes, and keep
    /// every connection counted.
    #[test]
    fn folding_bounds_the_series_of_each_state_across_processes() {
        let mut builder = SampleBuilder::default();
        for process in 1..=30u32 {
            for port in 0..50u16 {
                let owner = OwnerKey {
                    process: crate::model::labels::ProcessId(process),
                    ..OwnerKey::default()
                };
                let key = GroupKey {
                    owner,
                    direction: Direction::Outbound,
                    ..key(TcpState::CloseWait, 10_000 + port)
                };
                builder.add_connection(key, facts(TcpState::CloseWait, 1, 0, false));
            }
        }
        // A few established connections, inbound and outbound: their own budget.
        for port in [1u16, 2, 3] {
            builder.add_connection(
                key(TcpState::Established, port),
                facts(TcpState::Established, 0, 0, false),
            );
        }
        let sample = builder.finish(20);
        let close_wait: Vec<_> = sample
            .groups
            .iter()
            .filter(|(k, _)| k.state == TcpState::CloseWait)
            .collect();
        assert_eq!(close_wait.len(), 20, "at most max_groups series");
        assert_eq!(
            close_wait.iter().map(|(_, s)| s.connections).sum::<u64>(),
            1500,
            "every connection still counted"
        );
        let folded: Vec<_> = close_wait
            .iter()
            .filter(|(k, _)| k.port == PortLabel::Other)
            .collect();
        assert_eq!(folded.len(), 1, "one bucket per state and direction");
        assert_eq!(
            folded[0].0.owner,
            OwnerKey::OTHER,
            "folded across processes"
        );
        assert_eq!(folded[0].1.connections, 1500 - 19);
        let established = sample
            .groups
            .iter()
            .filter(|(k, _)| k.state == TcpState::Established)
            .count();
        assert_eq!(established, 3, "another state keeps its own groups");
        assert_eq!(sample.groups_folded, 1500 - 19);
    }

    #[test]
    fn listeners_on_one_port_are_summed() {
        let mut builder = SampleBuilder::default();
        let k = ListenerKey {
            port: PortLabel::Port(80),
            owner: OwnerKey::default(),
        };
        builder.add_listener(k, &SocketRecord::for_tests(TcpState::Listen, 3, 128));
        builder.add_listener(k, &SocketRecord::for_tests(TcpState::Listen, 1, 128));
        let sample = builder.finish(10);
        assert_eq!(
            sample.listeners,
            vec![(
                k,
                ListenerStats {
                    queue_length: 4,
                    queue_max: 256,
                    listeners: 2
                }
            )]
        );
    }
}
