//! The sampler thread: a round over the namespaces on a fixed-rate timer, each round
//! counted and encoded once into the exposition the HTTP side serves.
//!
//! Sampling runs on its own OS thread, off the async workers: a dump is blocking netlink
//! I/O and /proc reads, and a slow one must never delay a scrape. The thread owns every
//! piece of sampling state (namespaces, trackers, owner cache, the events maps), so none
//! of it needs a lock; the HTTP side only ever sees the `Arc` of the last exposition.
//! Only the events ring is read elsewhere, by the drain thread the feed starts, which
//! hands its events over through a bounded queue.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Settings;
use crate::model::sample::NamespaceSample;
use crate::model::self_metrics::SelfMetrics;
use crate::sampling::attribution::Attribution;
use crate::sampling::event_feed::EventFeed;
use crate::sampling::namespace_set::{NamespaceSet, Round};
use tokio::sync::oneshot;

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
    first_sample: Option<oneshot::Receiver<Result<(), String>>>,
    ended: Option<oneshot::Receiver<Ended>>,
}

/// How the sampler thread ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its control channel was dropped: the daemon is stopping.
    Stopped,
    /// It could not start (events mode required and unavailable).
    FailedToStart(String),
    /// It panicked; the panic's message. The daemon must not go on serving the last
    /// sample as if it were fresh.
    Panicked(String),
}

