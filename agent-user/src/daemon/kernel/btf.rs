//! Just enough of a BTF reader to ask the running kernel where a struct
//! member is (following anonymous structs and unions: `qstr.len` lives in
//! an anonymous struct inside an anonymous union), what an enumerator is
//! worth, and which `bpf_lsm_*` hooks exist. aya parses BTF too, but keeps
//! member offsets and enum values crate-private. One reader serves the LSM
//! offsets, the unix hook layout and the seccomp mode offset.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {VMLINUX}: {0}")]
    Read(std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {0}")]
    Kind(u32),
    #[error("kernel BTF has no member {0}")]
    Missing(String),
}

struct Member {
    name: String,
    ty: u32,
    bit_off: u32,
}

struct Type {
    kind: u32,
    /// Referenced type (typedef, const, ...).
    ty: u32,
    members: Vec<Member>,
}

/// The parsed type table; type id N is `types[N]` (id 0 is void).
pub struct Btf {
    types: Vec<Type>,
    by_name: HashMap<String, u32>,
    funcs: HashMap<String, u32>,
    /// Named enums: enumerator name → value.
    enums: HashMap<String, HashMap<String, i64>>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    let s = b.get(at..at + 4).ok_or(BtfError::Malformed("truncated"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn str_at(b: &[u8], strings: usize, end: usize, off: u32) -> Result<String, BtfError> {
    let start = strings + off as usize;
    let tail = b
        .get(start..end)
        .ok_or(BtfError::Malformed("string offset"))?;
    let n = tail
        .iter()
        .position(|&c| c == 0)
        .ok_or(BtfError::Malformed("unterminated string"))?;
    Ok(String::from_utf8_lossy(&tail[..n]).into_owned())
}

/// Bytes that follow a type's 12-byte header, by kind.
fn extra_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | 16
        | KIND_TYPE_TAG => 0,
        k => return Err(BtfError::Kind(k)),
    })
}

