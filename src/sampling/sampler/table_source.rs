//! Where a sample's walk of the established hash comes from: a BPF `tcp` iterator pass
//! (`kernel::events::tcp_table`) when the kernel and privileges allow and the sampler's
//! namespace is the sampling thread's own (an iterator walks the namespace of the thread
//! that creates it), else a sock_diag dump. The pass gives the same records at ~0.8x a
//! minimal dump's CPU (measured at 100k sockets), and the CLOSE_WAIT sockets' tcp_info
//! ages with them. The listeners' dump stays on netlink (it walks the listening hash
//! only), and so do the dating lookups a round still needs (no pass this round, or the
//! kernel's HZ unknown: see `dating`).

use crate::config::{EventsMode, Settings};
use crate::kernel::record::{SocketRecord, TcpState};
use crate::kernel::sockdiag::{DiagSocket, DumpError, DumpRequest, DumpStats};

/// The walk of one namespace's table, by the iterator where it can be used.
#[cfg_attr(not(feature = "events"), allow(dead_code))]
pub struct TableSource {
    /// The namespace the sampler was made in (its inode); 0: unknown, never iterated.
    netns: u64,
    walker: Walker,
    /// When the last iterator pass ended (Unix seconds): its CLOSE_WAIT records carry
    /// tcp_info ages read during it. Taken by the round that dates them.
    pass_ended_at: Option<f64>,
}

enum Walker {
    /// Not loaded yet: at the first walk that could use it.
    Untried,
    #[cfg(feature = "events")]
    Loaded(crate::kernel::events::tcp_table::TcpTable),
    /// Refused (events off, no BPF, an older kernel) or failed once: sock_diag from now on.
    Unavailable,
}

impl TableSource {
    /// For a sampler made on the calling thread; with `events = "off"`, sock_diag only.
    pub fn new(settings: &Settings) -> TableSource {
        let use_bpf = settings.events != EventsMode::Off;
        let netns = crate::kernel::netns::own_inode().unwrap_or(0);
        TableSource {
            netns,
            walker: if use_bpf && netns != 0 {
                Walker::Untried
            } else {
                Walker::Unavailable
            },
            pass_ended_at: None,
        }
    }

    /// sock_diag whatever the namespace.
    pub fn sock_diag_only() -> TableSource {
        TableSource {
            netns: 0,
            walker: Walker::Unavailable,
            pass_ended_at: None,
        }
    }

    /// When this round's iterator pass ended, if the round walked by one: the ages its
    /// CLOSE_WAIT records carry count from then. Cleared, so a round that walked
    /// nothing (a followed namespace served from its table) never dates by an old pass.
    pub fn take_pass_time(&mut self) -> Option<f64> {
        self.pass_ended_at.take()
    }

    /// Every socket but the listeners (dumped first, see the sampler), without tcp_info.
    pub fn connections(
        &mut self,
        netlink: &mut DiagSocket,
        on_record: &mut dyn FnMut(&SocketRecord),
    ) -> Result<DumpStats, DumpError> {
        let states = TcpState::ALL.into_iter().filter(|s| *s != TcpState::Listen);
        // A pass's time is taken by its round's dating; one left by a round that failed
        // before dating must not outlive it.
        self.pass_ended_at = None;
        let mut stats = self.dump(netlink, DumpRequest::for_states(states, false), on_record)?;
        if self.pass_ended_at.is_some() {
            stats.walks_by_iterator += 1;
        } else {
            stats.walks_by_sock_diag += 1;
        }
        Ok(stats)
    }

    /// Every socket matching `request`, as `DiagSocket::dump` gives them.
    fn dump(
        &mut self,
        netlink: &mut DiagSocket,
        request: DumpRequest,
        on_record: &mut dyn FnMut(&SocketRecord),
    ) -> Result<DumpStats, DumpError> {
        #[cfg(feature = "events")]
        if !request.with_tcp_info
            && self.in_own_namespace()
            && let Some(table) = self.loaded()
        {
            let mut streamed = false;
            let result = table.dump(request.states, &mut |record| {
                streamed = true;
                on_record(record)
            });
            match result {
                Ok(stats) => {
                    self.pass_ended_at = Some(super::unix_now());
                    return Ok(stats);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the BPF table iterator failed; using sock_diag from now on");
                    self.walker = Walker::Unavailable;
                    // Part of the table went out: completing it from a dump would count
                    // those sockets twice. This round fails; the next one dumps.
                    if streamed {
                        return Err(DumpError::Iterator(e));
                    }
                }
            }
        }
        netlink.dump(request, on_record)
    }

