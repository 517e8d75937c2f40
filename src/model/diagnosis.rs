//! From numbers to a diagnosis: which of the article's three causes a CLOSE_WAIT group
//! shows, with the evidence that led there.
//!
//! 1. **Never closed** (a program bug): the sockets age and none is closed, above all
//!    when the program already read the EOF (Recv-Q 0) and still did not close.
//! 2. **Closed late** (responses slower than the peer's timeout): sockets do leave
//!    CLOSE_WAIT, but only after the peer gave up: closes are seen, and they took long.
//! 3. **Accept backlog** (a listen queue the program cannot drain): the CLOSE_WAIT
//!    sockets are still in the accept queue: the peer left before the program accepted.
//!
//! Close evidence needs more than one sample (`snapshot --watch`); without it a verdict
//! rests on ages and queues alone and says so.

use std::fmt::Write as _;

/// When evidence counts: ages and close durations in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Oldest age from which a group that closes nothing is "never closed".
    pub stuck_after: f64,
    /// Mean time in CLOSE_WAIT from which closes are "late".
    pub late_after: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            stuck_after: 300.0,
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
    /// One line: the cause, then the evidence ("never closed: oldest 2h, no closes seen
    /// in 45s, 93% hold unread data").
    pub summary: String,
}

/// The first cause whose evidence holds, in the order accept backlog, closed late,
/// never closed; else undetermined, with what is known.
pub fn diagnose(evidence: &Evidence, thresholds: Thresholds) -> Verdict {
    accept_backlog(evidence)
        .or_else(|| closed_late(evidence, thresholds))
        .or_else(|| never_closed(evidence, thresholds))
        .unwrap_or_else(|| undetermined(evidence))
}

/// Cause 3: the CLOSE_WAIT sockets are still in the accept queue.
fn accept_backlog(evidence: &Evidence) -> Option<Verdict> {
    let cw = evidence.close_wait;
    let queue_full = evidence
        .listen_queue
        .is_some_and(|(length, max)| max > 0 && length >= max);
    let overflowing = evidence.closes.is_some_and(|c| c.listen_overflows > 0);
    let backlogged = cw > 0
        && (evidence.unaccepted * 2 >= cw
            || (evidence.unaccepted > 0 && (queue_full || overflowing)));
    if !backlogged {
        return None;
    }
    let mut reasons = vec![format!("{} of {} never accepted", evidence.unaccepted, cw)];
    if let Some((length, max)) = evidence.listen_queue {
        reasons.push(format!("accept queue {length}/{max}"));
    }
    if let Some(closes) = evidence.closes.filter(|c| c.listen_overflows > 0) {
        reasons.push(format!("{} listen overflows", closes.listen_overflows));
    }
    Some(verdict(Cause::AcceptBacklog, reasons))
}

/// Cause 2: closes happen, but late.
fn closed_late(evidence: &Evidence, thresholds: Thresholds) -> Option<Verdict> {
    let closes = evidence.closes.filter(|c| c.count > 0)?;
    let mean = closes.seconds_total / closes.count as f64;
    if mean < thresholds.late_after {
        return None;
    }
    let mut reasons = vec![format!(
        "{} closed after {} on average",
        closes.count,
        human_seconds(mean)
    )];
    if evidence.close_wait > 0 {
        reasons.push(format!("{} still waiting", evidence.close_wait));
    }
    reasons.push("the peer gave up first".into());
    Some(verdict(Cause::ClosedLate, reasons))
}

/// Cause 1: old, and nothing closes (or the EOF was read and ignored).
fn never_closed(evidence: &Evidence, thresholds: Thresholds) -> Option<Verdict> {
    let cw = evidence.close_wait;
    let oldest = evidence.oldest_seconds.unwrap_or(0.0);
    let closes_seen = evidence.closes.map_or(0, |c| c.count);
    if cw == 0 || closes_seen > 0 || (oldest < thresholds.stuck_after && evidence.eof_read == 0) {
        return None;
    }
    let mut reasons = vec![format!("oldest {}", human_seconds(oldest))];
    match evidence.closes {
        Some(c) => reasons.push(format!(
            "no closes seen in {}",
            human_seconds(c.window_seconds)
        )),
        None => reasons.push("closes not watched (use --watch)".into()),
    }
    if evidence.eof_read > 0 {
        reasons.push(format!("EOF read and ignored on {}", evidence.eof_read));
    }
    if evidence.unread_connections > 0 {
        reasons.push(format!(
            "{}% hold unread data",
            evidence.unread_connections * 100 / cw
        ));
    }
    Some(verdict(Cause::NeverClosed, reasons))
}

