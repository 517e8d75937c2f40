//! A namespace followed socket by socket between full dumps (see `model::socket_table`):
//! when its round can be served from the table with exact lookups, and when it must
//! dump (reconcile) instead.
//!
//! A dump is taken when the table is missing (first round, events lost or not yet
//! flowing), when the reconcile period has passed and the round allows one, when a
//! socket whose figures are needed cannot be looked up, and when the kernel's own totals
//! for the namespace (sockstat: hashed sockets and time-wait sockets) exceed what the
//! table holds after its lookups, which is how anything the events missed shows.

use std::time::{Duration, Instant};

use foldhash::HashMap;

use crate::kernel::record::{HeldSocket, STATE_COUNT, SocketRecord, TcpState};
use crate::kernel::sockdiag::{DiagSocket, DumpError};
use crate::kernel::sysctl;
use crate::model::ages::CloseWaitEvent;
use crate::model::socket_table::{DumpReason, LookupPlan, SocketTable, StateTransition};
use crate::sampling::attribution::Attribution;
use crate::sampling::sampler::{Refresh, Sampler};

/// A namespace with more sockets than this is dumped every round rather than followed
/// (`NamespaceSet::follow_candidates` leaves it out):
/// its table would cost memory (~100 bytes a socket) and its lookups (~3.5 us each
/// here, against ~1.3 us a socket for a walk) would soon cost more than the walk.
pub const MAX_FOLLOWED_SOCKETS: usize = 50_000;

/// Which TCP established hash a namespace's sockets are in, as far as following goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstablishedHash {
    /// A hash of its own (`tcp_child_ehash_entries` set when it was made): its dump walks
    /// its own sockets only, so it is dumped every round.
    Own,
    /// The host's shared hash, with few enough sockets to follow by events.
    SharedFollowable,
    /// The host's shared hash, with more than `MAX_FOLLOWED_SOCKETS` sockets: dumped
    /// every round, and no every-transition events for it either (they would only fill
    /// the ring, and a loss un-follows every namespace).
    SharedTooLarge,
}

impl EstablishedHash {
    /// The hash of a namespace whose `tcp_ehash_entries` reads `ehash_entries` (negative
    /// for the shared hash; absent before Linux 6.1, where every namespace shares the
    /// host's) and which holds `sockets` sockets.
    pub fn of(ehash_entries: Option<f64>, sockets: u64) -> EstablishedHash {
        let shared = ehash_entries.is_none_or(|e| e < 0.0);
        if !shared {
            EstablishedHash::Own
        } else if sockets <= MAX_FOLLOWED_SOCKETS as u64 {
            EstablishedHash::SharedFollowable
        } else {
            EstablishedHash::SharedTooLarge
        }
    }
}

/// What a followed namespace's table gives this round.
#[derive(Debug, PartialEq)]
pub enum TableRound {
    /// Every connection, and how many sockets were looked up and read from their
    /// processes' descriptors.
    Served(Vec<SocketRecord>, Refreshed),
    /// Dump instead, for this reason.
    Dump(DumpReason),
    /// The kernel counts more sockets than the table holds: most likely sockets born
    /// since the round's events were applied. Apply the newer events and ask again.
    Stale,
}

/// How a followed namespace was read this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowedRound {
    /// Served from the table, its sockets refreshed so.
    FromTable(Refreshed),
    /// Dumped in full instead.
    Dumped(DumpReason),
}

/// Rounds of followed namespaces by how they were read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowedCounts {
    pub from_table: u64,
    /// Sockets looked up by the rounds served from their tables.
    pub lookups: u64,
    /// Sockets those rounds read from their processes' descriptors instead.
    pub held: u64,
    /// Full dumps, indexed by `DumpReason as usize`.
    pub dumps: [u64; DumpReason::ALL.len()],
}

impl FollowedCounts {
    pub fn add(&mut self, round: FollowedRound) {
        match round {
            FollowedRound::FromTable(refreshed) => {
                self.from_table += 1;
                self.lookups += refreshed.lookups as u64;
                self.held += refreshed.held as u64;
            }
            FollowedRound::Dumped(reason) => self.dumps[reason as usize] += 1,
        }
    }
}

/// How a round served from a table refreshed the sockets whose figures must be fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Exact sock_diag lookups.
    pub lookups: usize,
    /// Read from their holders' descriptors (`Attribution::held_sockets`).
    pub held: usize,
}

/// A followed namespace's connections from its table and how they were refreshed, or
/// why it was dumped.
pub type FromTable = Result<(Vec<SocketRecord>, Refreshed), DumpReason>;

