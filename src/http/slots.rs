//! Connection slots: how many connections are served at once, and who loses a slot when
//! they are all taken.
//!
//! A plain cap lets unauthenticated clients lock Prometheus out: 256 idle connections,
//! or 256 that never read, take every slot. So when all slots are taken, a new
//! connection takes the slot of the oldest connection that has not been *trusted* yet
//! (no request on it has passed authentication), and that one is closed. A trusted
//! connection (a scraper whose credentials passed) is never shed; only when every slot
//! is trusted is the newcomer refused. A new scraper connection is the newest, so it has
//! until every other untrusted slot has been shed before its turn comes.
//!
//! The cap also follows the open-file limit: connections must not take the file
//! descriptors the sampler needs (netlink sockets, /proc reads, the events ring).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Connections served at once, when the open-file limit allows. Prometheus needs one
/// per server, so this only bites a flood.
pub const MAX_CONNECTIONS: usize = 256;
/// File descriptors kept for everything but HTTP connections.
const RESERVED_FDS: u64 = 64;
/// The fewest slots served, however low the open-file limit.
const MIN_CONNECTIONS: usize = 4;

/// The slot table, shared by the accept loop and every connection.
pub struct Slots {
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// By admission order: the first untrusted entry is the oldest.
    held: BTreeMap<u64, Holder>,
}

struct Holder {
    trusted: Arc<AtomicBool>,
    shed: Option<oneshot::Sender<()>>,
}

/// One connection's slot; given back on drop.
pub struct Slot {
    id: u64,
    slots: Arc<Slots>,
    trusted: Arc<AtomicBool>,
    shed: oneshot::Receiver<()>,
}

/// What a connection shows its slot: set once a request on it passed authentication.
#[derive(Clone)]
pub struct Trust(Arc<AtomicBool>);

impl Trust {
    pub fn grant(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots {
            capacity: capacity.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A slot for a new connection: a free one, or the oldest untrusted one's (which is
    /// told to close); `None` when every slot is trusted.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.held.len() >= self.capacity {
            let victim = table
                .held
                .iter()
                .find(|(_, holder)| !holder.trusted.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(shed) = table.held.remove(&victim).and_then(|mut h| h.shed.take()) {
                let _ = shed.send(());
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let (shed_tx, shed_rx) = oneshot::channel();
        let trusted = Arc::new(AtomicBool::new(false));
        table.held.insert(
            id,
            Holder {
                trusted: Arc::clone(&trusted),
                shed: Some(shed_tx),
            },
        );
        Some(Slot {
            id,
            slots: Arc::clone(self),
            trusted,
            shed: shed_rx,
        })
    }

    fn release(&self, id: u64) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.held.remove(&id);
    }
}

impl Slot {
    pub fn trust(&self) -> Trust {
        Trust(Arc::clone(&self.trusted))
    }

    /// Resolves when a newer connection took this slot: close the connection.
    pub async fn shed(&mut self) {
        if (&mut self.shed).await.is_err() {
            // The sender is only dropped with a table entry this slot still owns.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.id);
    }
}

/// The connection cap the open-file limit allows: the soft limit is raised to the hard
/// one first (as Go programs do at start), then `MAX_CONNECTIONS` is kept below it by
/// `RESERVED_FDS`. A limit that lowers the cap is said once at warn level: otherwise
/// connections beyond it fail in `accept`, and the sampler's own reads fail with them.
pub fn capacity_for_open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct on this process.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return MAX_CONNECTIONS;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    let capacity = cap_for(soft);
    if capacity < MAX_CONNECTIONS {
        tracing::warn!(
            open_file_limit = soft,
            connections = capacity,
            "the open-file limit is low: serving fewer connections at once than {MAX_CONNECTIONS}; \
             raise it (ulimit -n, LimitNOFILE=) to at least {}",
            MAX_CONNECTIONS as u64 + RESERVED_FDS
        );
    }
    capacity
}

fn cap_for(open_file_limit: u64) -> usize {
    let spare = open_file_limit.saturating_sub(RESERVED_FDS);
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_untrusted_slot_is_shed_and_trusted_ones_never() {
        let slots = Slots::new(3);
        let mut scraper = slots.admit().unwrap();
        scraper.trust().grant();
        let mut idle = slots.admit().unwrap();
        let mut idle2 = slots.admit().unwrap();
        // Full: the newcomer takes the oldest untrusted slot (`idle`), not the scraper's.
        let newcomer = slots.admit().unwrap();
        assert!(idle.shed.try_recv().is_ok(), "the oldest untrusted is shed");
        assert!(idle2.shed.try_recv().is_err());
        assert!(
            scraper.shed.try_recv().is_err(),
            "a trusted slot is never shed"
        );
        drop(idle);
        assert_eq!(
            slots.table.lock().unwrap().held.len(),
            3,
            "shed slot not counted twice"
        );
        newcomer.trust().grant();
        idle2.trust().grant();
        assert!(
            slots.admit().is_none(),
            "every slot trusted: the newcomer is refused"
        );
        drop(newcomer);
        assert!(slots.admit().is_some(), "a slot given back is free again");
    }

    #[test]
    fn the_cap_follows_the_open_file_limit() {
        assert_eq!(cap_for(1_048_576), MAX_CONNECTIONS);
        assert_eq!(cap_for(1024), MAX_CONNECTIONS);
        assert_eq!(cap_for(100), 36);
        assert_eq!(cap_for(64), MIN_CONNECTIONS);
        assert_eq!(cap_for(0), MIN_CONNECTIONS);
    }
}
