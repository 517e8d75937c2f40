//! Network namespaces: discovery, and entering one on the calling thread.
//!
//! sock_diag only shows the namespace of the socket that asks, so seeing every container's
//! sockets means one netlink socket per namespace, opened after `setns(CLONE_NEWNET)`.
//! Only the sampling thread ever changes namespace (the async runtime's threads never do),
//! and it always returns to its own before going on.
//!
//! Discovery reads `/run/netns/*` (namespaces named by `ip netns add`) and
//! `/proc/*/ns/net` (every namespace some process lives in), de-duplicated by inode.
//! Nothing here keeps a namespace open between samples: a namespace whose last process
//! exited is simply not discovered again, and the caller drops its socket.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A discovered network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRef {
    /// Inode of the namespace (as `ls -L -i /proc/PID/ns/net` shows): its identity.
    pub inode: u64,
    /// Name given by `ip netns add`, if any.
    pub name: Option<String>,
    /// A path that opens it now: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
    /// Lowest pid living in it, and its name (none for a named namespace nobody runs in).
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// Where to look; the real paths in production, a fixture tree in tests.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc: PathBuf,
    pub run_netns: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            run_netns: PathBuf::from("/run/netns"),
        }
    }
}

/// Inode of the calling thread's network namespace.
pub fn own_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Every namespace currently alive, ordered by inode. Processes that exit mid-scan and
/// unreadable entries are skipped: discovery never fails as a whole.
pub fn discover(roots: &Roots) -> Vec<NamespaceRef> {
    let mut found: BTreeMap<u64, NamespaceRef> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(&roots.run_netns) {
        for entry in entries.flatten() {
            let path = entry.path();
            // A bind mount of nsfs: stat (following) gives the namespace inode; a plain
            // file left behind by a deleted namespace has a different device and fails setns
            // later, which the caller counts.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !is_nsfs(&meta) {
                continue;
            }
            found.insert(
                meta.ino(),
                NamespaceRef {
                    inode: meta.ino(),
                    name: Some(entry.file_name().to_string_lossy().into_owned()),
                    path,
                    pid: None,
                    comm: None,
                },
            );
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir(&roots.proc)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    std::str::from_utf8(e.file_name().as_bytes())
                        .ok()?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let path = roots.proc.join(pid.to_string()).join("ns/net");
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // exited, or a kernel thread we may not look at
        };
        let entry = found.entry(meta.ino()).or_insert_with(|| NamespaceRef {
            inode: meta.ino(),
            name: None,
            path: path.clone(),
            pid: None,
            comm: None,
        });
        if entry.pid.is_none() {
            entry.pid = Some(pid);
            entry.comm = std::fs::read(roots.proc.join(pid.to_string()).join("comm"))
                .ok()
                .map(|b| String::from_utf8_lossy(b.trim_ascii_end()).into_owned());
            if entry.name.is_none() {
                entry.path = path;
            }
        }
    }
    found.into_values().collect()
}

fn is_nsfs(meta: &std::fs::Metadata) -> bool {
    // NSFS_MAGIC files have no fixed device number; they are what setns accepts. A
    // regular file that is not a mount point has the device of /run, so compare with it.
    std::fs::metadata("/proc/self/ns/net")
        .map(|own| own.dev() == meta.dev())
        .unwrap_or(false)
}

/// While alive, the calling thread is in another network namespace; dropping it returns
/// the thread to the namespace it was in.
pub struct Entered {
    home: File,
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> io::Result<Entered> {
    let home = File::open("/proc/thread-self/ns/net")?;
    let target = File::open(path)?;
    setns(&target)?;
    Ok(Entered { home })
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            // Continuing in the wrong namespace would sample the wrong table: stop.
            tracing::error!(error = %e, "cannot return to the exporter's own network namespace");
            std::process::abort();
        }
    }
}

fn setns(file: &File) -> io::Result<()> {
    // SAFETY: setns takes a valid open fd and a namespace type flag; it touches no memory.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_this_processs_namespace_with_its_lowest_pid() {
        let own = own_inode().expect("own namespace");
        let all = discover(&Roots::default());
        let mine = all
            .iter()
            .find(|ns| ns.inode == own)
            .expect("own namespace discovered");
        let pid = mine.pid.expect("someone lives in it");
        assert!(pid <= std::process::id());
        assert!(mine.comm.is_some());
        let inodes: Vec<u64> = all.iter().map(|n| n.inode).collect();
        let mut sorted = inodes.clone();
        sorted.dedup();
        assert_eq!(inodes, sorted, "one entry per namespace");
    }

    #[test]
    fn entering_and_leaving_the_own_namespace_is_harmless() {
        let own = own_inode().expect("own");
        let entered = enter(Path::new("/proc/self/ns/net")).expect("setns needs CAP_SYS_ADMIN");
        assert_eq!(own_inode().expect("own"), own);
        drop(entered);
        assert_eq!(own_inode().expect("own"), own);
    }

    #[test]
    fn a_missing_namespace_is_an_error_not_a_panic() {
        assert!(enter(Path::new("/proc/999999999/ns/net")).is_err());
        let empty = Roots {
            proc: PathBuf::from("/nonexistent"),
            run_netns: PathBuf::from("/nonexistent"),
        };
        assert!(discover(&empty).is_empty());
    }
}
