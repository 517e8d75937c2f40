//! The TCP table of the calling thread's network namespace in one pass of a BPF `tcp`
//! iterator (bpf/tcp_table.bpf.c): the records a sock_diag dump without extensions
//! gives, at less cost. Measured at 100k sockets (2026-12-04): the pass ~0.8x a minimal
//! sock_diag dump's CPU; a netlink dump builds a ~130-byte message with four or five
//! attributes per socket whatever is asked, the iterator writes one 80-byte record.
//! A CLOSE_WAIT record carries tcp_info's two ages in jiffies; with the kernel's HZ
//! known (`kernel::hz`) they become the `TcpInfoExcerpt` a lookup with tcp_info gives,
//! so a first sample dates its CLOSE_WAIT sockets without one lookup each.
//!
//! Records stream through a 64 KiB buffer, as a dump's do: memory does not grow with
//! the table. Like a dump, the pass is not atomic: it resumes bucket by bucket, so a
//! socket can come twice across two reads, and the same de-duplication applies.
//!
//! Needs what the events mode needs (kernel BTF, CAP_BPF + CAP_PERFMON, or
//! CAP_SYS_ADMIN), Linux 5.12+ (`bpf_get_socket_cookie` in tracing programs).

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use super::record_bytes::Record;
use crate::kernel::hz;
use crate::kernel::record::{SocketRecord, TcpInfoExcerpt, TcpState};
use crate::kernel::sockdiag::{Deduper, DumpStats};

/// The compiled iterator, embedded at build time (see build.rs).
pub(super) static PROGRAM: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_table.bpf.o"));

/// Bytes of one `struct tcp_table_socket` (bpf/tcp_table.h).
const RECORD_LEN: usize = 80;
/// Bytes read at a time: two of the iterator's 32 KiB buffers.
const READ_LEN: usize = 64 * 1024;

/// The loaded iterator program; each pass makes a link of its own, read once.
pub struct TcpTable {
    program: OwnedFd,
    buffer: Vec<u8>,
    /// The kernel's HZ, when its configuration says it: CLOSE_WAIT ages need it.
    hz: Option<u32>,
    /// Records after which a pass fails, for tests of a failure the kernel cannot be
    /// made to produce on demand.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl TcpTable {
    pub fn load() -> io::Result<TcpTable> {
        let [program]: [OwnedFd; 1] =
            super::iter_load::load_iterators(PROGRAM, super::iter_load::TCP, &[&["tcp_table"]])?
                .try_into()
                .map_err(|_| io::Error::other("tcp_table.bpf.o: one program expected"))?;
        Ok(TcpTable {
            program,
            buffer: Vec::new(),
            hz: hz::kernel_hz(),
            #[cfg(test)]
            fail_after: None,
        })
    }

    /// One pass over the calling thread's namespace: `on_record` gets each socket whose
    /// state is in `states` (a `TcpState::kernel_mask` union), once; a CLOSE_WAIT
    /// socket with its `tcp_info` ages when the kernel's HZ is known. An error after the
    /// first record leaves `on_record` with part of the table: the caller must not
    /// complete it from another source.
    pub fn dump(
        &mut self,
        states: u32,
        on_record: &mut dyn FnMut(&SocketRecord),
    ) -> io::Result<DumpStats> {
        let file = super::iter_link::open(self.program.as_fd(), None)
            .map_err(|e| io::Error::new(e.kind(), format!("iter/tcp: {e}")))?;
        self.buffer.resize(READ_LEN, 0);
        #[cfg(test)]
        if let Some(records) = self.fail_after {
            let source = FailingAfter(file.take((records * RECORD_LEN) as u64));
            return stream(source, &mut self.buffer, states, self.hz, on_record);
        }
        stream(file, &mut self.buffer, states, self.hz, on_record)
    }

    /// Makes every later pass fail after `records` records.
    #[cfg(test)]
    pub(crate) fn fail_after(&mut self, records: usize) {
        self.fail_after = Some(records);
    }
}

/// A pass cut short: what the inner reader gives, then an error where it would end.
#[cfg(test)]
struct FailingAfter<R>(R);

#[cfg(test)]
impl<R: Read> Read for FailingAfter<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.0.read(out)? {
            0 => Err(io::Error::other("injected: the pass failed")),
            n => Ok(n),
        }
    }
}

