//! Names that come from other people's processes are shown, never executed, by the
//! terminal (issue 16, item 5): a process named `"\x1b[2J\x1b]0;PWN\x07"` holding a
//! CLOSE_WAIT socket used to clear the operator's screen and retitle the window when
//! `snapshot` printed it.

mod support;

use support::{Actor, Netns, inbound_close_wait};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");
const HOSTILE: &str = "\x1b[2J\x1b]0;PWN\x07";

fn snapshot(ns: &Netns, args: &[&str]) -> String {
    let output = ns
        .command(EXPORTER)
        .arg("snapshot")
        .args(args)
        .output()
        .expect("snapshot");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[test]
fn control_bytes_in_a_process_name_are_escaped() {
    let ns = Netns::new("hostile-name");
    let mut server = Actor::spawn(&ns, HOSTILE);
    let mut client = Actor::spawn(&ns, "client");
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 2, 0);

    let table = snapshot(&ns, &["--color", "never"]);
    assert!(
        !table.contains(['\x1b', '\x07']),
        "raw control bytes reach the terminal: {table:?}"
    );
    assert!(table.contains("\\x1b[2J\\x1b]0;PWN\\x07"), "{table}");

    // In colour, the only escape sequences are the verdict's own colours.
    let coloured = snapshot(&ns, &["--color", "always"]);
    let stripped = coloured
        .replace("\x1b[31m", "")
        .replace("\x1b[33m", "")
        .replace("\x1b[0m", "");
    assert!(!stripped.contains(['\x1b', '\x07']), "{coloured:?}");

    // JSON escapes them its own way, and keeps the real name.
    let json: serde_json::Value =
        serde_json::from_str(&snapshot(&ns, &["--format", "json"])).expect("JSON");
    assert_eq!(json["diagnosis"][0]["process"], HOSTILE);
}
