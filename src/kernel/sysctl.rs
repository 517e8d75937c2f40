//! The sysctls and kernel counters the sampler needs, read for the network namespace of
//! the thread that opens their files: procfs resolves `/proc/sys/net/*` by the opener's
//! namespace, and `/proc/thread-self/net/*` is the thread's (after `setns`), where
//! `/proc/self/net` would be the process leader's. An open file stays with that
//! namespace, whichever thread reads it.

use std::io;
use std::ops::RangeInclusive;

use crate::kernel::kept_file::KeptFile;

/// The kernel's default, used when the file cannot be read.
pub const DEFAULT_EPHEMERAL_RANGE: RangeInclusive<u16> = 32768..=60999;

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The TCP settings the article's causes turn on, as the namespace has them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpSettings {
    pub fin_timeout_seconds: Option<f64>,
    pub keepalive_time_seconds: Option<f64>,
    pub keepalive_interval_seconds: Option<f64>,
    pub keepalive_probes: Option<f64>,
    pub somaxconn: Option<f64>,
    /// `net.ipv4.tcp_ehash_entries`: buckets of the namespace's TCP established hash,
    /// negative when it shares the host-wide one (then every sock_diag dump of it walks
    /// every TCP socket of the host; `net.ipv4.tcp_child_ehash_entries`, Linux 6.1+,
    /// gives namespaces created afterwards their own).
    pub ehash_entries: Option<f64>,
}

/// The files of `TcpSettings`, in its field order.
const TCP_SETTINGS: [&str; 6] = [
    "/proc/sys/net/ipv4/tcp_fin_timeout",
    "/proc/sys/net/ipv4/tcp_keepalive_time",
    "/proc/sys/net/ipv4/tcp_keepalive_intvl",
    "/proc/sys/net/ipv4/tcp_keepalive_probes",
    "/proc/sys/net/core/somaxconn",
    "/proc/sys/net/ipv4/tcp_ehash_entries",
];

/// One namespace's TCP settings, read each round through files kept open (see
/// `KeptFile`): a /proc/sys lookup costs more the more namespaces have the entry.
pub struct TcpSettingsFiles {
    files: [KeptFile; 6],
    port_range: KeptFile,
}

impl Default for TcpSettingsFiles {
    fn default() -> Self {
        TcpSettingsFiles {
            files: TCP_SETTINGS.map(KeptFile::new),
            port_range: KeptFile::new(LOCAL_PORT_RANGE),
        }
    }
}

impl TcpSettingsFiles {
    /// `net.ipv4.ip_local_port_range`, which bounds ephemeral ports for IPv6 too.
    pub fn ephemeral_port_range(&mut self) -> io::Result<RangeInclusive<u16>> {
        let text = self.port_range.read()?;
        parse_port_range(text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{LOCAL_PORT_RANGE}: unexpected content {:?}", text.trim()),
            )
        })
    }

    /// Reads what is readable; a missing file leaves its field empty. Call it from a
    /// thread in the namespace (the files are opened on first use).
    pub fn read(&mut self) -> TcpSettings {
        let [fin, time, interval, probes, somaxconn, ehash] = self
            .files
            .each_mut()
            .map(|file| file.read().ok()?.trim().parse::<f64>().ok());
        TcpSettings {
            fin_timeout_seconds: fin,
            keepalive_time_seconds: time,
            keepalive_interval_seconds: interval,
            keepalive_probes: probes,
            somaxconn,
            ehash_entries: ehash,
        }
    }
}

/// TcpExt ListenOverflows and ListenDrops: connections a full accept queue refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenCounters {
    pub overflows: u64,
    pub drops: u64,
}

/// The namespace's TCP sockets as the kernel counts them (/proc/net/sockstat and
/// sockstat6): `in_hash` full sockets hashed (listeners and every connection that is not
/// time-wait or a request), `time_wait` time-wait sockets (both substates). Both are per
/// network namespace, and cost two small reads: what a followed namespace's table is
/// checked against each round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketTotals {
    pub in_hash: u64,
    pub time_wait: u64,
}

const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";
const SOCKSTAT6: &str = "/proc/thread-self/net/sockstat6";
const NETSTAT: &str = "/proc/thread-self/net/netstat";

