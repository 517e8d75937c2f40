//! The kernel's transition counts, summed over CPUs.

use super::STATE_SLOTS;
use crate::kernel::record::TcpState;

/// Transition counts by kernel state number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transitions {
    pub(super) counts: [[u64; STATE_SLOTS]; STATE_SLOTS],
}

impl Default for Transitions {
    fn default() -> Self {
        Transitions {
            counts: [[0; STATE_SLOTS]; STATE_SLOTS],
        }
    }
}

impl Transitions {
    pub fn get(&self, from: TcpState, to: TcpState) -> u64 {
        self.counts[from as usize][to as usize]
    }

    /// Every non-zero count, by kernel state number.
    pub fn nonzero(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
        self.counts.iter().enumerate().flat_map(|(from, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(move |(to, count)| (from as u8, to as u8, *count))
        })
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }
}

/// The kernel's counters, summed over CPUs. All only go up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every TCP transition in every namespace (with the filter on: in the namespaces
    /// of the filter).
    pub transitions: Transitions,
    /// Events not sent because the ring buffer was full.
    pub lost: u64,
    /// Transitions not counted per namespace because that map was full (they are in
    /// `transitions`).
    pub netns_overflow: u64,
    /// Transitions to or from a state number this program does not know.
    pub unknown_states: u64,
    /// Transitions of namespaces outside the filter (`EventsConfig::netns_filter`):
    /// neither counted above nor sent.
    pub filtered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_list_nonzero_counts_by_state_number() {
        let mut t = Transitions::default();
        t.counts[1][8] = 3;
        t.counts[8][9] = 2;
        assert_eq!(t.get(TcpState::Established, TcpState::CloseWait), 3);
        assert_eq!(t.nonzero().collect::<Vec<_>>(), vec![(1, 8, 3), (8, 9, 2)]);
        assert_eq!(t.total(), 5);
    }
}
