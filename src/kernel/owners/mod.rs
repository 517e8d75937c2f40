//! Attribution: socket inode -> owning process, from /proc/PID/fd, cached across samples.
//!
//! `ss -p` reads every fd of every process on every run (16 s for 190k sockets here).
//! Here only the inodes a sample needs are resolved, and what was resolved is kept:
//! - a cached inode is trusted while its process lives (pid and start time unchanged),
//!   with the cheap checks of `freshness` (a new name after exec, a socket that entered a
//!   detail state or left its CLOSE_WAIT owner's descriptors);
//! - unknown inodes are looked for first in the likely owners (the processes holding the
//!   listener of an inbound connection's port), then in their children (the workers of
//!   a pre-fork or fork-per-connection server), reading only fds not seen before;
//! - only if some are still missing are all processes listed, again new fds only; a full
//!   re-read (fd numbers are reused after close) runs at most once per `FULL_RESCAN_EVERY`.
//!
//! Processes and fds that vanish mid-scan and permission errors are not errors: the
//! socket stays unattributed (`process=""`) and a debug line says why.
//!
//! A socket shared by several processes (inherited across fork) is owned by the lowest
//! pid, which is the parent in the usual fork-then-serve pattern.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::kernel::procfs::{self, parse_u32};

mod freshness;
mod prime;

/// A full re-read of every process's fds runs at most once in this many resolution passes
/// (a minute at the default interval): fd numbers are reused after close, so a socket
/// behind a reused number is only found by re-reading.
const FULL_RESCAN_EVERY: u32 = 4;

/// Owning process of a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: std::sync::Arc<str>,
    /// With the pid, who the process is across pid reuse (clock ticks since boot).
    pub start_time: u64,
}

struct ProcessEntry {
    comm: std::sync::Arc<str>,
    start_time: u64,
    /// fd number -> socket inode (non-socket fds are kept with inode 0 so they are not
    /// read again).
    fds: HashMap<u32, u32>,
    /// Open descriptors when the fds were last listed.
    fd_count: u64,
    /// The descriptor count the CLOSE_WAIT watch read, and the round it read it in.
    counted: (u64, u64),
    /// The fd figures, and the round they were read in (read once a round at most).
    usage: Option<(u64, FdUsage)>,
}

/// How close a process is to running out of descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdUsage {
    /// Descriptors open now.
    pub open: u64,
    /// Its soft RLIMIT_NOFILE: `None` when unlimited.
    pub soft_limit: Option<u64>,
}

/// Where a cached socket was found, and the last round it was asked for.
#[derive(Clone, Copy, Debug)]
struct Holder {
    pid: u32,
    fd: u32,
    used_round: u64,
}

/// What a resolution pass cost, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveStats {
    pub processes_listed: u64,
    /// Descriptor links read, and descriptors listed by the BPF iterator.
    pub fds_read: u64,
    /// Processes whose whole descriptor table one iterator pass listed.
    pub processes_listed_by_kernel: u64,
    pub unresolved: u64,
}

impl ResolveStats {
    pub fn add(&mut self, other: ResolveStats) {
        self.processes_listed += other.processes_listed;
        self.fds_read += other.fds_read;
        self.processes_listed_by_kernel += other.processes_listed_by_kernel;
        self.unresolved += other.unresolved;
    }
}

pub struct OwnerCache {
    proc_root: PathBuf,
    processes: HashMap<u32, ProcessEntry>,
    /// Socket inode -> lowest pid holding it, and its fd there.
    inode_owner: HashMap<u32, Holder>,
    /// Inodes a pass could not find; looked for again only by the next full re-read, so
    /// a socket held outside our view does not cost a /proc walk every sample.
    unresolvable: HashSet<u32>,
    passes_since_full: u32,
    /// Counts `revalidate` calls: one per sampling round.
    round: u64,
    /// Owners of CLOSE_WAIT sockets this round, with those sockets: their descriptor
    /// counts are checked at the next `revalidate`.
    watched: HashMap<u32, Vec<u32>>,
    /// fd links read outside `resolve` (checks of cached sockets), not yet reported.
    validation_reads: u64,
    /// Whether the missing-privilege warning was given (once per run).
    warned_permission: bool,
    /// Whether a large pass may list descriptors with a BPF iterator (`prime`).
    bpf_listing: bool,
    /// That iterator, loaded at its first use and kept.
    fd_lister: Option<prime::Lister>,
    /// Whether one process's held sockets can be read through it (`held_sockets`);
    /// false after its first failure (an old kernel: Linux 6.1+ filters by process).
    held_listing: bool,
    /// One process's sockets were read so at least once: later failures are transient.
    held_read_once: bool,
    /// Whether every process's descriptors were read once (a /proc walk or `prime`).
    walked: bool,
}

