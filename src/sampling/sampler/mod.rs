//! One sample of one network namespace, in four phases: read the listeners, read every
//! other socket (classifying, attributing from the cache and tracking CLOSE_WAIT as the
//! dump streams by), attribute what the cache did not know, and date new CLOSE_WAITs.
//!
//! Listeners are dumped first (a walk of the listening hash only) because classifying a
//! connection needs the namespace's full set of listening ports, and accept-queue
//! children belong to their listener's process. The second dump walks the established
//! hash once for both families; memory grows only with sockets in the detail states
//! whose owner is not cached yet, never with the rest of the table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::config::Settings;
use crate::kernel::owners::ResolveStats;
use crate::kernel::record::{STATE_COUNT, SocketRecord, TcpState};
use crate::kernel::sockdiag::{DiagSocket, DumpError, DumpRequest, DumpStats};
use crate::kernel::sysctl;
use crate::model::ages::{CloseWaitEvent, CloseWaitTracker};
use crate::model::aggregate::{GroupKey, ListenerKey, SampleBuilder};
use crate::model::classify::{Classifier, ListeningPorts};
use crate::model::fds::{self, ProcessFds};
use crate::model::labels::{AgeGroup, Direction, OwnerKey, PortLabel};
use crate::model::sample::{Sample, SampleContext};
use crate::model::socket_table::StateTransition;
use crate::model::sockets::{SocketAge, SocketBudget, SocketCollector, SocketList};
use crate::model::top::{PidCounts, TOP_PEERS};
use crate::sampling::attribution::{Attribution, QueueHolder, accept_queue_owners};
use crate::sampling::connections::{AfterDump, ConnectionSink, PendingConnection};
mod dating;
pub mod following;
mod table_source;

pub use dating::dates_by_lookups;

use following::{FollowedRound, Following};

/// Fetches the namespace's state changes queued since the round began.
pub type Refresh<'a> = &'a mut dyn FnMut() -> Vec<StateTransition>;

/// What one sample produced besides the aggregate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleReport {
    pub dump: DumpStats,
    pub owners: ResolveStats,
    /// Sockets waiting for attribution after the dump.
    pub pending: usize,
    /// How a namespace followed by events was read (`None`: not followed). One
    /// namespace's: `add` leaves it out (rounds count it in `Round::followed`).
    pub followed: Option<FollowedRound>,
}

impl SampleReport {
    /// Adds another sample's report (of another namespace, or another dump).
    pub fn add(&mut self, other: SampleReport) {
        self.dump.add(other.dump);
        self.owners.add(other.owners);
        self.pending += other.pending;
    }
}

/// Samples the namespace its netlink socket was opened in, and owns what is kept between
/// samples there: the socket and the CLOSE_WAIT tracker.
pub struct Sampler {
    socket: DiagSocket,
    /// The walk of every state but LISTEN: a BPF iterator pass where it can be used.
    table: table_source::TableSource,
    detail_mask: [bool; STATE_COUNT],
    max_groups: usize,
    tracker: CloseWaitTracker,
    listening: ListeningPorts,
    listeners: Vec<SocketRecord>,
    /// Owner of the first listener on each port, from the last sample: events are
    /// classified with it, and accepted sockets looked for in its process first.
    listener_owner: HashMap<u16, (OwnerKey, u32)>,
    /// Owner of the connections in each port's accept queues (`accept_queue_owners`).
    queue_owner: HashMap<u16, (OwnerKey, u32)>,
    ephemeral: std::ops::RangeInclusive<u16>,
    warned_port_range: bool,
    // The namespace's /proc files read every round: kept open, in the namespace.
    settings_files: sysctl::TcpSettingsFiles,
    counter_files: sysctl::CounterFiles,
    /// Count CLOSE_WAIT sockets per pid (`Settings::close_wait_pids`).
    count_pids: bool,
    /// Top peers kept per outbound CLOSE_WAIT group: what the page and `snapshot` show,
    /// or more when the peer series ask for more.
    peers_kept: usize,
    /// Set while the namespace is followed through kernel events between full dumps.
    following: Option<Following>,
}

