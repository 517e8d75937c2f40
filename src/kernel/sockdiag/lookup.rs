//! Exact lookups of sockets already known by identity (addresses, ports, cookie), many
//! per system call.
//!
//! A dump walks the whole established hash whatever its state filter asks for (and on a
//! shared hash, every other namespace's sockets too); a lookup hashes straight to the
//! socket's bucket. So fetching `tcp_info` for the few thousand CLOSE_WAIT sockets of a
//! first sample costs what those sockets cost, not a second walk of the table. The
//! requests of a batch go out in one `send` (the kernel answers each message of a
//! netlink datagram in turn: the socket, or an error such as ENOENT for one that is
//! gone), and their answers are matched by sequence number.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::NetlinkBuffer;

use crate::kernel::record::SocketRecord;
use crate::kernel::sockdiag::decode::{DumpStats, NLMSG_ERROR, align4, decode_socket, error_code};
use crate::kernel::sockdiag::request::{by_family_request, push_message};
use crate::kernel::sockdiag::{
    DiagSocket, DumpError, DumpRequest, NLM_F_REQUEST, SOCK_DIAG_BY_FAMILY,
};

/// Requests per `send`. Every answer waits in the socket's receive buffer until read
/// (about 1.3 KiB of buffer each with tcp_info); 32 stay far below the 208 KiB default
/// (`net.core.rmem_default`), past which the kernel would drop answers.
const LOOKUP_BATCH: usize = 32;

/// What a batch of lookups found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    pub found: usize,
    /// Closed since they were seen (ENOENT).
    pub gone: usize,
}

impl DiagSocket {
    /// Looks up every socket of `records` with `tcp_info` and hands each one still there
    /// to `on_found`, fresh from the kernel.
    pub fn lookup_many_with_info(
        &mut self,
        records: &[SocketRecord],
        on_found: &mut dyn FnMut(&SocketRecord),
    ) -> Result<LookupStats, DumpError> {
        self.lookup_many(records, true, on_found)
    }

    /// Looks up every socket of `records` (with `tcp_info` when asked) and hands each
    /// one still there to `on_found`, fresh from the kernel.
    pub fn lookup_many(
        &mut self,
        records: &[SocketRecord],
        with_tcp_info: bool,
        on_found: &mut dyn FnMut(&SocketRecord),
    ) -> Result<LookupStats, DumpError> {
        let mut totals = LookupStats::default();
        let mut datagram = Vec::with_capacity(LOOKUP_BATCH * (16 + 56));
        for batch in records.chunks(LOOKUP_BATCH) {
            let first = self.send_lookups(batch, with_tcp_info, &mut datagram)?;
            let stats = self.read_lookup_answers(first, batch.len(), on_found)?;
            totals.found += stats.found;
            totals.gone += stats.gone;
        }
        Ok(totals)
    }

    /// Sends one lookup request per record in one datagram (built in `datagram`, reused
    /// across batches); returns the first sequence number (the others follow it).
    fn send_lookups(
        &mut self,
        batch: &[SocketRecord],
        with_tcp_info: bool,
        datagram: &mut Vec<u8>,
    ) -> Result<u32, DumpError> {
        let request = DumpRequest {
            states: u32::MAX,
            with_tcp_info,
        };
        let first = self.sequence.wrapping_add(1);
        datagram.clear();
        for record in batch {
            self.sequence = self.sequence.wrapping_add(1);
            let family = match record.local_addr {
                IpAddr::V4(_) => libc::AF_INET as u8,
                IpAddr::V6(_) => libc::AF_INET6 as u8,
            };
            let payload = by_family_request(family, request, Some(record));
            push_message(
                datagram,
                SOCK_DIAG_BY_FAMILY,
                NLM_F_REQUEST,
                self.sequence,
                &payload,
            );
        }
        self.socket.send(datagram, 0)?;
        Ok(first)
    }

    /// Reads until each of the `count` requests from sequence `first` on is answered.
    fn read_lookup_answers(
        &mut self,
        first: u32,
        count: usize,
        on_found: &mut dyn FnMut(&SocketRecord),
    ) -> Result<LookupStats, DumpError> {
        let mut stats = LookupStats::default();
        let mut ignored = DumpStats::default();
        while stats.found + stats.gone < count {
            let received = self.receive()?;
            let data = &self.buffer[..received];
            let mut offset = 0;
            while offset < data.len() {
                let message = NetlinkBuffer::new_checked(&data[offset..])
                    .map_err(|e| DumpError::Decode(format!("netlink header: {e}")))?;
                offset += align4(message.length() as usize);
                // A late answer to an earlier, abandoned request: not ours.
                if message.sequence_number().wrapping_sub(first) as usize >= count {
                    continue;
                }
                if message.message_type() == NLMSG_ERROR {
                    match error_code(&message)? {
                        // ENOENT: the socket closed since it was seen.
                        code if code == -libc::ENOENT => stats.gone += 1,
                        // An ACK (never asked for) answers nothing.
                        0 => {}
                        code => return Err(DumpError::Kernel(io::Error::from_raw_os_error(-code))),
                    }
                    continue;
                }
                if let Some(record) = decode_socket(message.payload(), &mut ignored)? {
                    on_found(&record);
                }
                stats.found += 1;
            }
        }
        Ok(stats)
    }
}
