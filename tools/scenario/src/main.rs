//! `tcpstate-scenario`: one process playing one "actor" in a TCP socket scenario.
//!
//! Tests and benchmarks start it inside a private network namespace
//! (`ip netns exec NS tcpstate-scenario --name NAME`) and drive it over stdin/stdout.
//! The actor renames itself with prctl(PR_SET_NAME), so `comm` (what `ss -p` shows and
//! what the exporter reports as `process`) is exactly NAME (1 to 15 bytes). It raises
//! its soft RLIMIT_NOFILE to the hard limit at start. It exits, closing every socket,
//! when stdin closes.
//!
//! # Protocol
//! One command per line; exactly one reply line per command, either `ok <json>` or
//! `err <reason>` (one line). A failed command changes nothing that it reports.
//! IDs name groups of sockets (or a forked child); an ID in use cannot be reused
//! until its group is emptied by `close`. ADDR:PORT takes IPv4 or IPv6 addresses, with
//! or without brackets (`127.0.0.1:0`, `::1:8080`, `[::]:0`). Blocking steps give up
//! after 10 s with `err`.
//!
//! | command | effect | reply |
//! |---|---|---|
//! | `listen ID ADDR:PORT BACKLOG` | listener with that backlog; PORT 0 picks a port; `::` is dual-stack | `{"port":P}` |
//! | `connect ID ADDR:PORT COUNT [send=BYTES] [nowait]` | COUNT clients, each connect completed (unless `nowait`: left in SYN_SENT if the peer's backlog is full), then BYTES sent on each | `{"local_ports":[..]}` |
//! | `accept ID LISTENER_ID COUNT` | accept COUNT connections into group ID | `{"peer_ports":[..]}` |
//! | `send ID BYTES` | write BYTES on every socket of the group | `{"sent":TOTAL}` |
//! | `read ID` | read whatever is there, without waiting, including EOF (then Recv-Q drops to 0 in CLOSE_WAIT) | `{"bytes":[..],"eof":[..]}` per socket |
//! | `close ID [COUNT]` | close the first COUNT (default all) sockets of a group, or a listener | `{"closed":N,"remaining":M}` |
//! | `shutdown-write ID` | shutdown(SHUT_WR) on every socket: sends FIN, keeps the fd | `{"sockets":N}` |
//! | `keepalive ID on\|off` | SO_KEEPALIVE on every socket | `{"sockets":N}` |
//! | `fork ID NAME` | fork a child named NAME that inherits (shares) every fd and holds them until `kill-child ID` or this actor exits | `{"pid":CHILD}` |
//! | `kill-child ID` | SIGKILL and reap that child | `{"pid":CHILD}` |
//! | `pid` | | `{"pid":OWN}` |
//! | `nofile SOFT` | sets the soft RLIMIT_NOFILE (the fd cliff a leak runs toward) | `{"soft":SOFT}` |
//! | `load ADDR:PORT COUNT STATE` | bulk: a new listener and COUNT loopback connections, both ends here, left in STATE | `{"group":"load-N","listener":"load-N.listener","port":P,"count":C,"fds":F,"elapsed_ms":T}` |
//!
//! `load` states (the listener's side is the server; the group `load-N` holds the fds):
//! - `established`: both ends ESTABLISHED, 2 fds per connection.
//! - `close_wait`: the client shuts down writing but keeps its fd: server end
//!   CLOSE_WAIT (Recv-Q 1, the unread FIN), client end FIN_WAIT2 that never times out.
//!   2 fds per connection.
//! - `fin_wait2`: the client closes: server end CLOSE_WAIT, client end an orphaned
//!   FIN_WAIT2 (no fd) that vanishes after net.ipv4.tcp_fin_timeout. 1 fd.
//! - `time_wait`: client closes, then server: the client end is TIME_WAIT (no fd, 60 s),
//!   the server end is gone. 0 fds (the listener aside).
//! - `accept_queue`: never accepted: server end ESTABLISHED in the accept queue (no fd),
//!   client ESTABLISHED. 1 fd. COUNT may not exceed net.core.somaxconn.
//!
//! Fds: a process may hold 20,000 here, so `established`/`close_wait` loads stop a bit
//! under 10,000 connections per actor; `load` refuses up front what would not fit.

mod actor;
mod command;
mod load;
mod net;
mod process;

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use actor::Actor;
use command::Command;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let name = match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--name"), Some(name), None) => name,
        _ => {
            eprintln!("usage: tcpstate-scenario --name NAME   (commands on stdin, see crate docs)");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = process::set_name(&name) {
        eprintln!("tcpstate-scenario: {err}");
        return ExitCode::from(2);
    }
    if let Err(err) = process::raise_fd_limit() {
        eprintln!("tcpstate-scenario: cannot raise RLIMIT_NOFILE: {err}");
    }
    match serve(io::stdin().lock(), io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcpstate-scenario: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Answers commands until stdin closes. Dropping the actor closes all its sockets
/// and kills its forked children.
fn serve(input: impl BufRead, mut output: impl Write) -> io::Result<()> {
    let mut actor = Actor::default();
    for line in input.lines() {
        let line = line?;
        let reply = Command::parse(&line).and_then(|c| actor.run(c));
        match reply {
            Ok(value) => writeln!(output, "ok {value}")?,
            Err(reason) => writeln!(output, "err {}", reason.replace('\n', " "))?,
        }
        output.flush()?;
    }
    Ok(())
}
