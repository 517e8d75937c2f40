//! The actor's state (named groups of sockets and children) and the execution of
//! each command against it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

use serde_json::{Value, json};

use crate::command::Command;
use crate::load;
use crate::net::{self, STEP_TIMEOUT};
use crate::process;

/// What an id names.
enum Group {
    Listener(TcpListener),
    Streams(Vec<TcpStream>),
    Child(libc::pid_t),
}

#[derive(Default)]
pub struct Actor {
    groups: HashMap<String, Group>,
    loads: usize,
}

impl Actor {
    /// Runs one command; the JSON value is the payload of the `ok` reply.
    pub fn run(&mut self, command: Command) -> Result<Value, String> {
        match command {
            Command::Listen { id, addr, backlog } => {
                self.free(&id)?;
                let listener =
                    net::listen(addr, backlog).map_err(|e| format!("listen {addr}: {e}"))?;
                let port = local_port(&listener)?;
                self.groups.insert(id, Group::Listener(listener));
                Ok(json!({ "port": port }))
            }
            Command::Connect {
                id,
                addr,
                count,
                send,
                wait,
            } => {
                self.free(&id)?;
                let streams = connect(addr, count, send, wait)?;
                let ports = streams
                    .iter()
                    .map(local_port)
                    .collect::<Result<Vec<_>, _>>()?;
                self.groups.insert(id, Group::Streams(streams));
                Ok(json!({ "local_ports": ports }))
            }
            Command::Accept {
                id,
                listener,
                count,
            } => {
                self.free(&id)?;
                let Some(Group::Listener(l)) = self.groups.get(&listener) else {
                    return Err(format!("{listener:?} is not a listener"));
                };
                let streams = accept(l, count)?;
                let peers = streams
                    .iter()
                    .map(|s| s.peer_addr().map(|a| a.port()))
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(|e| format!("peer_addr: {e}"))?;
                self.groups.insert(id, Group::Streams(streams));
                Ok(json!({ "peer_ports": peers }))
            }
            Command::Send { id, bytes } => {
                let streams = self.streams(&id)?;
                let data = vec![b'x'; bytes];
                for s in streams.iter_mut() {
                    s.set_nonblocking(false)
                        .and_then(|()| s.set_write_timeout(Some(STEP_TIMEOUT)))
                        .and_then(|()| s.write_all(&data))
                        .map_err(|e| format!("send on {id}: {e}"))?;
                }
                Ok(json!({ "sent": bytes * streams.len() }))
            }
            Command::Read { id } => {
                let mut bytes = Vec::new();
                let mut eof = Vec::new();
                for s in self.streams(&id)?.iter_mut() {
                    let (n, e) = drain(s).map_err(|e| format!("read on {id}: {e}"))?;
                    bytes.push(n);
                    eof.push(e);
                }
                Ok(json!({ "bytes": bytes, "eof": eof }))
            }
            Command::Close { id, count } => self.close(&id, count),
            Command::ShutdownWrite { id } => {
                let streams = self.streams(&id)?;
                for s in streams.iter() {
                    s.shutdown(Shutdown::Write)
                        .map_err(|e| format!("shutdown on {id}: {e}"))?;
                }
                Ok(json!({ "sockets": streams.len() }))
            }
            Command::Keepalive { id, on } => {
                let streams = self.streams(&id)?;
                for s in streams.iter() {
                    net::set_keepalive(s, on).map_err(|e| format!("keepalive on {id}: {e}"))?;
                }
                Ok(json!({ "sockets": streams.len() }))
            }
            Command::Fork { id, name } => {
                self.free(&id)?;
                let pid = process::fork_holder(&name)?;
                self.groups.insert(id, Group::Child(pid));
                Ok(json!({ "pid": pid }))
            }
            Command::KillChild { id } => match self.groups.remove(&id) {
                Some(Group::Child(pid)) => {
                    process::kill_child(pid)?;
                    Ok(json!({ "pid": pid }))
                }
                Some(other) => {
                    self.groups.insert(id.clone(), other);
                    Err(format!("{id:?} is not a child"))
                }
                None => Err(format!("no group {id:?}")),
            },
            Command::Nofile { soft } => {
                process::set_fd_limit(soft).map_err(|e| format!("setrlimit: {e}"))?;
                Ok(json!({ "soft": soft }))
            }
            // SAFETY: getpid has no preconditions.
            Command::Pid => Ok(json!({ "pid": unsafe { libc::getpid() } })),
            Command::Load { addr, count, state } => {
                self.loads += 1;
                let id = format!("load-{}", self.loads);
                let listener_id = format!("{id}.listener");
                let built = load::build(addr, count, state)?;
                let reply = json!({
                    "group": id,
                    "listener": listener_id,
                    "port": built.port,
                    "count": count,
                    "fds": built.streams.len() + 1,
                    "elapsed_ms": built.elapsed.as_secs_f64() * 1e3,
                });
                self.groups
                    .insert(listener_id, Group::Listener(built.listener));
                self.groups.insert(id, Group::Streams(built.streams));
                Ok(reply)
            }
        }
    }

