//! Priming the owner cache from one list of every open descriptor on the host, made by a
//! BPF `task_file` iterator (`kernel::events::socket_fds`), instead of one readlink(2) per
//! descriptor of /proc/PID/fd. Used when a resolution pass starts with many unknown
//! sockets (a first sample, a new busy namespace); what the list does not settle is left
//! to the /proc search as before. Off unless the caller allows it (`set_bpf_listing`),
//! and after the first failure (no CAP_BPF, no BTF, an old kernel) for the rest of the
//! run.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::OwnerCache;
use crate::kernel::record::HeldSocket;

/// A pass that starts with at least this many unknown sockets lists descriptors through
/// the iterator: one pass walks every descriptor of the host (a few ms for 100k), more
/// than readlink for a few hundred, far less for thousands. The first pass also loads
/// the iterator (~3 ms of CPU here), once per run.
pub(super) const PRIME_AT_LEAST: usize = 2048;

/// A cold cache primes only when the host has at least this many open files
/// (`fs.file-nr`). Loading the iterator costs ~3 ms of CPU here since it is relocated
/// against a cut-down kernel BTF (it was ~0.15 s through aya's loader, ~0.08 s with one
/// whole parse), what readlink pays for ~700 descriptors (~4.5 us each at 85k,
/// docs/benchmarks.md); the mark leaves room for a slower machine.
const PRIME_COLD_FILES: u64 = 2_000;

/// Inode of the initial pid namespace (PROC_PID_INIT_INO): the iterator reports pids as
/// that namespace numbers them, so it is used only when /proc does too.
const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// One descriptor: (fd, socket inode or 0).
type Listing = Vec<(u32, u32)>;

impl OwnerCache {
    /// Allows (or forbids) listing descriptors with the BPF iterator.
    pub fn set_bpf_listing(&mut self, allowed: bool) {
        self.bpf_listing = allowed;
    }

    /// Lists every descriptor through the iterator and indexes the sockets found, when
    /// allowed and worth it: `missing` holds many sockets, or `cold` (the cache has never
    /// read the whole of /proc, so the walk would read every descriptor of the host) on a
    /// host with many open files.
    /// `missing` loses what was found. Returns the descriptors listed.
    pub(super) fn prime_from_kernel(&mut self, missing: &mut HashSet<u32>, cold: bool) -> u64 {
        if !self.bpf_listing || missing.is_empty() {
            return 0;
        }
        let worth = missing.len() >= PRIME_AT_LEAST
            || (cold && open_files().is_some_and(|files| files >= PRIME_COLD_FILES));
        if !worth {
            return 0;
        }
        match self.list_open_fds() {
            Ok(listings) => {
                self.walked = true;
                let listed = listings.values().map(|l| l.len() as u64).sum();
                for (pid, listing) in listings {
                    self.apply_listing(pid, listing, missing);
                }
                listed
            }
            Err(e) => {
                self.bpf_listing = false;
                tracing::info!(error = %e,
                    "cannot list descriptors with a BPF iterator; reading /proc/PID/fd");
                0
            }
        }
    }

    /// The TCP sockets the descriptors of `pid` hold, with their queues, from the
    /// iterator over that process alone. `None` when that iterator is not available: the
    /// caller looks the sockets up instead; empty when it failed for this process only.
    pub fn held_sockets(&mut self, pid: u32) -> Option<Vec<HeldSocket>> {
        match self.read_one_process(pid, held_listing) {
            Some(held) => Some(held),
            None => (self.bpf_listing && self.held_listing).then(Vec::new),
        }
    }

    /// Reads every descriptor of `pid` through the iterator (one pass over that process
    /// alone) and takes them as its whole table, as a full /proc read would, without a
    /// readlink per descriptor (~5 us each: a server holding 5,000 connections and
    /// accepting 50 a second, whose new connections reuse fd numbers, cost ~15,700 a
    /// round). Returns the descriptors listed; `None` when the iterator is not
    /// available, and the caller reads /proc.
    pub(super) fn list_process_from_kernel(
        &mut self,
        pid: u32,
        missing: &mut HashSet<u32>,
    ) -> Option<u64> {
        let listing = self.read_one_process(pid, process_listing)?;
        let listed = listing.len() as u64;
        self.apply_listing(pid, listing, missing);
        Some(listed)
    }

    /// `read` through the iterator attached to `pid` alone (loaded at its first use),
    /// when listing is allowed. A failure before any success means the kernel cannot
    /// (older than 6.1, no CAP_BPF): off for the run; a later one (a process gone,
    /// descriptors short) costs only that process this round.
    fn read_one_process<T>(
        &mut self,
        pid: u32,
        read: fn(&mut Option<Lister>, u32) -> std::io::Result<T>,
    ) -> Option<T> {
        if !(self.bpf_listing && self.held_listing) {
            return None;
        }
        match read(&mut self.fd_lister, pid) {
            Ok(found) => {
                self.held_read_once = true;
                Some(found)
            }
            Err(e) if self.held_read_once => {
                tracing::debug!(pid, error = %e, "cannot read a process's descriptors this round");
                None
            }
            Err(e) => {
                self.held_listing = false;
                tracing::info!(error = %e,
                    "cannot read one process's descriptors with a BPF iterator; \
                     reading /proc and looking sockets up");
                None
            }
        }
    }

