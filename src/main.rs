//! Entry point: parse the command line, build `Settings`, dispatch.

use std::process::ExitCode;

use std::io::IsTerminal;

use tcpstate_exporter::config::cli::{ColorChoice, Command, SnapshotArgs, SnapshotFormat};
use tcpstate_exporter::config::usage::{self, EXIT_BAD_INPUT};
use tcpstate_exporter::config::{self, LogFormat, Settings, version};
use tcpstate_exporter::daemon;
use tcpstate_exporter::http::webconfig::WebConfig;
use tcpstate_exporter::logging;
use tcpstate_exporter::model::diagnosis::{Thresholds, human_seconds};
use tcpstate_exporter::output::exposition::LabelOptions;
use tcpstate_exporter::output::published::{self, Published};
use tcpstate_exporter::output::snapshot;
use tcpstate_exporter::output::snapshot::{RenderOptions, Watch, diagnose_groups};
use tcpstate_exporter::output::sockets::{self, SocketQuery};
use tcpstate_exporter::output::terminal::escape_control;
use tcpstate_exporter::sampling::attribution::Attribution;
use tcpstate_exporter::sampling::namespace_set::{NamespaceSet, Round};

fn main() -> ExitCode {
    let cli = match usage::parse() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let settings = match config::load(&cli.flags) {
        Ok(settings) => settings,
        Err(e) if cli.command.is_none() => {
            // The daemon's stderr is a log stream: the error is one log line there too,
            // in the format the flag asks for (the file's choice is what failed).
            let format = match cli.flags.log_format.as_deref() {
                Some("json") => LogFormat::Json,
                _ => LogFormat::Logfmt,
            };
            logging::init(tracing::Level::ERROR, format);
            tracing::error!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        Err(e) => {
            eprintln!("tcpstate-exporter: {}", escape_control(&e.to_string()));
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    init_logging(&settings);
    match cli.command {
        Some(Command::CheckConfig) => {
            if let Err(e) = check_web_config(&settings) {
                eprintln!("tcpstate-exporter: {}", escape_control(&e));
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match &cli.flags.config_file {
                Some(path) => println!("{}: valid", path.display()),
                None => println!("no --config.file given: the built-in defaults are valid"),
            }
            ExitCode::SUCCESS
        }
        Some(Command::Snapshot(request)) => {
            match run_snapshot(settings, *request, cli.flags.sample_interval.is_some()) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("tcpstate-exporter: {}", escape_control(&e.to_string()));
                    ExitCode::from(EXIT_BAD_INPUT)
                }
            }
        }
        None => {
            tracing::info!(
                version = version::VERSION,
                revision = version::REVISION,
                "starting tcpstate-exporter"
            );
            // A bad web config is bad input (exit 2), like a bad config file.
            if let Err(e) = check_web_config(&settings) {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match daemon::run(settings, move || {
                config::load(&cli.flags).map_err(|e| e.to_string())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads the web config the settings name, if any, to say whether it is valid.
fn check_web_config(settings: &Settings) -> Result<(), String> {
    match settings.web_config_file.as_deref() {
        Some(path) => WebConfig::load(path).map(drop).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Exit code of `snapshot` when a threshold given on the command line is crossed.
const EXIT_THRESHOLD_CROSSED: u8 = 3;

/// A person at a terminal waits this long between samples, unless --sample.interval says
/// otherwise: the default watch answers in about 4 s.
const SNAPSHOT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Samples (`watch` times), diagnoses, prints; the exit code says whether a threshold
/// was crossed (and stderr which). `Err` is bad input.
fn run_snapshot(
    mut settings: Settings,
    request: SnapshotArgs,
    interval_given: bool,
) -> Result<ExitCode, String> {
    let duration = |flag: &str, text: &str| {
        humantime::parse_duration(text)
            .map(|d| d.as_secs_f64())
            .map_err(|e| format!("flag --{flag}: invalid duration {text:?}: {e}"))
    };
    let thresholds = Thresholds {
        stuck_after: duration("stuck-after", &request.stuck_after)?,
        late_after: duration("late-after", &request.late_after)?,
    };
    let max_age = request
        .max_age
        .as_deref()
        .map(|text| duration("max-age", text))
        .transpose()?;
    let socket_query = socket_query(&request, &settings)?;
    // Groups are the metrics' (one verdict per program); the pids are evidence.
    settings.close_wait_pids = true;
    settings.stuck_after = std::time::Duration::from_secs_f64(thresholds.stuck_after);
    if !interval_given {
        settings.sample_interval = SNAPSHOT_INTERVAL;
    }
    let (first, last, watched) = match watch(&settings, request.watch) {
        Ok(rounds) => rounds,
        // Not bad input: a runtime failure, exit code 1 like a failed sample.
        Err(e) => {
            eprintln!("tcpstate-exporter: {}", escape_control(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let round = last.as_ref().unwrap_or(&first);
    if let Some(e) = round.errors.first() {
        eprintln!(
            "tcpstate-exporter: snapshot failed: {}",
            escape_control(&e.to_string())
        );
        return Ok(ExitCode::FAILURE);
    }
    let watch = last.as_ref().map(|_| Watch {
        first: &first.samples,
        seconds: watched,
    });
    let diagnoses = diagnose_groups(&round.samples, watch.as_ref(), thresholds, request.all);
    let options = RenderOptions {
        format: request.format,
        top: request.top,
        labels: LabelOptions::of(&settings),
        color: match request.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal(),
        },
    };
    match &socket_query {
        Some(query) => print!(
            "{}",
            sockets_report(round, &settings, query, request.format)
        ),
        None => print!("{}", snapshot::render(&round.samples, &diagnoses, options)),
    }
    let crossed = crossings(&diagnoses, &request, max_age);
    for line in &crossed {
        eprintln!("tcpstate-exporter: {}", escape_control(line));
    }
    Ok(if crossed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_THRESHOLD_CROSSED)
    })
}

/// The first round and, watching, the last one, and the seconds between their starts.
fn watch(settings: &Settings, samples: u32) -> Result<(Round, Option<Round>, f64), String> {
    let mut namespaces = NamespaceSet::new(settings)
        .map_err(|e| format!("cannot open a sock_diag netlink socket: {e}"))?;
    let mut attribution = Attribution::new(settings);
    let started = std::time::Instant::now();
    let first = namespaces.sample_round(&mut attribution);
    let mut last = None;
    for _ in 1..samples.max(1) {
        std::thread::sleep(settings.sample_interval);
        last = Some(namespaces.sample_round(&mut attribution));
    }
    Ok((first, last, started.elapsed().as_secs_f64()))
}

/// `--sockets` and its filters as a drill-down query; `None` without `--sockets`.
fn socket_query(
    request: &SnapshotArgs,
    settings: &Settings,
) -> Result<Option<SocketQuery>, String> {
    if !request.sockets {
        return Ok(None);
    }
    if request.format == SnapshotFormat::Prometheus {
        return Err("--sockets prints a table or JSON (--format table|json)".into());
    }
    let kept = published::kept_states(settings);
    SocketQuery::from_pairs(request.socket_filters(), &kept)
        .map(Some)
        .map_err(|reason| format!("--sockets: {reason}"))
}

/// The sockets of the round that `query` selects, as the endpoint would answer.
fn sockets_report(
    round: &Round,
    settings: &Settings,
    query: &SocketQuery,
    format: SnapshotFormat,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let published = Published::new(&round.samples, now, settings);
    match format {
        SnapshotFormat::Json => sockets::json(&published, query),
        _ => sockets::table(&published, query),
    }
}

/// One line per group and threshold crossed: which flag, by which group, by how much.
fn crossings(
    diagnoses: &[snapshot::GroupDiagnosis],
    request: &SnapshotArgs,
    max_age: Option<f64>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for d in diagnoses {
        let group = format!(
            "{} {} {}",
            d.direction.name(),
            d.port,
            if d.process.is_empty() { "-" } else { d.process }
        );
        if let Some(max) = request
            .max_close_wait
            .filter(|max| d.evidence.close_wait > *max)
        {
            lines.push(format!(
                "exit 3: --max-close-wait {max} crossed by {group}: {} CLOSE_WAIT",
                d.evidence.close_wait
            ));
        }
        let oldest = d.evidence.oldest_seconds.unwrap_or(0.0);
        if max_age.is_some_and(|max| oldest > max) {
            lines.push(format!(
                "exit 3: --max-age {} crossed by {group}: oldest {}",
                request.max_age.as_deref().unwrap_or_default(),
                human_seconds(oldest)
            ));
        }
    }
    lines
}

fn init_logging(settings: &Settings) {
    logging::init(settings.log_level, settings.log_format);
}
