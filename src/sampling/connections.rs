//! The connections dump's sink: each socket as the dump streams it is counted,
//! classified, given its owner from the cache, tracked if in CLOSE_WAIT, added to its
//! group and kept in the per-socket view. What the cache did not know waits for the
//! phases after the dump.

use std::net::SocketAddr;

use foldhash::HashMap;

use crate::kernel::record::{STATE_COUNT, SocketRecord, TcpState};
use crate::model::ages::{CloseWaitFacts, CloseWaitTracker};
use crate::model::aggregate::{ConnectionFacts, GroupKey, SampleBuilder};
use crate::model::classify::Classifier;
use crate::model::labels::{AgeGroup, Direction, OwnerKey, PortLabel};
use crate::model::sockets::{SocketCollector, SocketView};
use crate::model::top::{PeerCounts, PidCounts};
use crate::sampling::attribution::Attribution;

/// A detail-state connection whose owner was unknown when the dump reached it.
pub(super) struct PendingConnection {
    pub(super) key: GroupKey,
    pub(super) facts: ConnectionFacts,
    pub(super) inode: u32,
    /// Outbound CLOSE_WAIT: the peer, counted once the owner is known.
    pub(super) peer: Option<SocketAddr>,
}

/// What the connections dump leaves for the phases after it.
#[derive(Default)]
pub(super) struct AfterDump {
    pub(super) pending: Vec<PendingConnection>,
    pub(super) new_close_wait: Vec<SocketRecord>,
    /// CLOSE_WAIT sockets per owning pid, when collected (`snapshot`).
    pub(super) pids: Option<PidCounts>,
    /// The per-socket view, owners and ages still to fill in.
    pub(super) sockets: SocketCollector,
    /// Outbound CLOSE_WAIT sockets per peer.
    pub(super) peers: PeerCounts,
}

impl AfterDump {
    /// A detail-state CLOSE_WAIT connection whose owner is known: its pid (when pids
    /// are collected) and, outbound, its peer are counted for its group.
    pub(super) fn count_close_wait(&mut self, group: AgeGroup, pid: u32, peer: Option<SocketAddr>) {
        if let (Some(pids), true) = (&mut self.pids, pid != 0) {
            pids.add(group, pid);
        }
        if let Some(peer) = peer {
            self.peers.add(group, peer);
        }
    }
}

/// Connections taken in batches of this many: the owner index entries of a batch are
/// fetched together first (`Attribution::warm_owners`).
const BATCH: usize = 64;

/// Takes each connection as the dump streams it: counts its state, classifies it, finds
/// its owner in the cache, tracks it if in CLOSE_WAIT, and adds it to its group.
/// Connections wait in a batch of `BATCH`; `finish` takes the last ones.
pub(super) struct ConnectionSink<'a> {
    pub(super) classifier: Classifier<'a>,
    pub(super) queue_owner: &'a HashMap<u16, (OwnerKey, u32)>,
    pub(super) detail_mask: [bool; STATE_COUNT],
    pub(super) attribution: &'a mut Attribution,
    pub(super) tracker: &'a mut CloseWaitTracker,
    pub(super) builder: &'a mut SampleBuilder,
    pub(super) left: AfterDump,
    pub(super) batch: Vec<SocketRecord>,
}

impl ConnectionSink<'_> {
    pub(super) fn take(&mut self, record: &SocketRecord) {
        self.batch.push(*record);
        if self.batch.len() >= BATCH {
            self.take_batch();
        }
    }

    /// Takes the connections still waiting; what the phases after the dump need.
    pub(super) fn finish(mut self) -> AfterDump {
        self.take_batch();
        self.left
    }

    /// The owner index covers every socket of the host, so each lookup in it is a cache
    /// miss, and taken one connection at a time they come one after the other. Asked
    /// for a whole batch first, in a loop that does nothing else, the misses overlap.
    fn take_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let warmed = batch
            .iter()
            .filter(|r| r.held_by == 0 && r.inode != 0 && self.takes_one_by_one(r.state));
        self.attribution.warm_owners(warmed.map(|r| r.inode));
        for record in &batch {
            self.take_one(record);
        }
        self.batch = batch;
        self.batch.clear();
    }

    /// Sockets in a detail state, and in CLOSE_WAIT whatever the detail states, are taken
    /// one by one (classified, owned, grouped or tracked); the others are only counted.
    fn takes_one_by_one(&self, state: TcpState) -> bool {
        state == TcpState::CloseWait || self.detail_mask[state.index()]
    }

    fn take_one(&mut self, record: &SocketRecord) {
        // The listening hash was read by the first dump; a listener created between the
        // dumps must not be counted twice.
        if record.state == TcpState::Listen {
            return;
        }
        self.builder.count_state(record.state);
        if !self.takes_one_by_one(record.state) {
            return;
        }
        let is_close_wait = record.state == TcpState::CloseWait;
        let detailed = self.detail_mask[record.state.index()];
        let (direction, port) = self
            .classifier
            .classify(record.local_port, record.remote_port);
        let unaccepted = record.unowned()
            && self.classifier.listening.contains(record.local_port)
            && matches!(record.state, TcpState::Established | TcpState::CloseWait);
        if is_close_wait && !self.tracker.knows(record.cookie) {
            // Entering CLOSE_WAIT: the socket may have changed hands while in another
            // state, where its owner was trusted.
            self.attribution.recheck(record.inode);
        }
        let owner = self.cached_owner(record, unaccepted);
        let mut view = SocketView::of(record, direction, port, unaccepted);
        if let (true, Some((key, pid))) = (unaccepted, owner) {
            view.owner = key;
            self.attribution.note_owner(pid, key);
        }
        self.left.sockets.add(view);
        if let (true, Some((_, pid))) = (is_close_wait, owner) {
            self.attribution.watch_close_wait_owner(pid, record.inode);
        }
        let key = GroupKey {
            state: record.state,
            direction,
            port: PortLabel::Port(port),
            owner: owner.map(|(owner, _)| owner).unwrap_or_default(),
        };
        let facts = CloseWaitFacts {
            eof_read: record.eof_read(),
            unaccepted,
        };
        if is_close_wait
            && self
                .tracker
                .sight(record.cookie, record.inode, key.close_wait_group(), facts)
        {
            self.left.new_close_wait.push(*record);
        }
        if !detailed {
            return;
        }
        let peer = (is_close_wait && direction == Direction::Outbound)
            .then(|| SocketAddr::new(record.remote_addr, record.remote_port));
        if let (true, Some((_, pid))) = (is_close_wait, owner) {
            self.left
                .count_close_wait(key.close_wait_group(), pid, peer);
        }
        let facts = ConnectionFacts::of(record, unaccepted);
        match owner {
            Some(_) => self.builder.add_connection(key, facts),
            None => self.left.pending.push(PendingConnection {
                key,
                facts,
                inode: record.inode,
                peer,
            }),
        }
    }

    /// The owner as known during the dump: the program of the listener whose queue holds
    /// an accept-queue child, none for an orphan, else the cache's (`None`: resolve after
    /// the dump).
    fn cached_owner(&mut self, record: &SocketRecord, unaccepted: bool) -> Option<(OwnerKey, u32)> {
        if unaccepted {
            let owner = self.queue_owner.get(&record.local_port);
            return Some(owner.copied().unwrap_or_default());
        }
        if record.inode == 0 {
            return Some((OwnerKey::default(), 0));
        }
        self.attribution.cached_owner_of(record)
    }
}
