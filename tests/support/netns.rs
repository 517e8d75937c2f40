//! Private network namespaces for tests: every socket scenario is built in one,
//! never in the host's namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ss::{self, SsSocket};

/// A named network namespace (`ip netns add`), with `lo` up, deleted on drop.
///
/// Creating one needs root (CAP_SYS_ADMIN) and iproute2. Failure panics: a test
/// that cannot build its scenario must fail, never pass by skipping.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `PREFIX-PID-N`, unique across concurrent tests and test processes.
    pub fn new(prefix: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        if !out.status.success() {
            panic!(
                "cannot create network namespace {name:?} with `ip netns add` ({}): {}\n\
                 these tests need root (CAP_SYS_ADMIN) and iproute2; they never skip",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount `ip netns` keeps for the namespace; open it to `setns` into it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that will run `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` in the namespace and returns its stdout; panics with its
    /// stderr if it fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let out = run(self.command(program).args(args));
        if !out.status.success() {
            panic!(
                "`{program} {}` in netns {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args));
        if !out.status.success() {
            panic!(
                "`ip -n {} {}` failed: {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    /// Sets a namespaced sysctl (e.g. `net.core.somaxconn`) for this namespace only,
    /// by writing /proc/sys from a thread inside it (net sysctls resolve against the
    /// writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("sysctl {key}={value} in netns {}: {e}", self.name));
    }

    /// Reads a namespaced sysctl as this namespace sees it.
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("sysctl {key} in netns {}: {e}", self.name))
            .trim()
            .to_string()
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its
    /// result. Sockets `f` creates live in the namespace (a socket keeps the
    /// namespace it was created in), so the test process can connect or scrape there.
    /// Only that thread changes namespace; the caller's thread is untouched.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&path);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// All TCP sockets of the namespace as `ss -tanepoH` reports them: the reference
    /// truth the exporter is compared against.
    pub fn sockets(&self) -> Vec<SsSocket> {
        ss::parse(&self.exec("ss", &["-tanepoH"]))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "warning: could not delete netns {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

/// Moves the calling thread into the namespace mounted at `path`.
pub fn enter(path: &std::path::Path) {
    let file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open netns {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "setns into {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"))
}
