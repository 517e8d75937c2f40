//! The per-socket view: the sockets behind the groups, as `ss -tanpie` would show them
//! (addresses, queues, inode, cookie, owner pid and fd, CLOSE_WAIT age), kept from the
//! sample that counted them so that the drill-down (`/api/v1/sockets`, `snapshot
//! --sockets`) and the live page never ask the kernel themselves.
//!
//! Bounded: a round keeps at most `MAX_CLOSE_WAIT_SOCKETS` CLOSE_WAIT sockets and
//! `MAX_OTHER_SOCKETS` sockets of the other detail states, over every namespace, with a
//! budget the namespaces draw from in turn (CLOSE_WAIT have their own, so a busy table of
//! established connections never pushes them out). What did not fit is counted.

use std::cmp::Reverse;
use std::net::SocketAddr;

use crate::kernel::record::{SocketRecord, TcpState};
use crate::model::labels::{Direction, OwnerKey};

/// CLOSE_WAIT sockets one round keeps, over every namespace.
pub const MAX_CLOSE_WAIT_SOCKETS: usize = 10_000;
/// Sockets of the other detail states (default: established) one round keeps.
pub const MAX_OTHER_SOCKETS: usize = 10_000;

/// How old a CLOSE_WAIT socket is, and how that is known.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SocketAge {
    pub seconds: f64,
    /// Dated by a kernel event (events mode): exact. Otherwise a lower bound (from
    /// `tcp_info.last_ack_recv` at first sighting, see README "Ages").
    pub exact: bool,
}

/// One socket of a detail state (or CLOSE_WAIT), as the sample saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SocketView {
    /// As the dump reported it: addresses, queues (Recv-Q as `ss` shows it), inode,
    /// cookie, keepalive.
    pub record: SocketRecord,
    pub direction: Direction,
    /// The port its group is labelled with: the local port inbound, the remote one
    /// outbound.
    pub port: u16,
    /// The owning program (for an accept-queue connection: its listener's).
    pub owner: OwnerKey,
    /// The process holding its descriptor, and the descriptor (none for an accept-queue
    /// connection or an orphan). A socket shared across fork(): the lowest pid.
    pub holder: Option<(u32, u32)>,
    /// Still in a listener's accept queue: no process holds it yet.
    pub unaccepted: bool,
    pub age: Option<SocketAge>,
}

impl SocketView {
    /// A socket as the dump streamed it; owner, holder and age are filled in at the end
    /// of the sample.
    pub fn of(record: &SocketRecord, direction: Direction, port: u16, unaccepted: bool) -> Self {
        SocketView {
            record: SocketRecord {
                tcp_info: None,
                ..*record
            },
            direction,
            port,
            owner: OwnerKey::default(),
            holder: None,
            unaccepted,
            age: None,
        }
    }

    pub fn state(&self) -> TcpState {
        self.record.state
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.record.local_addr, self.record.local_port)
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.record.remote_addr, self.record.remote_port)
    }
}

/// How many more sockets of each kind a round may still keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBudget {
    pub close_wait: usize,
    pub other: usize,
}

impl Default for SocketBudget {
    fn default() -> Self {
        SocketBudget {
            close_wait: MAX_CLOSE_WAIT_SOCKETS,
            other: MAX_OTHER_SOCKETS,
        }
    }
}

impl SocketBudget {
    /// What is left after `list` took its share.
    pub fn spend(&mut self, list: &SocketList) {
        let close_wait = list
            .sockets
            .iter()
            .filter(|s| s.state() == TcpState::CloseWait)
            .count();
        self.close_wait = self.close_wait.saturating_sub(close_wait);
        self.other = self
            .other
            .saturating_sub(list.sockets.len().saturating_sub(close_wait));
    }
}

/// The sockets one namespace's sample kept, CLOSE_WAIT first (oldest first), and how
/// many the budget left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SocketList {
    pub sockets: Vec<SocketView>,
    /// Sockets seen but not kept: the round's budget was spent.
    pub left_out: u64,
}

