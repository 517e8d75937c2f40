//! Every open descriptor of every process in one pass of a BPF `task_file` iterator
//! (bpf/socket_fds.bpf.c), with the socket inode behind it: what the first attribution
//! would otherwise learn from one readlink(2) per descriptor of /proc/PID/fd (about 5 µs
//! each in the kernel, two thirds of a first attributed sample at 100k sockets).
//!
//! Needs what the events mode needs (kernel BTF, CAP_BPF + CAP_PERFMON, or
//! CAP_SYS_ADMIN), Linux 5.8+. The pids are those of the initial pid namespace: callers
//! use this only when /proc shows that namespace.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::record_bytes::Record;
use crate::kernel::record::{HeldSocket, TcpState};

/// The compiled iterators, embedded at build time (see build.rs).
pub(super) static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_fds.bpf.o"));

/// Bytes of one `struct socket_fd` (bpf/socket_fds.h).
const RECORD_LEN: usize = 16;

/// Bytes of one `struct held_socket` (bpf/socket_fds.h).
const HELD_LEN: usize = 32;

/// One open descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFd {
    pub pid: u32,
    pub fd: u32,
    /// Socket inode; 0 when the descriptor is not a socket.
    pub inode: u32,
}

/// The programs in the object: every descriptor of the host, and one process's TCP
/// sockets.
const LISTER: &str = "socket_fds";
const HELD: &str = "held_sockets";
/// `HELD` without the kfunc it calls (`bpf_rdonly_cast`, Linux 6.2+), for 6.1.
const HELD_PROBE_READ: &str = "held_sockets_probe_read";

/// The iterator programs, loaded once (one parse of the kernel's BTF and the CO-RE
/// relocation, see `iter_load`); each pass makes a link of its own, read once.
pub struct SocketFdLister {
    lister: OwnedFd,
    held: OwnedFd,
}

impl SocketFdLister {
    pub fn load() -> io::Result<SocketFdLister> {
        let [lister, held]: [OwnedFd; 2] = super::iter_load::load_iterators(
            PROGRAM,
            super::iter_load::TASK_FILE,
            &[&[LISTER], &[HELD, HELD_PROBE_READ]],
        )?
        .try_into()
        .map_err(|_| io::Error::other("socket_fds.bpf.o: two programs expected"))?;
        Ok(SocketFdLister { lister, held })
    }

    /// The TCP sockets (listeners aside) that process `pid`'s descriptors hold, with
    /// their queues (one pass over that process's files only; Linux 6.1+). Empty when
    /// the process is gone.
    pub fn held_sockets(&mut self, pid: u32) -> io::Result<Vec<HeldSocket>> {
        let bytes = super::iter_link::read(self.held.as_fd(), Some(pid))
            .map_err(|e| io::Error::other(format!("iter/task_file for one process: {e}")))?;
        Ok(parse_held(&bytes, pid))
    }

    /// Every descriptor of process `pid` alone, in one pass over its files (Linux
    /// 6.1+): what a readlink of each of its /proc/PID/fd entries would tell, at a
    /// fraction of the cost. Empty when the process is gone.
    pub fn list_process(&mut self, pid: u32) -> io::Result<Vec<OpenFd>> {
        let bytes = super::iter_link::read(self.lister.as_fd(), Some(pid))
            .map_err(|e| io::Error::other(format!("iter/task_file for one process: {e}")))?;
        Ok(parse(&bytes))
    }

    /// Lists every descriptor of every process (threads sharing their leader's table
    /// are listed once), in one pass.
    pub fn list(&mut self) -> io::Result<Vec<OpenFd>> {
        let bytes = super::iter_link::read(self.lister.as_fd(), None)
            .map_err(|e| io::Error::other(format!("iter/task_file: {e}")))?;
        Ok(parse(&bytes))
    }
}

/// Held sockets from `held_sockets`' output (a trailing partial record, or a state this
/// build does not know, is left out).
fn parse_held(bytes: &[u8], holder: u32) -> Vec<HeldSocket> {
    bytes
        .chunks_exact(HELD_LEN)
        .filter_map(|chunk| {
            let record = Record::<HELD_LEN>::new(chunk)?;
            Some(HeldSocket {
                cookie: record.u64_at(0),
                inode: record.u32_at(8),
                uid: record.u32_at(12),
                recv_queue: record.u32_at(16),
                send_queue: record.u32_at(20),
                state: TcpState::from_kernel(record.u8_at(24))?,
                keepalive_armed: record.u8_at(25) != 0,
                holder,
            })
        })
        .collect()
}