impl OwnerCache {
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        OwnerCache {
            proc_root: proc_root.into(),
            processes: HashMap::new(),
            inode_owner: HashMap::new(),
            unresolvable: HashSet::new(),
            passes_since_full: 0,
            round: 0,
            watched: HashMap::new(),
            validation_reads: 0,
            warned_permission: false,
            bpf_listing: false,
            fd_lister: None,
            held_listing: true,
            held_read_once: false,
            walked: false,
        }
    }

    /// The cached owner of `inode`, without any I/O.
    pub fn lookup(&self, inode: u32) -> Option<Owner> {
        self.process(self.inode_owner.get(&inode)?.pid)
    }

    /// Process `pid` as cached, without any I/O.
    pub fn process(&self, pid: u32) -> Option<Owner> {
        let entry = self.processes.get(&pid)?;
        Some(Owner {
            pid,
            comm: entry.comm.clone(),
            start_time: entry.start_time,
        })
    }

    /// The process holding `inode` and its descriptor there (the lowest pid when
    /// several hold it), without any I/O.
    pub fn holder(&self, inode: u32) -> Option<(u32, u32)> {
        let holder = self.inode_owner.get(&inode)?;
        self.processes
            .contains_key(&holder.pid)
            .then_some((holder.pid, holder.fd))
    }

    /// Finds the owners of `wanted` inodes that `lookup` does not know, looking first in
    /// `likely_pids`.
    pub fn resolve(&mut self, wanted: &HashSet<u32>, likely_pids: &[u32]) -> ResolveStats {
        let mut stats = self.search(wanted, likely_pids);
        // Counted over everything wanted, including inodes the negative cache skipped.
        stats.unresolved = wanted
            .iter()
            .filter(|inode| !self.inode_owner.contains_key(inode))
            .count() as u64;
        stats
    }

    fn search(&mut self, wanted: &HashSet<u32>, likely_pids: &[u32]) -> ResolveStats {
        let mut stats = ResolveStats::default();
        let mut missing: HashSet<u32> = wanted
            .iter()
            .copied()
            .filter(|inode| !self.inode_owner.contains_key(inode))
            .collect();
        let full_due = self.passes_since_full + 1 >= FULL_RESCAN_EVERY;
        if !full_due {
            missing.retain(|inode| !self.unresolvable.contains(inode));
        }
        // Many unknown sockets (a first sample, a new busy namespace): one iterator pass
        // over every descriptor of the host settles them for less than reading the
        // likely owners' fds one readlink at a time.
        stats.fds_read += self.prime_from_kernel(&mut missing, false);
        if missing.is_empty() {
            return stats;
        }
        // The likely owners first, then their children (the workers of a pre-fork or
        // fork-per-connection server).
        let children = |cache: &Self| -> Vec<u32> {
            likely_pids
                .iter()
                .flat_map(|pid| procfs::children(&cache.proc_root, *pid))
                .collect()
        };
        if self.scan_group(likely_pids, &mut missing, &mut stats)
            || self.scan_group(&children(self), &mut missing, &mut stats)
        {
            return stats;
        }
        // A first walk would read every descriptor of the host: one iterator pass instead.
        stats.fds_read += self.prime_from_kernel(&mut missing, !self.walked);
        if missing.is_empty() {
            return stats;
        }
        let pids = procfs::list_pids(&self.proc_root);
        stats.processes_listed = pids.len() as u64;
        self.walked = true;
        for &pid in &pids {
            self.scan_process(pid, false, &mut missing, &mut stats);
            if missing.is_empty() {
                return stats;
            }
        }
        self.passes_since_full += 1;
        if self.passes_since_full >= FULL_RESCAN_EVERY {
            self.passes_since_full = 0;
            for &pid in &pids {
                self.scan_process(pid, true, &mut missing, &mut stats);
                if missing.is_empty() {
                    break;
                }
            }
        }
        // Only inodes still wanted are remembered: the set cannot outgrow the table.
        self.unresolvable.retain(|inode| wanted.contains(inode));
        self.unresolvable.extend(missing.iter().copied());
        if !missing.is_empty() {
            tracing::debug!(
                unresolved = missing.len(),
                "sockets without a visible owner (another pid namespace, no permission, or \
                 held by the kernel only)"
            );
        }
        stats
    }

    /// Looks for `missing` in the descriptors of `group`: new fds first (the whole
    /// table in one iterator pass where there is one), then every link of the processes
    /// that pass did not read whole (a server reuses the fd number of the connection it
    /// just closed for the next one it accepts). True once nothing is missing.
    fn scan_group(
        &mut self,
        group: &[u32],
        missing: &mut HashSet<u32>,
        stats: &mut ResolveStats,
    ) -> bool {
        let mut partly_read = Vec::new();
        for &pid in group {
            if !self.scan_new(pid, missing, stats) {
                partly_read.push(pid);
            }
            if missing.is_empty() {
                return true;
            }
        }
        for pid in partly_read {
            self.scan_process(pid, true, missing, stats);
            if missing.is_empty() {
                return true;
            }
        }
        false
    }

    /// Reads what is new in a likely owner's descriptors: its whole table in one
    /// iterator pass where there is one (no readlink at all, and a server that reuses
    /// the fd number of the connection it just closed is read right), else the links
    /// of its new fd numbers. True when the whole table was read.
    fn scan_new(&mut self, pid: u32, missing: &mut HashSet<u32>, stats: &mut ResolveStats) -> bool {
        if let Some(listed) = self.list_process_from_kernel(pid, missing) {
            stats.fds_read += listed;
            stats.processes_listed_by_kernel += 1;
            return true;
        }
        self.scan_process(pid, false, missing, stats);
        false
    }

    /// Reads the fds of one process: new fd numbers only, or all with `full`. Fds gone
    /// since the last listing take their sockets out of the index.
    fn scan_process(
        &mut self,
        pid: u32,
        full: bool,
        missing: &mut HashSet<u32>,
        stats: &mut ResolveStats,
    ) {
        if !self.ensure_process(pid) {
            return;
        }
        let Some(listing) = self.list_fds(pid) else {
            return;
        };
        let Some(entry) = self.processes.get_mut(&pid) else {
            return;
        };
        let mut present = HashSet::new();
        let mut found = Vec::new();
        let mut dropped = Vec::new();
        let mut refused = false;
        for item in listing.flatten() {
            let Some(fd) = parse_u32(item.file_name().as_bytes()) else {
                continue;
            };
            present.insert(fd);
            if !full && entry.fds.contains_key(&fd) {
                continue;
            }
            stats.fds_read += 1;
            let inode = match procfs::fd_socket(&item.path()) {
                Ok(inode) => inode,
                // Listed but not readable: root without CAP_SYS_PTRACE.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    refused = true;
                    break;
                }
                Err(_) => continue, // closed meanwhile
            };
            let previous = entry.fds.insert(fd, inode).unwrap_or(0);
            if previous != inode && previous != 0 {
                dropped.push(previous);
            }
            if inode != 0 {
                found.push((inode, fd));
            }
        }
        entry.fds.retain(|fd, inode| {
            let keep = present.contains(fd);
            if !keep && *inode != 0 {
                dropped.push(*inode);
            }
            keep
        });
        entry.fd_count = present.len() as u64;
        if refused {
            self.warn_permission(pid);
        }
        // The index only holds inodes some cached fd holds: it cannot grow with churn.
        for inode in dropped {
            self.drop_holder(inode, pid);
        }
        for (inode, fd) in found {
            self.record_holder(inode, pid, fd, missing);
        }
    }

    /// `pid` holds `inode` at `fd`: no longer missing, and its owner unless a live
    /// process with a lower pid (the parent of a fork, usually) holds it too.
    fn record_holder(&mut self, inode: u32, pid: u32, fd: u32, missing: &mut HashSet<u32>) {
        missing.remove(&inode);
        self.unresolvable.remove(&inode);
        let held_by = Holder {
            pid,
            fd,
            used_round: self.round,
        };
        let holder = self.inode_owner.entry(inode).or_insert(held_by);
        if pid <= holder.pid || !self.processes.contains_key(&holder.pid) {
            *holder = held_by;
        }
    }

    /// The listing of /proc/PID/fd; `None` (with a warning the first time permission is
    /// missing) when it cannot be read.
    fn list_fds(&mut self, pid: u32) -> Option<fs::ReadDir> {
        let fd_dir = self.proc_root.join(pid.to_string()).join("fd");
        match fs::read_dir(&fd_dir) {
            Ok(listing) => Some(listing),
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    self.warn_permission(pid);
                }
                tracing::debug!(pid, error = %e, "cannot list fds");
                None
            }
        }
    }

    /// Says once that other users' sockets cannot be attributed, and what to grant: the
    /// fd directory cannot be listed, or (root without CAP_SYS_PTRACE) listed but its
    /// links not read.
    fn warn_permission(&mut self, pid: u32) {
        if !self.warned_permission {
            self.warned_permission = true;
            tracing::warn!(
                pid,
                "cannot read /proc/PID/fd of other users' processes: their sockets \
                 get process=\"\" (grant CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE)"
            );
        }
    }

    /// Makes sure `pid` has an entry (reading its name and start time); false when the
    /// process is gone or unreadable.
    fn ensure_process(&mut self, pid: u32) -> bool {
        if self.processes.contains_key(&pid) {
            return true;
        }
        let Ok(stat) = procfs::read_stat(&self.proc_root, pid) else {
            return false;
        };
        self.processes.insert(
            pid,
            ProcessEntry {
                comm: stat.comm.into(),
                start_time: stat.start_time,
                fds: HashMap::new(),
                fd_count: 0,
                counted: (0, 0),
                usage: None,
            },
        );
        true
    }

    fn forget(&mut self, pid: u32) {
        if let Some(entry) = self.processes.remove(&pid) {
            for inode in entry.fds.values() {
                self.drop_holder(*inode, pid);
            }
        }
    }

    /// `pid` no longer holds `inode`: out of the index if it was its owner there.
    fn drop_holder(&mut self, inode: u32, pid: u32) {
        if self.inode_owner.get(&inode).is_some_and(|h| h.pid == pid) {
            self.inode_owner.remove(&inode);
        }
    }
}

#[cfg(test)]
mod tests;
