//! The tests' side of the shared namespace helper (`tcpstate_testkit::netns`): the same
//! namespaces, but a failure fails the test (a test that cannot build its scenario must
//! never pass by skipping), and `ss` as the reference view of the namespace's table.

use std::path::PathBuf;
use std::process::Command;

use tcpstate_testkit::netns as kit;

use super::ss::{self, SsSocket};

/// A named network namespace (`ip netns add`), with `lo` up, deleted on drop.
pub struct Netns(kit::Netns);

impl Netns {
    /// Makes `PREFIX-PID-N`, unique across concurrent tests and test processes.
    pub fn new(prefix: &str) -> Netns {
        Netns(kit::Netns::create(prefix).unwrap_or_else(|e| {
            panic!("{e}\nthese tests need root (CAP_SYS_ADMIN) and iproute2; they never skip")
        }))
    }

    /// Made from inside `parent`, so it inherits `parent`'s
    /// `net.ipv4.tcp_child_ehash_entries` (its own established hash when that is set).
    pub fn new_inside(prefix: &str, parent: &Netns) -> Netns {
        Netns(kit::Netns::create_inside(prefix, &parent.0).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The bind mount `ip netns` keeps for the namespace; open it to `setns` into it.
    pub fn path(&self) -> PathBuf {
        self.0.path()
    }

    /// A command that will run `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.0.command(program)
    }

    /// Runs `program args` in the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        self.0.exec(program, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets a namespaced sysctl for this namespace only.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.0.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads a namespaced sysctl as this namespace sees it.
    pub fn read_sysctl(&self, key: &str) -> String {
        self.0.read_sysctl(key).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its
    /// result; sockets `f` creates live in the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// All TCP sockets of the namespace as `ss -tanepoH` reports them: the reference
    /// truth the exporter is compared against.
    pub fn sockets(&self) -> Vec<SsSocket> {
        ss::parse(&self.exec("ss", &["-tanepoH"]))
    }

    /// As [`Netns::sockets`] without the holders (`ss -taneoH`: `users` empty). Much
    /// faster: `-p` reads every process's descriptors, most of a second on a busy host,
    /// which would stretch any wait that polls it.
    pub fn sockets_unowned(&self) -> Vec<SsSocket> {
        ss::parse(&self.exec("ss", &["-taneoH"]))
    }
}
