//! One sample of one network namespace: dump listeners, then every other socket, and
//! stream each through classification, attribution and tracking into the aggregate.
//!
//! Listeners are dumped first (a walk of the listening hash only) because classifying a
//! connection needs the namespace's full set of listening ports, and accept-queue
//! children belong to their listener's process. The second dump walks the established
//! hash once for both families; memory grows only with sockets in the detail states
//! whose owner is not cached yet, never with the rest of the table.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::config::{NamespaceMode, Settings};
use crate::kernel::owners::{OwnerCache, ResolveStats};
use crate::kernel::pods::ContainerDirectory;
use crate::kernel::record::{STATE_COUNT, SocketRecord, TcpState};
use crate::kernel::sockdiag::{DiagSocket, DumpError, DumpRequest, DumpStats};
use crate::kernel::sysctl;
use crate::model::ages::{AgeGroup, AgesReport, CloseWaitEvent, CloseWaitTracker};
use crate::model::aggregate::{
    ConnectionFacts, GroupKey, ListenerKey, OwnerKey, PortLabel, ProcessId, Sample, SampleBuilder,
};
use crate::model::classify::{Classifier, Direction, ListeningPorts};

/// Up to this many newly seen CLOSE_WAIT sockets get their tcp_info by one lookup each;
/// more (a first sample, a burst) cost one CLOSE_WAIT dump with tcp_info instead.
const MAX_SINGLE_LOOKUPS: usize = 256;

/// What one sample produced besides the aggregate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleReport {
    pub dump: DumpStats,
    pub owners: ResolveStats,
    /// Sockets waiting for attribution after the dump.
    pub pending: usize,
}

/// A detail-state connection whose owner was unknown when the dump reached it.
struct PendingConnection {
    key: GroupKey,
    facts: ConnectionFacts,
    inode: u32,
}

/// Process names seen since start, interned: ids stay valid across samples because
/// the histograms keep them.
#[derive(Default)]
pub struct ProcessNames {
    ids: HashMap<Arc<str>, ProcessId>,
    names: Vec<String>,
}

impl ProcessNames {
    fn new() -> Self {
        ProcessNames {
            ids: HashMap::new(),
            names: vec![String::new()],
        }
    }

    fn intern(&mut self, comm: &Arc<str>) -> ProcessId {
        if comm.is_empty() {
            return ProcessId::UNKNOWN;
        }
        if let Some(id) = self.ids.get(comm) {
            return *id;
        }
        let id = ProcessId(self.names.len() as u32);
        self.names.push(comm.to_string());
        self.ids.insert(comm.clone(), id);
        id
    }
}

/// Attribution state shared by the samplers of every namespace: /proc and socket inodes
/// are host-wide, so one cache serves them all.
pub struct Attribution {
    owners: Option<OwnerCache>,
    keys: OwnerKeys,
}

/// Turns an owner into its label key: interned process name, pid when configured, and
/// the Kubernetes container (with `namespaces = "all"`). Keys are memoized per pid for
/// the round, so a socket costs two hash lookups by integer, not a string hash and an
/// `Arc` clone.
struct OwnerKeys {
    names: ProcessNames,
    pid_label: bool,
    containers: Option<ContainerDirectory>,
    /// Label key per owner pid, for this round (cleared by `Attribution::revalidate`:
    /// a process may rename itself or change container between rounds).
    key_of_pid: HashMap<u32, OwnerKey>,
}

impl OwnerKeys {
    /// The key and pid of the owner of `inode`, when the cache knows it.
    fn key_of(&mut self, cache: &OwnerCache, inode: u32) -> Option<(OwnerKey, u32)> {
        let pid = cache.owner_pid(inode)?;
        if let Some(key) = self.key_of_pid.get(&pid) {
            return Some((*key, pid));
        }
        let owner = cache.lookup(inode)?;
        let container = match &self.containers {
            None => ProcessId::UNKNOWN,
            Some(directory) => {
                let name: Arc<str> = directory
                    .container_of(Path::new("/proc"), pid)
                    .unwrap_or_default()
                    .into();
                self.names.intern(&name)
            }
        };
        let key = OwnerKey {
            process: self.names.intern(&owner.comm),
            pid: if self.pid_label { pid } else { 0 },
            container,
        };
        self.key_of_pid.insert(pid, key);
        Some((key, pid))
    }
}

impl Attribution {
    pub fn new(settings: &Settings) -> Self {
        Attribution {
            owners: settings
                .process_attribution
                .then(|| OwnerCache::new("/proc")),
            keys: OwnerKeys {
                names: ProcessNames::new(),
                pid_label: settings.pid_label,
                containers: (settings.namespaces == NamespaceMode::All)
                    .then(|| ContainerDirectory::new(&settings.containers_log_dir)),
                key_of_pid: HashMap::new(),
            },
        }
    }

