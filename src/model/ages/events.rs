//! Events mode: kernel state changes (eBPF) date CLOSE_WAIT entries and departures
//! exactly, and count entries the dumps never see (in and out between two samples). An
//! event's group is a guess from its ports until a dump sees the socket.

use super::CloseWaitTracker;
use crate::model::labels::AgeGroup;

/// A socket the kernel says entered CLOSE_WAIT, not yet seen by a dump: its group is
/// guessed from the event's ports until a dump says better.
#[derive(Clone, Copy, Debug)]
pub(super) struct Announced {
    pub(super) at: f64,
    pub(super) guess: AgeGroup,
    pub(super) rounds: u32,
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

impl CloseWaitTracker {
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

    /// At the end of a sample: announced sockets no dump saw within two samples (and no
    /// departure event) are counted as entered in their guessed group, then forgotten;
    /// entries dated by events this sample are counted now that owners are assigned.
    pub(super) fn count_event_entries(&mut self) {
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
        let mut newly_entered = Vec::new();
        for tracked in self.entries.values_mut().filter(|t| t.entry_to_count) {
            tracked.entry_to_count = false;
            newly_entered.push(tracked.group);
        }
        newly_entered.sort();
        for group in newly_entered {
            self.count_entered(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{FACTS, group};
    use super::*;

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
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0, 100.0], 100, 10, 60.0);
        tracker.apply_event(&event(1, 990.25, true), group(80));
        tracker.begin(1000.0);
        assert!(
            !tracker.sight(1, 5, group(80), FACTS),
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
        let mut tracker = CloseWaitTracker::new(vec![1.0, 10.0], 100, 10, 60.0);
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
        let mut tracker = CloseWaitTracker::new(vec![1.0], 100, 10, 60.0);
        tracker.begin(1.0);
        assert!(
            tracker.sight(1, 1, group(80), FACTS),
            "needs the tcp_info bound"
        );
        assert!(tracker.finish().entered.is_empty());
    }
}