pub struct Following {
    table: Option<SocketTable>,
    last_dump: Instant,
    period: Duration,
    /// This round may reconcile by period (the namespace set allows few per round).
    pub may_reconcile: bool,
}

impl Following {
    pub fn new(period: Duration) -> Following {
        Following {
            table: None,
            last_dump: Instant::now(),
            period,
            may_reconcile: false,
        }
    }

    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// The reconcile period has passed: the round would like to dump.
    pub fn due(&self) -> bool {
        self.table.is_some() && self.last_dump.elapsed() >= self.period
    }

    /// Applies the namespace's state changes, in the kernel's order.
    pub fn apply(&mut self, changes: &[StateTransition]) {
        if let Some(table) = &mut self.table {
            for change in changes {
                table.apply(change);
            }
        }
    }

    /// Events were lost: the table can no longer be trusted; the next round dumps.
    pub fn distrust(&mut self) {
        self.table = None;
    }

    /// Why this round dumps whatever the table holds: the reconcile period is due (and
    /// the round allows it), or there is no table (first round, lost events).
    pub fn must_dump(&self) -> Option<DumpReason> {
        if self.may_reconcile && self.due() {
            return Some(DumpReason::Period);
        }
        self.table.is_none().then_some(DumpReason::First)
    }

    /// This round's connections from the table, or why it must dump instead.
    /// `counters`: where the kernel's totals are read; `fresh`: states whose figures
    /// are wanted fresh; `listeners`: how many the round's listener dump found; `held`:
    /// the sockets the table's processes hold now, by cookie (those need no lookup).
    pub fn records(
        &mut self,
        socket: &mut DiagSocket,
        counters: &mut sysctl::CounterFiles,
        fresh: &[bool; STATE_COUNT],
        listeners: usize,
        held: &HashMap<u64, HeldSocket>,
    ) -> Result<TableRound, DumpError> {
        if let Some(why) = self.must_dump() {
            return Ok(TableRound::Dump(why));
        }
        let Some(table) = &mut self.table else {
            return Ok(TableRound::Dump(DumpReason::First)); // must_dump said so
        };
        let (asked, from_held) = match table.plan(fresh, held) {
            LookupPlan::Lookups { asked, held } => (asked, held),
            LookupPlan::Dump => return Ok(TableRound::Dump(DumpReason::Mismatch)),
        };
        let mut found = Vec::with_capacity(asked.len());
        socket.lookup_many(&asked, false, &mut |record| found.push(*record))?;
        table.take_lookups(&asked, found);
        let refreshed = Refreshed {
            lookups: asked.len(),
            held: from_held,
        };
        // Read after the lookups: a socket opened since shows as a surplus, never hides.
        let Ok(totals) = counters.socket_totals() else {
            return Ok(TableRound::Dump(DumpReason::Mismatch));
        };
        let counted = (totals.in_hash + totals.time_wait).saturating_sub(listeners as u64);
        if counted > table.counted_by_kernel() as u64 {
            tracing::debug!(
                kernel = counted,
                table = table.counted_by_kernel(),
                "the kernel counts more sockets than the followed table"
            );
            return Ok(TableRound::Stale);
        }
        if counted < table.counted_by_kernel() as u64 {
            let marked = table.check_passing_states();
            tracing::debug!(
                kernel = counted,
                table = table.counted_by_kernel(),
                marked,
                "the kernel counts fewer sockets than the followed table"
            );
        }
        let records = table.records().copied().collect();
        Ok(TableRound::Served(records, refreshed))
    }

