//! Calls from our iterator programs to kernel functions (kfuncs, such as
//! `bpf_rdonly_cast`), pointed at the running kernel's function before the load.
//!
//! clang leaves a call to an `extern ... __ksym` function as `call -1` with an ELF
//! relocation naming it; libbpf then writes the function's BTF id into the call and
//! marks it a kfunc call. aya 0.14 does not, so `iter_load` does it here: the relocations
//! are read from the object with the ELF reader aya-obj itself uses, the id from the
//! kernel BTF the CO-RE relocation already read (`iter_load`).

use std::io;

use aya_obj::generated::bpf_insn;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

/// `BPF_JMP | BPF_CALL`: the opcode of every call.
const CALL: u8 = 0x85;
/// `src_reg` of a call to a kernel function, whose `imm` is its BTF id (uapi bpf.h).
const PSEUDO_KFUNC_CALL: u8 = 2;
/// Bytes of one instruction.
const INSN_LEN: u64 = 8;

/// One call to an extern function: where it is in the object, and the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ExternCall {
    pub section_index: usize,
    /// Byte offset of the call instruction in its section.
    pub offset: u64,
    pub function: String,
}

/// The object's own BTF (its `.BTF` section, raw): the types its programs read.
pub(super) fn object_btf(elf: &[u8]) -> io::Result<&[u8]> {
    let file = object::File::parse(elf).map_err(|e| io::Error::other(format!("ELF: {e}")))?;
    let section = file
        .section_by_name(".BTF")
        .ok_or_else(|| io::Error::other("the object has no .BTF section"))?;
    section
        .data()
        .map_err(|e| io::Error::other(format!(".BTF section: {e}")))
}

/// Every call to an extern (undefined) function in the object's code.
pub(super) fn extern_calls(elf: &[u8]) -> io::Result<Vec<ExternCall>> {
    let file = object::File::parse(elf).map_err(|e| io::Error::other(format!("ELF: {e}")))?;
    let mut calls = Vec::new();
    // Code only: the debug sections name the function too.
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let Ok(symbol) = file.symbol_by_index(index) else {
                continue;
            };
            if !symbol.is_undefined() {
                continue;
            }
            let function = symbol
                .name()
                .map_err(|e| io::Error::other(format!("ELF symbol name: {e}")))?;
            calls.push(ExternCall {
                section_index: section.index().0,
                offset,
                function: function.to_string(),
            });
        }
    }
    Ok(calls)
}

/// Points `function`'s calls among `calls` at the kernel's functions of those names:
/// an error names a function the kernel does not have (older kernels) or a relocation
/// that is not on a call.
pub(super) fn link(
    function: &mut aya_obj::Function,
    calls: &[ExternCall],
    function_id: &dyn Fn(&str) -> Option<u32>,
) -> io::Result<()> {
    let start = function.section_offset as u64;
    let end = start + function.instructions.len() as u64 * INSN_LEN;
    for call in calls {
        if call.section_index != function.section_index.0 || !(start..end).contains(&call.offset) {
            continue;
        }
        let index = ((call.offset - start) / INSN_LEN) as usize;
        let id = function_id(&call.function).ok_or_else(|| {
            io::Error::other(format!(
                "the kernel has no function {} (a kfunc of newer kernels)",
                call.function
            ))
        })?;
        let instruction = function
            .instructions
            .get_mut(index)
            .ok_or_else(|| io::Error::other("kfunc call past the program's end"))?;
        point_at(instruction, id)
            .map_err(|e| io::Error::other(format!("{}: {e}", call.function)))?;
    }
    Ok(())
}

/// Makes `instruction`, a call, a call of the kernel function with BTF id `id` (in
/// vmlinux: `off` 0).
fn point_at(instruction: &mut bpf_insn, id: u32) -> Result<(), &'static str> {
    if instruction.code != CALL {
        return Err("relocation on an instruction that is not a call");
    }
    instruction.set_src_reg(PSEUDO_KFUNC_CALL);
    instruction.off = 0;
    instruction.imm = i32::try_from(id).map_err(|_| "BTF id out of range")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our object's one kfunc call is found, in the program that makes it.
    #[test]
    fn finds_the_cast_in_the_held_sockets_program_only() {
        let calls = extern_calls(super::super::socket_fds::PROGRAM).expect("our object parses");
        assert_eq!(
            calls
                .iter()
                .map(|c| c.function.as_str())
                .collect::<Vec<_>>(),
            ["bpf_rdonly_cast"],
            "{calls:?}"
        );
        let object = aya_obj::Object::parse(super::super::socket_fds::PROGRAM).expect("parses");
        let holder = |name: &str| {
            let program = object.programs.get(name).expect("program");
            let function = object
                .functions
                .get(&program.function_key())
                .expect("function");
            let start = function.section_offset as u64;
            let end = start + function.instructions.len() as u64 * INSN_LEN;
            calls.iter().any(|c| (start..end).contains(&c.offset))
        };
        assert!(holder("held_sockets"));
        assert!(!holder("held_sockets_probe_read"));
        assert!(!holder("socket_fds"));
    }

    /// A call becomes a kfunc call of the given id; anything else is refused.
    #[test]
    fn a_call_is_pointed_at_the_kernel_function_and_nothing_else_is() {
        // SAFETY: bpf_insn is plain integers; all zeros is a valid value.
        let zeroed = || unsafe { std::mem::zeroed::<bpf_insn>() };
        let mut call = bpf_insn {
            code: CALL,
            imm: -1,
            ..zeroed()
        };
        call.set_src_reg(1);
        point_at(&mut call, 51234).expect("a call");
        assert_eq!(
            (call.src_reg(), call.imm, call.off),
            (PSEUDO_KFUNC_CALL, 51234, 0)
        );
        let mut load = bpf_insn {
            code: 0x61,
            ..zeroed()
        };
        assert!(point_at(&mut load, 1).is_err());
    }
}