    /// Whether the sampling thread is in the namespace the sampler was made in.
    #[cfg(feature = "events")]
    fn in_own_namespace(&self) -> bool {
        !matches!(self.walker, Walker::Unavailable)
            && crate::kernel::netns::own_inode().is_ok_and(|inode| inode == self.netns)
    }

    /// The iterator, loaded at its first use; `None` once refused.
    #[cfg(feature = "events")]
    fn loaded(&mut self) -> Option<&mut crate::kernel::events::tcp_table::TcpTable> {
        if let Walker::Untried = self.walker {
            self.walker = match crate::kernel::events::tcp_table::TcpTable::load() {
                Ok(table) => Walker::Loaded(table),
                Err(e) => {
                    tracing::info!(error = %e, "no BPF table iterator; walking the table through sock_diag");
                    Walker::Unavailable
                }
            };
        }
        match &mut self.walker {
            Walker::Loaded(table) => Some(table),
            _ => None,
        }
    }
}

#[cfg(all(test, feature = "events"))]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A source whose iterator is loaded and fails every pass after `records` records.
    fn failing_after(settings: &Settings, records: usize) -> TableSource {
        let mut source = TableSource::new(settings);
        source
            .loaded()
            .expect("the iterator loads (root, kernel BTF)")
            .fail_after(records);
        source
    }

    /// Walks `source` once: the sockets handed over, and the walk's stats.
    fn walk(source: &mut TableSource) -> (usize, Result<DumpStats, DumpError>) {
        let mut netlink = DiagSocket::open().expect("sock_diag socket");
        let mut count = 0;
        let result = source.connections(&mut netlink, &mut |_| count += 1);
        (count, result)
    }

    /// Needs root (CAP_BPF, kernel BTF, a private network namespace). A pass that fails
    /// before it hands over a socket is replaced by a dump in the same walk; one that
    /// fails after fails the walk (the round keeps the last good sample) rather than
    /// counting sockets twice; either way the source stays on sock_diag afterwards. A
    /// pass that does not fail walks by the iterator.
    #[test]
    fn a_failed_pass_falls_back_to_sock_diag_without_counting_twice() {
        let ns = tcpstate_testkit::netns::Netns::create("tablesrc")
            .expect("a network namespace (root, iproute2)");
        ns.run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let address = listener.local_addr().expect("addr");
            let clients: Vec<TcpStream> = (0..2)
                .map(|_| TcpStream::connect(address).expect("connect"))
                .collect();
            let servers: Vec<TcpStream> = (0..2)
                .map(|_| listener.accept().expect("accept").0)
                .collect();
            let settings = Settings::default();

            let (count, result) = walk(&mut TableSource::new(&settings));
            let stats = result.expect("a pass");
            assert_eq!((count, stats.walks_by_iterator), (4, 1));

            // The listener comes first (filtered out), then nothing: no socket went out.
            let mut source = failing_after(&settings, 1);
            let (count, result) = walk(&mut source);
            let stats = result.expect("the same walk by a dump");
            assert_eq!(
                (count, stats.walks_by_sock_diag, stats.walks_by_iterator),
                (4, 1, 0)
            );
            assert!(matches!(source.walker, Walker::Unavailable));

            // The listener, then one connection: the walk fails with that one handed over.
            let mut source = failing_after(&settings, 2);
            let (count, result) = walk(&mut source);
            let error = result.expect_err("a walk cut after a socket went out");
            assert!(error.to_string().contains("injected"), "{error}");
            assert_eq!(error.reason().name(), "bpf_iterator");
            assert_eq!(count, 1);
            let (count, result) = walk(&mut source);
            let stats = result.expect("the next walk by a dump");
            assert_eq!((count, stats.walks_by_sock_diag), (4, 1));
            drop((clients, servers));
        })
        .expect("run in the namespace");
    }
}
