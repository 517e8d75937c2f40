//! One pass of a loaded BPF iterator (task, tcp): BPF_LINK_CREATE, with the link's `iter_info`
//! naming one process when asked (Linux 6.1+; aya 0.14's `Iter::attach` cannot pass
//! it), then BPF_ITER_CREATE for the read. Two raw bpf(2) calls.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// From include/uapi/linux/bpf.h (stable ABI).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr`, as BPF_LINK_CREATE reads it for an iterator.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    pad: u32,
}

/// `union bpf_iter_link_info`, its `task` member: `pid` names a process (every thread
/// of it; for task_file, its descriptor table once).
#[repr(C)]
struct TaskIterInfo {
    tid: u32,
    pid: u32,
    pid_fd: u32,
    pad: u32,
}

/// `union bpf_attr`, as BPF_ITER_CREATE reads it.
#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// bpf(2); a new descriptor on success.
///
/// # Safety
/// `attr` must be a fully initialised #[repr(C)] value laid out as `union bpf_attr` is
/// for `cmd`, no larger than the part of it the kernel only reads (BPF_PROG_LOAD writes
/// `log_true_size` back at bytes 140..144 since Linux 6.4); every pointer in it must be
/// valid for the call, and a log buffer writable for the size it gives.
pub(super) unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: the caller's contract above; the size passed is the value's own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs the task iterator `program` over every process, or over the process `pid` (as
/// the caller's pid namespace numbers it), and returns everything it wrote: nothing for
/// a process that is gone (the kernel does not check the pid when the link is made).
pub fn read(program: BorrowedFd<'_>, pid: Option<u32>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open(program, pid)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A pass of the iterator `program` (over the process `pid` alone when given), to be
/// read to its end. A `tcp` iterator walks the network namespace of the calling thread.
pub fn open(program: BorrowedFd<'_>, pid: Option<u32>) -> io::Result<File> {
    let info = TaskIterInfo {
        tid: 0,
        pid: pid.unwrap_or(0),
        pid_fd: 0,
        pad: 0,
    };
    let (iter_info, iter_info_len) = match pid {
        Some(_) => (
            &info as *const TaskIterInfo as u64,
            std::mem::size_of::<TaskIterInfo>() as u32,
        ),
        None => (0, 0),
    };
    let attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info,
        iter_info_len,
        pad: 0,
    };
    // SAFETY: link_create's layout; `info` outlives the call.
    let link = unsafe { bpf_fd(BPF_LINK_CREATE, &attr)? };
    let create = IterCreateAttr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    // SAFETY: iter_create's layout, no pointers.
    let iter = unsafe { bpf_fd(BPF_ITER_CREATE, &create)? };
    Ok(File::from(iter))
}
