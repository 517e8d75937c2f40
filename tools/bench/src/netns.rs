//! The benchmark's private network namespace: created with `ip netns add`, deleted on
//! drop, and entered by single threads (`setns` changes only the calling thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

/// Prefix of every namespace this tool creates; the suffix is the creating pid, so a
/// namespace left by a killed run can be told apart from one of a live run.
const PREFIX: &str = "tcpstate-bench-";

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tcpstate-bench-PID` with `lo` up, after deleting namespaces that
    /// earlier runs (whose pid is gone) left behind.
    pub fn create() -> Result<Netns, String> {
        remove_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))
            .map_err(|e| format!("ip netns add {name} (needs root): {e}"))?;
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Writes a namespaced sysctl from a thread inside the namespace (net sysctls
    /// resolve against the writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?
            .map_err(|e| format!("sysctl {key}={value} in {}: {e}", self.name))
    }

    /// Runs `f` on a fresh thread that has joined the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&path)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: could not delete netns {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace mounted at `path`.
pub fn enter(path: &std::path::Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Deletes `tcpstate-bench-PID` namespaces whose creating process no longer exists.
fn remove_stale() {
    let Ok(listing) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !PathBuf::from("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