    /// Drops processes that exited since the last sample, and re-reads the container
    /// names; once per sampling round.
    pub fn revalidate(&mut self) {
        if let Some(owners) = &mut self.owners {
            owners.revalidate();
        }
        if let Some(containers) = &mut self.keys.containers {
            containers.refresh();
        }
        self.keys.key_of_pid.clear();
    }

    /// Owner of an inode as a label key, and its pid (0 when unknown).
    fn owner_of(&mut self, inode: u32) -> (OwnerKey, u32) {
        let keys = &mut self.keys;
        self.owners
            .as_ref()
            .and_then(|cache| keys.key_of(cache, inode))
            .unwrap_or_default()
    }
}

/// Samples the namespace its netlink socket was opened in, and owns what is kept between
/// samples there: the socket and the CLOSE_WAIT tracker.
pub struct Sampler {
    socket: DiagSocket,
    detail_mask: [bool; STATE_COUNT],
    max_groups: usize,
    tracker: CloseWaitTracker,
    listening: ListeningPorts,
    listeners: Vec<SocketRecord>,
    /// Owner of the first listener on each port, from the last sample: accept-queue
    /// children belong to it, and events are classified with it.
    listener_owner: HashMap<u16, (OwnerKey, u32)>,
    ephemeral: std::ops::RangeInclusive<u16>,
    warned_port_range: bool,
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
            detail_mask,
            max_groups: settings.max_groups,
            tracker: CloseWaitTracker::new(
                settings.duration_buckets.clone(),
                settings.max_tracked_sockets,
                settings.max_groups,
            ),
            listening: ListeningPorts::default(),
            listeners: Vec::new(),
            listener_owner: HashMap::new(),
            ephemeral: sysctl::DEFAULT_EPHEMERAL_RANGE,
            warned_port_range: false,
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
    }

    /// One sample; `attribution` is shared with the other namespaces' samplers (call its
    /// `revalidate` once per round, not per namespace).
    pub fn sample(
        &mut self,
        attribution: &mut Attribution,
    ) -> Result<(Sample, SampleReport), DumpError> {
        let ephemeral = self.ephemeral_range();
        let now = unix_now();
        let mut report = SampleReport::default();
        let mut builder = SampleBuilder::default();
        self.tracker.begin(now);

        // Listeners first: their ports classify connections, their owners own the
        // accept queues.
        self.listening.clear();
        self.listeners.clear();
        let (listeners, listening) = (&mut self.listeners, &mut self.listening);
        let stats = self.socket.dump(
            DumpRequest::for_states([TcpState::Listen], false),
            &mut |record| {
                listening.insert(record.local_port);
                listeners.push(*record);
            },
        )?;
        accumulate(&mut report.dump, stats);
        if let Some(owners) = &mut attribution.owners {
            let inodes: HashSet<u32> = self.listeners.iter().map(|l| l.inode).collect();
            report.owners = owners.resolve(&inodes, &[]);
        }
        let mut listener_owner = std::mem::take(&mut self.listener_owner);
        listener_owner.clear();
        let listeners = std::mem::take(&mut self.listeners);
        for listener in &listeners {
            builder.count_state(TcpState::Listen);
            let (owner, pid) = attribution.owner_of(listener.inode);
            listener_owner
                .entry(listener.local_port)
                .or_insert((owner, pid));
            let key = ListenerKey {
                port: PortLabel::Port(listener.local_port),
                owner,
            };
            builder.add_listener(key, listener);
        }
        self.listeners = listeners;

        // Everything else, in one walk.
        self.ephemeral = ephemeral.clone();
        let classifier = Classifier {
            listening: &self.listening,
            ephemeral,
        };
        let mut pending: Vec<PendingConnection> = Vec::new();
        let mut new_close_wait: Vec<SocketRecord> = Vec::new();
        let detail_mask = self.detail_mask;
        let owners = attribution.owners.as_ref();
        let tracker = &mut self.tracker;
        let keys = &mut attribution.keys;
        let all_but_listen = TcpState::ALL.into_iter().filter(|s| *s != TcpState::Listen);
        let stats = self.socket.dump(
            DumpRequest::for_states(all_but_listen, false),
            &mut |record| {
                // The listening hash was read by the first dump; a listener created
                // between the dumps must not be counted twice.
                if record.state == TcpState::Listen {
                    return;
                }
                builder.count_state(record.state);
                let is_close_wait = record.state == TcpState::CloseWait;
                if !detail_mask[record.state.index()] && !is_close_wait {
                    return;
                }
                let (direction, port) = classifier.classify(record.local_port, record.remote_port);
                let unaccepted = record.unowned()
                    && classifier.listening.contains(record.local_port)
                    && matches!(record.state, TcpState::Established | TcpState::CloseWait);
                let owner = if unaccepted {
                    listener_owner.get(&record.local_port).map(|(o, _)| *o)
                } else if record.inode == 0 {
                    Some(OwnerKey::default()) // orphan
                } else {
                    owners
                        .and_then(|cache| keys.key_of(cache, record.inode))
                        .map(|(key, _)| key)
                }
                .or(owners.is_none().then(OwnerKey::default));
                if is_close_wait {
                    let group = AgeGroup {
                        direction,
                        port: PortLabel::Port(port),
                        owner: owner.unwrap_or_default(),
                    };
                    if tracker.sight(record.cookie, record.inode, group) {
                        new_close_wait.push(*record);
                    }
                }
                if !detail_mask[record.state.index()] {
                    return;
                }
                let key = GroupKey {
                    state: record.state,
                    direction,
                    port: PortLabel::Port(port),
                    owner: owner.unwrap_or_default(),
                };
                let facts = ConnectionFacts::of(record, unaccepted);
                match owner {
                    Some(_) => builder.add_connection(key, facts),
                    None => pending.push(PendingConnection {
                        key,
                        facts,
                        inode: record.inode,
                    }),
                }
            },
        )?;
        accumulate(&mut report.dump, stats);

        // Attribution of what the cache did not know, likely owners first.
        report.pending = pending.len();
        if let (Some(owners), false) = (&mut attribution.owners, pending.is_empty()) {
            let wanted: HashSet<u32> = pending.iter().map(|p| p.inode).collect();
            let likely: Vec<u32> = likely_owner_pids(&pending, &listener_owner);
            let stats = owners.resolve(&wanted, &likely);
            report.owners.fds_read += stats.fds_read;
            report.owners.processes_listed += stats.processes_listed;
            report.owners.unresolved += stats.unresolved;
        }
        for connection in pending {
            let (owner, _) = attribution.owner_of(connection.inode);
            let key = GroupKey {
                owner,
                ..connection.key
            };
            builder.add_connection(key, connection.facts);
        }

        // Ages: owners of tracked sockets, entry times of new ones.
        if let Some(owners) = &attribution.owners {
            let keys = &mut attribution.keys;
            self.tracker.assign_owners(|inode, group| {
                if inode == 0 || group.owner != OwnerKey::default() {
                    return group;
                }
                match keys.key_of(owners, inode) {
                    Some((owner, _)) => AgeGroup { owner, ..group },
                    None => group,
                }
            });
        }
        self.refine_entry_times(&new_close_wait)?;

        self.listener_owner = listener_owner;
        let ages = self.tracker.finish();
        let mut sample = builder.finish(self.max_groups, attribution.keys.names.names.clone());
        sample.ages = fold_ages(ages, &sample);
        sample.close_wait_tracked = self.tracker.tracked() as u64;
        sample.tcp_settings = sysctl::tcp_settings();
        sample.listen_counters = sysctl::listen_counters().ok();
        Ok((sample, report))
    }

    /// Entry time of newly seen CLOSE_WAIT sockets from tcp_info's last_ack_recv.
    fn refine_entry_times(&mut self, new_close_wait: &[SocketRecord]) -> Result<(), DumpError> {
        if new_close_wait.is_empty() {
            return Ok(());
        }
        if new_close_wait.len() <= MAX_SINGLE_LOOKUPS {
            for record in new_close_wait {
                let found = self.socket.lookup_with_info(record)?;
                if let Some(info) = found.and_then(|f| f.tcp_info) {
                    self.tracker
                        .set_entry_time(record.cookie, info.last_ack_recv_ms);
                }
            }
            return Ok(());
        }
        let new: HashSet<u64> = new_close_wait.iter().map(|r| r.cookie).collect();
        let tracker = &mut self.tracker;
        let stats = self.socket.dump(
            DumpRequest::for_states([TcpState::CloseWait], true),
            &mut |record| {
                if let (true, Some(info)) = (new.contains(&record.cookie), record.tcp_info) {
                    tracker.set_entry_time(record.cookie, info.last_ack_recv_ms);
                }
            },
        )?;
        let _ = stats;
        Ok(())
    }

    fn ephemeral_range(&mut self) -> std::ops::RangeInclusive<u16> {
        match sysctl::ephemeral_port_range() {
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

/// Ages of groups that were folded in the sample go to `port="other"` too, so the
/// oldest-age series never outnumber the connection series.
fn fold_ages(mut ages: AgesReport, sample: &Sample) -> AgesReport {
    let kept: HashSet<(Direction, PortLabel, OwnerKey)> = sample
        .groups
        .iter()
        .filter(|(key, _)| key.state == TcpState::CloseWait)
        .map(|(key, _)| (key.direction, key.port, key.owner))
        .collect();
    let mut folded: HashMap<AgeGroup, f64> = HashMap::new();
    for (group, age) in ages.oldest {
        let group = if kept.contains(&(group.direction, group.port, group.owner)) {
            group
        } else {
            AgeGroup {
                port: PortLabel::Other,
                ..group
            }
        };
        let slot = folded.entry(group).or_insert(age);
        *slot = slot.max(age);
    }
    ages.oldest = folded.into_iter().collect();
    ages.oldest.sort_by_key(|o| o.0);
    ages
}

fn accumulate(total: &mut DumpStats, stats: DumpStats) {
    total.duplicates += stats.duplicates;
    total.unknown_states += stats.unknown_states;
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