/// Collects the sockets of one sample within its budget.
#[derive(Debug, Default)]
pub struct SocketCollector {
    budget: SocketBudget,
    list: SocketList,
}

impl SocketCollector {
    pub fn new(budget: SocketBudget) -> Self {
        SocketCollector {
            budget,
            list: SocketList::default(),
        }
    }

    /// Keeps `view` if the budget allows, else counts it.
    pub fn add(&mut self, view: SocketView) {
        let room = if view.state() == TcpState::CloseWait {
            &mut self.budget.close_wait
        } else {
            &mut self.budget.other
        };
        if *room == 0 {
            self.list.left_out += 1;
            return;
        }
        *room -= 1;
        self.list.sockets.push(view);
    }

    /// The kept sockets, to fill in what the dump did not know yet.
    pub fn sockets_mut(&mut self) -> &mut [SocketView] {
        &mut self.list.sockets
    }

    /// The list in its order: CLOSE_WAIT first, oldest first, then by state and cookie.
    pub fn finish(mut self) -> SocketList {
        oldest_first(&mut self.list.sockets, |s| s);
        self.list
    }
}

/// Sorts sockets (or items holding one) CLOSE_WAIT first, oldest first (to the
/// millisecond), then by state and cookie: one order for a namespace and across them.
/// Each key is computed once and the small (key, index) pairs are sorted, not the items:
/// a sampler's list holds up to ~20k views of 136 bytes, and a stable sort of them
/// (keys recomputed per comparison, a scratch copy of half the list) was ~2 % of the
/// daemon's CPU at 100 pods.
pub fn oldest_first<T>(items: &mut [T], view: impl Fn(&T) -> &SocketView) {
    items.sort_by_cached_key(|item| {
        let s = view(item);
        let age_ms = s.age.map_or(0, |a| (a.seconds * 1000.0) as u64);
        (
            s.state() != TcpState::CloseWait,
            s.state(),
            Reverse(age_ms),
            s.record.cookie,
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: TcpState, cookie: u64, age: Option<f64>) -> SocketView {
        let record = SocketRecord {
            cookie,
            ..SocketRecord::for_tests(state, 1, 0)
        };
        SocketView {
            age: age.map(|seconds| SocketAge {
                seconds,
                exact: false,
            }),
            ..SocketView::of(&record, Direction::Inbound, 80, false)
        }
    }

    #[test]
    fn close_wait_and_others_have_their_own_budget() {
        let mut collector = SocketCollector::new(SocketBudget {
            close_wait: 2,
            other: 1,
        });
        for cookie in 0..3 {
            collector.add(view(TcpState::Established, cookie, None));
            collector.add(view(TcpState::CloseWait, 10 + cookie, Some(cookie as f64)));
        }
        let list = collector.finish();
        let kept: Vec<(TcpState, u64)> = list
            .sockets
            .iter()
            .map(|s| (s.state(), s.record.cookie))
            .collect();
        assert_eq!(
            kept,
            vec![
                (TcpState::CloseWait, 11),
                (TcpState::CloseWait, 10),
                (TcpState::Established, 0)
            ],
            "CLOSE_WAIT first, oldest first"
        );
        assert_eq!(list.left_out, 3);
        let mut budget = SocketBudget {
            close_wait: 5,
            other: 5,
        };
        budget.spend(&list);
        assert_eq!(
            budget,
            SocketBudget {
                close_wait: 3,
                other: 4
            }
        );
    }

    #[test]
    fn the_readme_states_the_view_cost() {
        let readme = include_str!("../../README.md");
        let stated = format!("**{} bytes per socket**", std::mem::size_of::<SocketView>());
        assert!(readme.contains(&stated), "README should say {stated}");
        assert!(readme.contains("at most 10,000 CLOSE_WAIT sockets and 10,000"));
        assert_eq!(
            (MAX_CLOSE_WAIT_SOCKETS, MAX_OTHER_SOCKETS),
            (10_000, 10_000)
        );
    }
}
