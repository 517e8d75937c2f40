//! The sampler thread: a round over the namespaces on a fixed-rate timer, each round
//! counted and encoded once into the exposition the HTTP side serves.
//!
//! Sampling runs on its own OS thread, off the async workers: a dump is blocking netlink
//! I/O and /proc reads, and a slow one must never delay a scrape. The thread owns every
//! piece of sampling state (namespaces, trackers, owner cache, the events maps), so none
//! of it needs a lock; the HTTP side only ever sees the `Arc` of the last exposition.
//! Only the events ring is read elsewhere, by the drain thread the feed starts, which
//! hands its events over through a bounded queue.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Settings;
use crate::model::sample::NamespaceSample;
use crate::model::self_metrics::SelfMetrics;
use crate::sampling::attribution::Attribution;
use crate::sampling::event_feed::EventFeed;
use crate::sampling::namespace_set::{NamespaceSet, Round};

/// Hands each round on: the namespaces' last good samples, the exporter's own counters
/// (the publisher sets the round's duration), when the round started, and the running
/// settings. The daemon's publisher encodes the round and swaps it in for the HTTP side.
pub type Publish =
    Box<dyn FnMut(&[NamespaceSample], &mut SelfMetrics, Instant, &Settings) + Send + 'static>;

/// Control messages to the sampling thread.
pub enum Control {
    /// New settings from a SIGHUP reload: interval, detail states, folding, namespaces.
    Reconfigure(Box<Settings>),
}

/// How often the sampler thread applies the events the drain thread queued, between
/// samples. The ring itself is read on a thread of its own (`event_drain`); this only
/// keeps the queue short (it is bounded: 2 s of 50,000 connections a second), at the
/// cost of four wake-ups a second that find little to do.
const EVENT_APPLY_EVERY: Duration = Duration::from_millis(250);

/// The running sampler thread.
pub struct SamplerThread {
    handle: JoinHandle<()>,
}

impl SamplerThread {
    /// Starts the thread and waits for its first sample to be published, so the first
    /// scrape already sees data (or the error counted). `Err` when it cannot start:
    /// the thread itself, or events mode required and unavailable.
    pub fn start(
        namespaces: NamespaceSet,
        settings: Settings,
        publish: Publish,
        control: mpsc::Receiver<Control>,
    ) -> Result<SamplerThread, String> {
        let (first_done_tx, first_done_rx) = mpsc::channel::<Result<(), String>>();
        let handle = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                // Attached here: the tracker it feeds lives on this thread. Before the
                // policy changes: its drain thread inherits this thread's.
                let events = match EventFeed::start(&settings, &namespaces.inodes()) {
                    Ok(feed) => feed,
                    Err(e) => {
                        let _ = first_done_tx.send(Err(e));
                        return;
                    }
                };
                background_policy();
                SampleLoop::new(namespaces, events, settings, publish).run(first_done_tx, control);
            })
            .map_err(|e| format!("cannot start the sampling thread: {e}"))?;
        // A closed channel means the thread ended (it logs why); serve what there is.
        if let Ok(Err(e)) = first_done_rx.recv() {
            let _ = handle.join();
            return Err(e);
        }
        Ok(SamplerThread { handle })
    }

    /// Waits for the thread to end (after its control channel was dropped).
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

/// The state the sampler thread owns between rounds.
struct SampleLoop {
    namespaces: NamespaceSet,
    events: EventFeed,
    attribution: Attribution,
    settings: Settings,
    metrics: SelfMetrics,
    publish: Publish,
}

impl SampleLoop {
    fn new(
        namespaces: NamespaceSet,
        events: EventFeed,
        settings: Settings,
        publish: Publish,
    ) -> Self {
        SampleLoop {
            namespaces,
            events,
            attribution: Attribution::new(&settings),
            settings,
            metrics: SelfMetrics::default(),
            publish,
        }
    }

