//! The long-running exporter: the sampler thread publishes each encoded exposition, the
//! HTTP server serves the last one, and signals stop or reload the two.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::process_collector::ProcessCollector;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::config::Settings;
use crate::http::listen;
use crate::http::server::{self, Site};
use crate::http::webconfig::WebConfig;
use crate::output::exposition::{self, Exposition, LabelOptions};
use crate::output::published::{Published, RoundHistory};
use crate::sampling::namespace_set::NamespaceSet;
use crate::sampling::sample_loop::{Control, Publish, SamplerThread};

/// How long a stop may wait for work in flight (a reload, a bcrypt check, the sample in
/// progress) before the process exits anyway. The bound is 2 s from SIGTERM to
/// exit, even under CPU load, where a sample can take tens of seconds.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads the configuration through `reload`.
/// Errors are startup errors (bad address, no netlink, bad web config) and a sampler
/// thread that died (the daemon must not serve a frozen sample as if it were fresh).
pub fn run(
    mut settings: Settings,
    reload: impl Fn() -> Result<Settings, String> + Send + Sync + 'static,
) -> Result<(), String> {
    pin_malloc_mmap_threshold();
    // The live page lists the pids holding each group's CLOSE_WAIT sockets, as
    // `snapshot` does (evidence, never a label).
    settings.close_wait_pids = true;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(run_async(settings, Arc::new(reload)));
    // A reload or a bcrypt check still running on the blocking pool is abandoned.
    runtime.shutdown_timeout(STOP_GRACE);
    result
}

type Reload = Arc<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// What the serving loop listens to and steers: signals, the sampler thread (its death,
/// and its control channel, dropped to stop it) and the reload function.
type Wiring<'a> = (
    &'a mut Signals,
    &'a mut SamplerThread,
    mpsc::Sender<Control>,
    Reload,
);

async fn run_async(settings: Settings, reload: Reload) -> Result<(), String> {
    // First of all, so that no signal is lost or fatal while the first sample (seconds on
    // a big table) or anything else runs: SIGHUP's default action ends the process.
    let mut signals = Signals::install()?;
    let web = load_web_config(&settings)?;
    // Bound before any slow startup work (netlink, the eBPF attach, the first sample): a
    // busy or wrong address fails at once, named as it was written.
    let reserved = listen::reserve(&settings.listen_address.candidates())
        .map_err(|e| cannot_listen(&settings, e))?;
    let served = Served {
        exposition: Arc::new(ArcSwap::from_pointee(Exposition::default())),
        published: Arc::new(ArcSwap::from_pointee(Published::default())),
    };
    let namespaces = NamespaceSet::new(&settings)
        .map_err(|e| format!("cannot open a sock_diag netlink socket: {e}"))?;
    let (control_tx, control_rx) = mpsc::channel::<Control>();
    let publish = publisher(served.clone());
    let mut sampler = SamplerThread::start(namespaces, settings.clone(), publish, control_rx)?;
    let first = tokio::select! {
        first = sampler.first_sample() => Some(first),
        () = signals.stop() => None,
    };
    let result = match first {
        Some(Ok(())) => {
            let wiring = (&mut signals, &mut sampler, control_tx, reload);
            serve(settings, web, reserved, served, wiring).await
        }
        Some(Err(e)) => {
            drop(control_tx);
            Err(e)
        }
        None => {
            drop(control_tx);
            tracing::info!("shutting down before the first sample");
            Ok(())
        }
    };
    if !sampler.join_within(STOP_GRACE) {
        tracing::info!("leaving the sample in progress unfinished");
    }
    result
}

/// The listen error, naming the address as the flag or the file wrote it.
fn cannot_listen(settings: &Settings, error: std::io::Error) -> String {
    format!("cannot listen on {}: {error}", settings.listen_address_text)
}

/// What the sampler thread publishes and the HTTP side serves, each swapped in whole.
#[derive(Clone)]
struct Served {
    exposition: Arc<ArcSwap<Exposition>>,
    published: Arc<ArcSwap<Published>>,
}

