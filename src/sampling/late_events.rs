//! Kernel events fetched in the middle of a round, when a followed namespace's table
//! looks stale (sockets born since the round's events were applied).

use crate::model::socket_table::StateTransition;

/// Events fetched in the middle of a round because a followed namespace asked: its own
/// are applied at once; the others' before their own sample, or after the round.
pub struct LateEvents<'a> {
    fetch: &'a mut dyn FnMut() -> Vec<(u64, StateTransition)>,
    pending: Vec<(u64, StateTransition)>,
}

impl<'a> LateEvents<'a> {
    pub fn new(fetch: &'a mut dyn FnMut() -> Vec<(u64, StateTransition)>) -> Self {
        LateEvents {
            fetch,
            pending: Vec::new(),
        }
    }

    /// What was fetched and not taken: events of namespaces already sampled.
    pub fn leftover(&mut self) -> Vec<(u64, StateTransition)> {
        std::mem::take(&mut self.pending)
    }

    /// Takes the pending events of namespace `inode`, in order.
    pub fn take_for(&mut self, inode: u64) -> Vec<StateTransition> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        let (mine, others) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(of, _)| *of == inode);
        self.pending = others;
        mine.into_iter().map(|(_, change)| change).collect()
    }

    /// Fetches what is queued now and takes namespace `inode`'s.
    pub fn fetch_for(&mut self, inode: u64) -> Vec<StateTransition> {
        let fetched = (self.fetch)();
        self.pending.extend(fetched);
        self.take_for(inode)
    }
}
