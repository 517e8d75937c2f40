//! The instructions into which CO-RE writes a kernel type's id
//! (`bpf_core_type_id_kernel`, relocation kind TYPE_ID_TARGET), found in the object's
//! `.BTF.ext`, so that `iter_load` can put the kernel's ids there after relocating
//! against a cut-down, renumbered kernel BTF (`btf_prune`): the relocation writes that
//! BTF's ids, which the verifier would read as the kernel's.

use std::io;

use aya_obj::generated::bpf_insn;
use object::{Object as _, ObjectSection as _};

use super::btf_prune::{self, KernelTypes, u32_at};

/// `enum bpf_core_relo_kind` (uapi bpf.h): the target (kernel) BTF id of a type.
const TYPE_ID_TARGET: u32 = 7;
/// Bytes of one instruction.
const INSN_LEN: u64 = 8;

/// One instruction given a kernel type id by CO-RE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TypeIdSite {
    pub section_index: usize,
    /// Byte offset of the instruction in its section.
    pub offset: u64,
}

fn ext_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!(".BTF.ext: {what}"))
}

/// Every TYPE_ID_TARGET relocation of the object (none without `.BTF.ext`).
pub(super) fn type_id_sites(elf: &[u8]) -> io::Result<Vec<TypeIdSite>> {
    let file = object::File::parse(elf).map_err(|e| io::Error::other(format!("ELF: {e}")))?;
    let data = |name: &str| {
        file.section_by_name(name)
            .map(|s| {
                s.data()
                    .map_err(|e| io::Error::other(format!("{name}: {e}")))
            })
            .transpose()
    };
    let (Some(ext), Some(btf)) = (data(".BTF.ext")?, data(".BTF")?) else {
        return Ok(Vec::new());
    };
    // struct btf_ext_header: magic, version, flags, hdr_len, func_info off/len,
    // line_info off/len, then (hdr_len >= 32) core_relo off/len, from the header's end.
    let header = u32_at(ext, 4).ok_or_else(|| ext_error("truncated header"))? as usize;
    if header < 32 {
        return Ok(Vec::new()); // no CO-RE relocations recorded
    }
    let (Some(off), Some(len)) = (u32_at(ext, 24), u32_at(ext, 28)) else {
        return Err(ext_error("truncated header"));
    };
    let start = header + off as usize;
    let relocations = ext
        .get(start..start + len as usize)
        .ok_or_else(|| ext_error("CO-RE relocations past the end"))?;
    let mut sites = Vec::new();
    if relocations.is_empty() {
        return Ok(sites);
    }
    let record_len = u32_at(relocations, 0).ok_or_else(|| ext_error("no record size"))? as usize;
    if record_len < 16 {
        return Err(ext_error("CO-RE records shorter than 16 bytes"));
    }
    // Then, per section: its name's offset in .BTF's strings, the count, the records
    // (instruction offset, type id, access string offset, kind).
    let mut at = 4;
    while at < relocations.len() {
        let (Some(name), Some(count)) = (u32_at(relocations, at), u32_at(relocations, at + 4))
        else {
            return Err(ext_error("truncated section header"));
        };
        let name = btf_prune::name_at(btf, name)?;
        let section = file
            .section_by_name(&name)
            .ok_or_else(|| ext_error(&format!("no section {name}")))?;
        at += 8;
        for _ in 0..count {
            let (Some(offset), Some(kind)) =
                (u32_at(relocations, at), u32_at(relocations, at + 12))
            else {
                return Err(ext_error("truncated record"));
            };
            if kind == TYPE_ID_TARGET {
                sites.push(TypeIdSite {
                    section_index: section.index().0,
                    offset: offset.into(),
                });
            }
            at += record_len;
        }
    }
    Ok(sites)
}

/// Puts the kernel's id where the relocation against `types` wrote that BTF's own, in
/// `function`'s instructions among `sites`.
pub(super) fn point_at_kernel_ids(
    function: &mut aya_obj::Function,
    sites: &[TypeIdSite],
    types: &KernelTypes,
) -> io::Result<()> {
    let start = function.section_offset as u64;
    let end = start + function.instructions.len() as u64 * INSN_LEN;
    for site in sites {
        if site.section_index != function.section_index.0 || !(start..end).contains(&site.offset) {
            continue;
        }
        let index = ((site.offset - start) / INSN_LEN) as usize;
        let instruction: &mut bpf_insn = function
            .instructions
            .get_mut(index)
            .ok_or_else(|| io::Error::other("type id past the program's end"))?;
        let kernel = u32::try_from(instruction.imm)
            .ok()
            .and_then(|id| types.kernel_id(id))
            .ok_or_else(|| io::Error::other(format!("type id {} unknown", instruction.imm)))?;
        instruction.imm =
            i32::try_from(kernel).map_err(|_| io::Error::other("kernel type id out of range"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our iterators' object asks for one kernel type id: `struct tcp_sock`'s, for
    /// `bpf_rdonly_cast` in `held_sockets` (the probe-read twin asks for none).
    #[test]
    fn finds_the_type_id_the_iterators_ask_for() {
        let sites = type_id_sites(super::super::socket_fds::PROGRAM).expect("parses");
        assert_eq!(sites.len(), 1, "{sites:?}");
        assert!(
            type_id_sites(super::super::PROGRAM)
                .expect("parses")
                .is_empty()
        );
    }
}