/// One namespace's counters, read each round through files kept open (see `KeptFile`):
/// opening /proc/thread-self/net/* walks /proc/PID/task/TID/net/ each time.
pub struct CounterFiles {
    sockstat: KeptFile,
    sockstat6: KeptFile,
    netstat: KeptFile,
}

impl Default for CounterFiles {
    fn default() -> Self {
        CounterFiles {
            sockstat: KeptFile::new(SOCKSTAT),
            sockstat6: KeptFile::new(SOCKSTAT6),
            netstat: KeptFile::new(NETSTAT),
        }
    }
}

impl CounterFiles {
    /// Call these from a thread in the namespace (the files are opened on first use).
    pub fn socket_totals(&mut self) -> io::Result<SocketTotals> {
        let v4 = self.sockstat.read()?;
        // No IPv6 (a kernel without it): no file, no TCP6 line. Any other failure is one:
        // counting no IPv6 sockets would make the total too low and hide missing ones.
        let v6 = match self.sockstat6.read() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => "",
            read => read?,
        };
        parse_sockstat(v4, v6).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no TCP inuse/tw line in sockstat",
            )
        })
    }

    pub fn listen_counters(&mut self) -> io::Result<ListenCounters> {
        parse_netstat(self.netstat.read()?).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no TcpExt ListenOverflows in netstat",
            )
        })
    }
}

/// `TCP: inuse N orphan N tw N ...` and `TCP6: inuse N`.
fn parse_sockstat(v4: &str, v6: &str) -> Option<SocketTotals> {
    let field = |text: &str, line: &str, name: &str| -> Option<u64> {
        let fields: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(line))?
            .split_whitespace()
            .collect();
        let at = fields.iter().position(|f| *f == name)?;
        fields.get(at + 1)?.parse().ok()
    };
    Some(SocketTotals {
        in_hash: field(v4, "TCP:", "inuse")? + field(v6, "TCP6:", "inuse").unwrap_or(0),
        time_wait: field(v4, "TCP:", "tw")?,
    })
}