impl Sampler {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn new(settings: &Settings) -> std::io::Result<Self> {
        let mut detail_mask = [false; STATE_COUNT];
        for state in &settings.detail_states {
            detail_mask[state.index()] = true;
        }
        Ok(Sampler {
            socket: DiagSocket::open()?,
            table: table_source::TableSource::new(settings),
            detail_mask,
            max_groups: settings.max_groups,
            tracker: CloseWaitTracker::new(
                settings.duration_buckets.clone(),
                settings.max_tracked_sockets,
                settings.max_groups,
                settings.stuck_after.as_secs_f64(),
            ),
            listening: ListeningPorts::default(),
            listeners: Vec::new(),
            listener_owner: HashMap::new(),
            queue_owner: HashMap::new(),
            ephemeral: sysctl::DEFAULT_EPHEMERAL_RANGE,
            settings_files: sysctl::TcpSettingsFiles::default(),
            counter_files: sysctl::CounterFiles::default(),
            warned_port_range: false,
            count_pids: settings.close_wait_pids,
            peers_kept: TOP_PEERS.max(settings.peers_per_group),
            following: None,
        })
    }

    /// As `new`, in a namespace the calling thread entered only to open the socket:
    /// its walks stay on sock_diag, since an iterator walks the creating thread's
    /// namespace and each would cost a program load of its own.
    pub fn new_entered(settings: &Settings) -> std::io::Result<Self> {
        let sampler = Self::new(settings)?;
        Ok(Sampler {
            table: table_source::TableSource::sock_diag_only(),
            ..sampler
        })
    }

    /// Kernel events for this namespace, applied before the next sample's dump: the
    /// tracker gets exact entry and departure times. An event's group is guessed from
    /// its ports with the last sample's listeners; a dump's sighting replaces it.
    pub fn apply_events(&mut self, events: &[CloseWaitEvent]) {
        let classifier = Classifier {
            listening: &self.listening,
            ephemeral: self.ephemeral.clone(),
        };
        for event in events {
            let (direction, port) = classifier.classify(event.local_port, event.remote_port);
            let owner = match direction {
                Direction::Inbound => self
                    .listener_owner
                    .get(&event.local_port)
                    .map(|(owner, _)| *owner)
                    .unwrap_or_default(),
                Direction::Outbound => OwnerKey::default(),
            };
            let guess = AgeGroup {
                direction,
                port: PortLabel::Port(port),
                owner,
            };
            self.tracker.apply_event(event, guess);
        }
    }

    #[cfg(test)]
    pub(crate) fn inject_failure(&mut self, error: DumpError) {
        self.socket.inject = Some(error);
    }

    /// Applies reloaded settings that need no new state: detail states and folding.
    pub fn reconfigure(&mut self, settings: &Settings) {
        self.detail_mask = [false; STATE_COUNT];
        for state in &settings.detail_states {
            self.detail_mask[state.index()] = true;
        }
        self.max_groups = settings.max_groups;
        self.peers_kept = TOP_PEERS.max(settings.peers_per_group);
    }

    /// One sample; `attribution` is shared with the other namespaces' samplers (call its
    /// `revalidate` once per round, not per namespace). `budget`: how many sockets the
    /// per-socket view may still keep this round.
    pub fn sample(
        &mut self,
        attribution: &mut Attribution,
        budget: SocketBudget,
    ) -> Result<(Sample, SampleReport), DumpError> {
        self.sample_with_refresh(attribution, budget, &mut Vec::new)
    }

    /// `sample`, for a namespace set that can fetch the events queued since its round
    /// began (`refresh`: this namespace's), which a followed namespace asks for before
    /// it concludes that its table lacks sockets.
    pub fn sample_with_refresh(
        &mut self,
        attribution: &mut Attribution,
        budget: SocketBudget,
        refresh: Refresh,
    ) -> Result<(Sample, SampleReport), DumpError> {
        let mut report = SampleReport::default();
        let mut builder = SampleBuilder::default();
        self.tracker.begin(unix_now());
        self.read_listeners(attribution, &mut builder, &mut report)?;
        let mut left =
            self.read_connections(attribution, &mut builder, &mut report, budget, refresh)?;
        let pending = std::mem::take(&mut left.pending);
        self.attribute_pending(attribution, pending, &mut builder, &mut left, &mut report);
        let fds = fds::per_program(attribution.finish_owner_tally(), self.max_groups);
        let walked = builder.sockets_seen();
        self.date_close_waits(attribution, &left.new_close_wait, walked)?;
        report.owners.fds_read += attribution.take_validation_reads();
        let sockets = self.describe_sockets(attribution, std::mem::take(&mut left.sockets));
        let sample = self.assemble(builder, attribution, left, sockets, fds);
        Ok((sample, report))
    }

