//! Private network namespaces: every socket scenario of the tests and the benchmark is
//! built in one (`ip netns add`, deleted on drop), never in the host's namespace.
//! `setns` changes only the calling thread, so `run` enters on a fresh thread.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A named network namespace with `lo` up, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `PREFIX-PID-N`, unique across threads and processes. Needs root
    /// (CAP_SYS_ADMIN) and iproute2.
    pub fn create(prefix: &str) -> Result<Netns, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name])).map_err(|e| {
            format!("cannot create network namespace {name:?} (needs root and iproute2): {e}")
        })?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Like `create`, but the namespace is made from inside `parent` (what `ip netns
    /// add` would do if run there): it inherits `parent`'s
    /// `net.ipv4.tcp_child_ehash_entries`, so with that sysctl set in `parent` it gets
    /// its own TCP established hash instead of sharing the host-wide one.
    pub fn create_inside(prefix: &str, parent: &Netns) -> Result<Netns, String> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-c{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let target = PathBuf::from("/run/netns").join(&name);
        let mount_at = target.clone();
        parent.run(move || -> Result<(), String> {
            File::create(&mount_at).map_err(|e| format!("{}: {e}", mount_at.display()))?;
            // SAFETY: unshare affects only this (scoped, short-lived) thread's namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                let _ = std::fs::remove_file(&mount_at);
                return Err(format!("unshare(CLONE_NEWNET): {e}"));
            }
            bind_mount("/proc/thread-self/ns/net", &mount_at).inspect_err(|_| {
                let _ = std::fs::remove_file(&mount_at);
            })
        })??;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount `ip netns` keeps for the namespace; open it to `setns` into it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that will run `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` in the namespace; its stdout, or its stderr as the error.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        output(self.command(program).args(args)).map_err(|e| format!("in netns {}: {e}", self.name))
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Sets a namespaced sysctl (e.g. `net.core.somaxconn`) for this namespace only, by
    /// writing /proc/sys from a thread inside it (net sysctls resolve against the
    /// writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(|e| format!("sysctl {key}={value} in netns {}: {e}", self.name))
    }

    /// Reads a namespaced sysctl as this namespace sees it.
    pub fn read_sysctl(&self, key: &str) -> Result<String, String> {
        let path = sysctl_path(key);
        let value = self
            .run(|| std::fs::read_to_string(&path))?
            .map_err(|e| format!("sysctl {key} in netns {}: {e}", self.name))?;
        Ok(value.trim().to_string())
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its
    /// result. Sockets `f` creates live in the namespace (a socket keeps the namespace
    /// it was created in); the caller's thread is untouched. A panic in `f` resumes.
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
pub fn enter(path: &Path) -> Result<(), String> {
    let file =
        File::open(path).map_err(|e| format!("cannot open netns {}: {e}", path.display()))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns into {} failed: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Deletes `PREFIX-PID-N` namespaces whose creating process no longer exists (left by
/// a run that was killed before its drops ran).
pub fn remove_stale(prefix: &str) {
    let Ok(listing) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid.parse::<u32>().is_ok() && !PathBuf::from("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// `mount --bind source target`.
fn bind_mount(source: &str, target: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c_source = std::ffi::CString::new(source).map_err(|e| e.to_string())?;
    let c_target =
        std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: both paths are valid NUL-terminated strings; no fs type or data for a bind.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind {source} on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    output(cmd).map(drop)
}

/// Runs `cmd`: its stdout when it succeeds, else one line with its stderr.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
