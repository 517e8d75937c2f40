//! From numbers to a diagnosis: which of the article's three causes a CLOSE_WAIT group
//! (netns, direction, port, process) shows, with the evidence that led there.
//!
//! 1. **Never closed** (a program bug): sockets stay in CLOSE_WAIT past `stuck_after`
//!    and nothing closes them (or they are far older than the closes seen take), above
//!    all when the program read the EOF (Recv-Q 0) and still did not close.
//! 2. **Closed late** (responses slower than the peer's timeout): sockets do leave
//!    CLOSE_WAIT, but only after the peer gave up: closes are seen, and they took long.
//! 3. **Accept backlog** (a listen queue the program cannot drain): the CLOSE_WAIT
//!    sockets are still in the accept queue: the peer left before the program accepted.
//!
//! No evidence counts before a socket is older than `stuck_after`: a program may read
//! the EOF, finish writing and close a moment later, so a young CLOSE_WAIT is never a
//! leak, whatever its Recv-Q. The order of evidence: sockets stuck in the accept queue
//! (cause 3), then stuck sockets (cause 1, which wins over late closes beside it: the
//! leak is reported, the late closes named with it), then closes (cause 2). Close
//! evidence needs more than one sample (a watch); without it a verdict rests on ages and
//! queues alone and says so.

use std::fmt::Write as _;

pub use crate::model::ages::StuckCounts;

/// A stuck socket is a leak only when it is also this many times older than the mean
/// time the closes seen took: a slow program whose closes take 8 s has sockets 10 s old
/// that will close too.
pub const STUCK_OVER_MEAN_CLOSE: f64 = 5.0;

/// When evidence counts: ages and close durations in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Age from which a CLOSE_WAIT socket counts as evidence (stuck).
    pub stuck_after: f64,
    /// Mean time in CLOSE_WAIT from which closes are "late".
    pub late_after: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            stuck_after: 10.0,
            late_after: 5.0,
        }
    }
}

/// Everything known about one CLOSE_WAIT group (netns, direction, port, process).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    pub close_wait: u64,
    pub oldest_seconds: Option<f64>,
    pub unread_bytes: u64,
    pub unread_connections: u64,
    pub eof_read: u64,
    pub unaccepted: u64,
    pub keepalive: u64,
    pub established: u64,
    /// The CLOSE_WAIT sockets older than `stuck_after` (counted by the tracker with the
    /// same threshold), and among them those whose EOF was read and those still queued.
    pub stuck: StuckCounts,
    /// Listener of the port (inbound groups): accept-queue length and limit.
    pub listen_queue: Option<(u64, u64)>,
    /// Over the watch window: sockets that left CLOSE_WAIT, their total time there, and
    /// accept-queue overflows of the namespace. `None` without a window.
    pub closes: Option<Closes>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Closes {
    pub count: u64,
    pub seconds_total: f64,
    pub window_seconds: f64,
    pub listen_overflows: u64,
}

impl Closes {
    /// Mean time the closed sockets spent in CLOSE_WAIT (0 without closes).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.seconds_total / self.count as f64
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    NeverClosed,
    ClosedLate,
    AcceptBacklog,
    /// Not enough evidence yet (young sockets, no window).
    Undetermined,
}

