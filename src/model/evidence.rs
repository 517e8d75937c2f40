//! The evidence of each CLOSE_WAIT group, read from a round of samples (and the first
//! round of a watch, for the closes in between), and its verdict: what `snapshot`
//! prints. Groups are the metrics' (netns, direction, port, process); the pids holding
//! the sockets come along as evidence.

use crate::kernel::record::TcpState;
use crate::model::ages::DurationHistogram;
use crate::model::aggregate::GroupStats;
use crate::model::diagnosis::{self, Closes, Evidence, Thresholds, Verdict};
use crate::model::fds::ProcessFds;
use crate::model::labels::{AgeGroup, Direction, PortLabel};
use crate::model::sample::{NamespaceLabels, NamespaceSample, Sample};
use crate::model::top::{PeerEvidence, PidEvidence};

/// The diagnosis of one CLOSE_WAIT group.
pub struct GroupDiagnosis<'a> {
    pub labels: &'a NamespaceLabels,
    pub direction: Direction,
    pub port: PortLabel,
    pub process: &'a str,
    /// Which pids hold the group's CLOSE_WAIT sockets.
    pub pids: Option<&'a PidEvidence>,
    /// Outbound: the peers its CLOSE_WAIT sockets were connected to.
    pub peers: Option<&'a PeerEvidence>,
    /// How near its program is to running out of descriptors.
    pub fds: Option<ProcessFds>,
    pub evidence: Evidence,
    pub verdict: Verdict,
}

/// A watch: the first and the last round, and the time between them.
pub struct Watch<'a> {
    pub first: &'a [NamespaceSample],
    pub seconds: f64,
}

/// Evidence and verdict for every CLOSE_WAIT group of `last` (and for groups whose
/// sockets all closed during the watch), most CLOSE_WAIT first. Without `all`, groups
/// with nothing to report (no CLOSE_WAIT left and no cause) are left out.
pub fn diagnose_groups<'a>(
    last: &'a [NamespaceSample],
    watch: Option<&Watch<'_>>,
    thresholds: Thresholds,
    all: bool,
) -> Vec<GroupDiagnosis<'a>> {
    let mut out = Vec::new();
    for namespace in last {
        let sample = &namespace.sample;
        let before = watch.and_then(|w| {
            w.first
                .iter()
                .find(|ns| ns.info.inode == namespace.info.inode)
                .map(|ns| &ns.sample)
        });
        let mut groups: Vec<AgeGroup> = sample
            .groups
            .iter()
            .filter(|(key, _)| key.state == TcpState::CloseWait)
            .map(|(key, _)| AgeGroup {
                direction: key.direction,
                port: key.port,
                owner: key.owner,
            })
            .collect();
        if let Some(before) = before {
            for (group, histogram) in &sample.ages.durations {
                let earlier = histogram_of(before, group).map_or(0, |h| h.count);
                if histogram.count > earlier && !groups.contains(group) {
                    groups.push(*group);
                }
            }
        }
        for group in groups {
            let evidence = evidence_of(sample, before, watch.map(|w| w.seconds), &group);
            let verdict = diagnosis::diagnose(&evidence, thresholds);
            if !all && evidence.close_wait == 0 && verdict.cause == diagnosis::Cause::Undetermined {
                continue;
            }
            out.push(GroupDiagnosis {
                labels: &namespace.info.labels,
                direction: group.direction,
                port: group.port,
                process: sample.process_name(group.owner.process),
                pids: sample
                    .close_wait_pids
                    .iter()
                    .find(|(g, _)| *g == group)
                    .map(|(_, pids)| pids),
                peers: sample
                    .close_wait_peers
                    .iter()
                    .find(|(g, _)| *g == group)
                    .map(|(_, peers)| peers),
                fds: sample
                    .process_fds
                    .iter()
                    .find(|(owner, _)| *owner == group.owner)
                    .map(|(_, fds)| *fds),
                verdict,
                evidence,
            });
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.evidence.close_wait));
    out
}

fn histogram_of<'s>(sample: &'s Sample, group: &AgeGroup) -> Option<&'s DurationHistogram> {
    sample
        .ages
        .durations
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, h)| h)
}

fn evidence_of(
    sample: &Sample,
    before: Option<&Sample>,
    window: Option<f64>,
    group: &AgeGroup,
) -> Evidence {
    let mut close_wait = GroupStats::default();
    let mut established = 0;
    for (key, stats) in &sample.groups {
        let same_group =
            key.direction == group.direction && key.port == group.port && key.owner == group.owner;
        match key.state {
            TcpState::CloseWait if same_group => close_wait.merge(stats),
            TcpState::Established if same_group => established += stats.connections,
            _ => {}
        }
    }
    let mut evidence = Evidence {
        close_wait: close_wait.connections,
        unread_bytes: close_wait.recv_queue_bytes,
        unread_connections: close_wait.unread_connections,
        eof_read: close_wait.eof_read,
        unaccepted: close_wait.unaccepted,
        keepalive: close_wait.keepalive,
        established,
        ..Evidence::default()
    };
    evidence.oldest_seconds = sample
        .ages
        .oldest
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, age)| *age);
    evidence.stuck = sample
        .ages
        .stuck
        .iter()
        .find(|(g, _)| g == group)
        .map(|(_, stuck)| *stuck)
        .unwrap_or_default();
    if group.direction == Direction::Inbound {
        evidence.listen_queue = listen_queue_of(sample, group);
    }
    if let (Some(before), Some(window)) = (before, window) {
        evidence.closes = Some(closes_between(before, sample, window, group));
    }
    evidence
}

/// The accept queue (length, limit) of the group's own listeners (SO_REUSEPORT: each
/// program has its own queue), or of all the port's when none is the group's (its owner
/// could not be told).
fn listen_queue_of(sample: &Sample, group: &AgeGroup) -> Option<(u64, u64)> {
    let port: Vec<_> = sample
        .listeners
        .iter()
        .filter(|(key, _)| key.port == group.port)
        .collect();
    let own: Vec<_> = port
        .iter()
        .copied()
        .filter(|(key, _)| key.owner == group.owner)
        .collect();
    let chosen = if own.is_empty() { port } else { own };
    (!chosen.is_empty()).then(|| {
        chosen.iter().fold((0, 0), |(length, max), (_, s)| {
            (length + s.queue_length, max + s.queue_max)
        })
    })
}

/// The closes of `group` between two rounds `window` seconds apart, and the namespace's
/// accept-queue overflows meanwhile.
fn closes_between(before: &Sample, now: &Sample, window: f64, group: &AgeGroup) -> Closes {
    let later = histogram_of(now, group);
    let earlier = histogram_of(before, group);
    let count_now = later.map_or(0, |h| h.count);
    let count = count_now - earlier.map_or(0, |h| h.count).min(count_now);
    let seconds_total = (later.map_or(0.0, |h| h.sum) - earlier.map_or(0.0, |h| h.sum)).max(0.0);
    let listen_overflows = match (now.listen_counters, before.listen_counters) {
        (Some(now), Some(then)) => now.overflows.saturating_sub(then.overflows),
        _ => 0,
    };
    Closes {
        count,
        seconds_total,
        window_seconds: window,
        listen_overflows,
    }
}
