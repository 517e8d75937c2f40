//! The line protocol: one command per line, parsed into [`Command`].
//! The syntax is documented in the crate doc (main.rs).

use std::net::SocketAddr;

use crate::net::parse_addr;

/// What a `load` command leaves behind; see the crate doc for the exact states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadState {
    Established,
    CloseWait,
    FinWait2,
    TimeWait,
    AcceptQueue,
}

impl LoadState {
    fn parse(word: &str) -> Result<Self, String> {
        Ok(match word {
            "established" => Self::Established,
            "close_wait" => Self::CloseWait,
            "fin_wait2" => Self::FinWait2,
            "time_wait" => Self::TimeWait,
            "accept_queue" => Self::AcceptQueue,
            _ => {
                return Err(format!(
                    "unknown load state {word:?} (established|close_wait|fin_wait2|time_wait|accept_queue)"
                ));
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Listen {
        id: String,
        addr: SocketAddr,
        backlog: i32,
    },
    Connect {
        id: String,
        addr: SocketAddr,
        count: usize,
        send: usize,
        wait: bool,
    },
    Accept {
        id: String,
        listener: String,
        count: usize,
    },
    Send {
        id: String,
        bytes: usize,
    },
    Read {
        id: String,
    },
    Close {
        id: String,
        count: Option<usize>,
    },
    ShutdownWrite {
        id: String,
    },
    Keepalive {
        id: String,
        on: bool,
    },
    Fork {
        id: String,
        name: String,
    },
    KillChild {
        id: String,
    },
    Pid,
    Nofile {
        soft: u64,
    },
    Load {
        addr: SocketAddr,
        count: usize,
        state: LoadState,
    },
}

impl Command {
    pub fn parse(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&verb, args)) = words.split_first() else {
            return Err("empty command".into());
        };
        let arity = |min: usize, max: usize| -> Result<(), String> {
            if (min..=max).contains(&args.len()) {
                Ok(())
            } else {
                Err(format!(
                    "{verb}: expected {min} to {max} arguments, got {}",
                    args.len()
                ))
            }
        };
        let id = |i: usize| args[i].to_string();
        Ok(match verb {
            "listen" => {
                arity(3, 3)?;
                Self::Listen {
                    id: id(0),
                    addr: parse_addr(args[1])?,
                    backlog: number(args[2], "backlog")?,
                }
            }
            "connect" => {
                arity(3, 5)?;
                let mut send = 0;
                let mut wait = true;
                for opt in &args[3..] {
                    match opt.split_once('=') {
                        Some(("send", n)) => send = number(n, "send")?,
                        None if *opt == "nowait" => wait = false,
                        _ => return Err(format!("connect: unknown option {opt:?}")),
                    }
                }
                if send > 0 && !wait {
                    return Err("connect: send= needs a completed connect, not nowait".into());
                }
                Self::Connect {
                    id: id(0),
                    addr: parse_addr(args[1])?,
                    count: number(args[2], "count")?,
                    send,
                    wait,
                }
            }
            "accept" => {
                arity(3, 3)?;
                Self::Accept {
                    id: id(0),
                    listener: id(1),
                    count: number(args[2], "count")?,
                }
            }
            "send" => {
                arity(2, 2)?;
                Self::Send {
                    id: id(0),
                    bytes: number(args[1], "bytes")?,
                }
            }
            "read" => {
                arity(1, 1)?;
                Self::Read { id: id(0) }
            }
            "close" => {
                arity(1, 2)?;
                let count = match args.get(1) {
                    Some(n) => Some(number(n, "count")?),
                    None => None,
                };
                Self::Close { id: id(0), count }
            }
            "shutdown-write" => {
                arity(1, 1)?;
                Self::ShutdownWrite { id: id(0) }
            }
            "keepalive" => {
                arity(2, 2)?;
                let on = match args[1] {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("keepalive: expected on|off, got {other:?}")),
                };
                Self::Keepalive { id: id(0), on }
            }
            "fork" => {
                arity(2, 2)?;
                Self::Fork {
                    id: id(0),
                    name: id(1),
                }
            }
            "kill-child" => {
                arity(1, 1)?;
                Self::KillChild { id: id(0) }
            }
            "pid" => {
                arity(0, 0)?;
                Self::Pid
            }
            "nofile" => {
                arity(1, 1)?;
                Self::Nofile {
                    soft: number(args[0], "limit")?,
                }
            }
            "load" => {
                arity(3, 3)?;
                Self::Load {
                    addr: parse_addr(args[0])?,
                    count: number(args[1], "count")?,
                    state: LoadState::parse(args[2])?,
                }
            }
            _ => return Err(format!("unknown command {verb:?}")),
        })
    }
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a valid number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_options() {
        assert_eq!(
            Command::parse("connect c 127.0.0.1:80 3 send=5").unwrap(),
            Command::Connect {
                id: "c".into(),
                addr: "127.0.0.1:80".parse().unwrap(),
                count: 3,
                send: 5,
                wait: true,
            }
        );
        assert_eq!(
            Command::parse("connect c ::1:80 1 nowait").unwrap(),
            Command::Connect {
                id: "c".into(),
                addr: "[::1]:80".parse().unwrap(),
                count: 1,
                send: 0,
                wait: false,
            }
        );
        assert!(Command::parse("connect c ::1:80 1 nowait send=1").is_err());
        assert!(Command::parse("connect c ::1:80 1 bogus").is_err());
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        assert!(Command::parse("").is_err());
        assert!(Command::parse("listen l 127.0.0.1:0").is_err());
        assert!(Command::parse("load 127.0.0.1:0 10 closed").is_err());
        assert!(Command::parse("frobnicate").is_err());
        assert_eq!(
            Command::parse("close g").unwrap(),
            Command::Close {
                id: "g".into(),
                count: None
            }
        );
    }
}
