//! Attribution: socket inode -> the label key of its owning process (interned name, pid
//! when configured, Kubernetes container), over the host-wide owner cache.
//!
//! One `Attribution` is shared by the samplers of every namespace: /proc and socket
//! inodes are host-wide, so one cache serves them all.
//!
//! Connections still in an accept queue have no file descriptor: they belong to the
//! program of the listener whose queue holds them (`accept_queue_owners`).

use std::path::Path;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::config::{EventsMode, NamespaceMode, Settings};
use crate::kernel::owners::{FdUsage, OwnerCache, ResolveStats};
use crate::kernel::pods::ContainerDirectory;
use crate::kernel::record::{HeldSocket, SocketRecord};
use crate::model::labels::{OwnerKey, ProcessId};

/// Process names seen since start, interned: ids stay valid across samples because
/// the histograms keep them.
struct ProcessNames {
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

/// Turns an owner into its label key. Keys are memoized per pid for the round, so a
/// socket costs two hash lookups by integer, not a string hash and an `Arc` clone.
struct OwnerKeys {
    names: ProcessNames,
    pid_label: bool,
    containers: Option<ContainerDirectory>,
    /// Label key per owner pid for this round (cleared by `Attribution::revalidate`: a
    /// process may rename itself or change container between rounds), and the tally it
    /// was last counted in.
    key_of_pid: HashMap<u32, (OwnerKey, u32)>,
    tally: OwnerTally,
}

/// The owners of a sample's detail-state connections, counted on the memo lookups the
/// connections make anyway: a pid is noted the first time a tally sees it, so a sample
/// of 100k connections pays one comparison per connection, not one hash insert.
#[derive(Default)]
struct OwnerTally {
    /// Tally number; 0 is "none running".
    serial: u32,
    running: bool,
    seen: Vec<(u32, OwnerKey)>,
}

impl OwnerTally {
    /// Notes `pid` if the running tally has not (`counted`: the tally it was last noted
    /// in, updated).
    fn note(&mut self, pid: u32, key: OwnerKey, counted: &mut u32) {
        if self.running && *counted != self.serial {
            *counted = self.serial;
            self.seen.push((pid, key));
        }
    }
}

impl OwnerKeys {
    /// The key and pid of the owner of `inode`, when the cache knows it.
    fn key_of(&mut self, cache: &mut OwnerCache, inode: u32) -> Option<(OwnerKey, u32)> {
        let pid = cache.owner_pid(inode)?;
        self.key_of_process(cache, pid)
    }

