//! Micro-benchmarks of the per-socket hot path: decoding an inet_diag message,
//! classifying the connection, aggregating it. Each runs over a batch of 10,000
//! synthetic sockets built as the kernel lays them out, so the figures read as
//! "per 10k sockets" (divide by 10,000 for per socket).
//!
//! `cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcpstate_exporter::kernel::record::{SocketRecord, TcpState};
use tcpstate_exporter::kernel::sockdiag::{DumpStats, decode_socket};
use tcpstate_exporter::model::aggregate::{ConnectionFacts, GroupKey, SampleBuilder};
use tcpstate_exporter::model::classify::{Classifier, ListeningPorts};
use tcpstate_exporter::model::labels::{Direction, OwnerKey, PortLabel, ProcessId};

const BATCH: usize = 10_000;
/// `struct inet_diag_msg`.
const HEADER_LEN: usize = 72;
/// The attributes the kernel puts on every full socket whatever was asked (Linux 6.x,
/// as root): INET_DIAG_SHUTDOWN (u8), INET_DIAG_MARK (u32), INET_DIAG_CGROUP_ID (u64),
/// INET_DIAG_SOCKOPT (u16), as (length, type) headers and padded values.
const USUAL_ATTRIBUTES: [u8; 36] = [
    5, 0, 8, 0, 0, 0, 0, 0, // shutdown
    8, 0, 15, 0, 0, 0, 0, 0, // mark
    12, 0, 21, 0, 1, 2, 3, 4, 5, 6, 7, 8, // cgroup id
    6, 0, 22, 0, 0, 0, 0, 0, // socket options
];
const MESSAGE_LEN: usize = HEADER_LEN + USUAL_ATTRIBUTES.len();

/// An inet_diag_msg (IPv4) as the kernel writes it, with its usual attributes.
fn message(state: u8, local_port: u16, remote_port: u16, cookie: u64) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[HEADER_LEN..].copy_from_slice(&USUAL_ATTRIBUTES);
    m[0] = libc::AF_INET as u8;
    m[1] = state;
    m[4..6].copy_from_slice(&local_port.to_be_bytes());
    m[6..8].copy_from_slice(&remote_port.to_be_bytes());
    m[8..12].copy_from_slice(&[127, 0, 0, 1]);
    m[24..28].copy_from_slice(&[127, 0, 0, 1]);
    m[44..52].copy_from_slice(&cookie.to_ne_bytes());
    m[56..60].copy_from_slice(&(cookie as u32 % 3).to_ne_bytes()); // recv queue
    m[68..72].copy_from_slice(&(cookie as u32 + 1000).to_ne_bytes()); // inode
    m
}

/// A mix like the benchmark table's: mostly established, some CLOSE_WAIT and
/// TIME_WAIT, inbound on 50 service ports and outbound to 20.
fn messages() -> Vec<[u8; MESSAGE_LEN]> {
    (0..BATCH as u64)
        .map(|i| {
            let state = match i % 20 {
                0..=13 => 1,  // established
                14 | 15 => 8, // close_wait
                16 | 17 => 6, // time_wait
                _ => 5,       // fin_wait2
            };
            let ephemeral = 20_000 + (i % 40_000) as u16;
            if i % 2 == 0 {
                message(state, 2_000 + (i % 50) as u16, ephemeral, i)
            } else {
                message(state, ephemeral, 3_000 + (i % 20) as u16, i)
            }
        })
        .collect()
}

fn records() -> Vec<SocketRecord> {
    let mut stats = DumpStats::default();
    messages()
        .iter()
        .filter_map(|m| decode_socket(m, &mut stats).ok().flatten())
        .collect()
}

fn listening() -> ListeningPorts {
    let mut ports = ListeningPorts::default();
    for port in 2_000..2_050 {
        ports.insert(port);
    }
    ports
}

fn decode(c: &mut Criterion) {
    let batch = messages();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("inet_diag_msg x10k", |b| {
        b.iter(|| {
            let mut stats = DumpStats::default();
            let mut sum = 0u64;
            for m in &batch {
                if let Ok(Some(r)) = decode_socket(black_box(m), &mut stats) {
                    sum += u64::from(r.local_port) + r.cookie;
                }
            }
            sum
        })
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let records = records();
    let listening = listening();
    let classifier = Classifier {
        listening: &listening,
        ephemeral: 20_000..=65_000,
    };
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("direction and port x10k", |b| {
        b.iter(|| {
            let mut inbound = 0u32;
            for r in &records {
                let (direction, port) =
                    classifier.classify(black_box(r.local_port), black_box(r.remote_port));
                inbound += u32::from(direction == Direction::Inbound) + u32::from(port & 1);
            }
            inbound
        })
    });
    group.finish();
}

fn aggregate(c: &mut Criterion) {
    let records = records();
    let listening = listening();
    let classifier = Classifier {
        listening: &listening,
        ephemeral: 20_000..=65_000,
    };
    let detail = |s: TcpState| matches!(s, TcpState::Established | TcpState::CloseWait);
    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("classify + group x10k, finish", |b| {
        b.iter(|| {
            let mut builder = SampleBuilder::default();
            for r in &records {
                builder.count_state(r.state);
                if !detail(r.state) {
                    continue;
                }
                let (direction, port) = classifier.classify(r.local_port, r.remote_port);
                let key = GroupKey {
                    state: r.state,
                    direction,
                    port: PortLabel::Port(port),
                    owner: OwnerKey {
                        process: ProcessId((r.inode % 4) + 1),
                        pid: 0,
                        container: ProcessId::UNKNOWN,
                    },
                };
                builder.add_connection(key, ConnectionFacts::of(r, false));
            }
            builder.finish(500)
        })
    });
    group.finish();
}

criterion_group!(benches, decode, classify, aggregate);
criterion_main!(benches);
