//! Phase 4's second half: when each newly seen CLOSE_WAIT socket entered the state,
//! from tcp_info's `last_ack_recv` (the peer's FIN is the last ACK-carrying segment a
//! socket in CLOSE_WAIT receives; see `model::ages`), read by whichever way costs least.

use foldhash::HashSet;

use super::table_source::TableSource;
use super::unix_now;
use crate::kernel::record::{SocketRecord, TcpState};
use crate::kernel::sockdiag::{DiagSocket, DumpError, DumpRequest};
use crate::model::ages::CloseWaitTracker;

/// New CLOSE_WAIT sockets are dated by exact lookups while they are at most one in this
/// many of the sockets the sample walked, and by one CLOSE_WAIT dump with tcp_info past
/// that. Measured at 100k sockets: a lookup costs ~5 µs, the dump ~1.3 µs per socket
/// walked plus the tcp_info of each CLOSE_WAIT: 7,000 lookups 0.27x the floor, the dump
/// 0.34x; the two meet near 40 %. On a namespace sharing the host's hash the dump walks
/// every other namespace's sockets too, so the lookups win by far more there.
const LOOKUPS_UP_TO_ONE_IN: u64 = 3;
/// Below this many, lookups whatever the table (a few sockets never justify a walk).
const MIN_LOOKUPS: u64 = 256;

/// Whether `count` new CLOSE_WAITs found by a walk of `walked` sockets are dated by
/// exact lookups (else by one CLOSE_WAIT dump with tcp_info).
pub fn dates_by_lookups(count: u64, walked: u64) -> bool {
    count <= MIN_LOOKUPS || count.saturating_mul(LOOKUPS_UP_TO_ONE_IN) <= walked
}

/// Entry time of newly seen CLOSE_WAIT sockets: as the table iterator's pass read their
/// tcp_info ages where this round's walk was one (no further read), else by one exact
/// lookup each (batched), a hash lookup where a CLOSE_WAIT dump would walk the whole
/// established hash again; by that dump only when the new sockets are a large share of
/// the `walked` table (see `LOOKUPS_UP_TO_ONE_IN`).
pub(super) fn refine_entry_times(
    (socket, table): (&mut DiagSocket, &mut TableSource),
    tracker: &mut CloseWaitTracker,
    new_close_wait: &[SocketRecord],
    walked: u64,
) -> Result<(), DumpError> {
    let pass_ended_at = table.take_pass_time();
    let mut undated = Vec::new();
    for record in new_close_wait {
        match (pass_ended_at, record.tcp_info) {
            (Some(read_at), Some(info)) => {
                tracker.set_entry_time(record.cookie, info.last_ack_recv_ms, read_at)
            }
            _ => undated.push(*record),
        }
    }
    if undated.is_empty() {
        return Ok(());
    }
    // Dated from when each answer is read, which may be well after the sample began.
    let mut date = |record: &SocketRecord| {
        if let Some(info) = record.tcp_info {
            tracker.set_entry_time(record.cookie, info.last_ack_recv_ms, unix_now());
        }
    };
    let count = undated.len() as u64;
    if dates_by_lookups(count, walked) {
        socket.lookup_many_with_info(&undated, &mut date)?;
        return Ok(());
    }
    let new: HashSet<u64> = undated.iter().map(|r| r.cookie).collect();
    // Its duplicates were counted by the walk that found these sockets.
    socket.dump(
        DumpRequest::for_states([TcpState::CloseWait], true),
        &mut |record| {
            if new.contains(&record.cookie) {
                date(record)
            }
        },
    )?;
    Ok(())
}
