//! The fleet: a second exporter in a namespace of its own, joined to the first one's by
//! a veth pair, holding a larger leak that does not grow and a small accept backlog; one
//! Prometheus scrapes both.
//! The fleet recording rules must rank the groups of both instances, the worst first.

use std::net::SocketAddr;
use std::time::Duration;

use super::{PromApi, sample_value};
use crate::support::{Actor, Daemon, Netns, wait_until};

/// The second exporter, on its end of the veth pair.
pub const ADDR: &str = "10.251.77.2:9815";
/// Stuck CLOSE_WAIT connections of the second instance's leak: more than the first's
/// grower can ever hold (`super::MOST_HELD`, checked at compile time there), so it ranks
/// first however long the checks before the ranking take.
pub const HOARD: usize = 200;
const PORT: u16 = 9090;
/// Connections left in the second instance's accept queue after their peers left.
pub const BACKLOG: usize = 3;

/// Joins `first` and `second` by a veth pair: 10.251.77.1 in the first, .2 in the second.
pub fn link(first: &Netns, second: &Netns) {
    first.ip(&[
        "link",
        "add",
        "fleet0",
        "type",
        "veth",
        "peer",
        "name",
        "fleet1",
        "netns",
        second.name(),
    ]);
    first.ip(&["addr", "add", "10.251.77.1/30", "dev", "fleet0"]);
    first.ip(&["link", "set", "fleet0", "up"]);
    second.ip(&["addr", "add", "10.251.77.2/30", "dev", "fleet1"]);
    second.ip(&["link", "set", "fleet1", "up"]);
}

/// The second instance's leak and backlog, its actors kept alive by the caller.
pub fn hoard(ns: &Netns) -> (Actor, Actor) {
    let mut server = Actor::spawn(ns, "hoarder");
    let mut client = Actor::spawn(ns, "hoard-client");
    server.cmd(&format!("listen big 127.0.0.1:{PORT} {HOARD}"));
    client.cmd(&format!("connect c 127.0.0.1:{PORT} {HOARD}"));
    server.cmd(&format!("accept a big {HOARD}"));
    server.cmd("listen slow 127.0.0.1:9091 8");
    client.cmd(&format!("connect q 127.0.0.1:9091 {BACKLOG}"));
    client.cmd("close c");
    client.cmd("close q");
    assert!(wait_until(Duration::from_secs(30), || {
        crate::support::count_state(ns, "CLOSE-WAIT") == HOARD + BACKLOG
    }));
    (server, client)
}

/// The second exporter, listening on its end of the link.
pub fn exporter<'ns>(ns: &'ns Netns, config: &str) -> Daemon<'ns> {
    let addr: SocketAddr = ADDR.parse().expect("an address");
    Daemon::start(
        env!("CARGO_BIN_EXE_tcpstate-exporter").as_ref(),
        ns,
        addr,
        &[
            "--web.listen-address",
            ADDR,
            "--sample.interval",
            "1s",
            "--config.file",
            config,
        ],
    )
}

/// The fleet rules rank both instances' groups, the second's larger leak first, and sum
/// CLOSE_WAIT per instance.
pub fn check_ranking(api: &PromApi, first_addr: &str, first_process: &str) {
    let ranked = |metric: &str| -> Vec<(String, String, f64)> {
        api.query(&format!("sort_desc({metric})"))
            .iter()
            .map(|s| {
                let label = |l: &str| s["metric"][l].as_str().unwrap_or_default().to_string();
                (label("instance"), label("process"), sample_value(s))
            })
            .collect()
    };
    let mut stuck = Vec::new();
    let both = wait_until(Duration::from_secs(30), || {
        stuck = ranked("tcpstate_fleet:close_wait_stuck_connections:topk");
        stuck
            .iter()
            .any(|s| s.0 == first_addr && s.1 == first_process)
            && stuck.len() == 3
    });
    assert!(both, "stuck ranking: {stuck:?}");
    assert_eq!(
        stuck[0],
        (ADDR.to_string(), "hoarder".to_string(), HOARD as f64),
        "the larger leak first: {stuck:?}"
    );
    assert_eq!(
        stuck[2].2, BACKLOG as f64,
        "the backlog, stuck too, last: {stuck:?}"
    );
    assert_eq!(
        ranked("tcpstate_fleet:close_wait_unaccepted:topk"),
        [(ADDR.to_string(), "hoarder".to_string(), BACKLOG as f64)],
        "the accept backlog's ranking"
    );
    let growth = ranked("tcpstate_fleet:close_wait_growth:topk");
    assert_eq!(
        growth
            .iter()
            .map(|g| (g.0.as_str(), g.1.as_str()))
            .collect::<Vec<_>>(),
        [(first_addr, first_process)],
        "only the first instance's leak grows: {growth:?}"
    );
    let per_instance = ranked("tcpstate_instance:close_wait_connections:sum");
    let instances: Vec<&str> = per_instance.iter().map(|i| i.0.as_str()).collect();
    assert_eq!(instances.len(), 2, "{per_instance:?}");
    assert!(instances.contains(&ADDR) && instances.contains(&first_addr));
}