    /// Phase 1: the listeners. Their ports classify connections, their owners own the
    /// accept queues.
    fn read_listeners(
        &mut self,
        attribution: &mut Attribution,
        builder: &mut SampleBuilder,
        report: &mut SampleReport,
    ) -> Result<(), DumpError> {
        self.listening.clear();
        self.listeners.clear();
        self.listener_owner.clear();
        let (listeners, listening) = (&mut self.listeners, &mut self.listening);
        let stats = self.socket.dump(
            DumpRequest::for_states([TcpState::Listen], false),
            &mut |record| {
                listening.insert(record.local_port);
                listeners.push(*record);
            },
        )?;
        report.dump.add(stats);
        let inodes: HashSet<u32> = self.listeners.iter().map(|l| l.inode).collect();
        report.owners = attribution.resolve(&inodes, &[]);
        let mut holders = Vec::with_capacity(self.listeners.len());
        for listener in &self.listeners {
            builder.count_state(TcpState::Listen);
            let (owner, pid) = attribution.owner_of(listener.inode);
            self.listener_owner
                .entry(listener.local_port)
                .or_insert((owner, pid));
            holders.push(QueueHolder {
                port: listener.local_port,
                owner,
                pid,
                queue_length: listener.recv_queue,
            });
            let key = ListenerKey {
                port: PortLabel::Port(listener.local_port),
                owner,
            };
            builder.add_listener(key, listener);
        }
        self.queue_owner = accept_queue_owners(&holders);
        Ok(())
    }

    /// Phase 2: every other socket, in one walk.
    fn read_connections(
        &mut self,
        attribution: &mut Attribution,
        builder: &mut SampleBuilder,
        report: &mut SampleReport,
        budget: SocketBudget,
        refresh: Refresh,
    ) -> Result<AfterDump, DumpError> {
        self.ephemeral = self.ephemeral_range();
        let from_table = self.read_table(attribution, refresh)?;
        attribution.begin_owner_tally();
        let mut sink = ConnectionSink {
            classifier: Classifier {
                listening: &self.listening,
                ephemeral: self.ephemeral.clone(),
            },
            queue_owner: &self.queue_owner,
            detail_mask: self.detail_mask,
            attribution,
            tracker: &mut self.tracker,
            builder,
            left: AfterDump {
                pids: self.count_pids.then(PidCounts::new),
                sockets: SocketCollector::new(budget),
                ..AfterDump::default()
            },
            batch: Vec::new(),
        };
        match from_table {
            Some(Ok((records, refreshed))) => {
                report.followed = Some(FollowedRound::FromTable(refreshed));
                for record in &records {
                    sink.take(record);
                }
            }
            Some(Err(why)) => {
                report.followed = Some(FollowedRound::Dumped(why));
                let mut kept = Vec::new();
                let stats = self.table.connections(&mut self.socket, &mut |record| {
                    kept.push(*record);
                    sink.take(record)
                })?;
                report.dump.add(stats);
                if let Some(following) = &mut self.following {
                    following.dumped(&kept);
                }
            }
            None => {
                let stats = self
                    .table
                    .connections(&mut self.socket, &mut |record| sink.take(record))?;
                report.dump.add(stats);
            }
        }
        Ok(sink.finish())
    }

