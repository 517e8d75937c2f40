//! `--help` and README.md's Flags table say the same thing: the same flags, the same
//! defaults, the same subcommands. (The package ships the README, and `--help` is what
//! an operator reads on the host.)

use std::collections::BTreeMap;
use std::process::Command;

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");

/// `--flag` -> default, from the table under "## Flags" (`none` or an empty cell when
/// there is none).
fn readme_flags() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Flags\n")
        .nth(1)
        .expect("a '## Flags' section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let flag = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let default = match cells.get(2)?.trim_matches('`') {
                "" => "none",
                other => other,
            };
            flag.starts_with("--")
                .then(|| (flag.to_string(), default.to_string()))
        })
        .collect()
}

/// `--flag` -> default, from `--help` (`none` when it names none); `-h`/`--help` aside.
fn help_flags(help: &str) -> BTreeMap<String, String> {
    help.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let start = line.find("--")?;
            if start > 4 {
                return None;
            }
            let flag: String = line[start..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ',')
                .collect();
            let default = line
                .rsplit_once("[default: ")
                .and_then(|(_, rest)| rest.strip_suffix(']'))
                .unwrap_or("none");
            (flag != "--help").then(|| (flag, default.to_string()))
        })
        .collect()
}

fn help() -> String {
    let out = Command::new(EXPORTER)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn help_and_readme_list_the_same_flags_and_defaults() {
    let readme = readme_flags();
    let help = help_flags(&help());
    assert!(readme.len() >= 8, "README flags: {readme:?}");
    assert_eq!(
        readme, help,
        "README's Flags table (left) and --help (right) differ"
    );
}

#[test]
fn help_lists_the_subcommands_the_readme_names() {
    let help = help();
    for subcommand in ["snapshot", "check-config"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{subcommand} "))),
            "{subcommand} missing from --help:\n{help}"
        );
    }
}
