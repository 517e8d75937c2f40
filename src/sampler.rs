//! One sample of one network namespace: dump listeners, then every other socket, and
//! stream each through classification into the aggregate.
//!
//! Listeners are dumped first (a walk of the listening hash only) because classifying a
//! connection needs the namespace's full set of listening ports; the second dump walks
//! the established hash once for both families, and memory stays flat however many
//! sockets pass through it.

use crate::aggregate::{GroupKey, ListenerKey, OwnerKey, PortLabel, Sample, SampleBuilder};
use crate::classify::{Classifier, ListeningPorts};
use crate::config::Settings;
use crate::record::{SocketRecord, TcpState};
use crate::sockdiag::{DiagSocket, DumpError, DumpRequest, DumpStats};
use crate::sysctl;

/// What one sample produced besides the aggregate.
#[derive(Clone, Copy, Debug, Default)]
pub struct SampleReport {
    pub dump: DumpStats,
}

/// Samples the namespace its netlink socket was opened in. Owns state kept between
/// samples (the socket, buffers).
pub struct Sampler {
    socket: DiagSocket,
    detail_mask: [bool; crate::record::STATE_COUNT],
    max_groups: usize,
    listening: ListeningPorts,
    listeners: Vec<SocketRecord>,
    warned_port_range: bool,
}

impl Sampler {
    /// Opens the netlink socket in the calling thread's network namespace.
    pub fn new(settings: &Settings) -> std::io::Result<Self> {
        let mut detail_mask = [false; crate::record::STATE_COUNT];
        for state in &settings.detail_states {
            detail_mask[state.index()] = true;
        }
        Ok(Sampler {
            socket: DiagSocket::open()?,
            detail_mask,
            max_groups: settings.max_groups,
            listening: ListeningPorts::default(),
            listeners: Vec::new(),
            warned_port_range: false,
        })
    }

    pub fn sample(&mut self) -> Result<(Sample, SampleReport), DumpError> {
        let ephemeral = match sysctl::ephemeral_port_range() {
            Ok(range) => range,
            Err(e) => {
                if !self.warned_port_range {
                    tracing::warn!(error = %e, "using the default ephemeral port range");
                    self.warned_port_range = true;
                }
                sysctl::DEFAULT_EPHEMERAL_RANGE
            }
        };
        let mut report = SampleReport::default();
        let mut builder = SampleBuilder::default();

        self.listening.clear();
        self.listeners.clear();
        let listeners = &mut self.listeners;
        let listening = &mut self.listening;
        let stats = self.socket.dump(
            DumpRequest::for_states([TcpState::Listen], false),
            &mut |record| {
                listening.insert(record.local_port);
                listeners.push(*record);
            },
        )?;
        accumulate(&mut report.dump, stats);
        for listener in &self.listeners {
            builder.count_state(TcpState::Listen);
            let key = ListenerKey {
                port: PortLabel::Port(listener.local_port),
                owner: OwnerKey::default(),
            };
            builder.add_listener(key, listener);
        }

        let classifier = Classifier {
            listening: &self.listening,
            ephemeral,
        };
        let detail_mask = self.detail_mask;
        let all_but_listen = TcpState::ALL.into_iter().filter(|s| *s != TcpState::Listen);
        let stats = self.socket.dump(
            DumpRequest::for_states(all_but_listen, false),
            &mut |record| {
                // The listening hash was read by the first dump; a listener showing up
                // here (created between the dumps) must not be counted twice.
                if record.state == TcpState::Listen {
                    return;
                }
                builder.count_state(record.state);
                if !detail_mask[record.state.index()] {
                    return;
                }
                let (direction, port) = classifier.classify(record.local_port, record.remote_port);
                let unaccepted = record.unowned()
                    && classifier.listening.contains(record.local_port)
                    && matches!(record.state, TcpState::Established | TcpState::CloseWait);
                let key = GroupKey {
                    state: record.state,
                    direction,
                    port: PortLabel::Port(port),
                    owner: OwnerKey::default(),
                };
                builder.add_connection(key, record, unaccepted);
            },
        )?;
        accumulate(&mut report.dump, stats);
        Ok((builder.finish(self.max_groups, vec![String::new()]), report))
    }
}

fn accumulate(total: &mut DumpStats, stats: DumpStats) {
    total.duplicates += stats.duplicates;
    total.unknown_states += stats.unknown_states;
}