    /// Samples on a fixed-rate timer (missed ticks are skipped, not bunched) until the
    /// control channel is dropped.
    fn run(
        mut self,
        first_done: mpsc::Sender<Result<(), String>>,
        control: mpsc::Receiver<Control>,
    ) {
        let mut next = Instant::now();
        loop {
            self.sample_once();
            let _ = first_done.send(Ok(()));
            next += self.settings.sample_interval;
            let now = Instant::now();
            while next <= now {
                next += self.settings.sample_interval;
            }
            match self.wait_until(next, &control) {
                Some(resume_at) => next = resume_at,
                None => return,
            }
        }
    }

    /// One round: events applied, every namespace sampled, counted, encoded, published.
    fn sample_once(&mut self) {
        let started = Instant::now();
        self.metrics.samples_total += 1;
        self.namespaces.apply_events(&self.events.flush());
        let round = self.namespaces.sample_round(&mut self.attribution);
        // Discovery may have added or dropped namespaces: the kernel filter follows.
        self.events.sample_namespaces(&self.namespaces.inodes());
        self.count(&round);
        // Namespaces whose sample failed keep their last good one in `round.samples`.
        (self.publish)(&round.samples, &mut self.metrics, started, &self.settings);
    }

    /// The round's outcome in the exporter's own counters.
    fn count(&mut self, round: &Round) {
        let metrics = &mut self.metrics;
        metrics.events_attached = self.events.attached();
        if let Some(counts) = self.events.counts() {
            metrics.events_lost = counts.lost;
            metrics.transitions = counts.transitions;
        }
        for e in &round.errors {
            metrics.sample_errors[e.reason() as usize] += 1;
        }
        if round.errors.is_empty() {
            metrics.last_success_timestamp_seconds = unix_now();
        }
        metrics.duplicates_dropped += round.report.dump.duplicates;
        metrics.unknown_states_skipped += round.report.dump.unknown_states;
        metrics.owner_fds_read += round.report.owners.fds_read;
        metrics.owners_unresolved = round.report.owners.unresolved;
        metrics.namespaces_vanished += round.vanished;
        metrics.namespaces_sampled = round.samples.len() as u64;
    }

    /// Until `next`: queued kernel events applied every `EVENT_APPLY_EVERY`, so the queue
    /// holds a quarter second of them rather than a whole interval, and control messages
    /// applied.
    /// Returns when the next round is due (at once after a reconfiguration), `None` when
    /// the daemon is stopping.
    fn wait_until(&mut self, next: Instant, control: &mpsc::Receiver<Control>) -> Option<Instant> {
        loop {
            let now = Instant::now();
            if now >= next {
                return Some(next);
            }
            let wait = if self.events.attached() {
                (next - now).min(EVENT_APPLY_EVERY)
            } else {
                next - now
            };
            match control.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.namespaces.apply_events(&self.events.drain());
                }
                Ok(Control::Reconfigure(new)) => {
                    self.settings = *new;
                    self.namespaces.reconfigure(&self.settings);
                    self.events.sample_namespaces(&self.namespaces.inodes());
                    return Some(Instant::now());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// Sampling is background work, but it must not starve: a sample that is seconds old
/// blinds the operator exactly when the host is busy. So the sampler thread is
/// SCHED_BATCH (it never preempts a thread that wakes up, such as an HTTP worker with a
/// request) at the normal nice 0 (a fair share of a saturated CPU).
///
/// It was nice 10 (weight 110 against 1024: a tenth of a busy CPU at worst), which gave
/// scrapes a lower p99 under `wrk -t2` at a 1 s interval (7.1 against 9.1 ms at nice
/// 5), but with four busy threads on the two CPUs beside 110k sockets the daemon took
/// one sample in 15 s and served one 9.5-12.2 s old (nice 5: 3.7-5.5 s; nice 0: 2.2-3.1
/// s, against 2 x 1 s + one sample; tcpstate-bench --busy and two alternating rounds).
/// Nice 19 had starved the soak test. Failure (a seccomp filter, say) only costs the
/// batch policy.
fn background_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, ..) acts on the calling thread; `param` outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot make the sampler SCHED_BATCH");
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
