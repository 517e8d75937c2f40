//! The events edge in the daemon: attaches the eBPF program (when the build has the
//! `events` feature and the config allows), keeps its namespace filter equal to the
//! namespaces the sampler samples, and hands the sampler the TCP state changes the
//! drain thread (`event_drain`) queued, keyed by network namespace.
//!
//! The feed itself lives on the sampler thread (the tracker state it feeds is owned
//! there, so no lock is needed); only the ring is read on a thread of its own.

use std::collections::BTreeSet;

use crate::config::{EventsMode, Settings};
use crate::kernel::record::TcpState;
use crate::model::socket_table::StateTransition;

/// Kernel-side counts for the exposition.
#[derive(Clone, Debug, Default)]
pub struct EventCounts {
    /// (from, to, count) for every transition seen at least once in the namespaces
    /// sampled.
    pub transitions: Vec<(TcpState, TcpState, u64)>,
    /// Events lost: the ring had no room, the queue to the sampler was full, or the
    /// kernel skipped the program (`Counts::skipped`).
    pub lost: u64,
}

/// The ring wakes its reader once an eighth of it is full: with the default 1 MiB
/// ring, every ~1,600 events (about 800 connections through CLOSE_WAIT), so 50,000
/// connections a second cost ~60 wake-ups, and the reader may be late by the other
/// seven eighths (~115 ms at that rate) before anything is lost.
#[cfg(feature = "events")]
const WAKEUP_FRACTION: u32 = 8;

/// Events the drain thread may queue for the sampler, in rings' worths: 16 MiB of ring
/// (210,000 events, ~7 MB) with the default 1 MiB ring, two seconds of 50,000
/// connections a second; a sampler busier than that loses events rather than memory.
#[cfg(feature = "events")]
const QUEUE_RINGS: usize = 16;

/// How long the sampler waits for the drain thread to empty the ring before a round.
#[cfg(feature = "events")]
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub struct EventFeed {
    #[cfg(feature = "events")]
    attached: Option<Attached>,
}

#[cfg(feature = "events")]
struct Attached {
    maps: crate::kernel::events::EventMaps,
    drain: crate::sampling::event_drain::EventDrain,
    warned_filter: bool,
    /// The kernel filters on namespaces (so it can send every transition of some).
    filtering: bool,
    /// Events lost as of the last `lost_any`.
    lost_seen: u64,
}

impl EventFeed {
    /// Attaches per `settings.events`, with its filter set to `namespaces` (inodes) and
    /// its drain thread started (with the calling thread's priority). `Err` only under
    /// `events = "on"`; under "auto" a failure is one info line naming the reason, and
    /// the exporter polls alone.
    pub fn start(settings: &Settings, namespaces: &BTreeSet<u64>) -> Result<EventFeed, String> {
        if settings.events == EventsMode::Off {
            return Ok(EventFeed::off());
        }
        match attach(settings, namespaces) {
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
            attached: None,
        }
    }

    pub fn attached(&self) -> bool {
        #[cfg(feature = "events")]
        return self.attached.is_some();
        #[cfg(not(feature = "events"))]
        false
    }

    /// The state changes queued since the last call (CLOSE_WAIT ones, and every one of
    /// followed namespaces), with their namespace inode. Never waits.
    pub fn drain(&mut self) -> Vec<(u64, StateTransition)> {
        #[cfg(feature = "events")]
        if let Some(attached) = &mut self.attached {
            return attached.drain.take();
        }
        Vec::new()
    }

    /// Every state change the kernel sent until now (the drain thread empties
    /// the ring first; a short wait at most): what a round applies before its dumps.
    pub fn flush(&mut self) -> Vec<(u64, StateTransition)> {
        #[cfg(feature = "events")]
        if let Some(attached) = &mut self.attached {
            return attached.drain.flush(FLUSH_WAIT);
        }
        Vec::new()
    }

