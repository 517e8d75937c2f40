//! The long-running exporter: a sampling thread on a timer that publishes each encoded
//! exposition, and the HTTP server that serves the last one.
//!
//! Sampling runs on its own OS thread, off the async workers: a dump is blocking netlink
//! I/O and /proc reads, and a slow one must never delay a scrape.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::process_collector::ProcessCollector;
use tokio::sync::watch;

use crate::config::{NamespaceMode, Settings};
use crate::event_feed::EventFeed;
use crate::exposition::{self, Exposition, LabelOptions, SAMPLE_ERROR_REASONS, SelfMetrics};
use crate::listen;
use crate::namespace_set::NamespaceSet;
use crate::sampler::Attribution;
use crate::server::{self, Site};
use crate::webconfig::WebConfig;

/// Control messages to the sampling thread.
enum Control {
    /// New settings from a SIGHUP reload: interval, detail states, folding, namespaces.
    Reconfigure(Box<Settings>),
}

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads the configuration through `reload`.
/// Errors are startup errors (bad address, no netlink, bad web config).
pub fn run(
    settings: Settings,
    reload: impl Fn() -> Result<Settings, String> + Send + 'static,
) -> Result<(), String> {
    pin_malloc_mmap_threshold();
    let web = load_web_config(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let mut signals = runtime.block_on(async { Signals::catch() });
    // Bound before any slow startup work (netlink, the eBPF attach, the first sample): a
    // busy or wrong address fails at once, named as it was written.
    let written = settings.listen_address_text.clone();
    let cannot_listen = |e: std::io::Error| format!("cannot listen on {written}: {e}");
    let reserved = listen::reserve(&settings.listen_address.candidates()).map_err(cannot_listen)?;
    let exposition = Arc::new(ArcSwap::from_pointee(Exposition::default()));
    let namespaces = NamespaceSet::new(&settings)
        .map_err(|e| format!("cannot open a sock_diag netlink socket: {e}"))?;

    // The first sample is published before the server starts listening, so the first
    // scrape already sees data (or, if that sample failed, the error counted).
    let (first_done_tx, first_done_rx) = mpsc::channel::<Result<(), String>>();
    let (control_tx, control_rx) = mpsc::channel::<Control>();
    let loop_settings = settings.clone();
    let loop_exposition = Arc::clone(&exposition);
    let sampling = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || {
            sample_loop(
                namespaces,
                loop_settings,
                loop_exposition,
                first_done_tx,
                control_rx,
            )
        })
        .map_err(|e| format!("cannot start the sampling thread: {e}"))?;
    // A closed channel means the thread ended (it logs why); serve what there is.
    if let Ok(Err(e)) = first_done_rx.recv() {
        let _ = sampling.join();
        return Err(e);
    }

    let result = runtime.block_on(async {
        let listener = listen::listen(reserved).map_err(cannot_listen)?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(address = %local, path = %settings.telemetry_path,
            tls = web.tls.is_some(), basic_auth = web.basic_auth.is_some(), "serving metrics");
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let site = Site {
            telemetry_path: Arc::new(ArcSwap::from_pointee(settings.telemetry_path.clone())),
            exposition,
            web: Arc::new(ArcSwap::from_pointee(web)),
        };
        let serving = tokio::spawn(server::serve(listener, site.clone(), shutdown_rx));
        let mut current = settings;
        while signals.next().await == Signal::Reload {
            match reload().and_then(|new| load_web_config(&new).map(|web| (new, web))) {
                Ok((new, web)) => {
                    if new.listen_address != current.listen_address
                        || new.pid_label != current.pid_label
                        || new.process_attribution != current.process_attribution
                        || new.duration_buckets != current.duration_buckets
                        || new.max_tracked_sockets != current.max_tracked_sockets
                        || new.events != current.events
                        || new.events_ring_bytes != current.events_ring_bytes
                    {
                        tracing::warn!(
                            "web.listen_address, process.*, close_wait.* and events* change \
                             only on restart"
                        );
                    }
                    site.web.store(Arc::new(web));
                    site.telemetry_path.store(Arc::new(new.telemetry_path.clone()));
                    let _ = control_tx.send(Control::Reconfigure(Box::new(new.clone())));
                    tracing::info!("configuration reloaded");
                    current = new;
                }
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload refused; keeping the running one");
                }
            }
        }
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
        let _ = serving.await;
        Ok(())
    });
    drop(control_tx);
    let _ = sampling.join();
    result
}