/// A struct's or union's `vlen` members at `p` (`kflag`: bitfield offsets
/// packed with their size).
fn members_at(
    b: &[u8],
    p: usize,
    vlen: usize,
    kflag: bool,
    (strings, strings_end): (usize, usize),
) -> Result<Vec<Member>, BtfError> {
    let mut members = Vec::with_capacity(vlen);
    for i in 0..vlen {
        let m = p + 12 * i;
        let mname = u32_at(b, m)?;
        let raw = u32_at(b, m + 8)?;
        members.push(Member {
            name: if mname == 0 {
                String::new()
            } else {
                str_at(b, strings, strings_end, mname)?
            },
            ty: u32_at(b, m + 4)?,
            bit_off: if kflag { raw & 0x00ff_ffff } else { raw },
        });
    }
    Ok(members)
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        Btf::parse(&std::fs::read(VMLINUX).map_err(BtfError::Read)?)
    }

    /// Little-endian BTF only (as on x86-64).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off;
        let strings_end = strings + str_len;
        if types_end > b.len() || strings_end > b.len() {
            return Err(BtfError::Malformed("section out of bounds"));
        }
        let mut types = vec![Type {
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut by_name = HashMap::new();
        let mut funcs = HashMap::new();
        let mut enums: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut p = types_start;
        while p < types_end {
            let name_off = u32_at(b, p)?;
            let info = u32_at(b, p + 4)?;
            let size_or_type = u32_at(b, p + 8)?;
            p += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let extra = extra_len(kind, vlen)?;
            let wanted = matches!(kind, KIND_STRUCT | KIND_UNION);
            let named = wanted || matches!(kind, KIND_TYPEDEF | KIND_FUNC | KIND_ENUM);
            let name = if name_off == 0 || !named {
                String::new()
            } else {
                str_at(b, strings, strings_end, name_off)?
            };
            let members = if wanted {
                members_at(b, p, vlen, kflag, (strings, strings_end))?
            } else {
                Vec::new()
            };
            if kind == KIND_ENUM && !name.is_empty() {
                let values = enums.entry(name.clone()).or_default();
                for i in 0..vlen {
                    let m = p + 8 * i;
                    let ename = str_at(b, strings, strings_end, u32_at(b, m)?)?;
                    values.insert(ename, i64::from(u32_at(b, m + 4)? as i32));
                }
            }
            let id = types.len() as u32;
            if kind == KIND_STRUCT && !name.is_empty() && !members.is_empty() {
                by_name.entry(name.clone()).or_insert(id);
            }
            if kind == KIND_FUNC && name.starts_with("bpf_lsm_") {
                funcs.entry(name.clone()).or_insert(id);
            }
            types.push(Type {
                kind,
                ty: size_or_type,
                members,
            });
            p += extra;
        }
        Ok(Btf {
            types,
            by_name,
            funcs,
            enums,
        })
    }

    /// Follows typedefs and qualifiers to a struct or union.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                KIND_STRUCT | KIND_UNION => return Some(t),
                _ => return None,
            }
        }
        None
    }

    fn find_in(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name == member {
                return Some(m.bit_off);
            }
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            if let Some(inner) = self.resolve(m.ty)
                && let Some(off) = self.find_in(inner, member, depth + 1)
            {
                return Some(m.bit_off + off);
            }
        }
        None
    }

    /// Type id of an LSM hook's `bpf_lsm_*` function.
    pub fn lsm_func_id(&self, name: &str) -> Option<u32> {
        self.funcs.get(name).copied()
    }

    /// Byte offset of `member` in `struct st`, looking through anonymous
    /// structs and unions.
    pub fn offset(&self, st: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{st}.{member}"));
        let id = *self.by_name.get(st).ok_or_else(missing)?;
        let t = &self.types[id as usize];
        let bits = self.find_in(t, member, 0).ok_or_else(missing)?;
        if bits % 8 != 0 {
            return Err(missing());
        }
        Ok(bits / 8)
    }

    /// Whether `member` of `struct st` (a direct member) is a pointer,
    /// through typedefs and qualifiers. None when there is no such member.
    pub fn member_is_pointer(&self, st: &str, member: &str) -> Option<bool> {
        let id = *self.by_name.get(st)?;
        let m = self.types[id as usize]
            .members
            .iter()
            .find(|m| m.name == member)?;
        let mut ty = m.ty;
        for _ in 0..16 {
            let t = self.types.get(ty as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    ty = t.ty
                }
                k => return Some(k == KIND_PTR),
            }
        }
        None
    }

    /// The value of enumerator `name` of `enum en`.
    pub fn enumerator(&self, en: &str, name: &str) -> Option<i64> {
        self.enums.get(en)?.get(name).copied()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hand-built BTF blob: `int`, `struct s { int a; union { int b; }; }`
    /// and `enum e { X = 49 }`.
    pub(crate) fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0e\0X\0".to_vec();
        let (int, s, a, bb, e, x) = (1u32, 5u32, 7u32, 9u32, 11u32, 13u32);
        let mut t: Vec<u32> = vec![];
        t.extend([int, KIND_INT << 24, 4, 32]); // type 1: int
        t.extend([s, (KIND_STRUCT << 24) | 2, 8, a, 1, 0, 0, 4, 32]); // 2: s
        t.extend([e, (KIND_ENUM << 24) | 1, 4, x, 49]); // 3: e
        t.extend([0, (KIND_UNION << 24) | 1, 4, bb, 1, 0]); // 4: anonymous union
        let types: Vec<u8> = t.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_enumerators() {
        let b = Btf::parse(&blob()).expect("parse");
        assert_eq!(b.offset("s", "a").ok(), Some(0));
        assert_eq!(b.offset("s", "b").ok(), Some(4));
        assert!(b.offset("s", "c").is_err());
        assert_eq!(b.enumerator("e", "X"), Some(49));
        assert_eq!(b.enumerator("e", "Y"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really not").is_err());
    }
}
