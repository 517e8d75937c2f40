//! Tracking: how long each socket has been in CLOSE_WAIT, and how long the ones that
//! left had stayed.
//!
//! No kernel field records when a socket entered CLOSE_WAIT. A socket is identified
//! across samples by its cookie; its entry time is taken at first sighting as
//! `t - tcp_info.last_ack_recv`, `t` when tcp_info was read: the peer's FIN is the last ACK-carrying segment a
//! CLOSE_WAIT socket receives unless this side is still sending data or keepalive probes
//! are answered, in which case the age is a lower bound. (`last_data_recv` is not moved
//! by a bare FIN, so it cannot serve.) When a tracked socket is no longer seen, its
//! time in CLOSE_WAIT is observed once in a cumulative histogram; the departure is
//! placed midway between the last sample that saw it and the first that did not, so
//! the error is at most half a sample interval.
//!
//! Memory is bounded by `max_tracked`: beyond it new CLOSE_WAIT sockets are counted as
//! untracked, not aged.

use foldhash::{HashMap, HashMapExt};

use crate::model::durations::BoundedSeries;
pub use crate::model::durations::DurationHistogram;
use crate::model::labels::AgeGroup;
use events::Announced;
pub use events::CloseWaitEvent;

mod events;

/// One tracked socket. Kept small: it is the per-socket memory cost.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    /// Unix seconds.
    entered_at: f64,
    last_seen: f64,
    group: AgeGroup,
    inode: u32,
    epoch: u32,
    /// Its entry came from a kernel event (exact, and counted in `entered`).
    entry_from_event: bool,
    /// Counted in `entered` at the end of the sample, once its owner is known.
    entry_to_count: bool,
    /// As of its last sighting.
    facts: CloseWaitFacts,
}

/// What a sighting says of a CLOSE_WAIT socket besides its group, for counting the stuck
/// ones by what they show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseWaitFacts {
    /// Its program read the EOF (Recv-Q 0).
    pub eof_read: bool,
    /// Still in a listener's accept queue.
    pub unaccepted: bool,
}

/// The CLOSE_WAIT sockets of a group older than `stuck_after`, and what they show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StuckCounts {
    pub sockets: u64,
    pub eof_read: u64,
    pub unaccepted: u64,
}

impl StuckCounts {
    pub fn merge(&mut self, other: &StuckCounts) {
        self.sockets += other.sockets;
        self.eof_read += other.eof_read;
        self.unaccepted += other.unaccepted;
    }
}

/// Memory one tracked socket costs in the table: entry, key and the hash table's
/// control byte, at its maximum load factor of 7/8.
pub const BYTES_PER_TRACKED_SOCKET: usize =
    (std::mem::size_of::<Tracked>() + std::mem::size_of::<u64>() + 1) * 8 / 7;
// 65 on x86_64; README.md states the figure, and a test keeps the two equal.
const _: () = assert!(BYTES_PER_TRACKED_SOCKET < 100);

/// What the tracker reports after a sample.
#[derive(Clone, Debug, Default)]
pub struct AgesReport {
    /// Age in seconds of the oldest CLOSE_WAIT socket per group.
    pub oldest: Vec<(AgeGroup, f64)>,
    /// Sockets older than `stuck_after`, per group that has any.
    pub stuck: Vec<(AgeGroup, StuckCounts)>,
    /// Every group's histogram since start (counters never go down).
    pub durations: Vec<(AgeGroup, DurationHistogram)>,
    pub bounds: Vec<f64>,
    /// Connections that entered CLOSE_WAIT per group, from kernel events (eBPF mode).
    pub entered: Vec<(AgeGroup, u64)>,
    /// CLOSE_WAIT sockets seen but not tracked because `max_tracked` was reached.
    pub untracked: u64,
    /// Sockets observed leaving CLOSE_WAIT in this sample.
    pub departed: u64,
}

pub struct CloseWaitTracker {
    entries: HashMap<u64, Tracked>,
    histograms: BoundedSeries<DurationHistogram>,
    /// Seconds in CLOSE_WAIT from which a socket counts as stuck.
    stuck_after: f64,
    bounds: Vec<f64>,
    max_tracked: usize,
    epoch: u32,
    now: f64,
    untracked: u64,
    announced: HashMap<u64, Announced>,
    /// Exact departure times of tracked sockets, from events since the last sample.
    departures: HashMap<u64, f64>,
    entered: BoundedSeries<u64>,
}