    /// Phase 3: owners the cache did not know, looked for in likely processes first.
    fn attribute_pending(
        &self,
        attribution: &mut Attribution,
        pending: Vec<PendingConnection>,
        builder: &mut SampleBuilder,
        left: &mut AfterDump,
        report: &mut SampleReport,
    ) {
        report.pending = pending.len();
        let wanted: HashSet<u32> = pending.iter().map(|p| p.inode).collect();
        let likely = likely_owner_pids(&pending, &self.listener_owner);
        report.owners.add(attribution.resolve(&wanted, &likely));
        for connection in pending {
            let (owner, pid) = attribution.owner_of(connection.inode);
            let key = GroupKey {
                owner,
                ..connection.key
            };
            if key.state == TcpState::CloseWait {
                attribution.watch_close_wait_owner(pid, connection.inode);
                left.count_close_wait(key.close_wait_group(), pid, connection.peer);
            }
            builder.add_connection(key, connection.facts);
        }
    }

    /// Phase 4: owners of tracked CLOSE_WAIT sockets resolved after the dump, and entry
    /// times of the new ones.
    fn date_close_waits(
        &mut self,
        attribution: &mut Attribution,
        new_close_wait: &[SocketRecord],
        walked: u64,
    ) -> Result<(), DumpError> {
        self.tracker.assign_owners(|inode, group| {
            if inode == 0 || group.owner != OwnerKey::default() {
                return group;
            }
            match attribution.cached_owner(inode) {
                Some((owner, _)) => AgeGroup { owner, ..group },
                None => group,
            }
        });
        let source = (&mut self.socket, &mut self.table);
        dating::refine_entry_times(source, &mut self.tracker, new_close_wait, walked)
    }

    /// Phase 5: the per-socket view gets what the dump did not know: owners resolved
    /// after it, the holder's pid and descriptor, CLOSE_WAIT ages. Only cache lookups.
    fn describe_sockets(
        &self,
        attribution: &mut Attribution,
        mut sockets: SocketCollector,
    ) -> SocketList {
        for view in sockets.sockets_mut() {
            let (inode, cookie) = (view.record.inode, view.record.cookie);
            if !view.unaccepted && inode != 0 {
                view.owner = attribution.owner_of(inode).0;
                view.holder = attribution.holder_of(inode);
            }
            if view.state() == TcpState::CloseWait {
                view.age = self
                    .tracker
                    .age_of(cookie)
                    .map(|(seconds, exact)| SocketAge { seconds, exact });
            }
        }
        sockets.finish()
    }

    /// The sample: the folded aggregate, the tracker's ages, the namespace's settings.
    fn assemble(
        &mut self,
        builder: SampleBuilder,
        attribution: &Attribution,
        left: AfterDump,
        sockets: SocketList,
        process_fds: Vec<(OwnerKey, ProcessFds)>,
    ) -> Sample {
        let ages = self.tracker.finish();
        let context = SampleContext {
            processes: attribution.process_names(),
            close_wait_tracked: self.tracker.tracked() as u64,
            tcp_settings: self.settings_files.read(),
            listen_counters: self.counter_files.listen_counters().ok(),
            close_wait_pids: left.pids,
            close_wait_peers: left.peers,
            peers_kept: self.peers_kept,
            sockets,
            process_fds,
        };
        Sample::assemble(builder.finish(self.max_groups), ages, context)
    }

    fn ephemeral_range(&mut self) -> std::ops::RangeInclusive<u16> {
        match self.settings_files.ephemeral_port_range() {
            Ok(range) => range,
            Err(e) => {
                if !self.warned_port_range {
                    tracing::warn!(error = %e, "using the default ephemeral port range");
                    self.warned_port_range = true;
                }
                sysctl::DEFAULT_EPHEMERAL_RANGE
            }
        }
    }
}

/// Pids of the listeners on the ports of pending inbound connections: where an accepted
/// socket most likely lives.
fn likely_owner_pids(
    pending: &[PendingConnection],
    listener_owner: &HashMap<u16, (OwnerKey, u32)>,
) -> Vec<u32> {
    let mut pids: Vec<u32> = pending
        .iter()
        .filter(|p| p.key.direction == Direction::Inbound)
        .filter_map(|p| match p.key.port {
            PortLabel::Port(port) => listener_owner.get(&port).map(|(_, pid)| *pid),
            PortLabel::Other => None,
        })
        .filter(|pid| *pid != 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