    /// Every process's descriptors, by pid.
    fn list_open_fds(&mut self) -> std::io::Result<HashMap<u32, Listing>> {
        use std::os::unix::fs::MetadataExt;
        let pid_ns = std::fs::metadata(self.proc_root.join("self/ns/pid"))?.ino();
        if self.proc_root != std::path::Path::new("/proc") || pid_ns != INIT_PID_NS_INODE {
            return Err(std::io::Error::other(
                "not in the initial pid namespace: the iterator's pids would not match /proc",
            ));
        }
        let mut listings: HashMap<u32, Listing> = HashMap::new();
        for record in kernel_listing(&mut self.fd_lister)? {
            listings
                .entry(record.0)
                .or_default()
                .push((record.1, record.2));
        }
        Ok(listings)
    }

    /// Takes `listing` as the whole of `pid`'s descriptors, as a full /proc read would.
    fn apply_listing(&mut self, pid: u32, listing: Listing, missing: &mut HashSet<u32>) {
        if !self.ensure_process(pid) {
            return;
        }
        let Some(entry) = self.processes.get_mut(&pid) else {
            return;
        };
        let fresh: HashMap<u32, u32> = listing.iter().copied().collect();
        let dropped: Vec<u32> = entry
            .fds
            .iter()
            .filter(|(fd, inode)| **inode != 0 && fresh.get(fd) != Some(inode))
            .map(|(_, inode)| *inode)
            .collect();
        entry.fd_count = fresh.len() as u64;
        entry.fds = fresh;
        for inode in dropped {
            self.drop_holder(inode, pid);
        }
        for (fd, inode) in listing {
            if inode != 0 {
                self.record_holder(inode, pid, fd, missing);
            }
        }
    }
}

/// Open files on the host: the first field of /proc/sys/fs/file-nr.
fn open_files() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/fs/file-nr").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The loaded iterator, kept by the cache from its first pass on.
#[cfg(feature = "events")]
pub(super) type Lister = crate::kernel::events::socket_fds::SocketFdLister;
#[cfg(not(feature = "events"))]
pub(super) struct Lister;

/// The iterator, loaded into `lister` the first time.
#[cfg(feature = "events")]
fn loaded(lister: &mut Option<Lister>) -> std::io::Result<&mut Lister> {
    if lister.is_none() {
        *lister = Some(Lister::load()?);
    }
    lister
        .as_mut()
        .ok_or_else(|| std::io::Error::other("iterator not loaded"))
}

/// (pid, fd, inode) of every open descriptor, from the kernel.
#[cfg(feature = "events")]
fn kernel_listing(lister: &mut Option<Lister>) -> std::io::Result<Vec<(u32, u32, u32)>> {
    let fds = loaded(lister)?.list()?;
    Ok(fds.into_iter().map(|f| (f.pid, f.fd, f.inode)).collect())
}

/// The TCP sockets `pid` holds.
#[cfg(feature = "events")]
fn held_listing(lister: &mut Option<Lister>, pid: u32) -> std::io::Result<Vec<HeldSocket>> {
    loaded(lister)?.held_sockets(pid)
}

/// (fd, inode) of every descriptor of `pid`.
#[cfg(feature = "events")]
fn process_listing(lister: &mut Option<Lister>, pid: u32) -> std::io::Result<Listing> {
    let fds = loaded(lister)?.list_process(pid)?;
    Ok(fds.into_iter().map(|f| (f.fd, f.inode)).collect())
}

#[cfg(not(feature = "events"))]
fn kernel_listing(_lister: &mut Option<Lister>) -> std::io::Result<Vec<(u32, u32, u32)>> {
    Err(std::io::Error::other("built without the events feature"))
}

#[cfg(not(feature = "events"))]
fn held_listing(_lister: &mut Option<Lister>, _pid: u32) -> std::io::Result<Vec<HeldSocket>> {
    Err(std::io::Error::other("built without the events feature"))
}

#[cfg(not(feature = "events"))]
fn process_listing(_lister: &mut Option<Lister>, _pid: u32) -> std::io::Result<Listing> {
    Err(std::io::Error::other("built without the events feature"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    /// Needs root (CAP_BPF): the sockets of this process are found by the iterator.
    #[test]
    fn a_large_pass_is_primed_by_the_iterator() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let listeners: Vec<_> = (0..8)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let inodes: Vec<u32> = listeners
            .iter()
            .map(|l| {
                std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
                    .expect("stat fd")
                    .ino() as u32
            })
            .collect();
        // Enough unknown inodes to pass the threshold: ours, and made-up ones nobody holds.
        let mut wanted: HashSet<u32> = inodes.iter().copied().collect();
        wanted.extend((0..PRIME_AT_LEAST as u32).map(|i| u32::MAX - i));
        let mut cache = OwnerCache::new("/proc");
        cache.set_bpf_listing(true);
        let mut missing = wanted.clone();
        let listed = cache.prime_from_kernel(&mut missing, false);
        assert!(cache.bpf_listing, "the iterator failed (see the log)");
        assert!(listed > inodes.len() as u64, "{listed} descriptors listed");
        for inode in &inodes {
            assert!(!missing.contains(inode));
            let owner = cache.lookup(*inode).expect("found by the iterator");
            assert_eq!(owner.pid, std::process::id());
        }
        assert_eq!(
            missing.len(),
            PRIME_AT_LEAST,
            "the made-up inodes stay missing"
        );
        // A pass below the threshold does not list again.
        let mut few: HashSet<u32> = [u32::MAX].into_iter().collect();
        assert_eq!(cache.prime_from_kernel(&mut few, false), 0);
    }
}