    /// The processes holding the table's sockets in a `fresh` state (those whose
    /// figures a round refreshes): the one whose descriptors showed a socket last round,
    /// else the one attribution knows (a lookup in its index of every socket on the
    /// host, so only for sockets not read from a holder last round).
    fn holders(&self, attribution: &Attribution, fresh: &[bool; STATE_COUNT]) -> Vec<u32> {
        let Some(table) = &self.table else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = table
            .records()
            .filter(|r| r.inode != 0 && fresh[r.state.index()])
            .filter_map(|r| match r.held_by {
                0 => attribution.holder_of(r.inode).map(|(pid, _)| pid),
                pid => Some(pid),
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// A full dump's connections: the table starts again from them.
    pub fn dumped(&mut self, records: &[SocketRecord]) {
        self.table = Some(SocketTable::from_dump(records));
        self.last_dump = Instant::now();
    }
}

impl Sampler {
    /// Starts (`Some(reconcile period)`) or stops following the namespace between full
    /// dumps. Start only once the kernel sends every transition of the namespace: the
    /// first round after dumps, and the table grows from the events after it.
    pub fn follow(&mut self, period: Option<Duration>) {
        match (period, &mut self.following) {
            (Some(period), Some(following)) => following.set_period(period),
            (Some(period), None) => self.following = Some(Following::new(period)),
            (None, _) => self.following = None,
        }
    }

    /// The namespace's following, while it is followed.
    pub fn following_mut(&mut self) -> Option<&mut Following> {
        self.following.as_mut()
    }

    /// The namespace's state changes: CLOSE_WAIT entries and departures for the
    /// tracker, every change for the followed table.
    pub fn apply_transitions(&mut self, changes: &[StateTransition]) {
        let close_waits: Vec<CloseWaitEvent> = changes
            .iter()
            .filter_map(StateTransition::close_wait_event)
            .collect();
        self.apply_events(&close_waits);
        if let Some(following) = &mut self.following {
            following.apply(changes);
        }
    }

    /// A followed namespace's connections for this round (`None`: not followed). When
    /// the table looks stale, the events queued since the round began are applied
    /// (`refresh`) and the table asked once more before it is given up for a dump.
    /// The sockets whose figures must be fresh are read from their holders' descriptors
    /// where attribution knows the holders (one BPF iterator pass per process), and
    /// looked up otherwise.
    pub(super) fn read_table(
        &mut self,
        attribution: &mut Attribution,
        refresh: Refresh,
    ) -> Result<Option<FromTable>, DumpError> {
        let mut fresh = self.detail_mask;
        fresh[TcpState::CloseWait.index()] = true;
        let listeners = self.listeners.len();
        let Some(following) = &mut self.following else {
            return Ok(None);
        };
        // Read the holders' descriptors only for a round the table may serve.
        let walked = match following.must_dump() {
            Some(_) => None,
            None => attribution.held_sockets(&following.holders(attribution, &fresh)),
        };
        let walk_ran = walked.is_some();
        let held = walked.unwrap_or_default();
        let mut refreshed_once = false;
        let round = loop {
            let Some(following) = &mut self.following else {
                break TableRound::Stale;
            };
            let files = &mut self.counter_files;
            let round = following.records(&mut self.socket, files, &fresh, listeners, &held)?;
            if round != TableRound::Stale || refreshed_once {
                break round;
            }
            refreshed_once = true;
            let changes = refresh();
            self.apply_transitions(&changes);
        };
        // A socket in a fresh state not read from a holder (`held_by` 0) after a walk
        // that ran was looked up: its holder's descriptors no longer show it (handed to
        // another process over SCM_RIGHTS and closed here, or closed), or no holder was
        // known (then it has no index entry to check). Its owner comes from the index,
        // which still names the old holder and trusts it: it re-reads a descriptor only
        // for a socket first asked for after a round without, and the per-socket view
        // asks for every socket's owner every round. So its descriptor is checked when
        // next asked for (one link read each, for the few sockets a walk misses): a
        // socket handed over is found at its new holder, and read through that one's
        // descriptors from the next round on.
        if let (true, TableRound::Served(records, _)) = (walk_ran, &round) {
            let missed = records
                .iter()
                .filter(|r| r.held_by == 0 && r.inode != 0 && fresh[r.state.index()]);
            for record in missed {
                attribution.recheck(record.inode);
            }
        }
        Ok(Some(match round {
            TableRound::Served(records, refreshed) => Ok((records, refreshed)),
            TableRound::Dump(why) => Err(why),
            TableRound::Stale => Err(DumpReason::Mismatch),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_followable_on_the_shared_hash_and_small_enough() {
        let most = MAX_FOLLOWED_SOCKETS as u64;
        assert_eq!(EstablishedHash::of(Some(256.0), 10), EstablishedHash::Own);
        assert_eq!(
            EstablishedHash::of(Some(256.0), most + 1),
            EstablishedHash::Own
        );
        for shared in [Some(-262144.0), None] {
            assert_eq!(
                EstablishedHash::of(shared, most),
                EstablishedHash::SharedFollowable
            );
            assert_eq!(
                EstablishedHash::of(shared, most + 1),
                EstablishedHash::SharedTooLarge
            );
        }
    }

    /// A table is dumped first, then served until the reconcile period is due and the
    /// round allows a reconciliation; lost events start it over.
    #[test]
    fn dumps_first_then_by_period_when_allowed() {
        let mut following = Following::new(Duration::ZERO);
        assert_eq!(following.must_dump(), Some(DumpReason::First));
        following.dumped(&[]);
        assert_eq!(
            following.must_dump(),
            None,
            "due, but not allowed this round"
        );
        following.may_reconcile = true;
        assert_eq!(following.must_dump(), Some(DumpReason::Period));
        following.distrust();
        assert_eq!(following.must_dump(), Some(DumpReason::First));
    }
}