/// /proc/net/netstat holds pairs of lines: `TcpExt: Name1 Name2 ...` then values.
fn parse_netstat(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let pairs: Vec<(&str, u64)> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        let get = |wanted: &str| pairs.iter().find(|(n, _)| *n == wanted).map(|(_, v)| *v);
        return Some(ListenCounters {
            overflows: get("ListenOverflows")?,
            drops: get("ListenDrops")?,
        });
    }
    None
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    (fields.next().is_none() && low <= high).then_some(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tab_separated_pair() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_port_range("a b"), None);
    }

    #[test]
    fn parses_socket_totals_from_sockstat() {
        let v4 =
            "sockets: used 13\nTCP: inuse 7 orphan 1 tw 3 alloc 9 mem 86\nUDP: inuse 0 mem 0\n";
        let v6 = "TCP6: inuse 2\nUDP6: inuse 0\n";
        let totals = parse_sockstat(v4, v6).expect("both lines");
        assert_eq!(
            totals,
            SocketTotals {
                in_hash: 9,
                time_wait: 3
            }
        );
        assert_eq!(parse_sockstat(v4, "").map(|t| t.in_hash), Some(7));
        assert_eq!(parse_sockstat("TCP: inuse x tw 1\n", v6), None);
        let totals = CounterFiles::default().socket_totals();
        assert!(totals.is_ok(), "this kernel's sockstat parses");
    }

    #[test]
    fn parses_listen_counters_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\n\
                    IpExt: InNoRoutes\nIpExt: 1\n";
        assert_eq!(
            parse_netstat(text),
            Some(ListenCounters {
                overflows: 7,
                drops: 9
            })
        );
        assert_eq!(parse_netstat("IpExt: A\nIpExt: 1\n"), None);
        let real = CounterFiles::default().listen_counters();
        let real = real.expect("this kernel has TcpExt");
        assert!(real.drops >= real.overflows);
        let settings = TcpSettingsFiles::default().read();
        assert!(settings.fin_timeout_seconds.is_some() && settings.somaxconn.is_some());
    }

    #[test]
    fn reads_this_hosts_range() {
        let range = TcpSettingsFiles::default()
            .ephemeral_port_range()
            .expect("procfs is mounted");
        assert!(range.start() <= range.end());
    }

    /// Needs root (a network namespace). Files held open read the namespace they were
    /// opened in, from any thread, and give its value as it is now, not as it was.
    #[test]
    fn held_settings_stay_with_their_namespace_and_follow_changes() {
        use tcpstate_testkit::netns::Netns;
        let pod = Netns::create("tcpstate-sysctl").expect("netns (root)");
        let key = "net.ipv4.tcp_fin_timeout";
        pod.sysctl(key, "33").expect("set");
        let host_value =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout").expect("host value");
        assert_ne!(
            host_value.trim(),
            "33",
            "the host must differ for the test to mean much"
        );
        let ports = "net.ipv4.ip_local_port_range";
        pod.sysctl(ports, "20000 29999").expect("set");
        let mut files = pod
            .run(|| {
                let mut files = TcpSettingsFiles {
                    files: TCP_SETTINGS.map(KeptFile::held),
                    port_range: KeptFile::held(LOCAL_PORT_RANGE),
                };
                assert_eq!(files.read().fin_timeout_seconds, Some(33.0));
                assert_eq!(files.ephemeral_port_range().ok(), Some(20000..=29999));
                files
            })
            .expect("in the pod");
        assert!(files.files[0].is_held(), "held open");
        assert!(files.port_range.is_held(), "held open");
        // Read from this thread, outside the pod: still the pod's value, and a change.
        assert_eq!(files.read().fin_timeout_seconds, Some(33.0));
        assert_eq!(files.ephemeral_port_range().ok(), Some(20000..=29999));
        pod.sysctl(key, "34").expect("set");
        pod.sysctl(ports, "40000 49999").expect("set");
        assert_eq!(files.read().fin_timeout_seconds, Some(34.0));
        assert_eq!(files.ephemeral_port_range().ok(), Some(40000..=49999));
        assert!(files.read().keepalive_probes.is_some());
    }

    /// Needs root (a network namespace). /proc/thread-self/net files opened in a pod
    /// count the pod's sockets and refused connections when read from a thread outside
    /// it, as they are at each read.
    #[test]
    fn held_counters_stay_with_their_namespace_and_follow_changes() {
        use std::net::{TcpListener, TcpStream};
        use tcpstate_testkit::netns::Netns;
        let pod = Netns::create("tcpstate-counters").expect("netns (root)");
        // Accept queues hold one connection: one waiting refuses the next.
        pod.sysctl("net.core.somaxconn", "0").expect("set");
        let none = (SocketTotals::default(), ListenCounters::default());
        let read = |files: &mut CounterFiles| {
            let totals = files.socket_totals().expect("sockstat");
            (totals, files.listen_counters().expect("netstat"))
        };
        let mut files = pod
            .run(|| {
                let mut files = CounterFiles {
                    sockstat: KeptFile::held(SOCKSTAT),
                    sockstat6: KeptFile::held(SOCKSTAT6),
                    netstat: KeptFile::held(NETSTAT),
                };
                assert_eq!(read(&mut files), none, "a new namespace");
                files
            })
            .expect("in the pod");
        assert!(files.sockstat.is_held() && files.netstat.is_held());
        assert_eq!(read(&mut files), none, "from outside, still the pod's");
        let (listener, pair, v6) = pod
            .run(|| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("address");
                let client = TcpStream::connect(address).expect("connect");
                let (accepted, _) = listener.accept().expect("accept");
                let v6 = TcpListener::bind("[::1]:0").ok(); // where the kernel has IPv6
                (listener, (client, accepted), v6)
            })
            .expect("in the pod");
        let (totals, _) = read(&mut files);
        assert_eq!(totals.in_hash, 3 + u64::from(v6.is_some()), "{totals:?}");
        let address = listener.local_addr().expect("address");
        let waiting = pod
            .run(|| {
                let waiting = TcpStream::connect(address).expect("the queue's one");
                let timeout = std::time::Duration::from_millis(100);
                let _ = TcpStream::connect_timeout(&address, timeout); // its SYN dropped
                waiting
            })
            .expect("in the pod");
        let (_, refused) = read(&mut files);
        assert!(refused.overflows >= 1, "{refused:?}");
        assert!(refused.drops >= refused.overflows, "{refused:?}");
        drop((waiting, pair));
    }
}