    /// Checks that `id` is not taken: ids are never silently reused or merged.
    fn free(&self, id: &str) -> Result<(), String> {
        if self.groups.contains_key(id) {
            Err(format!("group {id:?} already exists"))
        } else {
            Ok(())
        }
    }

    fn streams(&mut self, id: &str) -> Result<&mut Vec<TcpStream>, String> {
        match self.groups.get_mut(id) {
            Some(Group::Streams(s)) => Ok(s),
            Some(_) => Err(format!("{id:?} is not a group of connections")),
            None => Err(format!("no group {id:?}")),
        }
    }

    /// Closes the first `count` sockets of a group (all when `None`); an emptied
    /// group disappears, so its id can be used again.
    fn close(&mut self, id: &str, count: Option<usize>) -> Result<Value, String> {
        let (closed, remaining) = match self.groups.get_mut(id) {
            None => return Err(format!("no group {id:?}")),
            Some(Group::Child(_)) => return Err(format!("{id:?} is a child: use kill-child")),
            Some(Group::Listener(_)) => {
                if count.is_some_and(|n| n != 1) {
                    return Err(format!("{id:?} is one listener"));
                }
                (1, 0)
            }
            Some(Group::Streams(streams)) => {
                let n = count.unwrap_or(streams.len());
                if n > streams.len() {
                    return Err(format!("{id:?} has only {} sockets", streams.len()));
                }
                drop(streams.drain(..n));
                (n, streams.len())
            }
        };
        if remaining == 0 {
            self.groups.remove(id);
        }
        Ok(json!({ "closed": closed, "remaining": remaining }))
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        for group in self.groups.values() {
            if let Group::Child(pid) = group
                && let Err(err) = process::kill_child(*pid)
            {
                eprintln!("{err}");
            }
        }
    }
}

fn connect(
    addr: std::net::SocketAddr,
    count: usize,
    send: usize,
    wait: bool,
) -> Result<Vec<TcpStream>, String> {
    let data = vec![b'x'; send];
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let s = net::connect_start(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        if wait {
            net::wait_connected(&s, Instant::now() + STEP_TIMEOUT)
                .and_then(|()| s.set_nonblocking(false))
                .map_err(|e| format!("connect {addr}: {e}"))?;
        }
        if send > 0 {
            let mut w = &s;
            w.set_write_timeout(Some(STEP_TIMEOUT))
                .and_then(|()| w.write_all(&data))
                .map_err(|e| format!("send to {addr}: {e}"))?;
        }
        streams.push(s);
    }
    Ok(streams)
}

fn accept(listener: &TcpListener, count: usize) -> Result<Vec<TcpStream>, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("accept: {e}"))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    (0..count)
        .map(|i| {
            net::accept_until(listener, deadline)
                .map_err(|e| format!("accept {} of {count}: {e}", i + 1))
        })
        .collect()
}

/// Reads everything that is there without waiting; returns the byte count and
/// whether EOF was reached (after which the kernel no longer counts the FIN in Recv-Q).
fn drain(stream: &mut TcpStream) -> io::Result<(usize, bool)> {
    stream.set_nonblocking(true)?;
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    let result = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok((total, true)),
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok((total, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    result
}

fn local_port(socket: &impl LocalAddr) -> Result<u16, String> {
    socket
        .local()
        .map(|a| a.port())
        .map_err(|e| format!("getsockname: {e}"))
}

/// `local_addr` for both listeners and streams.
trait LocalAddr {
    fn local(&self) -> io::Result<std::net::SocketAddr>;
}

impl LocalAddr for TcpListener {
    fn local(&self) -> io::Result<std::net::SocketAddr> {
        self.local_addr()
    }
}

impl LocalAddr for TcpStream {
    fn local(&self) -> io::Result<std::net::SocketAddr> {
        self.local_addr()
    }
}
