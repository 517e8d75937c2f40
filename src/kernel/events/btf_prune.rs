//! The kernel's BTF cut down to the types our iterator programs' CO-RE relocation can
//! read, before aya-obj parses it. aya-obj turns all of the kernel's ~127k types into
//! values (~20-25 ms and ~19 MB here) and scans every one of them by name for each
//! struct the programs read (~11-15 ms): the largest part of loading the iterators,
//! which a one-shot `snapshot` pays once per run.
//!
//! Kept: every type named like a type of our object (or like a kernel function we look
//! up), and what those types are made of (members, array elements, typedef and
//! qualifier targets, function prototypes), never through a pointer: CO-RE matches a
//! pointer field as a pointer without looking at what it points to, so a pointer to a
//! type that is not kept points to void. Kept types are renumbered 1..n in the kernel's
//! order (`KernelTypes` remembers each one's kernel id, which `kernel_btf` and
//! `core_type_ids` put back wherever the loader writes an id); the string section keeps
//! only their names (a fraction of the kernel's ~2 MB).

use std::collections::HashSet;
use std::io;

/// `struct btf_header` (uapi btf.h): magic, version, flags, hdr_len, then the offsets
/// and lengths of the type and string sections from the header's end.
const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Bytes of `struct btf_type`, before a kind's trailing data.
const TYPE_LEN: usize = 12;

// BTF kinds (uapi btf.h).
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const FLOAT: u32 = 16;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

/// A BTF blob read in place: its sections and where each type starts.
struct Layout<'a> {
    bytes: &'a [u8],
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset in `types` of type id `i + 1` (id 0 is void, implicit).
    starts: Vec<usize>,
}

fn malformed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("BTF: {what}"))
}

/// The native-endian `u32` at `at`, if `bytes` holds one there.
pub(super) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
}

/// Bytes that follow a type's 12-byte header, by kind; `None` for a kind this reader
/// does not know (a newer kernel's), which it cannot step over.
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        INT | VAR | DECL_TAG => 4,
        PTR | FWD | TYPEDEF | VOLATILE | CONST | RESTRICT | FUNC | FLOAT | TYPE_TAG => 0,
        ARRAY => 12,
        STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
        ENUM | FUNC_PROTO => 8 * vlen,
        _ => return None,
    })
}

impl<'a> Layout<'a> {
    fn read(bytes: &'a [u8]) -> io::Result<Layout<'a>> {
        let magic = bytes.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(malformed(
                "no BTF magic (or not in this machine's byte order)".into(),
            ));
        }
        let field = |at| u32_at(bytes, at).map(|v| v as usize);
        let (Some(header), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (field(4), field(8), field(12), field(16), field(20))
        else {
            return Err(malformed("truncated header".into()));
        };
        let section = |off: usize, len: usize| {
            let start = header.checked_add(off)?;
            bytes.get(start..start.checked_add(len)?)
        };
        let (Some(types), Some(strings)) = (section(type_off, type_len), section(str_off, str_len))
        else {
            return Err(malformed("a section runs past the end".into()));
        };
        let mut starts = Vec::with_capacity(type_len / 16);
        let mut at = 0;
        while at < types.len() {
            let info = u32_at(types, at + 4)
                .ok_or_else(|| malformed(format!("type {} truncated", starts.len() + 1)))?;
            let kind = (info >> 24) & 0x1f;
            let extra = trailing_len(kind, (info & 0xffff) as usize).ok_or_else(|| {
                malformed(format!(
                    "type {} has kind {kind}, unknown here",
                    starts.len() + 1
                ))
            })?;
            starts.push(at);
            at += TYPE_LEN + extra;
        }
        if at != types.len() {
            return Err(malformed("the last type runs past its section".into()));
        }
        Ok(Layout {
            bytes,
            types,
            strings,
            starts,
        })
    }

    /// (name offset, info, size or type) of type `id` (1-based).
    fn header(&self, id: usize) -> (u32, u32, u32) {
        let at = self.starts[id - 1];
        let word = |n: usize| u32_at(self.types, at + 4 * n).unwrap_or(0);
        (word(0), word(1), word(2))
    }

    fn name(&self, offset: u32) -> &'a [u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The bytes of type `id`, header and trailing data.
    fn entry(&self, id: usize) -> &'a [u8] {
        let start = self.starts[id - 1];
        let end = self.starts.get(id).copied().unwrap_or(self.types.len());
        &self.types[start..end]
    }

