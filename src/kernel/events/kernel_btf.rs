//! The kernel's BTF as the iterator loader reads it: cut down to the types our object
//! can ask for (`btf_prune`: ~2k of ~127k types, parsed in a fraction of the time), the
//! kernel's ids put back wherever the loader writes one (`core_type_ids`, kfunc calls,
//! the attach target). The whole BTF is read when it cannot be cut down (a kind
//! `btf_prune` does not know), which costs what the cut saves and nothing else.

use std::io;

use aya_obj::btf::{Btf, BtfKind};

use super::btf_prune::{self, KernelTypes};
use super::core_type_ids;
use super::kfunc::ExternCall;

pub(super) struct KernelBtf {
    btf: Btf,
    /// The renumbering when `btf` is cut down; `None` when it is the kernel's whole.
    pruned: Option<KernelTypes>,
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// The kernel's BTF, mapped where sysfs allows it (Linux 6.16+), read otherwise.
enum SysfsBtf {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for SysfsBtf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SysfsBtf::Mapped(map) => map,
            SysfsBtf::Read(bytes) => bytes,
        }
    }
}

fn sysfs_btf() -> io::Result<SysfsBtf> {
    let file = std::fs::File::open(super::BTF_PATH)?;
    // SAFETY: the mapping is the kernel's own BTF, read-only kernel memory that nothing
    // changes or truncates while it is mapped (the kernel refuses a writable mapping).
    match unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) } {
        Ok(map) => Ok(SysfsBtf::Mapped(map)),
        Err(_) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes)?;
            Ok(SysfsBtf::Read(bytes))
        }
    }
}

impl KernelBtf {
    /// The kernel types `object`, its extern `calls` and `functions` (looked up by name,
    /// such as an iterator's attach target) can ask for.
    pub fn read(object: &[u8], calls: &[ExternCall], functions: &[&str]) -> io::Result<KernelBtf> {
        match Self::pruned(object, calls, functions) {
            Ok(kernel) => Ok(kernel),
            Err(e) => {
                tracing::debug!("kernel BTF read whole, not cut down: {e}");
                Self::whole()
            }
        }
    }

    pub fn whole() -> io::Result<KernelBtf> {
        let btf = Btf::from_sys_fs().map_err(|e| failed("kernel BTF", &e))?;
        Ok(KernelBtf { btf, pruned: None })
    }

    fn pruned(object: &[u8], calls: &[ExternCall], functions: &[&str]) -> io::Result<KernelBtf> {
        let kernel = sysfs_btf().map_err(|e| failed(super::BTF_PATH, &e))?;
        let mut wanted = btf_prune::type_names(super::kfunc::object_btf(object)?)?;
        wanted.extend(functions.iter().map(|name| name.as_bytes().to_vec()));
        wanted.extend(calls.iter().map(|call| call.function.as_bytes().to_vec()));
        let types = btf_prune::prune(&kernel, &wanted)?;
        let btf = Btf::parse(&types.bytes, object::Endianness::default())
            .map_err(|e| failed("kernel BTF, cut down", &e))?;
        Ok(KernelBtf {
            btf,
            pruned: Some(types),
        })
    }

    /// The kernel's BTF id of its function `name`.
    pub fn function_id(&self, name: &str) -> Option<u32> {
        let id = self.btf.id_by_type_name_kind(name, BtfKind::Func).ok()?;
        match &self.pruned {
            Some(types) => types.kernel_id(id),
            None => Some(id),
        }
    }

    /// CO-RE-relocates `object` (parsed from `elf`) against the kernel's types, with the
    /// kernel's ids wherever the relocation writes a type id.
    pub fn relocate(&self, object: &mut aya_obj::Object, elf: &[u8]) -> io::Result<()> {
        object
            .relocate_btf(&self.btf)
            .map_err(|e| failed("CO-RE relocation", &e))?;
        let Some(types) = &self.pruned else {
            return Ok(());
        };
        let sites = core_type_ids::type_id_sites(elf)?;
        for function in object.functions.values_mut() {
            core_type_ids::point_at_kernel_ids(function, &sites, types)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs kernel BTF: what cannot be cut down (here an object that is not one) is
    /// read whole, and still names the kernel's functions by the kernel's ids.
    #[test]
    fn what_cannot_be_cut_down_is_read_whole() {
        let target = super::super::iter_load::TASK_FILE;
        let fallback = KernelBtf::read(b"not an ELF object", &[], &[target]).expect("whole");
        assert!(fallback.pruned.is_none(), "read whole");
        let whole = KernelBtf::whole().expect("kernel BTF");
        assert_eq!(fallback.function_id(target), whole.function_id(target));
        assert!(
            fallback.function_id(target).is_some(),
            "{target} in the kernel's BTF"
        );
    }

    /// Needs kernel BTF: what is mapped is what a read gives (mapped on Linux 6.16+).
    #[test]
    fn the_kernel_btf_mapped_is_the_kernel_btf_read() {
        let mapped = sysfs_btf().expect("kernel BTF");
        let read = std::fs::read(super::super::BTF_PATH).expect("kernel BTF");
        assert!(
            mapped[..] == read[..],
            "{} against {} bytes",
            mapped.len(),
            read.len()
        );
    }

    /// Needs kernel BTF: every program of the iterators' object relocates to the same
    /// instructions against the cut-down BTF as against the whole (the kernel's type id
    /// for `bpf_rdonly_cast` included), and the functions' ids are the same.
    #[test]
    fn the_cut_down_kernel_btf_relocates_as_the_whole_one() {
        let program = super::super::socket_fds::PROGRAM;
        let calls = super::super::kfunc::extern_calls(program).expect("calls");
        let cut = KernelBtf::pruned(program, &calls, &[super::super::iter_load::TASK_FILE])
            .expect("kernel BTF");
        let whole = KernelBtf::whole().expect("kernel BTF");
        let relocated = |kernel: &KernelBtf| {
            let mut object = aya_obj::Object::parse(program).expect("our object");
            kernel
                .relocate(&mut object, program)
                .expect("CO-RE relocation");
            let function_id = |name: &str| kernel.function_id(name);
            let mut linked = Vec::new();
            for (key, function) in object.functions.iter_mut() {
                super::super::kfunc::link(function, &calls, &function_id).expect("kfuncs");
                let code: Vec<String> = function
                    .instructions
                    .iter()
                    .map(|i| format!("{i:?} dst {} src {}", i.dst_reg(), i.src_reg()))
                    .collect();
                linked.push((*key, code));
            }
            linked
        };
        let (from_cut, from_whole) = (relocated(&cut), relocated(&whole));
        assert_eq!(from_cut.len(), 3, "three programs");
        for ((key, cut), (_, whole)) in from_cut.iter().zip(&from_whole) {
            let differs = cut.iter().zip(whole).position(|(c, w)| c != w);
            assert_eq!(cut.len(), whole.len(), "program at {key:?}");
            assert_eq!(
                differs, None,
                "program at {key:?}, first differing instruction"
            );
        }
        for name in calls
            .iter()
            .map(|c| c.function.as_str())
            .chain([super::super::iter_load::TASK_FILE])
        {
            let id = |kernel: &KernelBtf| kernel.function_id(name).expect(name);
            assert_eq!(id(&cut), id(&whole), "{name}");
        }
    }
}
