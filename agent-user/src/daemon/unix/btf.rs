//! Just enough of a BTF reader to ask the running kernel two things: where a
//! struct member is, and what an enumerator is worth. aya parses BTF too,
//! but keeps member offsets and enum values crate-private.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

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

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("unknown BTF kind {0}")]
    Kind(u32),
}

/// What was found about the requested structs and enums.
#[derive(Debug, Default)]
pub struct Facts {
    /// (struct, member) → byte offset.
    pub members: HashMap<(String, String), u32>,
    /// (enum, enumerator) → value.
    pub enumerators: HashMap<(String, String), i64>,
}

impl Facts {
    pub fn member(&self, st: &str, m: &str) -> Option<u32> {
        self.members.get(&(st.to_string(), m.to_string())).copied()
    }

    pub fn enumerator(&self, en: &str, name: &str) -> Option<i64> {
        self.enumerators
            .get(&(en.to_string(), name.to_string()))
            .copied()
    }
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub fn read_vmlinux(structs: &[&str], enums: &[&str]) -> Result<Facts, BtfError> {
    let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
        path: VMLINUX,
        source,
    })?;
    scan(&data, structs, enums)
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl Cursor<'_> {
    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        let s = self
            .b
            .get(at..at + 4)
            .ok_or(BtfError::Malformed("truncated"))?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn str_at(&self, strings: usize, end: usize, off: u32) -> Result<&str, BtfError> {
        let start = strings + off as usize;
        let tail = self
            .b
            .get(start..end)
            .ok_or(BtfError::Malformed("string offset"))?;
        let n = tail
            .iter()
            .position(|&c| c == 0)
            .ok_or(BtfError::Malformed("unterminated string"))?;
        std::str::from_utf8(&tail[..n]).map_err(|_| BtfError::Malformed("string not UTF-8"))
    }
}

/// One pass over the type section, collecting members of the named structs
/// and enumerators of the named enums (little-endian BTF only, as on x86).
pub fn scan(b: &[u8], structs: &[&str], enums: &[&str]) -> Result<Facts, BtfError> {
    let c = Cursor { b };
    if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != MAGIC {
        return Err(BtfError::Malformed("bad magic"));
    }
    let hdr_len = c.u32_at(4)? as usize;
    let (type_off, type_len) = (c.u32_at(8)? as usize, c.u32_at(12)? as usize);
    let (str_off, str_len) = (c.u32_at(16)? as usize, c.u32_at(20)? as usize);
    let types = hdr_len + type_off;
    let types_end = types + type_len;
    let strings = hdr_len + str_off;
    let strings_end = strings + str_len;
    if types_end > b.len() || strings_end > b.len() {
        return Err(BtfError::Malformed("section out of bounds"));
    }
    let mut facts = Facts::default();
    let mut p = types;
    while p < types_end {
        let name_off = c.u32_at(p)?;
        let info = c.u32_at(p + 4)?;
        p += 12;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            2 | 7..=12 | 16 | 18 => 0,
            k => return Err(BtfError::Kind(k)),
        };
        let wanted = |list: &[&str]| -> Result<Option<String>, BtfError> {
            if name_off == 0 {
                return Ok(None);
            }
            let name = c.str_at(strings, strings_end, name_off)?;
            Ok(list.contains(&name).then(|| name.to_string()))
        };
        if kind == KIND_STRUCT
            && let Some(st) = wanted(structs)?
        {
            for i in 0..vlen {
                let m = p + 12 * i;
                let mname = c.str_at(strings, strings_end, c.u32_at(m)?)?;
                let raw = c.u32_at(m + 8)?;
                let bits = if kflag { raw & 0x00ff_ffff } else { raw };
                if bits % 8 == 0 {
                    facts
                        .members
                        .insert((st.clone(), mname.to_string()), bits / 8);
                }
            }
        } else if kind == KIND_ENUM
            && let Some(en) = wanted(enums)?
        {
            for i in 0..vlen {
                let m = p + 8 * i;
                let ename = c.str_at(strings, strings_end, c.u32_at(m)?)?;
                let v = c.u32_at(m + 4)? as i32 as i64;
                facts.enumerators.insert((en.clone(), ename.to_string()), v);
            }
        }
        p += extra;
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built BTF blob: `int`, `struct s { int a; int b; }` and
    /// `enum e { X = 49 }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0e\0X\0".to_vec();
        let (int, s, a, bb, e, x) = (1u32, 5u32, 7u32, 9u32, 11u32, 13u32);
        let mut t: Vec<u32> = vec![];
        t.extend([int, KIND_INT << 24, 4, 32]); // type 1: int
        t.extend([s, (KIND_STRUCT << 24) | 2, 8, a, 1, 0, bb, 1, 32]);
        t.extend([e, (KIND_ENUM << 24) | 1, 4, x, 49]);
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
    fn finds_members_and_enumerators() {
        let f = scan(&blob(), &["s"], &["e"]).expect("scan");
        assert_eq!(f.member("s", "a"), Some(0));
        assert_eq!(f.member("s", "b"), Some(4));
        assert_eq!(f.member("s", "c"), None);
        assert_eq!(f.enumerator("e", "X"), Some(49));
    }

    #[test]
    fn rejects_garbage() {
        assert!(scan(b"not btf at all, really not", &[], &[]).is_err());
    }
}
