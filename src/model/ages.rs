//! Tracking: how long each socket has been in CLOSE_WAIT, and how long the ones that
//! left had stayed.
//!
//! No kernel field records when a socket entered CLOSE_WAIT. A socket is identified
//! across samples by its cookie; its entry time is taken at first sighting as
//! `now - tcp_info.last_ack_recv`: the peer's FIN is the last ACK-carrying segment a
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
}

/// A socket the kernel says entered CLOSE_WAIT, not yet seen by a dump: its group is
/// guessed from the event's ports until a dump says better.
#[derive(Clone, Copy, Debug)]
struct Announced {
    at: f64,
    guess: AgeGroup,
    rounds: u32,
}

/// A CLOSE_WAIT transition from the kernel's events (eBPF mode).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloseWaitEvent {
    pub cookie: u64,
    /// Unix seconds of the transition.
    pub at: f64,
    pub local_port: u16,
    pub remote_port: u16,
    /// Entered CLOSE_WAIT (else: left it).
    pub entered: bool,
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
    pub fn new(bounds: Vec<f64>, max_tracked: usize, max_groups: usize) -> Self {
        CloseWaitTracker {
            entries: HashMap::new(),
            histograms: BoundedSeries::new(max_groups),
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

    /// Applies a kernel event (drained before the sample's dump). Only events actually
    /// received make a time exact: after a loss the affected sockets keep the polled
    /// bound, never a wrong exact value. `guess` is the event's group as its ports and
    /// the last sample's listeners suggest; a dump's sighting replaces it.
    pub fn apply_event(&mut self, event: &CloseWaitEvent, guess: AgeGroup) {
        if event.entered {
            if let Some(tracked) = self.entries.get_mut(&event.cookie) {
                tracked.entered_at = event.at;
                if !tracked.entry_from_event {
                    tracked.entry_from_event = true;
                    let group = tracked.group;
                    self.count_entered(group);
                }
            } else if self.announced.len() < self.max_tracked {
                self.announced.insert(
                    event.cookie,
                    Announced {
                        at: event.at,
                        guess,
                        rounds: 0,
                    },
                );
            }
        } else if self.entries.contains_key(&event.cookie) {
            self.departures.insert(event.cookie, event.at);
        } else if let Some(announced) = self.announced.remove(&event.cookie) {
            // In and out of CLOSE_WAIT between two samples: no dump ever saw it.
            self.count_entered(announced.guess);
            self.observe(announced.guess, (event.at - announced.at).max(0.0));
        }
    }

    fn count_entered(&mut self, group: AgeGroup) {
        *self.entered.entry(group, || 0) += 1;
    }

    fn observe(&mut self, group: AgeGroup, seconds: f64) {
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
    pub fn sight(&mut self, cookie: u64, inode: u32, group: AgeGroup) -> bool {
        if let Some(tracked) = self.entries.get_mut(&cookie) {
            tracked.epoch = self.epoch;
            tracked.last_seen = self.now;
            tracked.inode = inode;
            tracked.group = group;
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
            },
        );
        announced.is_none()
    }

    /// Sets when a newly seen socket entered CLOSE_WAIT: `now - last_ack_recv`.
    pub fn set_entry_time(&mut self, cookie: u64, last_ack_recv_ms: u32) {
        if let Some(tracked) = self.entries.get_mut(&cookie) {
            tracked.entered_at = self.now - f64::from(last_ack_recv_ms) / 1000.0;
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
        // Announced sockets no dump saw within two samples (and no departure event):
        // counted as entered in their guessed group, then forgotten.
        let mut expired = Vec::new();
        self.announced.retain(|_, announced| {
            announced.rounds += 1;
            if announced.rounds > 2 {
                expired.push(announced.guess);
                false
            } else {
                true
            }
        });
        for group in expired {
            self.count_entered(group);
        }
        // Entries dated by events this sample, counted now that owners are assigned.
        let mut newly_entered = Vec::new();
        for tracked in self.entries.values_mut().filter(|t| t.entry_to_count) {
            tracked.entry_to_count = false;
            newly_entered.push(tracked.group);
        }
        newly_entered.sort();
        for group in newly_entered {
            self.count_entered(group);
        }
        let mut oldest: HashMap<AgeGroup, f64> = HashMap::new();
        for tracked in self.entries.values() {
            let age = (now - tracked.entered_at).max(0.0);
            let slot = oldest.entry(tracked.group).or_insert(age);
            *slot = slot.max(age);
        }
        let mut oldest: Vec<(AgeGroup, f64)> = oldest.into_iter().collect();
        oldest.sort_by_key(|o| o.0);
        AgesReport {
            oldest,
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

    fn group(port: u16) -> AgeGroup {
        AgeGroup {
            direction: Direction::Inbound,
            port: PortLabel::Port(port),
            owner: OwnerKey::default(),
        }
    }

    #[test]
    fn age_starts_at_the_fin_and_grows_across_samples() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0], 100, 10);
        tracker.begin(1000.0);
        assert!(tracker.sight(7, 1, group(80)));
        tracker.set_entry_time(7, 4_000); // FIN 4 s ago
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 4.0)]);

        tracker.begin(1015.0);
        assert!(!tracker.sight(7, 1, group(80)), "known by its cookie");
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 19.0)]);
        assert!(report.durations.is_empty());
    }

    #[test]
    fn a_socket_that_leaves_is_observed_once_with_its_time() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0, 100.0], 100, 10);
        tracker.begin(100.0);
        tracker.sight(1, 1, group(80));
        tracker.sight(2, 2, group(80));
        tracker.finish();
        tracker.begin(110.0);
        tracker.sight(2, 2, group(80));
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

    fn event(cookie: u64, at: f64, entered: bool) -> CloseWaitEvent {
        CloseWaitEvent {
            cookie,
            at,
            local_port: 80,
            remote_port: 40000,
            entered,
        }
    }

    #[test]
    fn events_make_entry_and_departure_exact() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0, 100.0], 100, 10);
        tracker.apply_event(&event(1, 990.25, true), group(80));
        tracker.begin(1000.0);
        assert!(
            !tracker.sight(1, 5, group(80)),
            "dated by its event: no lookup needed"
        );
        let report = tracker.finish();
        assert_eq!(report.oldest, vec![(group(80), 9.75)]);
        assert_eq!(report.entered, vec![(group(80), 1)]);
        // It leaves at 1003.5 (the event says); the next sample misses it.
        tracker.apply_event(&event(1, 1003.5, false), group(80));
        tracker.begin(1015.0);
        let report = tracker.finish();
        assert_eq!(report.durations[0].1.sum, 13.25, "exact, not the midpoint");
        assert_eq!(report.entered, vec![(group(80), 1)], "counted once");
    }

    #[test]
    fn a_close_wait_shorter_than_a_sample_is_still_observed() {
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0], 100, 10);
        tracker.apply_event(&event(7, 100.0, true), group(80));
        tracker.apply_event(&event(7, 100.4, false), group(80));
        tracker.begin(101.0);
        let report = tracker.finish();
        assert_eq!(report.entered, vec![(group(80), 1)]);
        let (g, histogram) = &report.durations[0];
        assert_eq!(*g, group(80));
        assert_eq!(histogram.count, 1);
        assert!((histogram.sum - 0.4).abs() < 1e-9);
        assert_eq!(histogram.cumulative, vec![1, 1]);
    }

    #[test]
    fn without_events_nothing_is_counted_as_entered() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 100, 10);
        tracker.begin(1.0);
        assert!(tracker.sight(1, 1, group(80)), "needs the tcp_info bound");
        assert!(tracker.finish().entered.is_empty());
    }

    #[test]
    fn tracking_is_bounded() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 2, 10);
        tracker.begin(1.0);
        assert!(tracker.sight(1, 1, group(80)));
        assert!(tracker.sight(2, 2, group(80)));
        assert!(!tracker.sight(3, 3, group(80)));
        let report = tracker.finish();
        assert_eq!(report.untracked, 1);
        assert_eq!(tracker.tracked(), 2);
    }

    #[test]
    fn owners_are_filled_in_after_the_dump() {
        let mut tracker = CloseWaitTracker::new(vec![1.0], 100, 10);
        tracker.begin(1.0);
        tracker.sight(1, 42, group(80));
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
        let readme = include_str!("../../README.md");
        let stated = format!("**{BYTES_PER_TRACKED_SOCKET} bytes per CLOSE_WAIT socket**");
        assert!(readme.contains(&stated), "README should say {stated}");
    }
}
