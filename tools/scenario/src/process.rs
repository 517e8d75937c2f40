//! Process-level setup: the actor's name, its fd limit, and forked children that
//! share its sockets.

use std::io;

/// The longest `comm` the kernel keeps (TASK_COMM_LEN minus the NUL).
pub const MAX_NAME: usize = 15;

/// Renames the calling thread (the whole actor: it is single-threaded) so `comm`,
/// and with it `ss -p` and the exporter's `process` label, is exactly `name`.
pub fn set_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        return Err(format!(
            "name {name:?} must be 1 to {MAX_NAME} bytes without NUL"
        ));
    }
    let mut buf = [0u8; MAX_NAME + 1];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: buf is NUL-terminated and outlives the call.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "prctl(PR_SET_NAME): {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: bulk loads hold thousands of fds.
/// Returns the resulting soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: lim holds values the kernel just gave us.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Sets the soft RLIMIT_NOFILE (the hard limit stays): a program with a small limit, to
/// see it run toward its fd cliff.
pub fn set_fd_limit(soft: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = soft;
    // SAFETY: lim holds the kernel's hard limit and the soft limit asked for.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many fds this process has open now (entries of /proc/self/fd, minus the
/// directory handle used to list them).
pub fn open_fds() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

/// Forks a child that inherits every fd (so each socket is then shared by parent
/// and child), renames itself `name`, and holds those fds until it is killed or the
/// parent dies. Returns the child's pid in the parent once the child is renamed (so
/// whoever looks next sees `name`); never returns in the child.
///
/// The child lets go of stdin and stdout so that the driver of the parent sees EOF
/// exactly when the parent goes away.
pub fn fork_holder(name: &str) -> Result<libc::pid_t, String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name {name:?} must be 1 to {MAX_NAME} bytes"));
    }
    let mut ready = [0 as libc::c_int; 2];
    // SAFETY: ready has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    let [ready_read, ready_write] = ready;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the actor is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the read end is ours to close in the child.
        unsafe { libc::close(ready_read) };
        child_hold(name, parent, ready_write);
    }
    let mut byte = 0u8;
    // SAFETY: closing our copy of the write end, then reading one byte into `byte`;
    // the read returns 0 if the child died before signalling.
    let got = unsafe {
        libc::close(ready_write);
        let got = libc::read(ready_read, (&raw mut byte).cast(), 1);
        libc::close(ready_read);
        got
    };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if got != 1 {
        return Err(format!("forked child {pid} died before it was ready"));
    }
    Ok(pid)
}

fn child_hold(name: &str, parent: libc::pid_t, ready: libc::c_int) -> ! {
    // SAFETY: plain syscalls on our own process; failures only weaken cleanup.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != parent {
            // The parent died before PDEATHSIG was armed.
            libc::_exit(0);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, libc::STDIN_FILENO);
            libc::dup2(null, libc::STDOUT_FILENO);
            libc::close(null);
        }
    }
    if let Err(err) = set_name(name) {
        eprintln!("forked child: {err}");
    }
    // SAFETY: one byte from a live buffer to our end of the pipe, then close it.
    unsafe {
        libc::write(ready, [1u8].as_ptr().cast(), 1);
        libc::close(ready);
    }
    loop {
        // SAFETY: pause only waits for a signal; SIGKILL ends us.
        unsafe { libc::pause() };
    }
}

/// Kills and reaps a child made by [`fork_holder`].
pub fn kill_child(pid: libc::pid_t) -> Result<(), String> {
    // SAFETY: pid is our own child; signalling and reaping it is sound.
    unsafe {
        if libc::kill(pid, libc::SIGKILL) != 0 {
            return Err(format!("kill {pid}: {}", io::Error::last_os_error()));
        }
        let mut status = 0;
        if libc::waitpid(pid, &mut status, 0) < 0 {
            return Err(format!("waitpid {pid}: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}
