//! The events edge in the daemon: attaches the eBPF program (when the build has the
//! `events` feature and the config allows), and hands each round the CLOSE_WAIT
//! transitions since the last one, keyed by network namespace.
//!
//! Lives on the sampling thread: the tracker state it feeds is owned there, so no lock
//! is needed, and the ring buffer is drained once per round.

use crate::config::{EventsMode, Settings};
use crate::kernel::record::TcpState;
use crate::model::ages::CloseWaitEvent;

/// Kernel-side counts for the exposition.
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    /// (from, to, count) for every transition seen at least once, in every namespace.
    pub transitions: Vec<(TcpState, TcpState, u64)>,
    /// Events the ring buffer had no room for.
    pub lost: u64,
}

pub struct EventFeed {
    #[cfg(feature = "events")]
    source: Option<crate::kernel::events::EventSource>,
}

impl EventFeed {
    /// Attaches per `settings.events`. `Err` only under `events = "on"`; under "auto" a
    /// failure is one info line naming the reason, and the exporter polls alone.
    pub fn start(settings: &Settings) -> Result<EventFeed, String> {
        if settings.events == EventsMode::Off {
            return Ok(EventFeed::off());
        }
        match attach(settings) {
            Ok(feed) => {
                tracing::info!("events mode: CLOSE_WAIT lifetimes from sock:inet_sock_set_state");
                Ok(feed)
            }
            Err(why) if settings.events == EventsMode::On => Err(format!(
                "events = \"on\" but the eBPF program cannot attach: {why}"
            )),
            Err(why) => {
                tracing::info!(reason = %why, "events mode unavailable; polling alone (ages are lower bounds)");
                Ok(EventFeed::off())
            }
        }
    }

    fn off() -> EventFeed {
        EventFeed {
            #[cfg(feature = "events")]
            source: None,
        }
    }

    pub fn attached(&self) -> bool {
        #[cfg(feature = "events")]
        return self.source.is_some();
        #[cfg(not(feature = "events"))]
        false
    }

    /// The CLOSE_WAIT transitions since the last call, with their namespace inode.
    pub fn drain(&mut self) -> Vec<(u64, CloseWaitEvent)> {
        #[cfg_attr(not(feature = "events"), allow(unused_mut))]
        let mut out = Vec::new();
        #[cfg(feature = "events")]
        if let Some(source) = &mut self.source {
            source.drain(|change| {
                let entered = change.to_state() == Some(TcpState::CloseWait);
                let left = change.from_state() == Some(TcpState::CloseWait);
                if entered || left {
                    out.push((
                        u64::from(change.netns.inum),
                        CloseWaitEvent {
                            cookie: change.cookie,
                            at: change.unix_seconds,
                            local_port: change.local.port(),
                            remote_port: change.remote.port(),
                            entered,
                        },
                    ));
                }
            });
        }
        out
    }

    pub fn counts(&self) -> Option<EventCounts> {
        #[cfg(feature = "events")]
        if let Some(source) = &self.source {
            let counts = match source.counts() {
                Ok(counts) => counts,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the event counters");
                    return None;
                }
            };
            // NEW_SYN_RECV folds into syn_recv: merge, or two series would share labels.
            let mut merged = std::collections::BTreeMap::new();
            for (from, to, n) in counts.transitions.nonzero() {
                if let (Some(from), Some(to)) =
                    (TcpState::from_kernel(from), TcpState::from_kernel(to))
                {
                    *merged.entry((from, to)).or_insert(0) += n;
                }
            }
            let transitions = merged.into_iter().map(|((f, t), n)| (f, t, n)).collect();
            return Some(EventCounts {
                transitions,
                lost: counts.lost,
            });
        }
        None
    }
}

#[cfg(feature = "events")]
fn attach(settings: &Settings) -> Result<EventFeed, String> {
    let config = crate::kernel::events::EventsConfig {
        ring_bytes: settings.events_ring_bytes,
        ..crate::kernel::events::EventsConfig::default()
    };
    crate::kernel::events::EventSource::attach(&config)
        .map(|source| EventFeed {
            source: Some(source),
        })
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "events"))]
fn attach(_settings: &Settings) -> Result<EventFeed, String> {
    Err("this build has no events feature (built with --no-default-features)".into())
}
