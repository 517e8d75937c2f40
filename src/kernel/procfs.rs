//! The /proc reads attribution is made of: which processes exist, who a process is (its
//! start time and name, in one read of /proc/PID/stat), how many descriptors it has open,
//! and which socket a descriptor holds.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Who a process is: its start time (with the pid, it identifies the process across pid
/// reuse) and its name (which `exec` and `prctl(PR_SET_NAME)` change, the start time not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub start_time: u64,
    pub comm: String,
}

/// Field 2 (the name) and field 22 (start time in clock ticks since boot) of
/// /proc/PID/stat.
pub fn read_stat(proc_root: &Path, pid: u32) -> io::Result<ProcStat> {
    let stat = fs::read(proc_root.join(pid.to_string()).join("stat"))?;
    parse_stat(&stat).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad stat"))
}

fn parse_stat(stat: &[u8]) -> Option<ProcStat> {
    // The name may hold spaces and parentheses: it runs from the first '(' to the last ')'.
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(stat.get(open + 1..close)?).into_owned();
    let start_time = std::str::from_utf8(&stat[close + 1..])
        .ok()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    Some(ProcStat { start_time, comm })
}

/// How many descriptors `pid` has open: the size `stat` reports for /proc/PID/fd (Linux
/// 6.2 and later; 0 before, which callers take as "unknown").
pub fn fd_count(proc_root: &Path, pid: u32) -> io::Result<u64> {
    Ok(fs::metadata(proc_root.join(pid.to_string()).join("fd"))?.len())
}

/// The soft RLIMIT_NOFILE of `pid` from /proc/PID/limits (readable by anyone, where
/// prlimit(2) on another user's process needs CAP_SYS_RESOURCE); `None` when unlimited.
pub fn fd_soft_limit(proc_root: &Path, pid: u32) -> io::Result<Option<u64>> {
    let limits = fs::read_to_string(proc_root.join(pid.to_string()).join("limits"))?;
    parse_fd_soft_limit(&limits)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Max open files line"))
}

fn parse_fd_soft_limit(limits: &str) -> Option<Option<u64>> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

/// The descriptor numbers `pid` has open (a listing of /proc/PID/fd, no link read).
pub fn fd_numbers(proc_root: &Path, pid: u32) -> io::Result<Vec<u32>> {
    Ok(fs::read_dir(proc_root.join(pid.to_string()).join("fd"))?
        .flatten()
        .filter_map(|e| parse_u32(e.file_name().as_bytes()))
        .collect())
}

/// The socket inode a descriptor link (/proc/PID/fd/N) points at; 0 for anything that is
/// not a socket.
pub fn fd_socket(link: &Path) -> io::Result<u32> {
    let target = fs::read_link(link)?;
    Ok(socket_inode(target.as_os_str().as_bytes()).unwrap_or(0))
}

/// The children of `pid` (/proc/PID/task/*/children, every thread's): where a pre-fork or
/// fork-per-connection server keeps the sockets its listener accepted. Empty when
/// unreadable.
pub fn children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(proc_root.join(pid.to_string()).join("task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| fs::read(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split(|b| b.is_ascii_whitespace())
                .filter_map(parse_u32)
                .collect::<Vec<_>>()
        })
        .collect();
    children.sort_unstable();
    children
}

/// Every pid under `proc_root`, ascending.
pub fn list_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(listing) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = listing
        .flatten()
        .filter_map(|e| parse_u32(e.file_name().as_bytes()))
        .collect();
    pids.sort_unstable();
    pids
}

pub fn parse_u32(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u32> {
    let inner = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    parse_u32(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
    }

    #[test]
    fn stat_survives_odd_process_names() {
        let mut fields = vec!["S"; 19];
        fields.push("424242");
        let stat = format!("7 (a) b (c) {} 0 0\n", fields.join(" "));
        assert_eq!(
            parse_stat(stat.as_bytes()),
            Some(ProcStat {
                start_time: 424242,
                comm: "a) b (c".into()
            })
        );
        assert_eq!(parse_stat(b"7 (truncated"), None);
    }

    #[test]
    fn reads_the_soft_descriptor_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63459                63459                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_fd_soft_limit(limits), Some(Some(1024)));
        assert_eq!(
            parse_fd_soft_limit(
                "Max open files            unlimited            unlimited            files\n"
            ),
            Some(None)
        );
        assert_eq!(parse_fd_soft_limit("Max processes 1 1 processes\n"), None);
        let me = std::process::id();
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
        assert_eq!(
            fd_soft_limit(Path::new("/proc"), me).expect("own limits"),
            Some(own.rlim_cur)
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let stat = read_stat(Path::new("/proc"), me).expect("own stat");
        let comm = fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(stat.comm, comm.trim_end());
        assert!(fd_count(Path::new("/proc"), me).expect("fd count") >= 3);
    }
}