/// Records from the iterator's output (a trailing partial record is ignored).
fn parse(bytes: &[u8]) -> Vec<OpenFd> {
    bytes
        .chunks_exact(RECORD_LEN)
        .filter_map(Record::<RECORD_LEN>::new)
        .map(|record| OpenFd {
            pid: record.u32_at(0),
            fd: record.u32_at(4),
            inode: record.u32_at(8),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn parses_records_and_ignores_a_partial_tail() {
        let mut bytes = Vec::new();
        for value in [7u32, 3, 99, 0, 8, 4, 0, 0] {
            bytes.extend_from_slice(&value.to_ne_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3]);
        let fds = parse(&bytes);
        assert_eq!(
            fds,
            vec![
                OpenFd {
                    pid: 7,
                    fd: 3,
                    inode: 99
                },
                OpenFd {
                    pid: 8,
                    fd: 4,
                    inode: 0
                }
            ]
        );
    }

    /// One 32-byte `struct held_socket` per socket (bpf/socket_fds.h); a state this
    /// build does not know and a partial tail are left out.
    #[test]
    fn parses_held_sockets() {
        let record = |cookie: u64, words: [u32; 4], state: u8, keepalive: u8| {
            let mut bytes = cookie.to_ne_bytes().to_vec();
            for word in words {
                bytes.extend_from_slice(&word.to_ne_bytes());
            }
            bytes.extend_from_slice(&[state, keepalive, 0, 0, 0, 0, 0, 0]);
            bytes
        };
        let mut bytes = record(7, [11, 1000, 5, 3], 8, 1); // CLOSE_WAIT, keepalive
        bytes.extend(record(8, [12, 0, 0, 0], 99, 0)); // unknown state
        bytes.extend(record(9, [13, 0, 0, 0], 1, 0)); // ESTABLISHED
        bytes.extend_from_slice(&[1, 2, 3]);
        let held = parse_held(&bytes, 42);
        let expected =
            |cookie, state, inode, uid, recv_queue, send_queue, keepalive_armed| HeldSocket {
                cookie,
                state,
                recv_queue,
                send_queue,
                inode,
                uid,
                keepalive_armed,
                holder: 42,
            };
        assert_eq!(
            held,
            [
                expected(7, TcpState::CloseWait, 11, 1000, 5, 3, true),
                expected(9, TcpState::Established, 13, 0, 0, 0, false),
            ]
        );
    }

    /// Needs root (CAP_BPF) and kernel BTF: the program that reads a socket's fields
    /// through the `bpf_rdonly_cast` kfunc (linked by our loader) loads here, and reads
    /// what its probe-read fallback (for 6.1) reads: this process's connection with
    /// unread bytes at one end and unacknowledged at neither.
    #[test]
    fn the_kfunc_program_and_its_fallback_read_the_same_figures() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.write_all(b"hello").expect("write");
        let server_inode = std::fs::metadata(format!("/proc/self/fd/{}", server.as_raw_fd()))
            .expect("stat fd")
            .ino() as u32;
        let programs = super::super::iter_load::load_iterators(
            PROGRAM,
            super::super::iter_load::TASK_FILE,
            &[&[HELD], &[HELD_PROBE_READ]],
        )
        .expect("both programs load (root, kernel BTF, Linux 6.2+)");
        let read = |program: &OwnedFd| {
            // The 5 bytes may still be in flight on loopback for a moment.
            for _ in 0..100 {
                let bytes =
                    super::super::iter_link::read(program.as_fd(), Some(std::process::id()))
                        .expect("a pass");
                let mut held = parse_held(&bytes, std::process::id());
                held.sort_by_key(|h| h.inode);
                if held
                    .iter()
                    .any(|h| h.inode == server_inode && h.recv_queue == 5)
                {
                    return held;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("the server end never showed its 5 unread bytes");
        };
        let cast = read(&programs[0]);
        let probe_read = read(&programs[1]);
        assert_eq!(cast, probe_read);
        let server_end = cast
            .iter()
            .find(|h| h.inode == server_inode)
            .expect("server end");
        assert_eq!(
            (
                server_end.state,
                server_end.send_queue,
                server_end.keepalive_armed
            ),
            (TcpState::Established, 0, false)
        );
        drop((client, server));
    }

    /// Needs root (CAP_BPF) and kernel BTF: the iterator lists this process's socket
    /// with its fd and inode, and a non-socket fd with inode 0.
    #[test]
    fn lists_this_process_socket_with_its_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let file = std::fs::File::open("/proc/self/comm").expect("open");
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .expect("stat fd")
            .ino() as u32;
        // Needs root and kernel BTF, as the events mode does (the README's test command
        // runs as root): fails rather than skips without them.
        let mut lister = SocketFdLister::load().expect("iterators (root, kernel BTF)");
        let me = std::process::id();
        let socket = OpenFd {
            pid: me,
            fd: listener.as_raw_fd() as u32,
            inode,
        };
        let plain = OpenFd {
            pid: me,
            fd: file.as_raw_fd() as u32,
            inode: 0,
        };
        // A process that does not exist holds nothing (pids stop below 2^22).
        let none = lister
            .held_sockets(1 << 30)
            .expect("no such process: no error");
        assert!(none.is_empty());
        // The loaded program serves pass after pass (a link each).
        for pass in 0..2 {
            let fds = lister.list().expect("a pass");
            assert!(
                fds.contains(&socket),
                "pass {pass}: {} records, none for our socket",
                fds.len()
            );
            assert!(
                fds.contains(&plain),
                "pass {pass}: our plain file is missing"
            );
        }
    }
}
