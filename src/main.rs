//! Entry point: parse the command line, build `Settings`, dispatch.

use std::process::ExitCode;

use std::io::IsTerminal;

use tcpstate_exporter::cli::{ColorChoice, Command, SnapshotArgs, SnapshotFormat};
use tcpstate_exporter::config::{self, NamespaceMode, Settings};
use tcpstate_exporter::diagnosis::Thresholds;
use tcpstate_exporter::exposition::LabelOptions;
use tcpstate_exporter::namespace_set::NamespaceSet;
use tcpstate_exporter::sampler::Attribution;
use tcpstate_exporter::snapshot::{RenderOptions, Watch, diagnose_groups};
use tcpstate_exporter::{daemon, snapshot};

use tcpstate_exporter::usage::EXIT_BAD_INPUT;

fn main() -> ExitCode {
    let cli = match tcpstate_exporter::usage::parse() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let settings = match config::load(&cli.flags) {
        Ok(settings) => settings,
        Err(e) if cli.command.is_none() => {
            // The daemon's stderr is a log stream: the error is one log line there too,
            // in the format the flag asks for (the file's choice is what failed).
            let format = match cli.flags.log_format.as_deref() {
                Some("json") => config::LogFormat::Json,
                _ => config::LogFormat::Logfmt,
            };
            tcpstate_exporter::logging::init(tracing::Level::ERROR, format);
            tracing::error!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
        Err(e) => {
            eprintln!("tcpstate-exporter: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    init_logging(&settings);
    match cli.command {
        Some(Command::CheckConfig) => {
            if let Err(e) = check_web_config(&settings) {
                eprintln!("tcpstate-exporter: {e}");
                return ExitCode::from(EXIT_BAD_INPUT);
            }
            match &cli.flags.config_file {
                Some(path) => println!("{}: valid", path.display()),
                None => println!("no --config.file given: the built-in defaults are valid"),
            }
            ExitCode::SUCCESS
        }
        Some(Command::Snapshot(request)) => match run_snapshot(settings, request) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("tcpstate-exporter: {e}");
                ExitCode::from(EXIT_BAD_INPUT)
            }
        },
        None => {
            tracing::info!(
                version = tcpstate_exporter::version::VERSION,
                revision = tcpstate_exporter::version::REVISION,
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
        Some(path) => tcpstate_exporter::webconfig::WebConfig::load(path)
            .map(drop)
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Exit code of `snapshot` when a threshold given on the command line is crossed.
const EXIT_THRESHOLD_CROSSED: u8 = 3;

/// Samples (`watch` times), diagnoses, prints; the exit code says whether a threshold
/// was crossed. `Err` is bad input.
fn run_snapshot(mut settings: Settings, request: SnapshotArgs) -> Result<ExitCode, String> {
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
    // A person or a script reads pids here; only the exposition keeps the daemon's labels.
    if request.format != SnapshotFormat::Prometheus {
        settings.pid_label = true;
    }
    // Not bad input: a runtime failure, exit code 1 like a failed sample.
    let mut namespaces = match NamespaceSet::new(&settings) {
        Ok(namespaces) => namespaces,
        Err(e) => {
            eprintln!("tcpstate-exporter: cannot open a sock_diag netlink socket: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut attribution = Attribution::new(&settings);
    let started = std::time::Instant::now();
    let first = namespaces.sample_round(&mut attribution);
    let mut last = None;
    for _ in 1..request.watch.max(1) {
        std::thread::sleep(settings.sample_interval);
        last = Some(namespaces.sample_round(&mut attribution));
    }
    let watched = started.elapsed().as_secs_f64();
    let round = last.as_ref().unwrap_or(&first);
    if let Some(e) = round.errors.first() {
        eprintln!("tcpstate-exporter: snapshot failed: {e}");
        return Ok(ExitCode::FAILURE);
    }
    let watch = last.as_ref().map(|_| Watch {
        first: &first.samples,
        seconds: watched,
    });
    let diagnoses = diagnose_groups(
        &round.samples,
        watch.as_ref(),
        thresholds,
        settings.pid_label,
    );
    let options = RenderOptions {
        format: request.format,
        top: request.top,
        labels: LabelOptions {
            pid_label: settings.pid_label,
            namespace_labels: settings.namespaces == NamespaceMode::All,
        },
        color: match request.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal(),
        },
    };
    print!("{}", snapshot::render(&round.samples, &diagnoses, options));
    let crossed = diagnoses.iter().any(|d| {
        request
            .max_close_wait
            .is_some_and(|max| d.evidence.close_wait > max)
            || max_age.is_some_and(|max| d.evidence.oldest_seconds.is_some_and(|age| age > max))
    });
    Ok(if crossed {
        ExitCode::from(EXIT_THRESHOLD_CROSSED)
    } else {
        ExitCode::SUCCESS
    })
}

fn init_logging(settings: &Settings) {
    tcpstate_exporter::logging::init(settings.log_level, settings.log_format);
}
