//! Loads iterator programs (`task_file`, `tcp`) of our own objects with one parse of the
//! kernel's BTF: the object is parsed and CO-RE-relocated with aya-obj, then BPF_PROG_LOAD is one
//! raw bpf(2) call. aya's `EbpfLoader` parses the kernel BTF in `new()` whatever it is
//! then given, and `Iter::load` needs a second parse to name the attach target; it also
//! probes the kernel's BPF features and loads the object's own BTF, none of which an
//! iterator without maps or subprograms needs. Measured here (`SocketFdLister::load`,
//! 4 runs): 80-140 ms of CPU through aya, most of it the two parses and their page
//! faults; a first attributed sample at 100k sockets costs ~390 ms in all.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;

use aya_obj::generated::bpf_insn;

use super::iter_link::bpf_fd;
use super::kernel_btf::KernelBtf;

// From include/uapi/linux/bpf.h (stable ABI).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
/// The kernel function a `task_file` iterator program attaches to.
pub(super) const TASK_FILE: &str = "bpf_iter_task_file";
/// The kernel function a `tcp` iterator program attaches to.
pub(super) const TCP: &str = "bpf_iter_tcp";
/// Bytes of the verifier's log asked for when a load fails, for its error message.
const LOG_LEN: usize = 64 * 1024;

/// `union bpf_attr`, as BPF_PROG_LOAD reads it, up to `attach_btf_obj_fd` (the kernel
/// takes a shorter attr as zeros beyond its size).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    pad: u32,
}

// The uapi offsets of the fields whose misplacement the kernel could not notice, and a
// size short of `log_true_size` (bytes 140..144), which Linux 6.4+ writes back.
const _: () = {
    assert!(std::mem::size_of::<ProgLoadAttr>() == 120);
    assert!(std::mem::offset_of!(ProgLoadAttr, insns) == 8);
    assert!(std::mem::offset_of!(ProgLoadAttr, log_buf) == 32);
    assert!(std::mem::offset_of!(ProgLoadAttr, prog_name) == 48);
    assert!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type) == 68);
    assert!(std::mem::offset_of!(ProgLoadAttr, func_info) == 80);
    assert!(std::mem::offset_of!(ProgLoadAttr, line_info) == 96);
    assert!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id) == 108);
};

fn failed(what: &str, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// A program's name and its linked instructions, or why it has none.
type Linked<'a> = (&'a str, io::Result<Vec<bpf_insn>>);

/// One loaded program for each slot of `slots`, in order: the first of a slot's names
/// that loads (a later one is the fallback for kernels that refuse the first, e.g. one
/// calling a kfunc they do not have); each an iterator program of the kernel function
/// `target` (`TASK_FILE`, `TCP`).
pub fn load_iterators(
    object_bytes: &[u8],
    target: &str,
    slots: &[&[&str]],
) -> io::Result<Vec<OwnedFd>> {
    let calls = super::kfunc::extern_calls(object_bytes)?;
    let mut object =
        aya_obj::Object::parse(object_bytes).map_err(|e| failed("parse object", &e))?;
    check_loadable(&object)?;
    // Each slot's programs in order, each with its instructions (CO-RE-relocated, kfunc
    // calls linked) or why they cannot be.
    let mut linked: Vec<Vec<Linked>> = Vec::new();
    let attach_btf_id = {
        let kernel = KernelBtf::read(object_bytes, &calls, &[target])?;
        kernel.relocate(&mut object, object_bytes)?;
        let function_id = |name: &str| kernel.function_id(name);
        for names in slots {
            let mut slot = Vec::with_capacity(names.len());
            for name in names.iter().copied() {
                let program = object
                    .programs
                    .get(name)
                    .map(|program| program.function_key());
                let function = program.and_then(|key| object.functions.get_mut(&key));
                let instructions = match function {
                    None => Err(io::Error::other(format!("{name}: no such program"))),
                    Some(function) => super::kfunc::link(function, &calls, &function_id)
                        .map(|()| function.instructions.clone()),
                };
                slot.push((name, instructions));
            }
            linked.push(slot);
        }
        kernel
            .function_id(target)
            .ok_or_else(|| io::Error::other(format!("the kernel has no {target}")))?
    };
    // The kernel BTF read and its parse are back with the allocator: give them to the
    // system.
    super::release_freed_heap();
    let mut loaded = Vec::with_capacity(slots.len());
    for slot in linked {
        let mut refusals = Vec::new();
        let program = slot.into_iter().find_map(|(name, instructions)| {
            instructions
                .and_then(|instructions| {
                    load_program(name, &instructions, &object.license, attach_btf_id)
                })
                .map_err(|e| refusals.push(format!("load {name}: {e}")))
                .ok()
        });
        loaded.push(program.ok_or_else(|| io::Error::other(refusals.join("; ")))?);
    }
    Ok(loaded)
}

