//! The socket table's unit tests: a socket's life in events, dumps, lookups and held
//! figures.

use super::*;

fn change(cookie: u64, from: TcpState, to: TcpState, local_port: u16) -> StateTransition {
    StateTransition {
        cookie,
        at: 0.0,
        from: Some(from),
        to: Some(to),
        bound_dev_if: 0,
        local: SocketAddr::from(([127, 0, 0, 1], local_port)),
        remote: SocketAddr::from(([127, 0, 0, 1], 80)),
    }
}

fn record(cookie: u64, state: TcpState) -> SocketRecord {
    SocketRecord {
        cookie,
        ..SocketRecord::for_tests(state, 0, 0)
    }
}

fn states(table: &SocketTable) -> Vec<(u64, TcpState)> {
    let mut out: Vec<_> = table.records().map(|r| (r.cookie, r.state)).collect();
    out.sort();
    out
}

fn close_wait_only() -> [bool; STATE_COUNT] {
    let mut fresh = [false; STATE_COUNT];
    fresh[TcpState::CloseWait.index()] = true;
    fresh
}

/// The sockets a round with only CLOSE_WAIT fresh looks up.
fn asked(table: &mut SocketTable) -> Vec<SocketRecord> {
    match table.plan(&close_wait_only(), &HashMap::new()) {
        LookupPlan::Lookups { asked, .. } => asked,
        LookupPlan::Dump => panic!("a dump was planned"),
    }
}

/// Their cookies, sorted.
fn planned(table: &mut SocketTable) -> Vec<u64> {
    let mut cookies: Vec<u64> = asked(table).iter().map(|r| r.cookie).collect();
    cookies.sort();
    cookies
}

/// A connection's life in events: born without its port, identified once
/// established, looked up only while in CLOSE_WAIT, gone after LAST_ACK.
#[test]
fn a_connection_is_followed_from_birth_to_close() {
    let mut table = SocketTable::from_dump(&[record(1, TcpState::Listen)]);
    assert!(table.is_empty(), "listeners are not kept");
    table.apply(&change(7, TcpState::Close, TcpState::SynSent, 0));
    assert_eq!(states(&table), [(7, TcpState::SynSent)]);
    assert_eq!(planned(&mut table), Vec::<u64>::new(), "no figures wanted");
    let mut fresh = close_wait_only();
    fresh[TcpState::SynSent.index()] = true;
    assert_eq!(
        table.plan(&fresh, &HashMap::new()),
        LookupPlan::Dump,
        "no port to look it up by"
    );
    table.apply(&change(7, TcpState::SynSent, TcpState::Established, 40000));
    table.apply(&change(
        7,
        TcpState::Established,
        TcpState::CloseWait,
        40000,
    ));
    let asked = asked(&mut table);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].local_port, 40000, "looked up by its own port");
    table.apply(&change(7, TcpState::CloseWait, TcpState::LastAck, 40000));
    table.apply(&change(7, TcpState::LastAck, TcpState::Close, 40000));
    assert!(table.is_empty());
}

/// An active closer may leave a time-wait socket, which changes and expires
/// without events: it is looked up until a lookup no longer finds it.
#[test]
fn a_time_wait_socket_is_looked_up_until_gone() {
    let mut table = SocketTable::from_dump(&[record(3, TcpState::Established)]);
    table.apply(&change(3, TcpState::Established, TcpState::FinWait1, 80));
    table.apply(&change(3, TcpState::FinWait1, TcpState::FinWait2, 80));
    table.apply(&change(3, TcpState::FinWait2, TcpState::Close, 80));
    assert_eq!(planned(&mut table), [3]);
    let asked = [record(3, TcpState::TimeWait)];
    table.take_lookups(&asked, vec![record(3, TcpState::FinWait2)]);
    assert_eq!(
        states(&table),
        [(3, TcpState::FinWait2)],
        "the substate the kernel gave"
    );
    assert_eq!(planned(&mut table), [3], "still looked up");
    table.take_lookups(&asked, Vec::new());
    assert!(table.is_empty(), "expired");
}

/// Changes that happened while the dump ran end where the kernel is, whether the
/// dump saw them or not.
#[test]
fn changes_during_the_dump_are_applied_idempotently() {
    let mut table = SocketTable::from_dump(&[
        record(1, TcpState::CloseWait),   // the dump saw the change
        record(2, TcpState::Established), // the dump came before it
    ]);
    table.apply(&change(1, TcpState::Established, TcpState::CloseWait, 1));
    table.apply(&change(2, TcpState::Established, TcpState::CloseWait, 2));
    // Born during the dump, after its bucket was walked; and one closed meanwhile.
    table.apply(&change(3, TcpState::SynRecv, TcpState::Established, 3));
    table.apply(&change(4, TcpState::Established, TcpState::Close, 4));
    assert_eq!(
        states(&table),
        [
            (1, TcpState::CloseWait),
            (2, TcpState::CloseWait),
            (3, TcpState::Established)
        ]
    );
}

/// A dumped SYN-RECV socket is taken for a request socket, which the kernel's
/// per-namespace totals leave out: it must not stand in for a missing socket.
#[test]
fn request_sockets_are_not_counted_against_the_kernels_totals() {
    let table = SocketTable::from_dump(&[
        record(1, TcpState::SynRecv),
        record(2, TcpState::Established),
    ]);
    assert_eq!((table.len(), table.counted_by_kernel()), (2, 1));
    let mut table = table;
    table.apply(&change(3, TcpState::Listen, TcpState::SynRecv, 0));
    assert_eq!(
        table.counted_by_kernel(),
        2,
        "a child from an event is a full socket"
    );
}