    /// The key and pid of process `pid`, when the cache knows the process.
    fn key_of_process(&mut self, cache: &OwnerCache, pid: u32) -> Option<(OwnerKey, u32)> {
        if let Some((key, counted)) = self.key_of_pid.get_mut(&pid) {
            self.tally.note(pid, *key, counted);
            return Some((*key, pid));
        }
        let owner = cache.process(pid)?;
        let container = match &mut self.containers {
            None => ProcessId::UNKNOWN,
            Some(directory) => {
                let name: Arc<str> = directory
                    .container_of(Path::new("/proc"), pid, owner.start_time)
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
        let mut counted = 0;
        self.tally.note(pid, key, &mut counted);
        self.key_of_pid.insert(pid, (key, counted));
        Some((key, pid))
    }
}

/// Owners of sockets, cached across samples; off (`process.attribution = false`) makes
/// every owner the empty one.
pub struct Attribution {
    owners: Option<OwnerCache>,
    keys: OwnerKeys,
    /// Read the fd figures of the owners (on; off only to measure what they cost).
    fd_figures: bool,
}

impl Attribution {
    pub fn new(settings: &Settings) -> Self {
        Attribution {
            owners: settings.process_attribution.then(|| {
                let mut owners = OwnerCache::new("/proc");
                // The descriptor-listing iterator loads BPF: not where events are off.
                owners.set_bpf_listing(settings.events != EventsMode::Off);
                owners
            }),
            keys: OwnerKeys {
                names: ProcessNames::new(),
                pid_label: settings.pid_label,
                containers: (settings.namespaces == NamespaceMode::All)
                    .then(|| ContainerDirectory::new(&settings.containers_log_dir)),
                key_of_pid: HashMap::new(),
                tally: OwnerTally::default(),
            },
            fd_figures: true,
        }
    }

    /// Turns the fd figures off (or on again): `tcpstate-bench --oncall` measures a
    /// sample with and without them.
    pub fn set_fd_figures(&mut self, on: bool) {
        self.fd_figures = on;
    }

    /// Drops processes that exited since the last sample, renames those that exec()ed,
    /// looks again at the sockets of CLOSE_WAIT owners whose descriptors changed, and
    /// re-reads the container names; once per sampling round.
    pub fn revalidate(&mut self) {
        if let Some(owners) = &mut self.owners {
            owners.revalidate();
        }
        if let Some(containers) = &mut self.keys.containers {
            containers.refresh();
        }
        self.keys.key_of_pid.clear();
    }

    /// The owner of `inode` as far as the cache knows now: `None` when attribution is on
    /// and the inode is not cached yet (the caller resolves it after the dump).
    pub fn cached_owner(&mut self, inode: u32) -> Option<(OwnerKey, u32)> {
        match &mut self.owners {
            None => Some((OwnerKey::default(), 0)),
            Some(cache) => self.keys.key_of(cache, inode),
        }
    }

    /// The owner of a socket as `cached_owner` gives it. A socket read from a holder's
    /// descriptors this round (`held_by`) is owned by that holder: the iterator has just
    /// seen its descriptor, a stronger proof than the index of every socket on the host,
    /// and it costs no lookup in that index (a cache miss each).
    pub fn cached_owner_of(&mut self, record: &SocketRecord) -> Option<(OwnerKey, u32)> {
        if let (Some(cache), pid @ 1..) = (&self.owners, record.held_by)
            && let Some(owner) = self.keys.key_of_process(cache, pid)
        {
            return Some(owner);
        }
        self.cached_owner(record.inode)
    }

    /// Brings the index entries of `inodes` into the CPU cache, all at once (see
    /// `OwnerCache::warm`), before they are asked for one by one.
    pub fn warm_owners(&self, inodes: impl Iterator<Item = u32>) {
        if let Some(cache) = &self.owners {
            cache.warm(inodes);
        }
    }

    /// Owner of an inode as a label key, and its pid; the empty owner when unknown.
    pub fn owner_of(&mut self, inode: u32) -> (OwnerKey, u32) {
        self.cached_owner(inode).unwrap_or_default()
    }

    /// The pid and descriptor holding `inode`, as cached (none with attribution off).
    pub fn holder_of(&self, inode: u32) -> Option<(u32, u32)> {
        self.owners.as_ref()?.holder(inode)
    }

    /// The TCP sockets held by the processes `pids`, by cookie, read through a BPF
    /// iterator over those processes alone. `None` when that is not possible (attribution
    /// or BPF listing off, an old kernel): look the sockets up instead.
    pub fn held_sockets(&mut self, pids: &[u32]) -> Option<HashMap<u64, HeldSocket>> {
        let cache = self.owners.as_mut()?;
        let mut held = HashMap::new();
        for pid in pids {
            // Cookie 0: never asked for, so not one of a table's sockets. A socket several
            // processes hold stays with the lowest pid, as in the index.
            for socket in cache
                .held_sockets(*pid)?
                .into_iter()
                .filter(|s| s.cookie != 0)
            {
                held.entry(socket.cookie)
                    .and_modify(|kept: &mut HeldSocket| {
                        if socket.holder < kept.holder {
                            *kept = socket;
                        }
                    })
                    .or_insert(socket);
            }
        }
        Some(held)
    }

    /// Reads /proc for the owners of `wanted` inodes, `likely_pids` first.
    pub fn resolve(&mut self, wanted: &HashSet<u32>, likely_pids: &[u32]) -> ResolveStats {
        match &mut self.owners {
            Some(cache) if !wanted.is_empty() => cache.resolve(wanted, likely_pids),
            _ => ResolveStats::default(),
        }
    }

    /// `inode`'s cached owner may be wrong (it just entered CLOSE_WAIT, or the
    /// descriptors of its holder no longer show it): checked when next asked for.
    pub fn recheck(&mut self, inode: u32) {
        if let Some(cache) = &mut self.owners {
            cache.expire(inode);
        }
    }

    /// `pid` owns the CLOSE_WAIT socket `inode` this round: if its descriptor count
    /// moves, the socket is checked again next round (closed there, or handed over).
    pub fn watch_close_wait_owner(&mut self, pid: u32, inode: u32) {
        if let Some(cache) = &mut self.owners {
            cache.watch(pid, inode);
        }
    }

    /// fd links read to check cached owners since the last call (for
    /// `tcpstate_attribution_fd_reads_total`, beside what `resolve` reports).
    pub fn take_validation_reads(&mut self) -> u64 {
        self.owners
            .as_mut()
            .map_or(0, OwnerCache::take_validation_reads)
    }

    /// Starts noting the owners of the connections the sample looks up from now on.
    pub fn begin_owner_tally(&mut self) {
        let tally = &mut self.keys.tally;
        tally.serial = tally.serial.wrapping_add(1).max(1);
        tally.running = self.fd_figures;
        tally.seen.clear();
    }

    /// Notes the owner of an accept-queue connection (its listener's program), which
    /// has no descriptor to look up.
    pub fn note_owner(&mut self, pid: u32, key: OwnerKey) {
        if pid == 0 {
            return;
        }
        let tally = &mut self.keys.tally;
        match self.keys.key_of_pid.get_mut(&pid) {
            Some((_, counted)) => tally.note(pid, key, counted),
            None => {
                let mut counted = 0;
                tally.note(pid, key, &mut counted);
                self.keys.key_of_pid.insert(pid, (key, counted));
            }
        }
    }

    /// The owners noted since `begin_owner_tally`, with their fd figures (the fd
    /// cliff): (label key, pid, usage) per process still readable.
    pub fn finish_owner_tally(&mut self) -> Vec<(OwnerKey, u32, FdUsage)> {
        self.keys.tally.running = false;
        let seen = std::mem::take(&mut self.keys.tally.seen);
        let Some(cache) = &mut self.owners else {
            return Vec::new();
        };
        seen.into_iter()
            .filter_map(|(pid, key)| Some((key, pid, cache.fd_usage(pid)?)))
            .collect()
    }

    /// The interned process names, indexed by `ProcessId`.
    pub fn process_names(&self) -> Vec<String> {
        self.keys.names.names.clone()
    }
}

/// A listener, as far as the owner of its accept queue is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueHolder {
    pub port: u16,
    pub owner: OwnerKey,
    pub pid: u32,
    /// Connections waiting in this listener's own queue (its Recv-Q).
    pub queue_length: u32,
}

/// The owner (label key and pid) of the connections still in each port's accept
/// queues. sock_diag says how long each listener's queue is, not which queue holds a
/// given connection; so with several listeners of different programs on one port
/// (SO_REUSEPORT) the answer is known only when the queues of one program alone are not
/// empty. Otherwise the owner is unknown: the empty owner (`process=""`), never a guess.
pub fn accept_queue_owners(listeners: &[QueueHolder]) -> HashMap<u16, (OwnerKey, u32)> {
    let mut by_port: HashMap<u16, Vec<&QueueHolder>> = HashMap::new();
    for listener in listeners {
        by_port.entry(listener.port).or_default().push(listener);
    }
    by_port
        .into_iter()
        .map(|(port, holders)| (port, queue_owner(&holders)))
        .collect()
}

fn queue_owner(holders: &[&QueueHolder]) -> (OwnerKey, u32) {
    let single = |candidates: Vec<&&QueueHolder>| match candidates.first() {
        Some(first) if candidates.iter().all(|h| h.owner == first.owner) => {
            Some((first.owner, first.pid))
        }
        _ => None,
    };
    single(holders.iter().collect())
        .or_else(|| single(holders.iter().filter(|h| h.queue_length > 0).collect()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(port: u16, process: u32, pid: u32, queue_length: u32) -> QueueHolder {
        QueueHolder {
            port,
            owner: OwnerKey {
                process: ProcessId(process),
                ..OwnerKey::default()
            },
            pid,
            queue_length,
        }
    }

    #[test]
    fn one_program_owns_its_queues_whatever_their_length() {
        // A pre-fork server: master and workers share one listener; or one program's
        // SO_REUSEPORT listeners, one per worker.
        let owners = accept_queue_owners(&[holder(80, 1, 10, 0), holder(80, 1, 11, 3)]);
        assert_eq!(owners[&80].0.process, ProcessId(1));
    }

    #[test]
    fn with_reuseport_the_program_whose_queue_is_not_empty_owns_it() {
        // acceptor (2) serves and its queue is empty; sleeper (3) never accepts. The dump
        // order (which listener comes first) must not matter.
        for listeners in [
            [holder(9100, 2, 20, 0), holder(9100, 3, 30, 4)],
            [holder(9100, 3, 30, 4), holder(9100, 2, 20, 0)],
        ] {
            let owners = accept_queue_owners(&listeners);
            assert_eq!(owners[&9100].0.process, ProcessId(3), "{listeners:?}");
            assert_eq!(owners[&9100].1, 30);
        }
    }

    #[test]
    fn when_the_kernel_cannot_tell_nobody_is_named() {
        // Two programs with connections waiting in both queues: which queue holds which
        // connection is not in sock_diag's answer.
        let owners = accept_queue_owners(&[holder(80, 2, 20, 1), holder(80, 3, 30, 2)]);
        assert_eq!(owners[&80], (OwnerKey::default(), 0));
    }
}