impl SamplerThread {
    /// Starts the thread; it takes its first sample at once. Returns without waiting for
    /// it (see [`Self::first_sample`]), so the caller can still act on a stop signal
    /// while a big table is read. `Err` when the thread itself cannot be made.
    pub fn start(
        namespaces: NamespaceSet,
        settings: Settings,
        publish: Publish,
        control: mpsc::Receiver<Control>,
    ) -> Result<SamplerThread, String> {
        let (first_tx, first_rx) = oneshot::channel::<Result<(), String>>();
        let (ended_tx, ended_rx) = oneshot::channel::<Ended>();
        let handle = std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || {
                    // Attached here: the tracker it feeds lives on this thread. Before the
                    // policy changes: its drain thread inherits this thread's.
                    let events = match EventFeed::start(&settings, &namespaces.inodes()) {
                        Ok(feed) => feed,
                        Err(e) => return Ended::FailedToStart(e),
                    };
                    background_policy();
                    SampleLoop::new(namespaces, events, settings, publish).run(first_tx, control);
                    Ended::Stopped
                }));
                let ended = outcome.unwrap_or_else(|panic| Ended::Panicked(panic_message(&panic)));
                let _ = ended_tx.send(ended);
            })
            .map_err(|e| format!("cannot start the sampling thread: {e}"))?;
        Ok(SamplerThread {
            handle,
            first_sample: Some(first_rx),
            ended: Some(ended_rx),
        })
    }

    /// Waits for the first sample to be published, so the first scrape already sees data
    /// (or the error counted). `Err` when the thread ended first: it could not start
    /// (events mode required and unavailable) or it died.
    pub async fn first_sample(&mut self) -> Result<(), String> {
        let Some(first) = self.first_sample.take() else {
            return Ok(());
        };
        if let Ok(result) = first.await {
            return result;
        }
        Err(match self.ended().await {
            Ended::FailedToStart(e) => e,
            other => format!("the sampler thread ended before its first sample: {other:?}"),
        })
    }

    /// Resolves when the thread has ended, with how; pending forever once reported.
    pub async fn ended(&mut self) -> Ended {
        match self.ended.as_mut() {
            Some(ended) => {
                let how = ended
                    .await
                    .unwrap_or_else(|_| Ended::Panicked("ended without a word".into()));
                self.ended = None;
                how
            }
            None => std::future::pending().await,
        }
    }

    /// Waits up to `limit` for the thread to end (after its control channel was dropped);
    /// false when it is still in a sample, which the caller may then abandon: a round
    /// holds no state that outlives the process.
    pub fn join_within(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.handle.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.handle.join();
        true
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".into()
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
        first_done: oneshot::Sender<Result<(), String>>,
        control: mpsc::Receiver<Control>,
    ) {
        let mut first_done = Some(first_done);
        let mut next = Instant::now();
        loop {
            self.sample_once();
            if let Some(first) = first_done.take() {
                let _ = first.send(Ok(()));
            }
            next = next_tick(next, Instant::now(), self.settings.sample_interval);
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
        let changes = self.events.flush();
        if self.events.lost_any() {
            self.namespaces.distrust_events();
        }
        self.namespaces.apply_events(&changes);
        let events = &mut self.events;
        let round = self
            .namespaces
            .sample_round_with(&mut self.attribution, &mut || events.flush());
        // Discovery may have added or dropped namespaces: the kernel filter follows.
        self.update_event_filter();
        self.count(&round);
        // Namespaces whose sample failed keep their last good one in `round.samples`.
        (self.publish)(&round.samples, &mut self.metrics, started, &self.settings);
    }

    /// The kernel's namespace filter: every namespace sampled, and every transition of
    /// those worth following between dumps; the namespace set follows what the kernel
    /// took.
    fn update_event_filter(&mut self) {
        let followed = self.events.sample_namespaces(
            &self.namespaces.inodes(),
            &self.namespaces.follow_candidates(),
        );
        self.namespaces.set_followed(&followed);
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
        metrics.walks_by_iterator += round.report.dump.walks_by_iterator;
        metrics.walks_by_sock_diag += round.report.dump.walks_by_sock_diag;
        metrics.owner_fds_read += round.report.owners.fds_read;
        metrics.owners_unresolved = round.report.owners.unresolved;
        metrics.namespaces_vanished += round.vanished;
        metrics.namespaces_sampled = round.samples.len() as u64;
        metrics.namespaces_followed = round.followed.from_table;
        for (total, n) in metrics.followed_dumps.iter_mut().zip(round.followed.dumps) {
            *total += n;
        }
        metrics.followed_lookups += round.followed.lookups;
        metrics.followed_held += round.followed.held;
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
                    self.update_event_filter();
                    return Some(Instant::now());
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// The first tick after `now` on the grid `previous + k * interval`. Computed without
/// overflow: the interval is bounded by the configuration, and an `Instant` that would
/// overflow anyway becomes `now + interval`, saturated.
fn next_tick(previous: Instant, now: Instant, interval: Duration) -> Instant {
    let interval = interval.max(Duration::from_millis(1));
    let Some(next) = previous.checked_add(interval) else {
        return now.checked_add(interval).unwrap_or(now);
    };
    if next > now {
        return next;
    }
    // Missed ticks are skipped, not bunched: jump to the first one after `now`.
    let behind = now.duration_since(next).as_nanos();
    let skipped = behind / interval.as_nanos() + 1;
    u32::try_from(skipped)
        .ok()
        .and_then(|k| interval.checked_mul(k))
        .and_then(|jump| next.checked_add(jump))
        .unwrap_or_else(|| now.checked_add(interval).unwrap_or(now))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventsMode;

    #[test]
    fn ticks_skip_missed_ones_and_never_overflow() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(next_tick(start, start, second), start + second);
        // 3.5 intervals late: the next tick is the fourth, not three bunched ones.
        let late = start + Duration::from_millis(3500);
        assert_eq!(next_tick(start, late, second), start + 4 * second);
        // An interval no Instant can add (u64::MAX seconds) must not panic.
        let huge = Duration::from_secs(u64::MAX);
        let next = next_tick(start, start, huge);
        assert!(next >= start);
    }

    /// A sampler thread that panics reports it, with the panic's message, instead of
    /// leaving the daemon to serve its last sample forever.
    #[tokio::test]
    async fn a_panicking_sampler_reports_its_death() {
        let settings = Settings {
            events: EventsMode::Off,
            process_attribution: false,
            ..Settings::default()
        };
        let namespaces = NamespaceSet::new(&settings).expect("a sock_diag socket");
        let mut rounds = 0;
        let publish: Publish = Box::new(move |_, _, _, _| {
            rounds += 1;
            if rounds == 2 {
                panic!("injected fault in round {rounds}");
            }
        });
        let (control, control_rx) = mpsc::channel();
        let mut thread =
            SamplerThread::start(namespaces, settings, publish, control_rx).expect("thread starts");
        thread.first_sample().await.expect("first round publishes");
        let settings = Settings {
            sample_interval: Duration::from_millis(100),
            ..Settings::default()
        };
        // A reconfiguration makes the next round due at once: that round panics.
        control
            .send(Control::Reconfigure(Box::new(settings)))
            .expect("sampler alive");
        let ended = tokio::time::timeout(Duration::from_secs(60), thread.ended())
            .await
            .expect("the death is reported");
        assert_eq!(
            ended,
            Ended::Panicked("injected fault in round 2".into()),
            "the panic's message is kept"
        );
        assert!(thread.join_within(Duration::from_secs(10)));
    }
}
