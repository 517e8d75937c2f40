//! The netlink edge: dumps the TCP table of the calling thread's network namespace
//! through sock_diag and decodes each socket into a `SocketRecord`.
//!
//! Why a blocking `netlink-sys` socket read on the sampler's own thread, not netlink-proto:
//! see Cargo.toml. Records are handed to a callback straight from the receive buffer, so a
//! dump never holds the table in memory and decoding allocates nothing per socket.
//!
//! One walk for both families: the legacy `TCPDIAG_GETSOCK` request accepts `AF_UNSPEC`
//! and returns IPv4 and IPv6 sockets from a single pass over the kernel's hash tables,
//! where two `SOCK_DIAG_BY_FAMILY` requests would walk the shared established hash twice.
//! Kernels built without the compat path get the two-request fallback.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::kernel::record::SocketRecord;

mod decode;
mod error;
mod lookup;
mod request;

pub(crate) use decode::Deduper;
pub use decode::{DumpStats, decode_socket};
use decode::{ReadOutcome, decode_read};
pub use error::{DumpError, SampleErrorReason};
pub use lookup::LookupStats;
pub use request::DumpRequest;
use request::{by_family_request, legacy_request, push_message};

const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
/// Legacy request type of the inet_diag compat path (linux/inet_diag.h).
const TCPDIAG_GETSOCK: u16 = 18;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The kernel fills at most 32 KiB per dump read (netlink_recvmsg caps max_recvmsg_len);
/// a larger buffer only wastes memory, a smaller one costs more syscalls.
const RECV_BUFFER_LEN: usize = 64 * 1024;

/// A sock_diag netlink socket bound to the network namespace of the thread that opened it.
pub struct DiagSocket {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
    /// Cleared when the kernel refuses the legacy AF_UNSPEC request.
    legacy_supported: bool,
    /// A failure the next dump reports, for tests of what a real kernel cannot be
    /// made to do on demand (ENOBUFS, an interrupted dump).
    #[cfg(test)]
    pub(crate) inject: Option<DumpError>,
}

impl DiagSocket {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(DiagSocket {
            socket,
            buffer: vec![0; RECV_BUFFER_LEN],
            sequence: 0,
            legacy_supported: true,
            #[cfg(test)]
            inject: None,
        })
    }

    /// Dumps IPv4 and IPv6 TCP sockets matching `request`, calling `on_record` for each.
    pub fn dump(
        &mut self,
        request: DumpRequest,
        on_record: &mut dyn FnMut(&SocketRecord),
    ) -> Result<DumpStats, DumpError> {
        #[cfg(test)]
        if let Some(error) = self.inject.take() {
            return Err(error);
        }
        let mut stats = DumpStats::default();
        if self.legacy_supported {
            let message = legacy_request(request);
            match self.run_dump(TCPDIAG_GETSOCK, &message, &mut stats, on_record) {
                Ok(()) => return Ok(stats),
                Err(DumpError::Kernel(e)) if is_unsupported(&e) => {
                    tracing::info!(
                        error = %e,
                        "legacy AF_UNSPEC inet_diag request refused; using one dump per family"
                    );
                    self.legacy_supported = false;
                    stats = DumpStats::default();
                }
                Err(e) => return Err(e),
            }
        }
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let message = by_family_request(family, request, None);
            self.run_dump(SOCK_DIAG_BY_FAMILY, &message, &mut stats, on_record)?;
        }
        Ok(stats)
    }

    /// Sends one dump request and reads replies until DONE.
    fn run_dump(
        &mut self,
        message_type: u16,
        payload: &[u8],
        stats: &mut DumpStats,
        on_record: &mut dyn FnMut(&SocketRecord),
    ) -> Result<(), DumpError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut request = Vec::with_capacity(16 + payload.len());
        push_message(
            &mut request,
            message_type,
            NLM_F_REQUEST | NLM_F_DUMP,
            sequence,
            payload,
        );
        self.socket.send(&request, 0)?;

        let mut deduper = Deduper::default();
        loop {
            let received = self.receive()?;
            deduper.start_read();
            let outcome = decode_read(
                &self.buffer[..received],
                sequence,
                &mut deduper,
                stats,
                on_record,
            )?;
            if outcome == ReadOutcome::Done {
                return Ok(());
            }
        }
    }
}

impl DiagSocket {
    /// One datagram into the buffer; its length. ENOBUFS (answers the kernel dropped
    /// because the receive buffer was full) is an overrun.
    fn receive(&mut self) -> Result<usize, DumpError> {
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(DumpError::Overrun);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DumpError::Io(e)),
            }
        }
    }
}

fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)
    )
}
