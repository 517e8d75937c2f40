//! Kernel events fetched in the middle of a round, when a followed namespace's table
//! looks stale (sockets born since the round's events were applied).

use std::collections::BTreeMap;

use crate::model::socket_table::StateTransition;

/// Events fetched in the middle of a round because a followed namespace asked: its own
/// are applied at once; the others' before their own sample, or after the round.
pub struct LateEvents<'a> {
    fetch: &'a mut dyn FnMut() -> Vec<(u64, StateTransition)>,
    /// Per namespace, in the kernel's order.
    pending: BTreeMap<u64, Vec<StateTransition>>,
}

impl<'a> LateEvents<'a> {
    pub fn new(fetch: &'a mut dyn FnMut() -> Vec<(u64, StateTransition)>) -> Self {
        LateEvents {
            fetch,
            pending: BTreeMap::new(),
        }
    }

    /// What was fetched and not taken: events of namespaces already sampled.
    pub fn leftover(&mut self) -> Vec<(u64, StateTransition)> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .flat_map(|(inode, changes)| changes.into_iter().map(move |c| (inode, c)))
            .collect()
    }

    /// Takes the pending events of namespace `inode`, in order.
    pub fn take_for(&mut self, inode: u64) -> Vec<StateTransition> {
        self.pending.remove(&inode).unwrap_or_default()
    }

    /// Fetches what is queued now and takes namespace `inode`'s.
    pub fn fetch_for(&mut self, inode: u64) -> Vec<StateTransition> {
        for (of, change) in (self.fetch)() {
            self.pending.entry(of).or_default().push(change);
        }
        self.take_for(inode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::record::TcpState;

    fn change(cookie: u64) -> StateTransition {
        StateTransition {
            cookie,
            at: 0.0,
            from: Some(TcpState::SynSent),
            to: Some(TcpState::Established),
            bound_dev_if: 0,
            local: "127.0.0.1:1".parse().unwrap(),
            remote: "127.0.0.1:2".parse().unwrap(),
        }
    }

    /// A namespace gets its own events in the kernel's order; the others wait for
    /// their sample, or for the round's end, in order too.
    #[test]
    fn each_namespace_takes_its_own_in_order() {
        let mut batches = vec![vec![(7, change(1)), (8, change(2)), (7, change(3))]];
        let mut fetch = || batches.pop().unwrap_or_default();
        let mut late = LateEvents::new(&mut fetch);
        assert!(late.take_for(7).is_empty(), "nothing fetched yet");
        let mine: Vec<u64> = late.fetch_for(7).iter().map(|c| c.cookie).collect();
        assert_eq!(mine, [1, 3]);
        assert!(late.fetch_for(7).is_empty(), "fetched once");
        assert_eq!(late.take_for(8).len(), 1);
        assert!(late.leftover().is_empty());
    }
}
