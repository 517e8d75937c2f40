//! Driving `tcpstate-scenario` actors: one process each, inside a [`Netns`].

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::netns::Netns;

/// A running `tcpstate-scenario --name NAME`; killed (with its sockets and forked
/// children) on drop.
pub struct Actor {
    name: String,
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Actor {
    /// Starts an actor named `name` (its `comm`, at most 15 bytes) inside `ns`.
    pub fn spawn(ns: &Netns, name: &str) -> Actor {
        let mut child = ns
            .command(scenario_binary())
            .args(["--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start actor {name}: {e}"));
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            panic!("actor {name}: no pipes");
        };
        let mut actor = Actor {
            name: name.to_string(),
            pid: 0,
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        // Ask rather than trust Child::id(): that is the pid of `ip netns exec`,
        // which happens to exec the actor today.
        actor.pid = pid_of(&actor.cmd("pid"));
        actor
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs one command (syntax: the tcpstate-scenario crate doc) and returns the
    /// JSON of its `ok` reply; panics with the actor's reason on `err`.
    pub fn cmd(&mut self, line: &str) -> Value {
        self.try_cmd(line)
            .unwrap_or_else(|reason| panic!("actor {}: `{line}` failed: {reason}", self.name))
    }

    /// Like [`Actor::cmd`], but an `err` reply is returned, for tests of failures.
    pub fn try_cmd(&mut self, line: &str) -> Result<Value, String> {
        assert!(!line.contains('\n'), "one command per call: {line:?}");
        let name = &self.name;
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("actor {name} is gone (writing `{line}`): {e}"));
        let mut reply = String::new();
        let n = self
            .stdout
            .read_line(&mut reply)
            .unwrap_or_else(|e| panic!("actor {name}: reading the reply to `{line}`: {e}"));
        if n == 0 {
            panic!("actor {name} exited without answering `{line}`");
        }
        let reply = reply.trim_end();
        if let Some(json) = reply.strip_prefix("ok ") {
            Ok(serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("actor {name}: bad JSON {json:?}: {e}")))
        } else if let Some(reason) = reply.strip_prefix("err ") {
            Err(reason.to_string())
        } else {
            panic!("actor {name}: malformed reply {reply:?} to `{line}`")
        }
    }

    /// `listen ID ADDR BACKLOG` and return the bound port.
    pub fn listen(&mut self, id: &str, addr: &str, backlog: u32) -> u16 {
        port_of(&self.cmd(&format!("listen {id} {addr} {backlog}")), "port")
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        // Killing the actor kills its forked children too (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_of(reply: &Value) -> u32 {
    reply["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid in {reply}"))
}

/// Reads a port number field from a reply.
pub fn port_of(reply: &Value, field: &str) -> u16 {
    reply[field]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no port {field:?} in {reply}"))
}

/// The `tcpstate-scenario` binary, built at most once per test process.
///
/// `$TCPSTATE_SCENARIO` wins if set. Otherwise the binary is
/// `target/<profile>/tcpstate-scenario`, the directory above the test binary's
/// `deps/`, and this runs `cargo build -p tcpstate-scenario` with the same profile and
/// target directory first, so a plain `cargo test` never runs a stale or missing actor.
/// (Cargo releases its build lock before running tests, so this does not deadlock;
/// when nothing changed it costs a fraction of a second.)
pub fn scenario_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("TCPSTATE_SCENARIO") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("profile directory name");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "tcpstate-scenario",
                "--target-dir",
            ])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run {build:?}: {e}"));
        assert!(status.success(), "{build:?} failed: {status}");
        let binary = profile_dir.join("tcpstate-scenario");
        assert!(binary.exists(), "{} missing after build", binary.display());
        binary
    })
}
