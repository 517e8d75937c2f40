//! Keeping cached owners true without reading every descriptor again: the checks
//! `OwnerCache` runs per round (`revalidate`) and per socket (`owner_pid`), each costing
//! nothing for a socket that stays where it is.
//!
//! - A process's name is re-read with its start time every round (one read of
//!   /proc/PID/stat per cached process, which the liveness check needed anyway), so a
//!   program that exec()s in place is named after what it runs now.
//! - An inode first asked for again after a round without (a socket that just entered a
//!   detail state), that just entered CLOSE_WAIT, or that its holder's descriptors no
//!   longer show in a followed namespace's round (both `expire`), is checked against its
//!   descriptor: one link read.
//! - The owners of CLOSE_WAIT sockets (`watch`) have their descriptor count read every
//!   round (one `stat`), and small tables their fd numbers listed; when either moved, the
//!   links of their CLOSE_WAIT sockets are read again: a socket closed there, or handed
//!   to another process (SCM_RIGHTS), is forgotten and looked for anew.

use foldhash::{HashSet, HashSetExt};

use super::{FdUsage, OwnerCache, ResolveStats};
use crate::kernel::procfs;

/// A watched process with at most this many descriptors has its fd numbers listed every
/// round (microseconds); a larger one only has them counted (one `stat`), so a socket it
/// hands over while opening another descriptor is noticed only when the count moves.
const LISTED_EVERY_ROUND: u64 = 256;

impl OwnerCache {
    /// The pid owning `inode`: the per-socket question, answered from memory while the
    /// socket keeps being asked for; the first time after a round without, its
    /// descriptor is read once to check it still holds the socket.
    ///
    /// Asked for every detail-state socket of every namespace each round, against an
    /// index of every socket on the host (a cache miss each): one index lookup on the
    /// common path; more only when the descriptor is read again.
    pub fn owner_pid(&mut self, inode: u32) -> Option<u32> {
        let round = self.round;
        let holder = self.inode_owner.get_mut(&inode)?;
        let pid = holder.pid;
        if !self.processes.contains_key(&pid) {
            return None;
        }
        if holder.used_round + 1 >= round {
            holder.used_round = round;
            return Some(pid);
        }
        if !self.still_held(inode) {
            return None;
        }
        if let Some(holder) = self.inode_owner.get_mut(&inode) {
            holder.used_round = round;
        }
        Some(pid)
    }

    /// Looks `inodes` up in the index and drops the answers: lookups that depend on
    /// nothing but their own key, so the CPU has several of their cache misses in
    /// flight at once, and `owner_pid` then finds the entries cached.
    pub fn warm(&self, inodes: impl Iterator<Item = u32>) {
        for inode in inodes {
            std::hint::black_box(self.inode_owner.get(&inode).map(|h| h.pid));
        }
    }

    /// Reads the one descriptor the index names for `inode`: true when it still holds
    /// the socket; else the socket leaves the index (and the fd number is read again at
    /// the process's next scan).
    fn still_held(&mut self, inode: u32) -> bool {
        let Some(holder) = self.inode_owner.get(&inode).copied() else {
            return false;
        };
        self.validation_reads += 1;
        let link = self
            .proc_root
            .join(holder.pid.to_string())
            .join("fd")
            .join(holder.fd.to_string());
        if procfs::fd_socket(&link).ok() == Some(inode) {
            return true;
        }
        if let Some(entry) = self.processes.get_mut(&holder.pid) {
            entry.fds.remove(&holder.fd);
        }
        self.inode_owner.remove(&inode);
        false
    }

    /// Check `inode`'s descriptor when next asked for: it just entered CLOSE_WAIT (it may
    /// have been handed over while in another state), or its holder's descriptors, read
    /// through the iterator, no longer show it.
    pub fn expire(&mut self, inode: u32) {
        if let Some(holder) = self.inode_owner.get_mut(&inode) {
            holder.used_round = 0;
        }
    }

    /// `pid` owns the CLOSE_WAIT socket `inode` this round: check its descriptor count
    /// next round.
    pub fn watch(&mut self, pid: u32, inode: u32) {
        if pid != 0 && inode != 0 {
            self.watched.entry(pid).or_default().push(inode);
        }
    }

    /// fd links read since the last call outside `resolve`'s own count.
    pub fn take_validation_reads(&mut self) -> u64 {
        std::mem::take(&mut self.validation_reads)
    }

    /// Once per round, before the samples: drops processes that exited (or whose pid was
    /// reused), renames those that exec()ed or renamed themselves (one read of
    /// /proc/PID/stat per cached process), and checks the CLOSE_WAIT sockets of watched
    /// processes whose descriptor count moved (one stat each).
    pub fn revalidate(&mut self) {
        self.round += 1;
        self.rename_or_forget();
        let mut stats = ResolveStats::default();
        for (pid, inodes) in std::mem::take(&mut self.watched) {
            if !self.descriptors_moved(pid) {
                continue;
            }
            // A descriptor closed or opened: list the new ones, and read the links of its
            // CLOSE_WAIT sockets, whose fd numbers may have been reused.
            self.scan_process(pid, false, &mut HashSet::new(), &mut stats);
            for inode in inodes {
                if self.inode_owner.get(&inode).is_some_and(|h| h.pid == pid) {
                    self.still_held(inode);
                }
            }
        }
        self.validation_reads += stats.fds_read;
    }

