use super::*;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

#[test]
fn resolves_a_socket_of_this_process_then_answers_from_cache() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let path = format!("/proc/self/fd/{}", listener.as_raw_fd());
    let inode = fs::metadata(&path).expect("stat fd").ino() as u32;
    let me = std::process::id();
    let mut cache = OwnerCache::new("/proc");
    let wanted: HashSet<u32> = HashSet::from_iter([inode]);
    let stats = cache.resolve(&wanted, &[me]);
    assert_eq!(stats.unresolved, 0);
    assert_eq!(stats.processes_listed, 0, "found in the likely process");
    let owner = cache.lookup(inode).expect("resolved");
    assert_eq!(owner.pid, me);
    let comm = fs::read_to_string("/proc/self/comm").expect("comm");
    assert_eq!(&*owner.comm, comm.trim_end());
    // Known now: a second pass reads nothing.
    assert_eq!(cache.resolve(&wanted, &[me]), ResolveStats::default());
    cache.revalidate();
    assert!(cache.lookup(inode).is_some(), "this process is alive");
}

/// Resolves a listener of this process into `cache`, then puts another socket behind
/// the same fd number (what accept() after close() does in a server), deterministically
/// even with other tests opening fds. Returns the listener (closing it closes the fd,
/// which then holds the second socket), the old inode and the new one.
fn reuse_an_fd_number(cache: &mut OwnerCache) -> (std::net::TcpListener, u32, u32) {
    let inode_of = |fd: i32| {
        fs::metadata(format!("/proc/self/fd/{fd}"))
            .expect("stat fd")
            .ino() as u32
    };
    let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let fd = first.as_raw_fd();
    let old_inode = inode_of(fd);
    cache.resolve(&HashSet::from_iter([old_inode]), &[std::process::id()]);
    assert!(cache.lookup(old_inode).is_some());
    let second = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: both fds are open and owned by this test; dup2 replaces `fd`.
    assert_eq!(unsafe { libc::dup2(second.as_raw_fd(), fd) }, fd);
    // Only `fd` holds the new socket now. Kept open, `second`'s own fd number would be
    // new to the cache whenever other tests had shifted fd numbers, and the pass over
    // new fds would find the socket there without re-reading `fd`.
    drop(second);
    let new_inode = inode_of(fd);
    assert_ne!(new_inode, old_inode);
    (first, old_inode, new_inode)
}

#[test]
fn a_reused_fd_number_is_followed_to_its_new_socket() {
    let mut cache = OwnerCache::new("/proc");
    let (first, old_inode, new_inode) = reuse_an_fd_number(&mut cache);
    let stats = cache.resolve(&HashSet::from_iter([new_inode]), &[std::process::id()]);
    assert_eq!(stats.unresolved, 0, "found behind the reused number");
    assert_eq!(
        stats.processes_listed, 0,
        "in the likely process, without a /proc walk"
    );
    assert_eq!(
        stats.processes_listed_by_kernel, 0,
        "the iterator is not allowed"
    );
    assert!(cache.lookup(new_inode).is_some());
    assert!(
        cache.lookup(old_inode).is_none(),
        "the closed socket left the index"
    );
    drop(first);
}

#[test]
fn a_socket_in_a_child_of_the_likely_owner_is_found_without_a_walk() {
    // A pre-fork server: the listener's process forked the worker that holds it.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let inode = fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .expect("stat fd")
        .ino() as u32;
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            socket,
        )))
        .spawn()
        .expect("spawn sleep");
    let mut cache = OwnerCache::new("/proc");
    let stats = cache.resolve(&HashSet::from_iter([inode]), &[std::process::id()]);
    let owner = cache.lookup(inode).map(|o| o.pid);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(owner, Some(child.id()));
    assert_eq!(stats.processes_listed, 0, "no /proc walk: {stats:?}");
}

#[test]
fn an_inode_nobody_holds_is_unresolved_not_an_error() {
    let mut cache = OwnerCache::new("/proc");
    let stats = cache.resolve(&HashSet::from_iter([u32::MAX]), &[u32::MAX]);
    assert_eq!(stats.unresolved, 1);
    assert!(stats.processes_listed > 0);
    assert!(cache.lookup(u32::MAX).is_none());
}

/// Needs root (CAP_BPF): with the iterator allowed, a likely owner whose new fd numbers
/// do not show the socket is listed by one iterator pass over its descriptors, not by a
/// readlink of each, and the socket behind the reused number is found.
#[test]
fn a_reused_fd_number_is_found_by_one_pass_over_the_process() {
    let mut cache = OwnerCache::new("/proc");
    cache.set_bpf_listing(true);
    let (first, old_inode, new_inode) = reuse_an_fd_number(&mut cache);
    let stats = cache.resolve(&HashSet::from_iter([new_inode]), &[std::process::id()]);
    assert_eq!(stats.unresolved, 0, "found behind the reused number");
    assert_eq!(
        stats.processes_listed_by_kernel, 1,
        "by one pass: {stats:?}"
    );
    assert_eq!(
        cache.lookup(new_inode).map(|o| o.pid),
        Some(std::process::id())
    );
    assert!(
        cache.lookup(old_inode).is_none(),
        "the replaced socket left the index"
    );
    drop(first);
}
