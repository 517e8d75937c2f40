//! Why a dump failed, and the bounded reasons the error counter is labelled with.

use std::io;

/// Why a dump failed; each maps to a `reason` label of `tcpstate_sample_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("kernel refused the sock_diag request: {0}")]
    Kernel(io::Error),
    #[error("malformed sock_diag message: {0}")]
    Decode(String),
    #[error("the kernel marked the dump interrupted (NLM_F_DUMP_INTR)")]
    Interrupted,
    #[error("netlink receive buffer overrun (ENOBUFS)")]
    Overrun,
    /// The BPF table iterator's pass failed after it had handed sockets over (see
    /// `sampling::sampler::table_source`): not a netlink failure.
    #[error("BPF table iterator pass: {0}")]
    Iterator(io::Error),
}

impl DumpError {
    /// The reason label this error is counted under.
    pub fn reason(&self) -> SampleErrorReason {
        match self {
            DumpError::Io(_) => SampleErrorReason::NetlinkIo,
            DumpError::Kernel(_) => SampleErrorReason::NetlinkRefused,
            DumpError::Decode(_) => SampleErrorReason::Decode,
            DumpError::Interrupted => SampleErrorReason::DumpInterrupted,
            DumpError::Overrun => SampleErrorReason::Enobufs,
            DumpError::Iterator(_) => SampleErrorReason::BpfIterator,
        }
    }
}

/// Every `reason` of `tcpstate_sample_errors_total`: exported from the start at 0, so
/// that `rate()` and `increase()` see the first error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleErrorReason {
    NetlinkIo,
    NetlinkRefused,
    Decode,
    DumpInterrupted,
    Enobufs,
    BpfIterator,
}

impl SampleErrorReason {
    /// Every reason, in the order of their discriminants (`reason as usize` indexes it).
    pub const ALL: [SampleErrorReason; 6] = [
        SampleErrorReason::NetlinkIo,
        SampleErrorReason::NetlinkRefused,
        SampleErrorReason::Decode,
        SampleErrorReason::DumpInterrupted,
        SampleErrorReason::Enobufs,
        SampleErrorReason::BpfIterator,
    ];

    /// The stable, bounded label value.
    pub fn name(self) -> &'static str {
        match self {
            SampleErrorReason::NetlinkIo => "netlink_io",
            SampleErrorReason::NetlinkRefused => "netlink_refused",
            SampleErrorReason::Decode => "decode",
            SampleErrorReason::DumpInterrupted => "dump_interrupted",
            SampleErrorReason::Enobufs => "enobufs",
            SampleErrorReason::BpfIterator => "bpf_iterator",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_reasons_are_indexed_by_their_discriminant() {
        for (i, reason) in SampleErrorReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.name());
        }
    }
}