    /// The types type `id` is made of: what CO-RE may resolve through it. A pointer's
    /// target is not among them (see the module's comment).
    fn parts(&self, id: usize) -> Vec<u32> {
        let (_, info, size_or_type) = self.header(id);
        let vlen = (info & 0xffff) as usize;
        let at = self.starts[id - 1] + TYPE_LEN;
        let word = |offset: usize| u32_at(self.types, at + offset).unwrap_or(0);
        match (info >> 24) & 0x1f {
            TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG | FUNC => vec![size_or_type],
            ARRAY => vec![word(0), word(4)],
            STRUCT | UNION => (0..vlen).map(|m| word(12 * m + 4)).collect(),
            FUNC_PROTO => std::iter::once(size_or_type)
                .chain((0..vlen).map(|p| word(8 * p + 4)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A name without its CO-RE flavor (`sock___old` is `sock`).
fn flavorless(name: &[u8]) -> &[u8] {
    name.windows(3)
        .position(|w| w == b"___")
        .map_or(name, |at| &name[..at])
}

/// The names of the named types of a BTF blob (an object's `.BTF` section): the
/// kernel types its CO-RE relocations may look for.
pub(super) fn type_names(btf: &[u8]) -> io::Result<HashSet<Vec<u8>>> {
    let layout = Layout::read(btf)?;
    Ok((1..=layout.starts.len())
        .map(|id| layout.name(layout.header(id).0))
        .filter(|name| !name.is_empty())
        .map(|name| flavorless(name).to_vec())
        .collect())
}

/// A cut-down kernel BTF: its kept types renumbered from 1 in their kernel order, and
/// each one's kernel id, for the ids the relocation and the loader write into programs.
pub(super) struct KernelTypes {
    pub bytes: Vec<u8>,
    /// `kernel_ids[id]`: the kernel's id of type `id` of `bytes` (0: void).
    kernel_ids: Vec<u32>,
}

impl KernelTypes {
    /// The kernel's id of this BTF's type `id`.
    pub fn kernel_id(&self, id: u32) -> Option<u32> {
        self.kernel_ids.get(id as usize).copied()
    }
}

/// Whether the name at the start of `name` (NUL-terminated) is one of `wanted`, or one
/// of them with a flavor (`sock___old`), without hashing every kernel type's name.
fn is_wanted(name: &[u8], wanted: &[Vec<Vec<u8>>; 256]) -> bool {
    let Some(&first) = name.first() else {
        return false;
    };
    wanted[first as usize].iter().any(|w| {
        name.starts_with(w)
            && matches!(
                name.get(w.len()..),
                Some([0, ..] | [] | [b'_', b'_', b'_', ..])
            )
    })
}

/// The string at `offset` of a BTF blob's string section (an object's section names).
pub(super) fn name_at(btf: &[u8], offset: u32) -> io::Result<String> {
    let layout = Layout::read(btf)?;
    Ok(String::from_utf8_lossy(layout.name(offset)).into_owned())
}

/// `kernel` (the kernel's BTF) with only the types named in `wanted` and what they are
/// made of, renumbered; a pointer to a type not kept points to void.
pub(super) fn prune(kernel: &[u8], wanted: &HashSet<Vec<u8>>) -> io::Result<KernelTypes> {
    let layout = Layout::read(kernel)?;
    let count = layout.starts.len();
    let mut by_first: [Vec<Vec<u8>>; 256] = std::array::from_fn(|_| Vec::new());
    for name in wanted.iter().filter(|name| !name.is_empty()) {
        by_first[name[0] as usize].push(name.clone());
    }
    let mut kept = vec![false; count + 1];
    let mut pending: Vec<u32> = (1..=count)
        .filter(|&id| {
            let (name, info, _) = layout.header(id);
            let kind = (info >> 24) & 0x1f;
            name != 0
                && !matches!(kind, VAR | DATASEC | DECL_TAG)
                && is_wanted(
                    layout.strings.get(name as usize..).unwrap_or_default(),
                    &by_first,
                )
        })
        .map(|id| id as u32)
        .collect();
    while let Some(id) = pending.pop() {
        let id = id as usize;
        if id == 0 || id > count || kept[id] {
            continue; // void, out of range (left dangling, to void), or seen
        }
        kept[id] = true;
        if (layout.header(id).1 >> 24) & 0x1f != PTR {
            pending.extend(layout.parts(id));
        }
    }
    let kernel_ids: Vec<u32> = std::iter::once(0)
        .chain((1..=count).filter(|&id| kept[id]).map(|id| id as u32))
        .collect();
    let mut new_ids = vec![0u32; count + 1];
    for (new, &old) in kernel_ids.iter().enumerate() {
        new_ids[old as usize] = new as u32;
    }
    let mut strings = Strings::default();
    let mut types = Vec::new();
    for &old in &kernel_ids[1..] {
        types.extend_from_slice(&renumbered(&layout, old as usize, &new_ids, &mut strings));
    }
    let mut bytes = Vec::with_capacity(HEADER_LEN + types.len() + strings.bytes.len());
    bytes.extend_from_slice(&layout.bytes[..4]); // magic, version, flags
    for value in [HEADER_LEN, 0, types.len(), types.len(), strings.bytes.len()] {
        let value = u32::try_from(value).map_err(|_| malformed("too large".into()))?;
        bytes.extend_from_slice(&value.to_ne_bytes());
    }
    bytes.extend_from_slice(&types);
    bytes.extend_from_slice(&strings.bytes);
    Ok(KernelTypes { bytes, kernel_ids })
}

/// The string section of a cut-down BTF: each kept name once, by its kernel offset.
struct Strings {
    bytes: Vec<u8>,
    offsets: foldhash::HashMap<u32, u32>,
}

impl Default for Strings {
    fn default() -> Strings {
        Strings {
            bytes: vec![0], // offset 0: the empty name
            offsets: foldhash::HashMap::default(),
        }
    }
}

impl Strings {
    /// The new offset of the kernel's name at `offset`, added on first use.
    fn offset_of(&mut self, layout: &Layout, offset: u32) -> u32 {
        if offset == 0 {
            return 0;
        }
        *self.offsets.entry(offset).or_insert_with(|| {
            let new = self.bytes.len() as u32;
            self.bytes.extend_from_slice(layout.name(offset));
            self.bytes.push(0);
            new
        })
    }
}

/// Type `id`'s bytes with every type it refers to renumbered by `new_ids` (0, void,
/// for a type not kept: only a pointer's target can be one) and its names (its own,
/// its members', parameters' and enumerators') moved to `strings`.
fn renumbered(layout: &Layout, id: usize, new_ids: &[u32], strings: &mut Strings) -> Vec<u8> {
    let mut entry = layout.entry(id).to_vec();
    let (_, info, _) = layout.header(id);
    let vlen = (info & 0xffff) as usize;
    let rewrite = |entry: &mut Vec<u8>, at: usize, new: &mut dyn FnMut(u32) -> u32| {
        if let Some(old) = u32_at(entry, at) {
            entry[at..at + 4].copy_from_slice(&new(old).to_ne_bytes());
        }
    };
    let mut type_id = |old: u32| new_ids.get(old as usize).copied().unwrap_or(0);
    let mut name = |old: u32| strings.offset_of(layout, old);
    rewrite(&mut entry, 0, &mut name);
    let after = TYPE_LEN;
    match (info >> 24) & 0x1f {
        PTR | TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG | FUNC => {
            rewrite(&mut entry, 8, &mut type_id)
        }
        ARRAY => {
            rewrite(&mut entry, after, &mut type_id);
            rewrite(&mut entry, after + 4, &mut type_id);
        }
        STRUCT | UNION => (0..vlen).for_each(|m| {
            rewrite(&mut entry, after + 12 * m, &mut name);
            rewrite(&mut entry, after + 12 * m + 4, &mut type_id);
        }),
        FUNC_PROTO => {
            rewrite(&mut entry, 8, &mut type_id);
            (0..vlen).for_each(|p| {
                rewrite(&mut entry, after + 8 * p, &mut name);
                rewrite(&mut entry, after + 8 * p + 4, &mut type_id);
            });
        }
        ENUM => (0..vlen).for_each(|v| rewrite(&mut entry, after + 8 * v, &mut name)),
        ENUM64 => (0..vlen).for_each(|v| rewrite(&mut entry, after + 12 * v, &mut name)),
        _ => {}
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob of `types` (each header plus trailing words) and `strings`.
    fn blob(types: &[&[u32]], strings: &[u8]) -> Vec<u8> {
        let body: Vec<u8> = types
            .iter()
            .flat_map(|words| words.iter().flat_map(|w| w.to_ne_bytes()))
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for value in [HEADER_LEN, 0, body.len(), body.len(), strings.len()] {
            out.extend_from_slice(&(value as u32).to_ne_bytes());
        }
        out.extend_from_slice(&body);
        out.extend_from_slice(strings);
        out
    }

    const fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    #[test]
    fn keeps_wanted_types_and_their_parts_but_not_what_pointers_reach() {
        // 1 int "int"; 2 struct "inner" {int a}; 3 struct "other" {int a};
        // 4 ptr -> 3; 5 struct "sock" {inner i; other *p}; 6 struct "unrelated" {int a}
        let strings = b"\0int\0inner\0other\0sock\0unrelated\0a\0i\0p\0";
        let name = |s: &[u8]| {
            strings
                .windows(s.len() + 1)
                .position(|w| &w[..s.len()] == s && w[s.len()] == 0)
                .unwrap() as u32
        };
        let types: Vec<Vec<u32>> = vec![
            vec![name(b"int"), info(INT, 0), 4, 32],
            vec![name(b"inner"), info(STRUCT, 1), 4, name(b"a"), 1, 0],
            vec![name(b"other"), info(STRUCT, 1), 4, name(b"a"), 1, 0],
            vec![0, info(PTR, 0), 3],
            vec![
                name(b"sock"),
                info(STRUCT, 2),
                16,
                name(b"i"),
                2,
                0,
                name(b"p"),
                4,
                64,
            ],
            vec![name(b"unrelated"), info(STRUCT, 1), 4, name(b"a"), 1, 0],
        ];
        let refs: Vec<&[u32]> = types.iter().map(Vec::as_slice).collect();
        let kernel = blob(&refs, strings);
        let wanted: HashSet<Vec<u8>> = [b"sock".to_vec()].into();
        let pruned = prune(&kernel, &wanted).expect("prunes");
        let layout = Layout::read(&pruned.bytes).expect("reads back");
        let kinds: Vec<u32> = (1..=layout.starts.len())
            .map(|id| layout.header(id).1 >> 24)
            .collect();
        assert_eq!(
            kinds,
            [INT, STRUCT, PTR, STRUCT],
            "int, inner, the pointer, sock"
        );
        let kernel_ids: Vec<_> = (0..=5).map(|id| pruned.kernel_id(id)).collect();
        assert_eq!(
            kernel_ids,
            [Some(0), Some(1), Some(2), Some(4), Some(5), None]
        );
        assert_eq!(layout.header(3).2, 0, "behind a pointer: not kept, void");
        let sock = layout.entry(4);
        let member_types: Vec<u32> = [16, 28].iter().filter_map(|&at| u32_at(sock, at)).collect();
        assert_eq!(member_types, [2, 3], "sock's members renumbered");
        assert_eq!(u32_at(layout.entry(2), 16), Some(1), "inner.a is the int");
        let names: Vec<&[u8]> = [
            layout.name(layout.header(4).0),
            layout.name(u32_at(sock, 12).unwrap_or(0)),
            layout.name(u32_at(sock, 24).unwrap_or(0)),
        ]
        .into();
        assert_eq!(
            names,
            [&b"sock"[..], b"i", b"p"],
            "names moved with their types"
        );
        assert_eq!(
            layout.strings, b"\0int\0inner\0a\0sock\0i\0p\0",
            "kept names only"
        );
    }

    #[test]
    fn flavored_kernel_names_match_and_longer_names_do_not() {
        let mut wanted: [Vec<Vec<u8>>; 256] = std::array::from_fn(|_| Vec::new());
        wanted[b's' as usize].push(b"sock".to_vec());
        assert!(is_wanted(b"sock\0next", &wanted));
        assert!(is_wanted(b"sock___v2\0", &wanted));
        assert!(!is_wanted(b"sock_common\0", &wanted));
        assert!(!is_wanted(b"soc\0", &wanted));
        assert!(!is_wanted(b"", &wanted));
    }

    #[test]
    fn names_lose_their_flavor() {
        let strings = b"\0sock___old\0";
        let kernel = blob(&[&[1, info(FWD, 0), 0]], strings);
        let names = type_names(&kernel).expect("reads");
        assert_eq!(names, [b"sock".to_vec()].into());
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let good = blob(&[&[0, info(PTR, 0), 0]], b"\0");
        assert!(Layout::read(&good).is_ok());
        assert!(Layout::read(&good[..good.len() - 3]).is_err(), "cut short");
        assert!(Layout::read(&[0u8; 30]).is_err(), "no magic");
        let unknown = blob(&[&[0, info(31, 0), 0]], b"\0");
        let error = Layout::read(&unknown).err().expect("unknown kind");
        assert!(error.to_string().contains("kind 31"), "{error}");
        let overlong = blob(&[&[0, info(STRUCT, 5), 0]], b"\0");
        assert!(Layout::read(&overlong).is_err(), "members past the section");
    }
}
