//! `namespaces = "all"`: one exporter sees the CLOSE_WAIT of every network namespace,
//! named (`ip netns add`) or held only by a process, each on its own series.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use support::{Actor, Daemon, Exposition, Netns, inbound_close_wait, temp_config, wait_until};

const WAIT: Duration = Duration::from_secs(20);

fn close_wait(m: &Exposition, netns: &str, process: &str, port: &str) -> Option<f64> {
    m.try_get(
        "tcpstate_connections",
        &[
            ("netns", netns),
            ("pod", ""),
            ("namespace", ""),
            ("state", "close_wait"),
            ("direction", "inbound"),
            ("port", port),
            ("process", process),
            ("container", ""),
        ],
    )
}

#[test]
fn one_exporter_sees_every_namespace_and_forgets_the_dead() {
    let blue = Netns::new("blue");
    let red = Netns::new("red");
    let anon = Netns::new("anon");
    let observer = Netns::new("observer");
    let (mut blue_srv, mut blue_cli) = (
        Actor::spawn(&blue, "blue-srv"),
        Actor::spawn(&blue, "blue-cli"),
    );
    let (mut red_srv, mut red_cli) = (Actor::spawn(&red, "red-srv"), Actor::spawn(&red, "red-cli"));
    let (mut anon_srv, mut anon_cli) = (
        Actor::spawn(&anon, "anon-srv"),
        Actor::spawn(&anon, "anon-cli"),
    );
    inbound_close_wait(&blue, &mut blue_srv, &mut blue_cli, 8080, 2, 0);
    inbound_close_wait(&red, &mut red_srv, &mut red_cli, 8080, 3, 0);
    inbound_close_wait(&anon, &mut anon_srv, &mut anon_cli, 9000, 4, 0);
    // Drop anon's name: the namespace lives on, held only by its processes.
    let anon_inode = std::fs::metadata(format!("/proc/{}/ns/net", anon_srv.pid()))
        .expect("actor's namespace")
        .ino();
    let out = std::process::Command::new("ip")
        .args(["netns", "del", anon.name()])
        .output()
        .expect("ip");
    assert!(out.status.success());
    let anon_label = format!("ns-{anon_inode}");

    let include = format!(
        "namespaces = \"all\"\nnamespaces_include = [\"{}\", \"{}\", \"{anon_label}\", \"{}\"]\n\
         namespaces_exclude = [\"{}\"]\n[sample]\ndetail_states = [\"close_wait\"]\n",
        blue.name(),
        red.name(),
        observer.name(),
        observer.name(),
    );
    let config = temp_config(&include);
    let daemon = Daemon::exporter(
        &observer,
        &["--sample.interval", "300ms", "--config.file", config.path()],
    );
    let scrape = || Exposition::parse(&daemon.scrape("/metrics").2);
    let m = scrape();
    assert_eq!(close_wait(&m, blue.name(), "blue-srv", "8080"), Some(2.0));
    assert_eq!(close_wait(&m, red.name(), "red-srv", "8080"), Some(3.0));
    assert_eq!(close_wait(&m, &anon_label, "anon-srv", "9000"), Some(4.0));
    assert_eq!(
        m.get(
            "tcpstate_sockets",
            &[
                ("netns", red.name()),
                ("pod", ""),
                ("namespace", ""),
                ("state", "close_wait")
            ]
        ),
        3.0
    );
    // Excluded (the observer's own), and nothing beyond the included three.
    assert_eq!(m.get("tcpstate_namespaces_sampled", &[]), 3.0);
    let info = m.series("tcpstate_netns_info");
    assert_eq!(info.len(), 3, "{info:?}");
    let anon_info = info
        .iter()
        .find(|(labels, _)| labels.iter().any(|(k, v)| k == "netns" && *v == anon_label))
        .expect("anon namespace described");
    assert!(
        anon_info
            .0
            .iter()
            .any(|(k, v)| k == "inode" && *v == anon_inode.to_string())
    );
    // Ages are tracked per namespace too.
    assert!(
        m.try_get(
            "tcpstate_close_wait_oldest_seconds",
            &[
                ("netns", blue.name()),
                ("pod", ""),
                ("namespace", ""),
                ("direction", "inbound"),
                ("port", "8080"),
                ("process", "blue-srv"),
                ("container", ""),
            ]
        )
        .is_some()
    );

    // The anonymous namespace dies with its last process: its series go, without error.
    drop(anon_srv);
    drop(anon_cli);
    assert!(
        wait_until(WAIT, || {
            let m = scrape();
            close_wait(&m, &anon_label, "anon-srv", "9000").is_none()
                && m.get("tcpstate_namespaces_sampled", &[]) == 2.0
        }),
        "the dead namespace is forgotten"
    );
    let m = scrape();
    for reason in ["netlink_io", "netlink_refused", "decode"] {
        assert_eq!(
            m.get("tcpstate_sample_errors_total", &[("reason", reason)]),
            0.0
        );
    }
    assert_eq!(close_wait(&m, red.name(), "red-srv", "8080"), Some(3.0));
}