    /// The fd figures of a cached process (the fd cliff): open descriptors and soft
    /// RLIMIT_NOFILE, read at most once a round; the count the CLOSE_WAIT watch took
    /// this round is reused. One `stat` (a listing before Linux 6.2) and one read of
    /// /proc/PID/limits; `None` when the process is gone or unreadable.
    pub fn fd_usage(&mut self, pid: u32) -> Option<FdUsage> {
        let round = self.round;
        let entry = self.processes.get_mut(&pid)?;
        match entry.usage {
            Some((read_in, usage)) if read_in == round => return Some(usage),
            _ => {}
        }
        let open = if entry.counted.0 == round && entry.counted.1 > 0 {
            entry.counted.1
        } else {
            // 0: a kernel that does not count (before 6.2); list the numbers instead.
            match procfs::fd_count(&self.proc_root, pid)
                .ok()
                .filter(|n| *n > 0)
            {
                Some(count) => count,
                None => procfs::fd_numbers(&self.proc_root, pid).ok()?.len() as u64,
            }
        };
        let soft_limit = procfs::fd_soft_limit(&self.proc_root, pid).ok()?;
        let usage = FdUsage { open, soft_limit };
        entry.usage = Some((round, usage));
        Some(usage)
    }

    /// Whether `pid`'s descriptor table may have changed since its fds were last listed:
    /// its count moved, or (a small table) its fd numbers did.
    fn descriptors_moved(&mut self, pid: u32) -> bool {
        let round = self.round;
        let Some(entry) = self.processes.get_mut(&pid) else {
            return false;
        };
        // 0: a kernel that does not count (before 6.2), or the process is gone.
        let count = procfs::fd_count(&self.proc_root, pid).unwrap_or(0);
        entry.counted = (round, count);
        if count == 0 || count != entry.fd_count {
            return true;
        }
        count <= LISTED_EVERY_ROUND
            && procfs::fd_numbers(&self.proc_root, pid).map_or(true, |numbers| {
                numbers.iter().any(|fd| !entry.fds.contains_key(fd))
            })
    }

    /// Drops processes that exited (or whose pid was reused); takes the new name of those
    /// that exec()ed or renamed themselves.
    fn rename_or_forget(&mut self) {
        let mut gone = Vec::new();
        for (pid, entry) in self.processes.iter_mut() {
            match procfs::read_stat(&self.proc_root, *pid) {
                Ok(stat) if stat.start_time == entry.start_time => {
                    if *entry.comm != *stat.comm {
                        entry.comm = stat.comm.into();
                    }
                }
                _ => gone.push(*pid),
            }
        }
        for pid in gone {
            self.forget(pid);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    use foldhash::HashSet;

    use super::*;

    /// A child that holds `socket` as its stdout and runs `script` in `sh`.
    fn child_holding(socket: std::net::TcpListener, script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                socket,
            )))
            .spawn()
            .expect("spawn sh")
    }

    fn inode_of(socket: &impl AsRawFd) -> u32 {
        fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
            .expect("stat fd")
            .ino() as u32
    }

    /// A socket of this process, and a cache that found it here (after `rounds` rounds).
    fn cached_here(rounds: u32) -> (std::net::TcpListener, u32, OwnerCache) {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&socket);
        let mut cache = OwnerCache::new("/proc");
        for _ in 0..rounds {
            cache.revalidate();
        }
        cache.resolve(&HashSet::from_iter([inode]), &[std::process::id()]);
        assert_eq!(
            cache.lookup(inode).expect("resolved").pid,
            std::process::id()
        );
        (socket, inode, cache)
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn a_process_that_execs_in_place_is_named_after_its_new_program() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&socket);
        let mut child = child_holding(socket, "read line; exec sleep 60");
        let pid = child.id();
        let mut cache = OwnerCache::new("/proc");
        cache.resolve(&HashSet::from_iter([inode]), &[pid]);
        assert_eq!(&*cache.lookup(inode).expect("resolved").comm, "sh");
        // Same pid, same start time, another program.
        let stdin = child.stdin.as_mut().expect("stdin");
        std::io::Write::write_all(stdin, b"go\n").expect("write");
        let comm = format!("/proc/{pid}/comm");
        wait_for("the exec", || {
            fs::read_to_string(&comm).is_ok_and(|c| c.trim_end() == "sleep")
        });
        cache.revalidate();
        let owner = cache.lookup(inode).expect("still held");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!((owner.pid, &*owner.comm), (pid, "sleep"));
    }

    #[test]
    fn a_socket_handed_over_follows_its_new_holder() {
        // This process holds the socket, the cache says so; then another process takes it
        // (as SCM_RIGHTS would) and this one closes its descriptor and lives on.
        let me = std::process::id();
        let (socket, inode, mut cache) = cached_here(0);
        cache.watch(me, inode);
        let mut child = child_holding(socket.try_clone().expect("dup"), "exec sleep 60");
        drop(socket);
        cache.revalidate();
        cache.resolve(&HashSet::from_iter([inode]), &[me]);
        let owner = cache.lookup(inode);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(owner.map(|o| o.pid), Some(child.id()));
    }

    #[test]
    fn a_socket_first_used_after_a_pause_is_checked_against_its_descriptor() {
        // The cached descriptor now holds another socket (the old one went to a child):
        // the first use of the inode in a round after an unused one reads that one link.
        let (socket, inode, mut cache) = cached_here(1);
        let mut child = child_holding(socket.try_clone().expect("dup"), "exec sleep 60");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        // SAFETY: both fds are open and owned by this test; dup2 replaces `socket`'s.
        assert_eq!(
            unsafe { libc::dup2(other.as_raw_fd(), socket.as_raw_fd()) },
            socket.as_raw_fd()
        );
        cache.revalidate();
        cache.revalidate();
        let owner = cache.owner_pid(inode);
        let reads = cache.take_validation_reads();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(owner, None, "the descriptor no longer holds it");
        assert_eq!(reads, 1, "one link read");
        drop(socket);
    }
}