impl CloseWaitTracker {
    /// `stuck_after`: the age in seconds from which a socket counts as stuck.
    pub fn new(bounds: Vec<f64>, max_tracked: usize, max_groups: usize, stuck_after: f64) -> Self {
        CloseWaitTracker {
            entries: HashMap::new(),
            histograms: BoundedSeries::new(max_groups),
            stuck_after,
            bounds,
            max_tracked,
            epoch: 0,
            now: 0.0,
            untracked: 0,
            announced: HashMap::new(),
            departures: HashMap::new(),
            entered: BoundedSeries::new(max_groups),
        }
    }

    pub(super) fn count_entered(&mut self, group: AgeGroup) {
        *self.entered.entry(group, || 0) += 1;
    }

    pub(super) fn observe(&mut self, group: AgeGroup, seconds: f64) {
        let buckets = self.bounds.len();
        self.histograms
            .entry(group, || DurationHistogram::new(buckets))
            .observe(&self.bounds, seconds);
    }

    /// Starts a sample taken at `now` (Unix seconds).
    pub fn begin(&mut self, now: f64) {
        self.epoch = self.epoch.wrapping_add(1);
        self.now = now;
        self.untracked = 0;
    }

    /// A CLOSE_WAIT socket seen in this sample. Returns true when it is new and no
    /// event dated its entry (the time should then be refined with `set_entry_time`).
    pub fn sight(
        &mut self,
        cookie: u64,
        inode: u32,
        group: AgeGroup,
        facts: CloseWaitFacts,
    ) -> bool {
        if let Some(tracked) = self.entries.get_mut(&cookie) {
            tracked.epoch = self.epoch;
            tracked.last_seen = self.now;
            tracked.inode = inode;
            tracked.group = group;
            tracked.facts = facts;
            return false;
        }
        if self.entries.len() >= self.max_tracked {
            self.untracked += 1;
            return false;
        }
        let announced = self.announced.remove(&cookie);
        self.entries.insert(
            cookie,
            Tracked {
                entered_at: announced.map_or(self.now, |a| a.at),
                last_seen: self.now,
                group,
                inode,
                epoch: self.epoch,
                entry_from_event: announced.is_some(),
                entry_to_count: announced.is_some(),
                facts,
            },
        );
        announced.is_none()
    }

    /// Sets when a newly seen socket entered CLOSE_WAIT: `read_at - last_ack_recv`, where
    /// `read_at` (Unix seconds) is when tcp_info was read. Not the sample's start: the
    /// lookups come after the dump and the attribution, seconds later in a slow first
    /// sample, and every age would be that much too old. An entry after the sample's
    /// start (the FIN came while it ran) is kept as it is: this sample's age reads 0
    /// (every reader clamps at 0), the next ones count from the FIN.
    pub fn set_entry_time(&mut self, cookie: u64, last_ack_recv_ms: u32, read_at: f64) {
        if let Some(tracked) = self.entries.get_mut(&cookie) {
            tracked.entered_at = read_at - f64::from(last_ack_recv_ms) / 1000.0;
        }
    }

    /// Lets the caller fill in owners of sockets seen this sample (resolved after the
    /// dump) from their inode.
    pub fn assign_owners(&mut self, mut owner_of: impl FnMut(u32, AgeGroup) -> AgeGroup) {
        let epoch = self.epoch;
        for tracked in self.entries.values_mut().filter(|t| t.epoch == epoch) {
            tracked.group = owner_of(tracked.inode, tracked.group);
        }
    }