    /// Keeps the kernel's namespace filter equal to the namespaces sampled (inodes):
    /// the transitions of any other never reach user space, nor the counts. Those of
    /// `followed` send every transition. Returns the followed namespaces the kernel now
    /// sends every transition of (none without a filter, or with events off).
    pub fn sample_namespaces(
        &mut self,
        namespaces: &BTreeSet<u64>,
        followed: &BTreeSet<u64>,
    ) -> BTreeSet<u64> {
        #[cfg(feature = "events")]
        if let Some(attached) = &mut self.attached {
            use crate::kernel::events::{NETNS_EVERY_TRANSITION, NETNS_SAMPLED};
            let wanted = namespaces
                .iter()
                .filter_map(|inode| {
                    let flags = match followed.contains(inode) {
                        true => NETNS_SAMPLED | NETNS_EVERY_TRANSITION,
                        false => NETNS_SAMPLED,
                    };
                    Some((u32::try_from(*inode).ok()?, flags))
                })
                .collect();
            match attached.maps.filter_netns_with_flags(&wanted) {
                Ok(()) => attached.warned_filter = false,
                Err(e) if !attached.warned_filter => {
                    tracing::warn!(error = %e, "their CLOSE_WAIT ages are polled bounds");
                    attached.warned_filter = true;
                }
                Err(_) => {}
            }
            if !attached.filtering {
                return BTreeSet::new();
            }
            return attached
                .maps
                .filtered()
                .iter()
                .filter(|(_, flags)| **flags & NETNS_EVERY_TRANSITION != 0)
                .map(|(inode, _)| u64::from(*inode))
                .collect();
        }
        let _ = (namespaces, followed);
        BTreeSet::new()
    }

    /// Whether events were lost (by the kernel or the queue) since the last call.
    pub fn lost_any(&mut self) -> bool {
        #[cfg(feature = "events")]
        if let Some(attached) = &mut self.attached {
            // Unreadable counters: assume the worst.
            let Ok(counts) = attached.maps.counts() else {
                return true;
            };
            let dropped = attached.drain.dropped();
            let lost = (counts.lost + counts.skipped).saturating_add(dropped);
            let any = lost != attached.lost_seen;
            if any {
                tracing::debug!(
                    ring_full = counts.lost,
                    queue_full = dropped,
                    skipped_by_the_kernel = counts.skipped,
                    rescued = counts.rescued,
                    "events lost since attach"
                );
            }
            attached.lost_seen = lost;
            return any;
        }
        false
    }

    pub fn counts(&self) -> Option<EventCounts> {
        #[cfg(feature = "events")]
        if let Some(attached) = &self.attached {
            let counts = match attached.maps.counts() {
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
                lost: counts.lost + counts.skipped + attached.drain.dropped(),
            });
        }
        None
    }
}

#[cfg(feature = "events")]
fn attach(settings: &Settings, namespaces: &BTreeSet<u64>) -> Result<EventFeed, String> {
    use crate::kernel::events::{EventSource, EventsConfig};
    use crate::sampling::event_drain::EventDrain;
    // Inodes are 32-bit in the kernel; one that is not (or unknown, 0) cannot be
    // filtered on, so then every namespace passes and user space drops the others.
    let filterable = namespaces
        .iter()
        .all(|inode| *inode != 0 && u32::try_from(*inode).is_ok());
    let config = EventsConfig {
        ring_bytes: settings.events_ring_bytes,
        netns_filter: filterable,
        wakeup_bytes: settings.events_ring_bytes / WAKEUP_FRACTION,
        ..EventsConfig::default()
    };
    let (maps, ring) = EventSource::attach(&config)
        .map_err(|e| e.to_string())?
        .split();
    let limit = ring.capacity() * QUEUE_RINGS;
    let drain = EventDrain::start(ring, limit)
        .map_err(|e| format!("cannot start the events drain thread: {e}"))?;
    let mut feed = EventFeed {
        attached: Some(Attached {
            maps,
            drain,
            warned_filter: false,
            filtering: filterable,
            lost_seen: 0,
        }),
    };
    feed.sample_namespaces(namespaces, &BTreeSet::new());
    Ok(feed)
}

#[cfg(not(feature = "events"))]
fn attach(_settings: &Settings, _namespaces: &BTreeSet<u64>) -> Result<EventFeed, String> {
    Err("this build has no events feature (built with --no-default-features)".into())
}