impl Cause {
    pub fn name(self) -> &'static str {
        match self {
            Cause::NeverClosed => "never closed",
            Cause::ClosedLate => "closed late",
            Cause::AcceptBacklog => "accept backlog",
            Cause::Undetermined => "undetermined",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub cause: Cause,
    /// A second cause the same group shows beside the first (late closes beside a leak).
    pub also: Option<Cause>,
    /// One line: the cause, then the evidence ("never closed: 4 of 4 older than 5m
    /// (oldest 2h), no closes seen in 45s, 93% hold unread data").
    pub summary: String,
}

/// The first cause whose evidence holds, in the order accept backlog, never closed,
/// closed late; else undetermined, with what is known.
pub fn diagnose(evidence: &Evidence, thresholds: Thresholds) -> Verdict {
    accept_backlog(evidence)
        .or_else(|| never_closed(evidence, thresholds))
        .or_else(|| closed_late(evidence, thresholds))
        .unwrap_or_else(|| undetermined(evidence, thresholds))
}

/// Cause 3: the stuck CLOSE_WAIT sockets are still in the accept queue (half or more of
/// them), or some are while the queue is full or overflowing.
fn accept_backlog(evidence: &Evidence) -> Option<Verdict> {
    let stuck = evidence.stuck;
    let queue_full = evidence
        .listen_queue
        .is_some_and(|(length, max)| max > 0 && length >= max);
    let overflowing = evidence.closes.is_some_and(|c| c.listen_overflows > 0);
    let backlogged = (stuck.unaccepted > 0 && stuck.unaccepted * 2 >= stuck.sockets)
        || (evidence.unaccepted > 0 && (queue_full || overflowing));
    if !backlogged {
        return None;
    }
    let mut reasons = vec![format!(
        "{} of {} never accepted",
        evidence.unaccepted, evidence.close_wait
    )];
    if let Some((length, max)) = evidence.listen_queue {
        reasons.push(format!("accept queue {length}/{max}"));
    }
    if let Some(closes) = evidence.closes.filter(|c| c.listen_overflows > 0) {
        reasons.push(format!("{} listen overflows", closes.listen_overflows));
    }
    Some(verdict(Cause::AcceptBacklog, None, reasons))
}

/// Cause 1: sockets older than `stuck_after` that nothing closes, or far older than the
/// closes seen take. Late closes beside them are named, not hidden behind.
fn never_closed(evidence: &Evidence, thresholds: Thresholds) -> Option<Verdict> {
    let stuck = evidence.stuck;
    if stuck.sockets == 0 {
        return None;
    }
    let oldest = evidence.oldest_seconds.unwrap_or(0.0);
    let closed = evidence.closes.filter(|c| c.count > 0);
    if closed.is_some_and(|c| oldest <= STUCK_OVER_MEAN_CLOSE * c.mean()) {
        return None;
    }
    let mut reasons = vec![format!(
        "{} of {} older than {} (oldest {})",
        stuck.sockets,
        evidence.close_wait,
        human_seconds(thresholds.stuck_after),
        human_seconds(oldest)
    )];
    let also = closed
        .filter(|c| c.mean() >= thresholds.late_after)
        .map(|_| Cause::ClosedLate);
    match evidence.closes {
        None => reasons.push("closes not watched (use --watch)".into()),
        Some(c) if c.count == 0 => reasons.push(format!(
            "no closes seen in {}",
            human_seconds(c.window_seconds)
        )),
        Some(c) => reasons.push(format!(
            "{} others closed after {} on average{}",
            c.count,
            human_seconds(c.mean()),
            if also.is_some() { " (late)" } else { "" }
        )),
    }
    if stuck.eof_read > 0 {
        reasons.push(format!("EOF read and ignored on {}", stuck.eof_read));
    }
    if evidence.unread_connections > 0 && evidence.close_wait > 0 {
        reasons.push(format!(
            "{}% hold unread data",
            evidence.unread_connections * 100 / evidence.close_wait
        ));
    }
    Some(verdict(Cause::NeverClosed, also, reasons))
}

/// Cause 2: closes happen, but late.
fn closed_late(evidence: &Evidence, thresholds: Thresholds) -> Option<Verdict> {
    let closes = evidence.closes.filter(|c| c.count > 0)?;
    if closes.mean() < thresholds.late_after {
        return None;
    }
    let mut reasons = vec![format!(
        "{} closed after {} on average",
        closes.count,
        human_seconds(closes.mean())
    )];
    if evidence.close_wait > 0 {
        reasons.push(format!("{} still waiting", evidence.close_wait));
    }
    reasons.push("the peer gave up first".into());
    Some(verdict(Cause::ClosedLate, None, reasons))
}

/// No cause holds yet: what is known, for the person watching.
fn undetermined(evidence: &Evidence, thresholds: Thresholds) -> Verdict {
    let mut reasons = Vec::new();
    let closes = evidence.closes.filter(|c| c.count > 0);
    if evidence.close_wait > 0 {
        let oldest = evidence.oldest_seconds.unwrap_or(0.0);
        reasons.push(format!("oldest {}", human_seconds(oldest)));
        let stuck_after = human_seconds(thresholds.stuck_after);
        match (evidence.stuck.sockets, closes) {
            (0, _) => reasons.push(format!("none older than {stuck_after}")),
            (n, Some(c)) => reasons.push(format!(
                "{n} older than {stuck_after}, within {STUCK_OVER_MEAN_CLOSE}x the {} closes take",
                human_seconds(c.mean())
            )),
            (_, None) => {}
        }
    }
    if let Some(closes) = closes {
        reasons.push(format!(
            "{} closed after {} on average",
            closes.count,
            human_seconds(closes.mean())
        ));
    }
    verdict(Cause::Undetermined, None, reasons)
}

fn verdict(cause: Cause, also: Option<Cause>, reasons: Vec<String>) -> Verdict {
    let mut summary = cause.name().to_string();
    if !reasons.is_empty() {
        let _ = write!(summary, ": {}", reasons.join(", "));
    }
    Verdict {
        cause,
        also,
        summary,
    }
}

/// 2h, 15m, 45s, 1.5s: what a person reads at a glance.
pub fn human_seconds(seconds: f64) -> String {
    if seconds >= 7200.0 {
        format!("{:.0}h", seconds / 3600.0)
    } else if seconds >= 120.0 {
        format!("{:.0}m", seconds / 60.0)
    } else if seconds >= 10.0 {
        format!("{seconds:.0}s")
    } else {
        format!("{seconds:.1}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(count: u64, seconds_total: f64) -> Option<Closes> {
        Some(Closes {
            count,
            seconds_total,
            window_seconds: 30.0,
            listen_overflows: 0,
        })
    }

    fn stuck(sockets: u64, eof_read: u64, unaccepted: u64) -> StuckCounts {
        StuckCounts {
            sockets,
            eof_read,
            unaccepted,
        }
    }

    const LONG: Thresholds = Thresholds {
        stuck_after: 300.0,
        late_after: 5.0,
    };

    #[test]
    fn old_sockets_that_never_close_are_a_bug() {
        let evidence = Evidence {
            close_wait: 100,
            oldest_seconds: Some(7300.0),
            unread_connections: 93,
            stuck: stuck(100, 0, 0),
            closes: watched(0, 0.0),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, LONG);
        assert_eq!((v.cause, v.also), (Cause::NeverClosed, None));
        assert_eq!(
            v.summary,
            "never closed: 100 of 100 older than 5m (oldest 2h), no closes seen in 30s, \
             93% hold unread data"
        );
    }

    /// Item 2 of issue 15: a program that read the EOF and closes a moment later.
    #[test]
    fn a_young_socket_is_never_a_leak_even_with_its_eof_read() {
        let evidence = Evidence {
            close_wait: 6,
            oldest_seconds: Some(0.1),
            eof_read: 6,
            stuck: stuck(0, 0, 0),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, Thresholds::default());
        assert_eq!(v.cause, Cause::Undetermined);
        assert_eq!(v.summary, "undetermined: oldest 0.1s, none older than 10s");
        let old = Evidence {
            oldest_seconds: Some(11.0),
            stuck: stuck(2, 2, 0),
            ..evidence
        };
        let v = diagnose(&old, Thresholds::default());
        assert_eq!(v.cause, Cause::NeverClosed);
        assert!(
            v.summary.contains("EOF read and ignored on 2"),
            "only the stuck ones: {}",
            v.summary
        );
        assert!(v.summary.contains("use --watch"), "{}", v.summary);
    }

    /// Item 3: six sockets hang for good while others close after ~2.4 s.
    #[test]
    fn stuck_sockets_win_over_late_closes_beside_them() {
        let evidence = Evidence {
            close_wait: 11,
            oldest_seconds: Some(18.0),
            stuck: stuck(6, 0, 0),
            closes: watched(8, 19.2),
            ..Evidence::default()
        };
        let thresholds = Thresholds {
            stuck_after: 10.0,
            late_after: 1.0,
        };
        let v = diagnose(&evidence, thresholds);
        assert_eq!(
            (v.cause, v.also),
            (Cause::NeverClosed, Some(Cause::ClosedLate))
        );
        assert_eq!(
            v.summary,
            "never closed: 6 of 11 older than 10s (oldest 18s), 8 others closed after 2.4s \
             on average (late)"
        );
        // Closes that are quick are named, not called late.
        let quick = diagnose(&evidence, Thresholds::default());
        assert_eq!((quick.cause, quick.also), (Cause::NeverClosed, None));
    }

    #[test]
    fn stuck_sockets_within_five_times_the_mean_close_are_late_not_leaked() {
        // Closes take 8 s; sockets just over --stuck-after are on their way out.
        let thresholds = Thresholds {
            stuck_after: 10.0,
            late_after: 5.0,
        };
        let at = |oldest: f64| Evidence {
            close_wait: 3,
            oldest_seconds: Some(oldest),
            stuck: stuck(1, 0, 0),
            closes: watched(12, 96.0),
            ..Evidence::default()
        };
        assert_eq!(diagnose(&at(40.0), thresholds).cause, Cause::ClosedLate);
        assert_eq!(diagnose(&at(40.1), thresholds).cause, Cause::NeverClosed);
    }

    #[test]
    fn slow_closes_are_late_and_fast_ones_are_not() {
        let late = Evidence {
            close_wait: 3,
            oldest_seconds: Some(4.0),
            closes: watched(12, 102.0),
            ..Evidence::default()
        };
        let v = diagnose(&late, LONG);
        assert_eq!(v.cause, Cause::ClosedLate);
        assert_eq!(
            v.summary,
            "closed late: 12 closed after 8.5s on average, 3 still waiting, the peer gave up first"
        );
        let quick = Evidence {
            closes: watched(12, 1.2),
            ..late
        };
        let v = diagnose(&quick, LONG);
        assert_eq!(v.cause, Cause::Undetermined);
        assert_eq!(
            v.summary,
            "undetermined: oldest 4.0s, none older than 5m, 12 closed after 0.1s on average"
        );
        // Just under and at the threshold.
        let at = |mean: f64| Evidence {
            closes: watched(2, 2.0 * mean),
            ..late.clone()
        };
        assert_eq!(diagnose(&at(4.99), LONG).cause, Cause::Undetermined);
        assert_eq!(diagnose(&at(5.0), LONG).cause, Cause::ClosedLate);
    }

    #[test]
    fn unaccepted_sockets_point_at_the_backlog() {
        let evidence = Evidence {
            close_wait: 15,
            unaccepted: 14,
            stuck: stuck(15, 0, 14),
            listen_queue: Some((128, 128)),
            closes: Some(Closes {
                listen_overflows: 37,
                ..Closes::default()
            }),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, LONG);
        assert_eq!(v.cause, Cause::AcceptBacklog);
        assert_eq!(
            v.summary,
            "accept backlog: 14 of 15 never accepted, accept queue 128/128, 37 listen overflows"
        );
    }

    #[test]
    fn a_mixed_group_is_judged_by_its_stuck_sockets() {
        // 2 stuck in the queue, 3 stuck after accept: the accepted ones leak.
        let mixed = Evidence {
            close_wait: 5,
            unaccepted: 2,
            oldest_seconds: Some(60.0),
            stuck: stuck(5, 0, 2),
            listen_queue: Some((2, 128)),
            closes: watched(0, 0.0),
            ..Evidence::default()
        };
        assert_eq!(
            diagnose(&mixed, Thresholds::default()).cause,
            Cause::NeverClosed
        );
        // Young sockets in the queue prove nothing yet, unless the queue is full.
        let young = Evidence {
            oldest_seconds: Some(1.0),
            stuck: stuck(0, 0, 0),
            unaccepted: 5,
            ..mixed.clone()
        };
        assert_eq!(
            diagnose(&young, Thresholds::default()).cause,
            Cause::Undetermined
        );
        let full = Evidence {
            listen_queue: Some((128, 128)),
            ..young
        };
        assert_eq!(
            diagnose(&full, Thresholds::default()).cause,
            Cause::AcceptBacklog
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_seconds(7300.0), "2h");
        assert_eq!(human_seconds(900.0), "15m");
        assert_eq!(human_seconds(45.2), "45s");
        assert_eq!(human_seconds(1.54), "1.5s");
    }
}