#[test]
fn a_socket_in_an_unknown_state_is_dropped() {
    let mut table = SocketTable::from_dump(&[record(5, TcpState::Established)]);
    table.apply(&StateTransition {
        to: None,
        ..change(5, TcpState::Established, TcpState::Established, 5)
    });
    assert!(table.is_empty());
}

/// Sockets their holders' descriptors show in the table's state take those figures
/// and are not looked up; one that changed state since (or a volatile one) is.
#[test]
fn held_sockets_stand_for_lookups_only_in_the_same_state() {
    let mut table = SocketTable::from_dump(&[
        record(1, TcpState::CloseWait),
        record(2, TcpState::CloseWait),
        record(3, TcpState::TimeWait),
    ]);
    let held_as = |cookie: u64, state: TcpState| HeldSocket {
        cookie,
        state,
        recv_queue: 9,
        send_queue: 4,
        inode: 77,
        uid: 1000,
        keepalive_armed: true,
        holder: 4242,
    };
    // 2 moved on since its event; 3 is volatile.
    let states = [TcpState::CloseWait, TcpState::LastAck, TcpState::TimeWait];
    let held_now: HashMap<u64, HeldSocket> = (1..=3)
        .zip(states)
        .map(|(c, s)| (c, held_as(c, s)))
        .collect();
    let LookupPlan::Lookups { asked, held } = table.plan(&close_wait_only(), &held_now) else {
        panic!("identified");
    };
    let mut asked: Vec<u64> = asked.iter().map(|r| r.cookie).collect();
    asked.sort();
    assert_eq!(
        asked,
        [2, 3],
        "the changed and the volatile one are looked up"
    );
    assert_eq!(held, 1, "one socket took its holder's figures");
    let one = table.records().find(|r| r.cookie == 1).expect("kept");
    assert_eq!(
        (
            one.recv_queue,
            one.send_queue,
            one.inode,
            one.uid,
            one.keepalive_armed,
            one.held_by
        ),
        (9, 4, 77, 1000, true, 4242),
        "its figures, and the process that holds it"
    );
    let two = table.records().find(|r| r.cookie == 2).expect("kept");
    assert_eq!(*two, record(2, TcpState::CloseWait), "left for its lookup");
    // The next round's holder does not hold 1 any more: it is looked up, and no longer
    // says it was read from a holder.
    let LookupPlan::Lookups { asked, .. } = table.plan(&close_wait_only(), &HashMap::new()) else {
        panic!("identified");
    };
    assert!(asked.iter().any(|r| r.cookie == 1));
    let one = table.records().find(|r| r.cookie == 1).expect("kept");
    assert_eq!(one.held_by, 0, "not read from a holder this round");
}

/// A socket whose last transitions no event announced stays in the table as a ghost
/// (here in FIN_WAIT1). Once the kernel counts fewer sockets than the table, the
/// sockets in passing states are looked up, and the ghost goes with the first lookup
/// that does not find it; sockets the rounds refresh anyway are not marked.
#[test]
fn a_ghost_in_a_passing_state_goes_once_the_kernel_counts_fewer() {
    let mut table = SocketTable::from_dump(&[
        record(1, TcpState::Established),
        record(2, TcpState::Established),
        record(3, TcpState::CloseWait),
    ]);
    table.apply(&change(1, TcpState::Established, TcpState::FinWait1, 1));
    // Its FIN_WAIT1 -> FIN_WAIT2 -> CLOSE never came: the table still counts it.
    assert_eq!(planned(&mut table), [3], "only CLOSE_WAIT is refreshed");
    assert_eq!(table.check_passing_states(), 1, "the FIN_WAIT1 socket");
    assert_eq!(table.check_passing_states(), 0, "marked once");
    assert_eq!(planned(&mut table), [1, 3]);
    let asked = asked(&mut table);
    table.take_lookups(&asked, vec![record(3, TcpState::CloseWait)]);
    assert_eq!(
        states(&table),
        [(2, TcpState::Established), (3, TcpState::CloseWait)],
        "the ghost is gone"
    );
}

/// A FIN_WAIT2 socket a process holds is a full socket: counted from events, never
/// looked up for FIN_WAIT2's sake; one without an inode (a time-wait socket in that
/// substate, or an orphan) is looked up every round until gone.
#[test]
fn only_a_fin_wait2_socket_no_process_holds_is_looked_up_every_round() {
    let held = SocketRecord {
        inode: 4242,
        ..record(1, TcpState::FinWait2)
    };
    let time_wait = SocketRecord {
        inode: 0,
        ..record(2, TcpState::FinWait2)
    };
    let mut table = SocketTable::from_dump(&[held, time_wait]);
    assert_eq!(planned(&mut table), [2]);
    // The holder closes it and it lingers: from then on it is looked up like the other.
    table.apply(&change(1, TcpState::FinWait2, TcpState::Close, 40000));
    assert_eq!(planned(&mut table), [1, 2]);
    // Answered as a time-wait socket (no inode): it stays looked up.
    table.take_lookups(
        &[held, time_wait],
        vec![SocketRecord { inode: 0, ..held }, time_wait],
    );
    assert_eq!(planned(&mut table), [1, 2]);
}