    /// Ends the sample: sockets not seen in it left CLOSE_WAIT (closed by the program,
    /// or gone) and are observed in their group's histogram.
    pub fn finish(&mut self) -> AgesReport {
        let epoch = self.epoch;
        let now = self.now;
        let mut departed = Vec::new();
        let departures = std::mem::take(&mut self.departures);
        self.entries.retain(|cookie, tracked| {
            if tracked.epoch == epoch {
                return true;
            }
            // Exact from the kernel's event when one came; else midway between the
            // last sample that saw it and this one.
            let left_at = departures
                .get(cookie)
                .copied()
                .unwrap_or((tracked.last_seen + now) / 2.0);
            departed.push((tracked.group, (left_at - tracked.entered_at).max(0.0)));
            false
        });
        let departed_count = departed.len() as u64;
        // In group order, so which groups get a series of their own is deterministic.
        departed.sort_by_key(|d| d.0);
        for (group, seconds) in departed {
            self.observe(group, seconds);
        }
        self.count_event_entries();
        let (oldest, stuck) = self.current_ages();
        // A group's histogram starts at zero while its sockets wait, not at its first
        // close: a rate over the first closes (the late-close alert) then sees them all.
        let buckets = self.bounds.len();
        for (group, _) in &oldest {
            self.histograms
                .entry(*group, || DurationHistogram::new(buckets));
        }
        AgesReport {
            oldest,
            stuck,
            durations: self
                .histograms
                .iter()
                .map(|(group, histogram)| (*group, histogram.clone()))
                .collect(),
            bounds: self.bounds.clone(),
            entered: self.entered.iter().map(|(g, n)| (*g, *n)).collect(),
            untracked: self.untracked,
            departed: departed_count,
        }
    }

    /// Per group, the oldest age of the sockets in CLOSE_WAIT now, and those older than
    /// `stuck_after`; in group order.
    #[allow(clippy::type_complexity)]
    fn current_ages(&self) -> (Vec<(AgeGroup, f64)>, Vec<(AgeGroup, StuckCounts)>) {
        let mut oldest: HashMap<AgeGroup, f64> = HashMap::new();
        let mut stuck: HashMap<AgeGroup, StuckCounts> = HashMap::new();
        for tracked in self.entries.values() {
            let age = (self.now - tracked.entered_at).max(0.0);
            let slot = oldest.entry(tracked.group).or_insert(age);
            *slot = slot.max(age);
            if age > self.stuck_after {
                let counts = stuck.entry(tracked.group).or_default();
                counts.sockets += 1;
                counts.eof_read += u64::from(tracked.facts.eof_read);
                counts.unaccepted += u64::from(tracked.facts.unaccepted);
            }
        }
        let mut oldest: Vec<(AgeGroup, f64)> = oldest.into_iter().collect();
        oldest.sort_by_key(|o| o.0);
        let mut stuck: Vec<(AgeGroup, StuckCounts)> = stuck.into_iter().collect();
        stuck.sort_by_key(|s| s.0);
        (oldest, stuck)
    }

    /// How long the tracked socket `cookie` has been in CLOSE_WAIT at this sample, and
    /// whether that is exact (dated by a kernel event) rather than a lower bound.
    pub fn age_of(&self, cookie: u64) -> Option<(f64, bool)> {
        let tracked = self.entries.get(&cookie)?;
        Some((
            (self.now - tracked.entered_at).max(0.0),
            tracked.entry_from_event,
        ))
    }

