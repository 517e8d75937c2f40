//! A namespace's sockets kept current between full dumps, for a namespace on the host's
//! shared TCP hash: there a dump walks every socket of the host to find the pod's few
//! hundred, so with 100 pods a round cost 30x one walk of the host table.
//!
//! The table starts from a full dump (the reconciliation). The kernel then sends every
//! state change of the namespace (`NETNS_EVERY_TRANSITION`), applied here in order: a
//! socket's state is the one its last change names, so changes that happened during
//! the dump, already seen or not, all end where the kernel is. Each round the sampler
//! looks up, by exact sock_diag lookups, only the sockets whose figures it needs fresh
//! (CLOSE_WAIT and the detail states: queues, owner) and those that may have turned
//! into time-wait sockets, which change and expire without an event; the others are
//! counted in the state their last event gave. What no event announces are request
//! sockets (half-open handshakes in a listener's SYN queue, SYN-RECV in `ss`): they
//! appear at the next reconciliation. Anything else missing shows in the kernel's own
//! per-namespace totals (`sysctl::SocketTotals`), which the sampler compares.

use std::net::SocketAddr;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::kernel::record::{HeldSocket, STATE_COUNT, SocketRecord, TcpState};
use crate::model::ages::CloseWaitEvent;

/// One state change of a socket, from the kernel's tracepoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StateTransition {
    pub cookie: u64,
    /// Unix seconds.
    pub at: f64,
    /// `None` for a state this build does not know.
    pub from: Option<TcpState>,
    pub to: Option<TcpState>,
    /// The device the socket is bound to (0: none).
    pub bound_dev_if: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl StateTransition {
    /// The CLOSE_WAIT tracker's view: entering or leaving CLOSE_WAIT.
    pub fn close_wait_event(&self) -> Option<CloseWaitEvent> {
        let entered = self.to == Some(TcpState::CloseWait);
        let left = self.from == Some(TcpState::CloseWait);
        (entered || left).then_some(CloseWaitEvent {
            cookie: self.cookie,
            at: self.at,
            local_port: self.local.port(),
            remote_port: self.remote.port(),
            entered,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The last record the kernel gave (dump or lookup) or one made from an event; its
    /// state is always the current one.
    record: SocketRecord,
    /// Its addresses are the socket's own: false while only the first event of a new
    /// socket is known (the kernel sets SYN-SENT before choosing the local port, and
    /// SYN-RECV before the child gets its peer's address).
    identified: bool,
    /// Closed from a state that may leave a time-wait socket behind, or seen as one
    /// (or as a request socket): looked up every round until gone.
    volatile: bool,
    /// Seen in SYN-RECV by a dump or lookup, never by an event: a request socket (the
    /// kernel counts those nowhere per namespace), as far as can be told.
    request: bool,
}

/// Why a followed namespace was dumped in full: the `reason` label of
/// `tcpstate_followed_namespace_dumps_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpReason {
    /// No table yet, or it was dropped (following just began, events were lost).
    First,
    /// The reconcile period had passed.
    Period,
    /// The kernel counts more sockets than the table holds, or a socket whose figures
    /// are needed has no known address yet.
    Mismatch,
    /// Over `MAX_FOLLOWED_SOCKETS` at the last dump: not worth a table.
    TooLarge,
}

impl DumpReason {
    /// Every reason, in the order of their discriminants (`reason as usize` indexes it).
    pub const ALL: [DumpReason; 4] = [
        DumpReason::First,
        DumpReason::Period,
        DumpReason::Mismatch,
        DumpReason::TooLarge,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            DumpReason::First => "first",
            DumpReason::Period => "period",
            DumpReason::Mismatch => "mismatch",
            DumpReason::TooLarge => "too_large",
        }
    }
}

/// What the sampler must do this round.
#[derive(Debug, PartialEq, Eq)]
pub enum LookupPlan {
    /// Look `asked` up; `held` sockets already took their holders' figures; every
    /// other socket is counted as it stands.
    Lookups {
        asked: Vec<SocketRecord>,
        held: usize,
    },
    /// A socket whose figures are needed cannot be looked up (its addresses are not
    /// known yet): dump instead.
    Dump,
}

#[derive(Debug, Default)]
pub struct SocketTable {
    entries: HashMap<u64, Entry>,
}

impl SocketTable {
    /// A table from a full dump's records (listeners are left out: they are dumped on
    /// their own every round).
    pub fn from_dump(records: &[SocketRecord]) -> SocketTable {
        let mut entries = HashMap::with_capacity(records.len());
        for record in records.iter().filter(|r| r.state != TcpState::Listen) {
            entries.insert(
                record.cookie,
                Entry {
                    record: *record,
                    identified: true,
                    volatile: is_volatile(record),
                    request: record.state == TcpState::SynRecv,
                },
            );
        }
        SocketTable { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sockets the kernel counts per namespace (sockstat's hashed and time-wait
    /// sockets): every entry but the request sockets.
    pub fn counted_by_kernel(&self) -> usize {
        self.entries.values().filter(|e| !e.request).count()
    }

    /// Applies one state change (in the order the kernel made them).
    pub fn apply(&mut self, change: &StateTransition) {
        let Some(to) = change.to else {
            // A state this build does not know: the socket's figures are unknown.
            self.entries.remove(&change.cookie);
            return;
        };
        let listener_closed = change.from == Some(TcpState::Listen) && to == TcpState::Close;
        if to == TcpState::Listen || listener_closed {
            return; // listeners are dumped every round
        }
        if to == TcpState::Close {
            let may_linger = matches!(
                change.from,
                Some(TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing)
            );
            match (may_linger, self.entries.get_mut(&change.cookie)) {
                (true, Some(entry)) => {
                    entry.volatile = true;
                    // Counted as time-wait until a lookup says what is left (possibly
                    // nothing); the lookup comes this round, before anything is counted.
                    entry.record.state = TcpState::TimeWait;
                }
                _ => {
                    self.entries.remove(&change.cookie);
                }
            }
            return;
        }
        let identified = !(matches!(
            (change.from, to),
            (Some(TcpState::Close), TcpState::SynSent)
                | (Some(TcpState::Listen), TcpState::SynRecv)
        ));
        let entry = self.entries.entry(change.cookie).or_insert(Entry {
            record: record_from(change, to),
            identified,
            volatile: false,
            request: false,
        });
        entry.record.state = to;
        entry.request = false; // an event: a full socket
        if identified && !entry.identified {
            entry.record.local_addr = change.local.ip();
            entry.record.local_port = change.local.port();
            entry.record.remote_addr = change.remote.ip();
            entry.record.remote_port = change.remote.port();
            entry.record.bound_dev_if = change.bound_dev_if;
            entry.identified = true;
        }
    }

    /// Refreshes this round the sockets in a state whose figures are wanted fresh
    /// (`fresh[state.index()]`) and the volatile ones: those `held` (what their
    /// processes' descriptors show now, by cookie) gives in the state the table has them
    /// in take its figures; the others are to be looked up.
    pub fn plan(
        &mut self,
        fresh: &[bool; STATE_COUNT],
        held: &HashMap<u64, HeldSocket>,
    ) -> LookupPlan {
        let mut asked = Vec::new();
        let mut from_held = 0;
        for entry in self.entries.values_mut() {
            // Read from a holder this round, or not: `held_by` says which, for the owner.
            entry.record.held_by = 0;
            if !(entry.volatile || fresh[entry.record.state.index()]) {
                continue;
            }
            if let Some(socket) = entry.served_by(held) {
                entry.record = socket.refresh(&entry.record);
                from_held += 1;
                continue;
            }
            if !entry.identified {
                return LookupPlan::Dump;
            }
            asked.push(entry.record);
        }
        LookupPlan::Lookups {
            asked,
            held: from_held,
        }
    }

    /// Takes the answers to `asked`: the `found` records replace theirs, the asked
    /// sockets not found are gone.
    pub fn take_lookups(&mut self, asked: &[SocketRecord], found: Vec<SocketRecord>) {
        let found_cookies: HashSet<u64> = found.iter().map(|r| r.cookie).collect();
        for record in asked {
            if !found_cookies.contains(&record.cookie) {
                self.entries.remove(&record.cookie);
            }
        }
        for record in found {
            if let Some(entry) = self.entries.get_mut(&record.cookie) {
                entry.volatile |= is_volatile(&record);
                entry.record = record;
            }
        }
    }

    /// The kernel counts fewer sockets than the table: sockets closed since the
    /// round's events (they leave with the next events), or ghosts, sockets whose
    /// leaving no event announced (the kernel does not trace a few FIN_WAIT1 exits
    /// in 10,000 under graceful churn, see README). A ghost can only hide in a state
    /// whose figures no round refreshes; those that leave within seconds (SYN_SENT
    /// and the closing states) are looked up from the next round on, until gone,
    /// like time-wait sockets. Returns how many were newly marked.
    pub fn check_passing_states(&mut self) -> usize {
        let mut marked = 0;
        for entry in self.entries.values_mut() {
            let passing = matches!(
                entry.record.state,
                TcpState::SynSent | TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck
            );
            if passing && entry.identified && !entry.volatile {
                entry.volatile = true;
                marked += 1;
            }
        }
        marked
    }

    /// Every socket, in its current state.
    pub fn records(&self) -> impl Iterator<Item = &SocketRecord> {
        self.entries.values().map(|e| &e.record)
    }
}

impl Entry {
    /// `held`'s figures for this socket, if they can stand for a lookup: not a volatile
    /// socket, in the state the table has it in, its addresses known.
    fn served_by<'a>(&self, held: &'a HashMap<u64, HeldSocket>) -> Option<&'a HeldSocket> {
        if self.volatile || !self.identified {
            return None;
        }
        held.get(&self.record.cookie)
            .filter(|socket| socket.state == self.record.state)
    }
}

/// Sockets that may change or vanish without an event: time-wait sockets (FIN-WAIT-2 is
/// also a time-wait socket's substate) and request sockets. A FIN_WAIT2 socket that a
/// process holds (an inode) is a full socket, which leaves FIN_WAIT2 only through a
/// traced change (its close, if it lingers, is `apply`'s case): not volatile, so not
/// looked up every round (a client that half-closes and keeps its socket, 10 in every
/// bench pod: 1,000 lookups a round at 100 pods).
fn is_volatile(record: &SocketRecord) -> bool {
    match record.state {
        TcpState::TimeWait | TcpState::SynRecv => true,
        TcpState::FinWait2 => record.inode == 0,
        _ => false,
    }
}

/// A record standing for a socket known only from an event: its state and addresses;
/// queues and owner come with its first lookup, if its state ever needs them.
fn record_from(change: &StateTransition, state: TcpState) -> SocketRecord {
    SocketRecord {
        state,
        local_addr: change.local.ip(),
        local_port: change.local.port(),
        remote_addr: change.remote.ip(),
        remote_port: change.remote.port(),
        recv_queue: 0,
        send_queue: 0,
        inode: 0,
        uid: 0,
        cookie: change.cookie,
        keepalive_armed: false,
        bound_dev_if: change.bound_dev_if,
        tcp_info: None,
        held_by: 0,
    }
}

#[cfg(test)]
mod tests;
