//! The command line as a person meets it: `--help` and `--version` on stdout, and a bad
//! flag as one line on stderr with exit code 2, never clap's multi-line block.

use clap::Parser;
use clap::error::ErrorKind;

use crate::config::cli::Cli;

/// Exit code for bad input (flags, config), as clap uses for bad flags.
pub const EXIT_BAD_INPUT: u8 = 2;

/// The parsed command line, or the exit code after `--help`, `--version` (0) or a bad
/// flag (2, one line on stderr).
pub fn parse() -> Result<Cli, u8> {
    match Cli::try_parse() {
        Ok(cli) if cli.version => {
            print!("{}", crate::config::version::long_version());
            Err(0)
        }
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = e.print();
                Err(0)
            }
            _ => {
                eprintln!("tcpstate-exporter: {}", one_line(&e.render().to_string()));
                Err(EXIT_BAD_INPUT)
            }
        },
    }
}

/// clap's error block on one line: its sentences joined, the usage and the pointer to
/// --help reduced to "try --help".
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect();
    if let Some(first) = parts.first_mut() {
        *first = first.strip_prefix("error: ").unwrap_or(first);
    }
    parts.push("try --help");
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).expect_err("bad command line");
        one_line(&e.render().to_string())
    }

    #[test]
    fn bad_flags_are_one_line() {
        let unknown = error_of(&["tcpstate-exporter", "--web.listen-adress", ":1"]);
        assert!(!unknown.contains('\n'), "{unknown}");
        assert!(
            unknown.starts_with("unexpected argument '--web.listen-adress' found"),
            "{unknown}"
        );
        assert!(unknown.ends_with("; try --help"), "{unknown}");

        let value = error_of(&["tcpstate-exporter", "snapshot", "--format", "yaml"]);
        assert!(!value.contains('\n'), "{value}");
        assert!(value.contains("'yaml'"), "{value}");
        assert!(value.contains("table, prometheus, json"), "{value}");
    }
}
