//! What the sampler thread hands the HTTP side each round besides the encoded
//! exposition: the round's samples (their per-socket views included) and an earlier
//! round to judge closes against, for the drill-down and the live page. Swapped in
//! whole, read without a lock; no request ever samples. The page is rendered at most
//! once per round, by the first request that wants it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::config::{NamespaceMode, Settings};
use crate::kernel::record::TcpState;
use crate::model::diagnosis::Thresholds;
use crate::model::sample::NamespaceSample;
use crate::model::sockets::SocketList;

/// The verdicts of the page watch closes over at least this long once the daemon has
/// run that long (and at most twice as long): a few minutes of closes, as `snapshot
/// --watch` sees seconds of them.
pub const VERDICT_WINDOW_SECONDS: f64 = 300.0;

/// An earlier round, kept for what the verdicts compare against: its duration
/// histograms and accept-queue counters (its per-socket view and peers are dropped).
#[derive(Clone, Debug, Default)]
pub struct Baseline {
    pub taken_at: f64,
    pub samples: Vec<NamespaceSample>,
}

/// The last round, as published.
#[derive(Debug, Default)]
pub struct Published {
    /// Unix time of the round (0 before the first).
    pub taken_at: f64,
    pub samples: Vec<NamespaceSample>,
    /// The states whose sockets the per-socket view keeps: CLOSE_WAIT and the detail
    /// states of the round's settings.
    pub kept_states: Vec<TcpState>,
    /// Whether namespaces are labelled (`namespaces = "all"`).
    pub namespace_labels: bool,
    /// The round the verdicts' closes are counted from.
    pub baseline: Option<Arc<Baseline>>,
    pub thresholds: Thresholds,
    pub interval_seconds: f64,
    pub telemetry_path: String,
    page: OnceLock<Bytes>,
}

impl Published {
    pub fn new(samples: &[NamespaceSample], taken_at: f64, settings: &Settings) -> Self {
        Published {
            taken_at,
            samples: samples.to_vec(),
            kept_states: kept_states(settings),
            namespace_labels: settings.namespaces == NamespaceMode::All,
            baseline: None,
            thresholds: Thresholds {
                stuck_after: settings.stuck_after.as_secs_f64(),
                ..Thresholds::default()
            },
            interval_seconds: settings.sample_interval.as_secs_f64(),
            telemetry_path: settings.telemetry_path.clone(),
            page: OnceLock::new(),
        }
    }

    /// The page of this round, rendered by the first caller.
    pub fn page(&self, render: impl FnOnce(&Published) -> String) -> Bytes {
        self.page.get_or_init(|| Bytes::from(render(self))).clone()
    }
}

/// CLOSE_WAIT and the detail states, in kernel order.
pub fn kept_states(settings: &Settings) -> Vec<TcpState> {
    TcpState::ALL
        .into_iter()
        .filter(|s| *s == TcpState::CloseWait || settings.detail_states.contains(s))
        .collect()
}

/// Two earlier rounds at least `VERDICT_WINDOW_SECONDS` apart: the older one is the
/// baseline, so the window the verdicts see spans one to two windows once warmed up
/// (one round to one window before).
#[derive(Debug, Default)]
pub struct RoundHistory {
    older: Option<Arc<Baseline>>,
    newer: Option<Arc<Baseline>>,
}

impl RoundHistory {
    /// Takes a round; returns the baseline it is to be judged against.
    pub fn push(&mut self, samples: &[NamespaceSample], taken_at: f64) -> Option<Arc<Baseline>> {
        let baseline = self.older.clone().or_else(|| self.newer.clone());
        let due = self
            .newer
            .as_ref()
            .is_none_or(|n| taken_at - n.taken_at >= VERDICT_WINDOW_SECONDS);
        if due {
            self.older = self.newer.take();
            self.newer = Some(Arc::new(Baseline {
                taken_at,
                samples: samples.iter().map(stripped).collect(),
            }));
        }
        baseline
    }
}

/// A sample without what a baseline does not need: its per-socket view and peers.
fn stripped(namespace: &NamespaceSample) -> NamespaceSample {
    let mut copy = namespace.clone();
    copy.sample.sockets = Arc::new(SocketList::default());
    copy.sample.close_wait_peers = Vec::new();
    copy.sample.close_wait_pids = Vec::new();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_one_to_two_windows_old_once_warm() {
        let mut history = RoundHistory::default();
        let window = VERDICT_WINDOW_SECONDS;
        assert!(history.push(&[], 0.0).is_none(), "nothing before the first");
        let mut ages = Vec::new();
        for round in 1..100 {
            let now = round as f64 * 15.0;
            let baseline = history.push(&[], now).expect("a baseline");
            ages.push(now - baseline.taken_at);
        }
        assert_eq!(ages[0], 15.0, "the first round at first");
        let warm: Vec<f64> = ages.iter().copied().skip_while(|a| *a < window).collect();
        assert!(warm.len() > 50, "{ages:?}");
        assert!(
            warm.iter().all(|a| (window..=2.0 * window).contains(a)),
            "{ages:?}"
        );
    }
}