/// Large allocations (the owner cache, the per-socket maps of a big table) should go to
/// their own mappings and back to the kernel when freed. glibc raises its mmap threshold
/// to the size of any mmapped block that is freed, and the events attach frees the ~19 MB
/// of a kernel BTF parse: from then on those tables grew inside the sampler's heap arena
/// and their old copies stayed resident. Pinning glibc's default of 128 KiB turns that
/// adjustment off. Measured at 520k sockets, events mode: 33.9 MB resident and peak
/// before, 25.5 MB resident and 28.4 MB peak after (polling: 22.8 and 25.5 MB). A
/// steady sample reuses its buffers, so it takes no more page faults (0 per sample).
fn pin_malloc_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// The web config named by the settings (TLS, basic auth), or plain HTTP.
fn load_web_config(settings: &Settings) -> Result<WebConfig, String> {
    match &settings.web_config_file {
        Some(path) => WebConfig::load(path).map_err(|e| e.to_string()),
        None => Ok(WebConfig::default()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, caught from the start (inside the runtime): one that
/// arrives during a slow startup (a `systemctl reload` while the first sample of a big
/// table runs) is kept for the server loop instead of killing the process, which is
/// what their default action does.
struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    fn catch() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(terminate), Ok(interrupt), Ok(hangup)) => {
                Signals(Some([terminate, interrupt, hangup]))
            }
            _ => Signals(None),
        }
    }

    async fn next(&mut self) -> Signal {
        let Some([terminate, interrupt, hangup]) = &mut self.0 else {
            let _ = tokio::signal::ctrl_c().await;
            return Signal::Stop;
        };
        tokio::select! {
            _ = terminate.recv() => Signal::Stop,
            _ = interrupt.recv() => Signal::Stop,
            _ = hangup.recv() => Signal::Reload,
        }
    }
}

/// Samples on a fixed-rate timer (missed ticks are skipped, not bunched) until `stop`
/// is dropped.
fn sample_loop(
    mut namespaces: NamespaceSet,
    settings: Settings,
    exposition: Arc<ArcSwap<Exposition>>,
    first_done: mpsc::Sender<Result<(), String>>,
    control: mpsc::Receiver<Control>,
) {
    lower_own_priority();
    // Attached here: the tracker it feeds lives on this thread.
    let mut events = match EventFeed::start(&settings) {
        Ok(feed) => feed,
        Err(e) => {
            let _ = first_done.send(Err(e));
            return;
        }
    };
    let mut settings = settings;
    let mut options = LabelOptions {
        pid_label: settings.pid_label,
        namespace_labels: settings.namespaces == NamespaceMode::All,
    };
    let process = ProcessCollector::for_self();
    let mut metrics = SelfMetrics::default();
    let mut interval = settings.sample_interval;
    let mut attribution = Attribution::new(&settings);
    let mut next = Instant::now();
    loop {
        let started = Instant::now();
        metrics.samples_total += 1;
        namespaces.apply_events(&events.drain());
        let round = namespaces.sample_round(&mut attribution);
        metrics.events_attached = events.attached();
        if let Some(counts) = events.counts() {
            metrics.events_lost = counts.lost;
            metrics.transitions = counts.transitions;
        }
        for e in &round.errors {
            let reason = e.reason();
            if let Some(i) = SAMPLE_ERROR_REASONS.iter().position(|r| *r == reason) {
                metrics.sample_errors[i] += 1;
            }
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
        // Namespaces whose sample failed keep their last good one in `round.samples`.
        let last_good = exposition::namespace_families(&round.samples, options);
        metrics.last_sample_duration_seconds = started.elapsed().as_secs_f64();
        let mut families = last_good;
        families.extend(exposition::self_families(&metrics));
        match exposition::encode(families, Some(&process)) {
            Ok(encoded) => exposition.store(Arc::new(encoded)),
            Err(e) => {
                tracing::error!(error = %e, "encoding failed; serving the previous exposition")
            }
        }
        let _ = first_done.send(Ok(()));

        next += interval;
        let now = Instant::now();
        while next <= now {
            next += interval;
        }
        // Until the next sample: kernel events drained every EVENT_DRAIN_EVERY, so the
        // ring holds a quarter second of them rather than a whole interval.
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            let wait = if events.attached() {
                (next - now).min(EVENT_DRAIN_EVERY)
            } else {
                next - now
            };
            match control.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    namespaces.apply_events(&events.drain());
                }
                Ok(Control::Reconfigure(new)) => {
                    settings = *new;
                    interval = settings.sample_interval;
                    options = LabelOptions {
                        pid_label: settings.pid_label,
                        namespace_labels: settings.namespaces == NamespaceMode::All,
                    };
                    namespaces.reconfigure(&settings);
                    next = Instant::now();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

/// How often the sampler thread empties the events ring between samples. A quarter
/// second keeps the default 1 MiB ring (13,000 events) ahead of 52,000 CLOSE_WAIT
/// transitions a second; the cost is four wake-ups a second that find little to do.
const EVENT_DRAIN_EVERY: Duration = Duration::from_millis(250);

/// Sampling is background work: on a busy host a scrape should win the CPU, but a flood
/// of scrapes must not starve the samples. So the sampler thread is SCHED_BATCH (it never
/// preempts a thread that wakes up, such as an HTTP worker with a request) at nice 10
/// (weight 110 against 1024: a tenth of a busy CPU at worst, never nothing).
///
/// Measured on 2 CPUs at 520k sockets, sampling every second, under `wrk -t2 -c50`: p99
/// lower in 8 of 8 alternating 5 s pairs against the former plain nice 5 (mean 7.1 vs
/// 9.1 ms). Nice 19 starved the soak test (34 samples in 20 s where nice 5 took 168).
/// Failure (a seccomp filter, say) only costs that gain.
const SAMPLER_NICE: libc::c_int = 10;

fn lower_own_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(0, ..) acts on the calling thread; `param` outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot make the sampler SCHED_BATCH");
    }
    // SAFETY: gettid and setpriority on the calling thread; no memory is touched.
    let niced = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, SAMPLER_NICE)
    };
    if niced != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the sampler's nice");
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
