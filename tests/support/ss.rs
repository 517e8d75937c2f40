//! Parsing of `ss -tanepoH` output: an independent view of the kernel's TCP table
//! (iproute2's own sock_diag client) to check scenarios and the exporter against.

use tcpstate_exporter::kernel::record::TcpState;

/// One line of `ss -tanepoH`.
#[derive(Debug, Clone, PartialEq)]
pub struct SsSocket {
    /// As ss spells it: `ESTAB`, `CLOSE-WAIT`, `LISTEN`, `SYN-SENT`, `TIME-WAIT`, ...
    pub state: String,
    pub recv_q: u64,
    pub send_q: u64,
    pub local_ip: String,
    pub local_port: u16,
    pub peer_ip: String,
    /// `None` for a listener's `*`.
    pub peer_port: Option<u16>,
    /// 0 for sockets without a file (accept queue, orphans, TIME-WAIT).
    pub inode: u64,
    /// The kernel's socket cookie (`sk:`, hex in ss's output).
    pub cookie: u64,
    /// Every (comm, pid, fd) holding the socket; empty when no process does.
    pub users: Vec<SsUser>,
    /// The `timer:(...)` text, e.g. `keepalive,1min59sec,0`.
    pub timer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsUser {
    pub name: String,
    pub pid: u32,
    pub fd: u32,
}

impl SsSocket {
    /// The kernel state `ss` names (`ESTAB`, `FIN-WAIT-1`, `FIN-WAIT-2` are spelled
    /// otherwise than the exporter's names); `None` for a name the exporter does not know.
    pub fn tcp_state(&self) -> Option<TcpState> {
        match self.state.as_str() {
            "ESTAB" => Some(TcpState::Established),
            "FIN-WAIT-1" => Some(TcpState::FinWait1),
            "FIN-WAIT-2" => Some(TcpState::FinWait2),
            other => TcpState::parse(other),
        }
    }

    /// The comms of the holders, sorted, duplicates kept.
    pub fn user_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        names
    }
}

/// Parses every line; panics on a line it does not understand (a changed ss
/// format must not make comparisons silently vacuous).
pub fn parse(text: &str) -> Vec<SsSocket> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        // Bound, never listening nor connected (Linux 6.7+ lists them for `-a`, walking
        // the bind hash; a connect in progress can show one with port `*`): not a TCP
        // state the exporter reports, which never asks for them.
        .filter(|l| !l.starts_with("UNCONN"))
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("unparsable ss line: {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<SsSocket> {
    let mut fields = line.split_whitespace();
    let state = fields.next()?.to_string();
    let recv_q = fields.next()?.parse().ok()?;
    let send_q = fields.next()?.parse().ok()?;
    let (local_ip, local_port) = split_endpoint(fields.next()?)?;
    let (peer_ip, peer_port) = split_endpoint(fields.next()?)?;
    let rest: Vec<&str> = fields.collect();
    let inode = rest
        .iter()
        .find_map(|f| f.strip_prefix("ino:"))
        .map_or(Some(0), |n| n.parse().ok())?;
    let cookie = rest
        .iter()
        .find_map(|f| f.strip_prefix("sk:"))
        .map_or(Some(0), |n| u64::from_str_radix(n, 16).ok())?;
    let timer = rest
        .iter()
        .find_map(|f| f.strip_prefix("timer:("))
        .map(|t| t.trim_end_matches(')').to_string());
    Some(SsSocket {
        state,
        recv_q,
        send_q,
        local_ip,
        local_port: local_port?,
        peer_ip,
        peer_port,
        inode,
        cookie,
        users: parse_users(line)?,
        timer,
    })
}

/// `127.0.0.1:80`, `[::1]:80`, `0.0.0.0:*` -> (address, port).
fn split_endpoint(text: &str) -> Option<(String, Option<u16>)> {
    let (ip, port) = text.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = if port == "*" {
        None
    } else {
        Some(port.parse().ok()?)
    };
    Some((ip, port))
}

/// `users:(("name",pid=1,fd=3),("other",pid=2,fd=3))`.
fn parse_users(line: &str) -> Option<Vec<SsUser>> {
    let Some(start) = line.find("users:(") else {
        return Some(Vec::new());
    };
    let mut users = Vec::new();
    let mut rest = &line[start + "users:(".len()..];
    while let Some(entry) = rest.strip_prefix("(\"") {
        let (name, after) = entry.split_once("\",pid=")?;
        let (pid, after) = after.split_once(",fd=")?;
        let end = after.find(')')?;
        users.push(SsUser {
            name: name.to_string(),
            pid: pid.parse().ok()?,
            fd: after[..end].parse().ok()?,
        });
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(users)
}