/// Reads `source` to its end through `buffer`, decoding whole records (a record split
/// across two reads is joined) and dropping the duplicates of the read before.
fn stream(
    mut source: impl Read,
    buffer: &mut [u8],
    states: u32,
    hz: Option<u32>,
    on_record: &mut dyn FnMut(&SocketRecord),
) -> io::Result<DumpStats> {
    let mut stats = DumpStats::default();
    let mut deduper = Deduper::default();
    let mut carried = 0;
    loop {
        let read = match source.read(&mut buffer[carried..]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let filled = carried + read;
        let whole = filled - filled % RECORD_LEN;
        deduper.start_read();
        for chunk in buffer[..whole].chunks_exact(RECORD_LEN) {
            let Some(record) = decode(chunk, hz, &mut stats) else {
                continue;
            };
            if deduper.is_duplicate(record.cookie) {
                stats.duplicates += 1;
            } else if states & record.state.kernel_mask() != 0 {
                on_record(&record);
            }
        }
        buffer.copy_within(whole..filled, 0);
        carried = filled - whole;
    }
    if carried != 0 {
        return Err(io::Error::other(format!(
            "iter/tcp: the pass ended inside a record ({carried} of {RECORD_LEN} bytes)"
        )));
    }
    Ok(stats)
}

/// One `struct tcp_table_socket`; `None` for a short record, and (counted) for a state
/// this build does not know.
fn decode(chunk: &[u8], hz: Option<u32>, stats: &mut DumpStats) -> Option<SocketRecord> {
    let record = Record::<RECORD_LEN>::new(chunk)?;
    let family = u16::from(record.u8_at(64));
    let Some(state) = TcpState::from_kernel(record.u8_at(65)) else {
        stats.unknown_states += 1;
        return None;
    };
    Some(SocketRecord {
        state,
        local_addr: record.ip_at(family, 8),
        local_port: record.u16_at(60),
        remote_addr: record.ip_at(family, 24),
        remote_port: u16::from_be_bytes(record.array(62)),
        recv_queue: record.u32_at(48),
        send_queue: record.u32_at(52),
        inode: record.u32_at(40),
        uid: record.u32_at(44),
        cookie: record.u64_at(0),
        keepalive_armed: record.u8_at(66) != 0,
        bound_dev_if: record.u32_at(56),
        tcp_info: hz
            .filter(|_| state == TcpState::CloseWait)
            .map(|hz| TcpInfoExcerpt {
                last_ack_recv_ms: hz::jiffies_to_ms(record.u32_at(68), hz),
                last_data_recv_ms: hz::jiffies_to_ms(record.u32_at(72), hz),
            }),
        held_by: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use crate::kernel::sockdiag::{DiagSocket, DumpRequest};

    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;

    /// A record as the iterator writes it (bpf/tcp_table.h).
    fn raw(cookie: u64, state: u8, family: u8, ports: (u16, u16)) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD_LEN];
        bytes[..8].copy_from_slice(&cookie.to_ne_bytes());
        bytes[8..12].copy_from_slice(&[127, 0, 0, 1]);
        bytes[24..28].copy_from_slice(&[10, 0, 0, 2]);
        bytes[48..52].copy_from_slice(&6u32.to_ne_bytes());
        bytes[60..62].copy_from_slice(&ports.0.to_ne_bytes());
        bytes[62..64].copy_from_slice(&ports.1.to_be_bytes());
        bytes[64] = family;
        bytes[65] = state;
        bytes[68..72].copy_from_slice(&3u32.to_ne_bytes());
        bytes[72..76].copy_from_slice(&5u32.to_ne_bytes());
        bytes
    }

    /// Reads in pieces of `step` bytes: records split across reads.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Whole records are decoded across reads that split them; a socket repeated at the
    /// start of the next read is dropped and counted; an unknown state is counted; the
    /// state filter applies; a CLOSE_WAIT gets its ages in ms at the given HZ; a pass
    /// that ends inside a record is an error.
    #[test]
    fn streams_records_split_across_reads_and_drops_repeats() {
        let mut bytes = raw(1, 10, AF_INET, (80, 0)); // LISTEN
        bytes.extend(raw(2, 8, AF_INET, (80, 40000))); // CLOSE_WAIT
        bytes.extend(raw(3, 1, AF_INET6, (80, 40001))); // ESTABLISHED, IPv6
        bytes.extend(raw(4, 99, AF_INET, (80, 40002))); // unknown state
        let mut got = Vec::new();
        let mut buffer = vec![0u8; 2 * RECORD_LEN];
        let states = TcpState::CloseWait.kernel_mask() | TcpState::Established.kernel_mask();
        let stats = stream(
            Trickle(&bytes, 100),
            &mut buffer,
            states,
            Some(250),
            &mut |r| {
                let ages = r
                    .tcp_info
                    .map(|i| (i.last_ack_recv_ms, i.last_data_recv_ms));
                got.push((
                    r.cookie,
                    r.state,
                    r.local_port,
                    r.remote_port,
                    r.recv_queue,
                    ages,
                ))
            },
        )
        .expect("a whole pass");
        assert_eq!(
            got,
            [
                (2, TcpState::CloseWait, 80, 40000, 6, Some((12, 20))),
                (3, TcpState::Established, 80, 40001, 6, None)
            ]
        );
        assert_eq!((stats.duplicates, stats.unknown_states), (0, 1));

        // Read 2 starts with read 1's last socket again (a bucket resumed after an insert).
        let mut repeated = raw(2, 8, AF_INET, (80, 40000));
        repeated.extend(raw(2, 8, AF_INET, (80, 40000)));
        let mut count = 0;
        let stats = stream(
            Trickle(&repeated, RECORD_LEN),
            &mut buffer,
            u32::MAX,
            None,
            &mut |_| count += 1,
        )
        .expect("a whole pass");
        assert_eq!((count, stats.duplicates), (1, 1));

        let cut = &bytes[..RECORD_LEN + 5];
        let error = stream(Trickle(cut, 64), &mut buffer, u32::MAX, None, &mut |_| {})
            .expect_err("a pass cut inside a record");
        assert!(error.to_string().contains("inside a record"), "{error}");
    }

    fn set_option(fd: i32, level: i32, name: i32, value: &[u8]) {
        // SAFETY: `value` is valid for its length during the call.
        let rc =
            unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) };
        assert_eq!(rc, 0, "setsockopt {name}: {}", io::Error::last_os_error());
    }

    /// Every record of a netlink dump with tcp_info and of an iterator pass of the
    /// calling thread's namespace, sorted by cookie, and the milliseconds between the
    /// dump's start and the pass's end.
    fn both_views() -> (Vec<SocketRecord>, Vec<SocketRecord>, u32) {
        let all = TcpState::ALL.into_iter();
        let request = DumpRequest::for_states(all, true);
        let started = std::time::Instant::now();
        let mut netlink = Vec::new();
        DiagSocket::open()
            .expect("sock_diag socket")
            .dump(request, &mut |r| netlink.push(*r))
            .expect("dump");
        let mut iterated = Vec::new();
        TcpTable::load()
            .expect("the iterator loads (root, kernel BTF)")
            .dump(request.states, &mut |r| iterated.push(*r))
            .expect("a pass");
        let elapsed = started.elapsed().as_millis() as u32;
        netlink.sort_by_key(|r| r.cookie);
        iterated.sort_by_key(|r| r.cookie);
        (netlink, iterated, elapsed)
    }

    fn without_tcp_info(records: &[SocketRecord]) -> Vec<SocketRecord> {
        let strip = |r: &SocketRecord| SocketRecord {
            tcp_info: None,
            ..*r
        };
        records.iter().map(strip).collect()
    }

    /// The scenario of `a_pass_equals_a_sock_diag_dump_field_for_field`, built in the
    /// calling thread's namespace, and both views of it once they agree.
    fn scenario_views() -> (Vec<SocketRecord>, Vec<SocketRecord>, u32) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        set_option(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b"lo\0",
        );
        let dual = TcpListener::bind("[::]:0").expect("bind [::]");
        let v6 = TcpListener::bind("[::1]:0").expect("bind [::1]");
        let address = listener.local_addr().expect("addr");
        let mut reading = TcpStream::connect(address).expect("connect");
        let mut mapped = TcpStream::connect(("127.0.0.1", dual.local_addr().expect("addr").port()))
            .expect("connect v4-mapped");
        let ipv6 = TcpStream::connect(v6.local_addr().expect("addr")).expect("connect");
        let closing = TcpStream::connect(address).expect("connect");
        let timing_out = TcpStream::connect(address).expect("connect");
        let held: Vec<TcpStream> = (0..3)
            .map(|_| listener.accept().expect("accept").0)
            .chain([
                dual.accept().expect("accept").0,
                v6.accept().expect("accept").0,
            ])
            .collect();
        let one: [u8; 4] = 1i32.to_ne_bytes();
        set_option(ipv6.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE, &one);
        reading.write_all(b"hello").expect("write");
        mapped.write_all(b"hi").expect("write");
        drop(closing); // its server end: CLOSE_WAIT with the FIN unread
        // Closed first, its peer held open: an orphan in FIN_WAIT2, which the
        // kernel keeps as a time-wait socket whose substate sock_diag reports.
        timing_out.shutdown(Shutdown::Both).expect("shutdown");
        drop(timing_out);
        // Connected after the three accepts: left in the accept queue.
        let _queued = TcpStream::connect(address).expect("connect");
        // CLOSE_WAIT for at least this long when the views are read.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut last = both_views();
        for _ in 0..100 {
            let same = without_tcp_info(&last.0) == without_tcp_info(&last.1);
            if same && last.0.iter().any(|r| r.recv_queue == 5) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            last = both_views();
        }
        drop(held);
        last
    }

    /// The CLOSE_WAIT ages are tcp_info's, read a little later: never less, and no
    /// more than the time between the two reads plus a tick each (HZ 100 at worst).
    fn assert_close_wait_ages(netlink: &[SocketRecord], iterated: &[SocketRecord], elapsed: u32) {
        let hz = hz::kernel_hz().expect("this kernel's HZ (see kernel::hz)");
        let close_waits = netlink.iter().zip(iterated);
        let mut dated = 0;
        for (sock_diag, pass) in close_waits.filter(|(r, _)| r.state == TcpState::CloseWait) {
            let (Some(before), Some(after)) = (sock_diag.tcp_info, pass.tcp_info) else {
                panic!("a CLOSE_WAIT without its ages at HZ {hz}: {sock_diag:?} / {pass:?}");
            };
            let slack = elapsed + 20;
            for (from, to) in [
                (before.last_ack_recv_ms, after.last_ack_recv_ms),
                (before.last_data_recv_ms, after.last_data_recv_ms),
            ] {
                assert!(
                    to >= 200 && to >= from && to <= from + slack,
                    "{from} then {to} ms"
                );
            }
            dated += 1;
        }
        assert_eq!(dated, 2, "both CLOSE_WAIT sockets dated");
    }

    /// Loopback connections opened and closed in the calling thread's namespace until
    /// `stop`; how many. Each leaves a time-wait socket in the host-wide hash that every
    /// namespace's pass walks past.
    fn churn(stop: &std::sync::atomic::AtomicBool) -> u64 {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("addr");
        let mut made = 0;
        while !stop.load(Ordering::Relaxed) {
            // Out of ephemeral ports under time-wait is possible on a long run: go on.
            if let Ok(client) = TcpStream::connect(address) {
                let server = listener.accept().map(|(server, _)| server);
                drop((client, server));
                made += 1;
            }
        }
        made
    }

    /// Needs root (CAP_BPF, kernel BTF, private network namespaces). The iterator
    /// reports every socket as sock_diag does, field for field: a listener with a
    /// connection in its accept queue and a device bound, IPv4 and IPv6 and v4-mapped
    /// connections, unread bytes, keepalive, CLOSE_WAIT with its FIN, and an orphan's
    /// FIN_WAIT2 (held by the kernel as a time-wait socket). On a busy host: another
    /// namespace churns connections through the same hash and two threads spin while
    /// both views are read.
    #[test]
    fn a_pass_equals_a_sock_diag_dump_field_for_field() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let ns = tcpstate_testkit::netns::Netns::create("tcptable")
            .expect("a network namespace (root, iproute2)");
        let busy = tcpstate_testkit::netns::Netns::create("tcptable-churn")
            .expect("a network namespace (root, iproute2)");
        let stop = AtomicBool::new(false);
        let (views, churned) = std::thread::scope(|scope| {
            let churner = scope.spawn(|| busy.run(|| churn(&stop)).expect("churn"));
            for _ in 0..2 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            let views = ns.run(scenario_views);
            stop.store(true, Ordering::Relaxed);
            (views, churner.join().expect("the churning thread"))
        });
        let (netlink, iterated, elapsed) = views.expect("run in the namespace");
        assert!(
            churned > 100,
            "the other namespace churned only {churned} connections"
        );
        assert_eq!(without_tcp_info(&netlink), without_tcp_info(&iterated));
        assert_close_wait_ages(&netlink, &iterated, elapsed);
        assert!(
            iterated
                .iter()
                .all(|r| r.tcp_info.is_none() || r.state == TcpState::CloseWait)
        );
        let states: std::collections::BTreeSet<TcpState> =
            iterated.iter().map(|r| r.state).collect();
        for state in [
            TcpState::Listen,
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::FinWait2,
        ] {
            assert!(states.contains(&state), "no {state} socket in {states:?}");
        }
        let queued = iterated
            .iter()
            .find(|r| r.state == TcpState::Listen && r.bound_dev_if != 0)
            .expect("the bound listener");
        assert_eq!(
            queued.recv_queue, 1,
            "one connection left in its accept queue"
        );
        assert!(iterated.iter().any(|r| r.keepalive_armed), "keepalive");
        assert!(
            iterated
                .iter()
                .any(|r| r.state == TcpState::FinWait2 && r.inode == 0),
            "the orphan in FIN_WAIT2"
        );
        assert!(
            iterated
                .iter()
                .any(|r| r.local_addr.is_ipv6() && r.recv_queue == 2)
        );
    }
}
