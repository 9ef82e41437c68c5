//! Just enough of the kernel's BTF to find where a struct's members are, so programs that
//! read kernel structures get the offsets of the running kernel (aya relocates CO-RE
//! accesses only for C programs; ours take the offsets as a load-time global).
//!
//! Format: Documentation/bpf/btf.rst. A header, a type section (each type a 12-byte
//! `btf_type`, then kind-specific data), and a string section.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}; the kernel needs CONFIG_DEBUG_INFO_BTF")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not BTF data: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{path}: no struct {name} in the kernel's BTF")]
    NoStruct { path: PathBuf, name: String },
    #[error("{path}: struct {strukt} has no member {member}")]
    NoMember {
        path: PathBuf,
        strukt: String,
        member: String,
    },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    type_id: u32,
    /// Bits, or with `kind_flag` bitfield size << 24 | bit offset.
    offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Size for structs and ints, the referenced type for modifiers and typedefs.
    size_or_type: u32,
    kind_flag: bool,
    members: Vec<Member>,
}

/// The parsed type section of a BTF blob.
pub struct Btf {
    path: PathBuf,
    /// Index = type id (0 is void).
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self, BtfError> {
        Self::read(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, BtfError> {
        let bad = |what: &str| BtfError::Format {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(0xeb9f) {
            return Err(bad("wrong magic (big-endian BTF is not supported)"));
        }
        let hdr_len = u32_at(4).ok_or_else(|| bad("short header"))? as usize;
        let field = |o: usize| {
            u32_at(8 + o)
                .map(|v| v as usize)
                .ok_or_else(|| bad("short header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(4)?, field(8)?, field(12)?);
        let types_at = hdr_len + type_off;
        let strs_at = hdr_len + str_off;
        let types_end = types_at
            .checked_add(type_len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| bad("type section runs past the end"))?;
        let strings = data
            .get(strs_at..strs_at.saturating_add(str_len))
            .ok_or_else(|| bad("string section runs past the end"))?
            .to_vec();

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            kind_flag: false,
            members: Vec::new(),
        }];
        let mut o = types_at;
        while o < types_end {
            let name = u32_at(o).ok_or_else(|| bad("truncated type"))?;
            let info = u32_at(o + 4).ok_or_else(|| bad("truncated type"))?;
            let size_or_type = u32_at(o + 8).ok_or_else(|| bad("truncated type"))?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        members.push(Member {
                            name: u32_at(m).ok_or_else(|| bad("truncated member"))?,
                            type_id: u32_at(m + 4).ok_or_else(|| bad("truncated member"))?,
                            offset: u32_at(m + 8).ok_or_else(|| bad("truncated member"))?,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
                2 | 7..=12 | 16 | 18 => 0,
                k => return Err(bad(&format!("unknown type kind {k}"))),
            };
            o += extra;
            types.push(Type {
                name,
                kind,
                size_or_type,
                kind_flag,
                members,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            types,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    }

    /// Byte offset of `member` in `struct strukt`, looking into anonymous struct and
    /// union members as C does.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == strukt.as_bytes())
            .ok_or_else(|| BtfError::NoStruct {
                path: self.path.clone(),
                name: strukt.to_owned(),
            })?;
        self.find(id, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                path: self.path.clone(),
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Bit offset of `member` within type `id`, searching anonymous members (bounded
    /// depth: BTF from a file is not trusted to be acyclic).
    fn find(&self, id: usize, member: &[u8], depth: u32) -> Option<u32> {
        let t = self.types.get(id)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in &t.members {
            let bits = if t.kind_flag {
                m.offset & 0x00ff_ffff
            } else {
                m.offset
            };
            if m.name != 0 && self.name(m.name) == member {
                return Some(bits);
            }
            if m.name == 0 {
                let inner = self.skip_modifiers(m.type_id as usize);
                if let Some(b) = self.find(inner, member, depth + 1) {
                    return Some(bits + b);
                }
            }
        }
        None
    }

    /// Follows typedef, volatile, const, restrict and type tags to the type they name
    /// (bounded: BTF from a file is not trusted to be acyclic).
    fn skip_modifiers(&self, mut id: usize) -> usize {
        for _ in 0..16 {
            match self.types.get(id) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type as usize,
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_block_layer_members_in_the_running_kernel() {
        let btf = match Btf::kernel() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        // Stable in every kernel since struct request grew a queue pointer.
        assert_eq!(btf.member_offset("request", "q").unwrap(), 0);
        let sector = btf.member_offset("request", "__sector").unwrap();
        let len = btf.member_offset("request", "__data_len").unwrap();
        assert!(sector > len, "__sector follows __data_len");
        assert_eq!(btf.member_offset("gendisk", "major").unwrap(), 0);
        assert_eq!(btf.member_offset("gendisk", "first_minor").unwrap(), 4);
        // Reached through an anonymous union in struct request.
        assert!(btf.member_offset("request", "rq_next").is_ok());
        let e = btf
            .member_offset("request", "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("struct request has no member nope"), "{e}");
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for data in [
            &b""[..],
            b"\x9f\xeb",
            b"\x9f\xeb\x01\x00\x18\x00\x00\x00",
            &[0xff; 64],
        ] {
            assert!(Btf::parse(Path::new("x"), data).is_err());
        }
        let mut d = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        d.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(Btf::parse(Path::new("x"), &d).is_err());
    }
}
