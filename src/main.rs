//! Entry point: parse the command line, build `Settings`, dispatch.

use std::process::ExitCode;

use clap::Parser;

use tcpstate_exporter::cli::{Cli, Command};
use tcpstate_exporter::config::{self, LogFormat, NamespaceMode, Settings};
use tcpstate_exporter::exposition::LabelOptions;
use tcpstate_exporter::namespace_set::NamespaceSet;
use tcpstate_exporter::sampler::Attribution;
use tcpstate_exporter::{daemon, snapshot};

/// Exit code for bad input (flags, config), as clap uses for bad flags.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::load(&cli.flags) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("tcpstate-exporter: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    init_logging(&settings);
    match cli.command {
        Some(Command::CheckConfig) => {
            match &cli.flags.config_file {
                Some(path) => println!("{}: valid", path.display()),
                None => println!("no --config.file given: the built-in defaults are valid"),
            }
            ExitCode::SUCCESS
        }
        Some(Command::Snapshot { format, top }) => {
            let mut namespaces = match NamespaceSet::new(&settings) {
                Ok(set) => set,
                Err(e) => {
                    eprintln!("tcpstate-exporter: cannot open a sock_diag netlink socket: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut attribution = Attribution::new(&settings);
            let round = namespaces.sample_round(&mut attribution);
            if let Some(e) = round.errors.first() {
                eprintln!("tcpstate-exporter: snapshot failed: {e}");
                return ExitCode::FAILURE;
            }
            let options = LabelOptions {
                pid_label: settings.pid_label,
                namespace_labels: settings.namespaces == NamespaceMode::All,
            };
            print!("{}", snapshot::render(&round.samples, format, top, options));
            ExitCode::SUCCESS
        }
        None => match daemon::run(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(settings: &Settings) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(settings.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Logfmt => builder.init(),
    }
}
