//! Silent degradations get one log line each (issue 16, item 7): `namespaces = "all"`
//! without CAP_SYS_ADMIN, root without CAP_SYS_PTRACE (sockets of other users' processes
//! without a process), and a low open-file limit.

mod support;

use std::process::Stdio;

use support::{Daemon, Exposition, Netns, temp_config, wait_until};

const EXPORTER: &str = env!("CARGO_BIN_EXE_tcpstate-exporter");

/// `snapshot --format prometheus` as root with `bounding` capabilities dropped
/// (`setpriv --bounding-set=-sys_admin`, ...); stdout and stderr.
fn snapshot_without(ns: &Netns, bounding: &str, config: Option<&str>) -> (String, String) {
    let mut command = ns.command("setpriv");
    command
        .args([&format!("--bounding-set={bounding}"), "--", EXPORTER])
        .args(["snapshot", "--format", "prometheus"]);
    if let Some(config) = config {
        command.args(["--config.file", config]);
    }
    let output = command.output().expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

#[test]
fn all_namespaces_without_cap_sys_admin_says_so() {
    let ns = Netns::new("degr-admin");
    let config = temp_config("namespaces = \"all\"\n");
    let (_, stderr) = snapshot_without(&ns, "-sys_admin", Some(config.path()));
    assert_eq!(
        stderr.matches("grant CAP_SYS_ADMIN").count(),
        1,
        "one warning line: {stderr}"
    );
    assert!(stderr.contains("level=warn"), "{stderr}");
}

#[test]
fn root_without_cap_sys_ptrace_says_why_owners_are_missing() {
    let ns = Netns::new("degr-ptrace");
    // A server run as nobody, holding an established connection.
    let mut server = ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        // The system interpreter: a per-user one (pyenv) is not readable by nobody.
        .args(["/usr/bin/python3", "-c"])
        .arg(
            "import socket,sys,time\n\
             s=socket.socket(); s.bind(('127.0.0.1',7100)); s.listen()\n\
             print('ready', flush=True); c,_=s.accept(); time.sleep(120)",
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 as nobody");
    let mut line = String::new();
    let stdout = server.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("ready");
    let client = ns
        .run(|| std::net::TcpStream::connect("127.0.0.1:7100"))
        .expect("connect");
    assert!(wait_until(std::time::Duration::from_secs(30), || {
        ns.sockets()
            .iter()
            .any(|s| s.local_port == 7100 && s.state == "ESTAB" && !s.users.is_empty())
    }));
    let (stdout, stderr) = snapshot_without(&ns, "-sys_ptrace", None);
    let m = Exposition::parse(&stdout);
    let served = m.try_get(
        "tcpstate_connections",
        &[
            ("state", "established"),
            ("direction", "inbound"),
            ("port", "7100"),
            ("process", ""),
        ],
    );
    assert_eq!(served, Some(1.0), "{stdout}");
    assert_eq!(
        stderr.matches("CAP_SYS_PTRACE").count(),
        1,
        "one warning line: {stderr}"
    );
    drop(client);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_low_open_file_limit_says_so() {
    let ns = Netns::new("degr-nofile");
    let daemon = Daemon::start(
        "prlimit".as_ref(),
        &ns,
        support::EXPORTER_ADDRESS.parse().expect("address"),
        &[
            "--nofile=64:64",
            EXPORTER,
            "--web.listen-address",
            support::EXPORTER_ADDRESS,
        ],
    );
    assert!(wait_until(std::time::Duration::from_secs(30), || daemon
        .output()
        .contains("open-file limit is low")));
    assert_eq!(daemon.scrape("/metrics").0, 200);
}
