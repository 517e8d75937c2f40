//! Attribution: socket inode -> the label key of its owning process (interned name, pid
//! when configured, Kubernetes container), over the host-wide owner cache.
//!
//! One `Attribution` is shared by the samplers of every namespace: /proc and socket
//! inodes are host-wide, so one cache serves them all.

use std::path::Path;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::config::{NamespaceMode, Settings};
use crate::kernel::owners::{OwnerCache, ResolveStats};
use crate::kernel::pods::ContainerDirectory;
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

/// Owners of sockets, cached across samples; off (`process.attribution = false`) makes
/// every owner the empty one.
pub struct Attribution {
    owners: Option<OwnerCache>,
    keys: OwnerKeys,
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

    /// The owner of `inode` as far as the cache knows now: `None` when attribution is on
    /// and the inode is not cached yet (the caller resolves it after the dump).
    pub fn cached_owner(&mut self, inode: u32) -> Option<(OwnerKey, u32)> {
        match &self.owners {
            None => Some((OwnerKey::default(), 0)),
            Some(cache) => self.keys.key_of(cache, inode),
        }
    }

    /// Owner of an inode as a label key, and its pid; the empty owner when unknown.
    pub fn owner_of(&mut self, inode: u32) -> (OwnerKey, u32) {
        self.cached_owner(inode).unwrap_or_default()
    }

    /// Reads /proc for the owners of `wanted` inodes, `likely_pids` first.
    pub fn resolve(&mut self, wanted: &HashSet<u32>, likely_pids: &[u32]) -> ResolveStats {
        match &mut self.owners {
            Some(cache) if !wanted.is_empty() => cache.resolve(wanted, likely_pids),
            _ => ResolveStats::default(),
        }
    }

    /// The interned process names, indexed by `ProcessId`.
    pub fn process_names(&self) -> Vec<String> {
        self.keys.names.names.clone()
    }
}
