//! The label values every stage shares: direction, port, owner, and the CLOSE_WAIT group
//! they make. They live below the stages that use them (aggregation, ages, exposition,
//! snapshot), so none of those has to import another for its types.

use std::fmt;

/// Who opened the connection, as far as the socket table can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// A peer connected to a port served here; the port label is the local port.
    Inbound,
    /// This host connected out; the port label is the remote (service) port.
    Outbound,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Index into `Sample::processes`; `ProcessId::UNKNOWN` is the empty name (an orphan, or
/// an owner that could not be resolved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId(pub u32);

impl ProcessId {
    pub const UNKNOWN: ProcessId = ProcessId(0);
    /// `process="other"`: the fold bucket, whatever the processes folded into it.
    pub const OTHER: ProcessId = ProcessId(u32::MAX);
}

/// The port label: a port, or the fold bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortLabel {
    Port(u16),
    Other,
}

impl fmt::Display for PortLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortLabel::Port(port) => write!(f, "{port}"),
            PortLabel::Other => f.write_str("other"),
        }
    }
}

/// Who owns a group: the process name, its pid when the pid label is on (else 0), and
/// its Kubernetes container name (an index into the same name table; "" off Kubernetes
/// or with `namespaces = "own"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    pub process: ProcessId,
    pub pid: u32,
    pub container: ProcessId,
}

impl OwnerKey {
    /// The owner of the fold bucket (`process="other"`).
    pub const OTHER: OwnerKey = OwnerKey {
        process: ProcessId::OTHER,
        pid: 0,
        container: ProcessId::UNKNOWN,
    };
}

/// The labels ages and durations are reported by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgeGroup {
    pub direction: Direction,
    pub port: PortLabel,
    pub owner: OwnerKey,
}

impl AgeGroup {
    /// The fold bucket this group goes to beyond `max_groups`: `port="other"`,
    /// `process="other"`, its direction kept. One per direction, so a metric's series
    /// stay bounded however many processes are folded.
    pub fn folded(self) -> AgeGroup {
        AgeGroup {
            port: PortLabel::Other,
            owner: OwnerKey::OTHER,
            ..self
        }
    }

    pub fn is_folded(&self) -> bool {
        self.port == PortLabel::Other && self.owner == OwnerKey::OTHER
    }
}