/// Encodes each round once and swaps it in, with the round itself (and the earlier
/// round its verdicts compare against) for the drill-down and the live page: requests
/// take the last ones without a lock. An encoding error keeps the previous exposition
/// served.
fn publisher(served: Served) -> Publish {
    let process = ProcessCollector::for_self();
    let mut history = RoundHistory::default();
    Box::new(move |samples, metrics, started, settings| {
        let options = LabelOptions::of(settings);
        match exposition::encode_round(samples, metrics, started, options, &process) {
            Ok(encoded) => served.exposition.store(Arc::new(encoded)),
            Err(e) => {
                tracing::error!(error = %e, "encoding failed; serving the previous exposition")
            }
        }
        let taken_at = metrics.last_success_timestamp_seconds;
        let mut published = Published::new(samples, taken_at, settings);
        published.baseline = history.push(samples, taken_at);
        served.published.store(Arc::new(published));
    })
}

/// Serves HTTP until a stop signal or the sampler's death, applying reloads on SIGHUP.
/// Drops `control` on the way out, which tells the sampler thread to end.
async fn serve(
    settings: Settings,
    web: WebConfig,
    reserved: TcpSocket,
    served: Served,
    (signals, sampler, control, reload): Wiring<'_>,
) -> Result<(), String> {
    let listener = listen::listen(reserved).map_err(|e| cannot_listen(&settings, e))?;
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(address = %local, path = %settings.telemetry_path,
        tls = web.tls.is_some(), basic_auth = web.basic_auth.is_some(), "serving metrics");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let site = Site {
        telemetry_path: Arc::new(ArcSwap::from_pointee(settings.telemetry_path.clone())),
        exposition: served.exposition,
        published: served.published,
        web: Arc::new(ArcSwap::from_pointee(web)),
    };
    let serving = tokio::spawn(server::serve(listener, site.clone(), shutdown_rx));
    let mut running = settings;
    let result = loop {
        let signal = tokio::select! {
            signal = signals.next() => signal,
            ended = sampler.ended() => break Err(format!(
                "the sampler thread died ({ended:?}); exiting rather than serving a \
                 frozen sample"
            )),
        };
        if signal == Signal::Stop {
            break Ok(());
        }
        let reloading = tokio::task::spawn_blocking({
            let reload = Arc::clone(&reload);
            move || reload().and_then(|new| load_web_config(&new).map(|web| (new, web)))
        });
        tokio::select! {
            reloaded = reloading => {
                let reloaded = reloaded.unwrap_or_else(|e| Err(format!("reload failed: {e}")));
                apply_reload(&mut running, reloaded, &site, &control);
            }
            () = signals.stop() => break Ok(()),
        }
    };
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, serving).await;
    drop(control);
    result
}

/// Applies a re-read configuration, or refuses a bad one with one log line (the running
/// one stays). Keys that change only on restart keep their running values, so the next
/// reload is compared with what runs, not with what was last read.
fn apply_reload(
    running: &mut Settings,
    reloaded: Result<(Settings, WebConfig), String>,
    site: &Site,
    control: &mpsc::Sender<Control>,
) {
    match reloaded {
        Ok((new, web)) => {
            let ignored = running.restart_only_changes(&new);
            if !ignored.is_empty() {
                tracing::warn!(keys = %ignored.join(", "), "these settings change only on restart");
            }
            let new = new.keeping_restart_only(running);
            if let (Some(fresh), Some(old)) = (&web.basic_auth, &site.web.load().basic_auth) {
                fresh.carry_over(old);
            }
            site.web.store(Arc::new(web));
            site.telemetry_path
                .store(Arc::new(new.telemetry_path.clone()));
            let _ = control.send(Control::Reconfigure(Box::new(new.clone())));
            tracing::info!("configuration reloaded");
            *running = new;
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; keeping the running one");
        }
    }
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

/// The process's signal listeners, made once: a signal that arrives while a reload or a
/// sample runs waits in its listener for the next `next()`, never lost (listeners made
/// anew after it arrived would not see it).
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))
        };
        Ok(Signals {
            terminate: listen(SignalKind::terminate(), "SIGTERM")?,
            interrupt: listen(SignalKind::interrupt(), "SIGINT")?,
            hangup: listen(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal; a stop wins over a reload that arrived with it.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            biased;
            _ = self.terminate.recv() => Signal::Stop,
            _ = self.interrupt.recv() => Signal::Stop,
            Some(()) = self.hangup.recv() => Signal::Reload,
        }
    }

    /// The next SIGTERM or SIGINT; a SIGHUP meanwhile stays pending for `next`.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