/// No cause holds yet: what is known, for the person watching.
fn undetermined(evidence: &Evidence) -> Verdict {
    let cw = evidence.close_wait;
    let mut reasons = Vec::new();
    let closes = evidence.closes.filter(|c| c.count > 0);
    if cw == 0 {
        if let Some(closes) = closes {
            reasons.push(format!(
                "{} closed after {} on average",
                closes.count,
                human_seconds(closes.seconds_total / closes.count as f64)
            ));
        }
    } else {
        let oldest = evidence.oldest_seconds.unwrap_or(0.0);
        reasons.push(format!("oldest {}", human_seconds(oldest)));
        if let Some(closes) = closes {
            reasons.push(format!("{} closed meanwhile", closes.count));
        }
    }
    verdict(Cause::Undetermined, reasons)
}

fn verdict(cause: Cause, reasons: Vec<String>) -> Verdict {
    let mut summary = cause.name().to_string();
    if !reasons.is_empty() {
        let _ = write!(summary, ": {}", reasons.join(", "));
    }
    Verdict { cause, summary }
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

    #[test]
    fn old_sockets_that_never_close_are_a_bug() {
        let evidence = Evidence {
            close_wait: 100,
            oldest_seconds: Some(7300.0),
            unread_connections: 93,
            closes: watched(0, 0.0),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, Thresholds::default());
        assert_eq!(v.cause, Cause::NeverClosed);
        assert_eq!(
            v.summary,
            "never closed: oldest 2h, no closes seen in 30s, 93% hold unread data"
        );
    }

    #[test]
    fn an_eof_read_and_ignored_is_a_bug_even_when_young() {
        let evidence = Evidence {
            close_wait: 2,
            oldest_seconds: Some(3.0),
            eof_read: 2,
            ..Evidence::default()
        };
        let v = diagnose(&evidence, Thresholds::default());
        assert_eq!(v.cause, Cause::NeverClosed);
        assert!(
            v.summary.contains("EOF read and ignored on 2"),
            "{}",
            v.summary
        );
        assert!(v.summary.contains("use --watch"), "{}", v.summary);
    }

    #[test]
    fn slow_closes_are_late_and_fast_ones_are_not() {
        let late = Evidence {
            close_wait: 3,
            oldest_seconds: Some(4.0),
            closes: watched(12, 102.0),
            ..Evidence::default()
        };
        let v = diagnose(&late, Thresholds::default());
        assert_eq!(v.cause, Cause::ClosedLate);
        assert_eq!(
            v.summary,
            "closed late: 12 closed after 8.5s on average, 3 still waiting, the peer gave up first"
        );
        let quick = Evidence {
            closes: watched(12, 1.2),
            ..late
        };
        assert_eq!(
            diagnose(&quick, Thresholds::default()).cause,
            Cause::Undetermined
        );
    }

    #[test]
    fn unaccepted_sockets_point_at_the_backlog() {
        let evidence = Evidence {
            close_wait: 15,
            unaccepted: 14,
            listen_queue: Some((128, 128)),
            closes: Some(Closes {
                listen_overflows: 37,
                ..Closes::default()
            }),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, Thresholds::default());
        assert_eq!(v.cause, Cause::AcceptBacklog);
        assert_eq!(
            v.summary,
            "accept backlog: 14 of 15 never accepted, accept queue 128/128, 37 listen overflows"
        );
    }

    #[test]
    fn young_sockets_without_evidence_are_undetermined() {
        let evidence = Evidence {
            close_wait: 1,
            oldest_seconds: Some(2.0),
            ..Evidence::default()
        };
        let v = diagnose(&evidence, Thresholds::default());
        assert_eq!(v.cause, Cause::Undetermined);
        assert_eq!(v.summary, "undetermined: oldest 2.0s");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_seconds(7300.0), "2h");
        assert_eq!(human_seconds(900.0), "15m");
        assert_eq!(human_seconds(45.2), "45s");
        assert_eq!(human_seconds(1.54), "1.5s");
    }
}