/// What this loader does not do, refused by name rather than by the verifier's riddles
/// (or, without relocation records, not at all: the programs would run with the
/// compiler's offsets): maps or globals (`.rodata` too, which `bpf_printk` uses) would
/// need their fds patched in, subprograms linking, and CO-RE needs `.BTF.ext`.
fn check_loadable(object: &aya_obj::Object) -> io::Result<()> {
    let refused = if !object.maps.is_empty() {
        "maps or global data (the iterator loader relocates neither)"
    } else if object.functions.len() != object.programs.len() {
        "subprograms (the iterator loader does not link calls)"
    } else if object.btf_ext.is_none() {
        "no .BTF.ext (no CO-RE relocation records: build with clang -g)"
    } else {
        return Ok(());
    };
    Err(io::Error::other(format!(
        "the iterators' object has {refused}"
    )))
}

/// BPF_PROG_LOAD of one tracing program attached to the iterator `attach_btf_id`; on
/// failure, loaded again with the verifier's log, whose last line goes into the error.
fn load_program(
    name: &str,
    instructions: &[bpf_insn],
    license: &CString,
    attach_btf_id: u32,
) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (to, from) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: instructions.len() as u32,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: BPF_TRACE_ITER,
        prog_btf_fd: 0,
        func_info_rec_size: 0,
        func_info: 0,
        func_info_cnt: 0,
        line_info_rec_size: 0,
        line_info: 0,
        line_info_cnt: 0,
        attach_btf_id,
        attach_btf_obj_fd: 0,
        pad: 0,
    };
    // SAFETY: prog_load's layout (checked above); `instructions` and `license` are
    // borrowed for the call.
    let error = match unsafe { bpf_fd(BPF_PROG_LOAD, &attr) } {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; LOG_LEN];
    attr.log_level = 1;
    attr.log_size = LOG_LEN as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: as above, and `log` is writable for `log_size` bytes and outlives the call.
    if let Ok(fd) = unsafe { bpf_fd(BPF_PROG_LOAD, &attr) } {
        return Ok(fd); // A transient failure: loaded the second time.
    }
    let text = String::from_utf8_lossy(&log);
    // The log ends with statistics; the reason is the line before them.
    let statistics = ["processed ", "verification time", "stack depth"];
    let last = text
        .trim_end_matches('\0')
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty() && !statistics.iter().any(|s| line.starts_with(s)))
        .unwrap_or("(no verifier log)");
    Err(io::Error::new(
        error.kind(),
        format!("{error}; verifier: {last}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the loader cannot do is refused by name: the events object has maps and
    /// globals; the iterators' object has neither.
    #[test]
    fn refuses_an_object_with_maps_and_takes_the_iterators() {
        let parse = |bytes| aya_obj::Object::parse(bytes).expect("our own object parses");
        let refused = check_loadable(&parse(super::super::PROGRAM)).expect_err("maps");
        assert!(
            refused.to_string().contains("maps or global data"),
            "{refused}"
        );
        check_loadable(&parse(super::super::socket_fds::PROGRAM)).expect("loadable");
    }

    /// Needs root (CAP_BPF, kernel BTF). A slot takes the first of its names that loads;
    /// a slot none of whose names loads fails with every refusal, by name.
    #[test]
    fn a_slot_falls_back_in_order_and_a_failed_one_names_each_refusal() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let object = super::super::socket_fds::PROGRAM;
        let loaded = load_iterators(object, TASK_FILE, &[&["no_such_program", "socket_fds"]])
            .expect("the second name of the slot loads");
        assert_eq!(loaded.len(), 1);
        let failed = load_iterators(
            object,
            TASK_FILE,
            &[&["socket_fds"], &["no_such_program", "also_missing"]],
        )
        .expect_err("the second slot has no program that loads");
        assert_eq!(
            failed.to_string(),
            "load no_such_program: no_such_program: no such program; \
             load also_missing: also_missing: no such program"
        );
    }
}