    /// Whether a dump has seen this socket in CLOSE_WAIT before.
    pub fn knows(&self, cookie: u64) -> bool {
        self.entries.contains_key(&cookie)
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::{Direction, OwnerKey, PortLabel};

    pub(super) fn group(port: u16) -> AgeGroup {
        AgeGroup {
            direction: Direction::Inbound,
            port: PortLabel::Port(port),
            owner: OwnerKey::default(),
        }
    }

    pub(super) const FACTS: CloseWaitFacts = CloseWaitFacts {
        eof_read: false,
        unaccepted: false,
    };

    #[test]
    fn sockets_count_as_stuck_only_once_older_than_stuck_after() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 100, 10, 10.0);
        tracker.begin(1000.0);
        let eof = CloseWaitFacts {
            eof_read: true,
            unaccepted: false,
        };
        let queued = CloseWaitFacts {
            eof_read: false,
            unaccepted: true,
        };
        for (cookie, age_ms, facts) in [
            (1, 9_999, eof),  // just under
            (2, 10_000, eof), // at: not older
            (3, 10_001, eof), // just over
            (4, 30_000, queued),
            (5, 40_000, FACTS),
        ] {
            tracker.sight(cookie, 1, group(80), facts);
            tracker.set_entry_time(cookie, age_ms, 1000.0);
        }
        let report = tracker.finish();
        assert_eq!(
            report.stuck,
            vec![(
                group(80),
                StuckCounts {
                    sockets: 3,
                    eof_read: 1,
                    unaccepted: 1
                }
            )]
        );
        // A sighting refreshes the facts: the program read the EOF since.
        tracker.begin(1000.5);
        for cookie in 1..=5 {
            tracker.sight(cookie, 1, group(80), eof);
        }
        let report = tracker.finish();
        assert_eq!(report.stuck[0].1.sockets, 5, "those under and at aged past");
        assert_eq!(report.stuck[0].1.eof_read, 5);
        assert_eq!(report.stuck[0].1.unaccepted, 0, "accepted since");
    }

    /// tcp_info read 2.5 s into a slow first sample (the lookups come after the dump and
    /// the attribution): the FIN 4 s before that read is 1.5 s before the sample's start,
    /// not 4 s. A FIN that came after the start gives age 0, never a negative one, and
    /// counts from the FIN at the next sample, not from this sample's start.
    #[test]
    fn entry_time_counts_from_when_tcp_info_was_read() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0], 100, 10, 60.0);
        tracker.begin(1000.0);
        assert!(tracker.sight(7, 1, group(80), FACTS));
        tracker.set_entry_time(7, 4_000, 1002.5);
        assert!(tracker.sight(8, 1, group(81), FACTS));
        tracker.set_entry_time(8, 500, 1002.5);
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 1.5), (group(81), 0.0)]);
        tracker.begin(1010.0);
        assert!(!tracker.sight(8, 1, group(81), FACTS));
        assert!(!tracker.sight(7, 1, group(80), FACTS));
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 11.5), (group(81), 8.0)]);
    }

    #[test]
    fn age_starts_at_the_fin_and_grows_across_samples() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0], 100, 10, 60.0);
        tracker.begin(1000.0);
        assert!(tracker.sight(7, 1, group(80), FACTS));
        tracker.set_entry_time(7, 4_000, 1000.0); // FIN 4 s ago
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 4.0)]);

        tracker.begin(1015.0);
        assert!(
            !tracker.sight(7, 1, group(80), FACTS),
            "known by its cookie"
        );
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 19.0)]);
        assert_eq!(
            report.durations,
            vec![(group(80), DurationHistogram::new(2))],
            "the histogram starts at zero while the socket waits"
        );
    }

    #[test]
    fn a_socket_that_leaves_is_observed_once_with_its_time() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0, 100.0], 100, 10, 60.0);
        tracker.begin(100.0);
        tracker.sight(1, 1, group(80), FACTS);
        tracker.sight(2, 2, group(80), FACTS);
        tracker.finish();
        tracker.begin(110.0);
        tracker.sight(2, 2, group(80), FACTS);
        let report = tracker.finish();
        // Socket 1: entered at 100, last seen 100, gone at 110: left at 105.
        assert_eq!(report.departed, 1);
        let (g, histogram) = &report.durations[0];
        assert_eq!(*g, group(80));
        assert_eq!(histogram.count, 1);
        assert_eq!(histogram.sum, 5.0);
        assert_eq!(histogram.cumulative, vec![0, 1, 1]);
        tracker.begin(120.0);
        let report = tracker.finish();
        assert_eq!(report.durations[0].1.count, 2, "counters only go up");
        assert!(report.oldest.is_empty());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 2, 10, 60.0);
        tracker.begin(1.0);
        assert!(tracker.sight(1, 1, group(80), FACTS));
        assert!(tracker.sight(2, 2, group(80), FACTS));
        assert!(!tracker.sight(3, 3, group(80), FACTS));
        let report = tracker.finish();
        assert_eq!(report.untracked, 1);
        assert_eq!(tracker.tracked(), 2);
    }

    #[test]
    fn owners_are_filled_in_after_the_dump() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 100, 10, 60.0);
        tracker.begin(1.0);
        tracker.sight(1, 42, group(80), FACTS);
        tracker.assign_owners(|inode, g| AgeGroup {
            owner: OwnerKey {
                process: crate::model::labels::ProcessId(inode),
                pid: 0,
                container: crate::model::labels::ProcessId::UNKNOWN,
            },
            ..g
        });
        let report = tracker.finish();
        assert_eq!(report.oldest[0].0.owner.process.0, 42);
    }

    #[test]
    fn the_readme_states_the_tracking_cost() {
        let readme = include_str!("../../../README.md");
        let stated = format!("**{BYTES_PER_TRACKED_SOCKET} bytes per CLOSE_WAIT socket**");
        assert!(readme.contains(&stated), "README should say {stated}");
    }
}
