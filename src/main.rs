//! Entry point: parse the command line, build `Settings`, dispatch.

use std::process::ExitCode;

use clap::Parser;

use tcpstate_exporter::cli::{Cli, Command};
use tcpstate_exporter::config::{self, LogFormat, Settings};
use tcpstate_exporter::exposition::LabelOptions;
use tcpstate_exporter::{daemon, sampler, snapshot};

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
            let result = sampler::Sampler::new(&settings)
                .map_err(|e| format!("cannot open a sock_diag netlink socket: {e}"))
                .and_then(|mut s| s.sample().map_err(|e| e.to_string()));
            match result {
                Ok((sample, _)) => {
                    let options = LabelOptions {
                        pid_label: settings.pid_label,
                    };
                    print!("{}", snapshot::render(&sample, format, top, options));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tcpstate-exporter: snapshot failed: {e}");
                    ExitCode::FAILURE
                }
            }
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
