//! Struct member offsets from the running kernel's BTF, for the LSM
//! programs (`agent_common::file::KernelOffsets`). Unlike a flat member
//! scan, this follows anonymous structs and unions (`qstr.len` lives in an
//! anonymous struct inside an anonymous union).

use std::collections::HashMap;

use agent_common::file::KernelOffsets;

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
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
        let mut p = types_start;
        while p < types_end {
            let name_off = u32_at(b, p)?;
            let info = u32_at(b, p + 4)?;
            let size_or_type = u32_at(b, p + 8)?;
            p += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                2 | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
                | 16 | KIND_TYPE_TAG => 0,
                k => return Err(BtfError::Kind(k)),
            };
            let wanted = matches!(kind, KIND_STRUCT | KIND_UNION);
            let name = if name_off == 0 || !(wanted || kind == KIND_TYPEDEF || kind == KIND_FUNC) {
                String::new()
            } else {
                str_at(b, strings, strings_end, name_off)?
            };
            let mut members = Vec::new();
            if wanted {
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

    /// Every offset the LSM programs read.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            file_f_path: self.offset("file", "f_path")?,
            file_f_inode: self.offset("file", "f_inode")?,
            file_f_mode: self.offset("file", "f_mode")?,
            file_f_flags: self.offset("file", "f_flags")?,
            path_mnt: self.offset("path", "mnt")?,
            path_dentry: self.offset("path", "dentry")?,
            dentry_d_parent: self.offset("dentry", "d_parent")?,
            dentry_d_name: self.offset("dentry", "d_name")?,
            dentry_d_inode: self.offset("dentry", "d_inode")?,
            qstr_name: self.offset("qstr", "name")?,
            qstr_len: self.offset("qstr", "len")?,
            inode_i_mode: self.offset("inode", "i_mode")?,
            inode_i_sb: self.offset("inode", "i_sb")?,
            sb_s_magic: self.offset("super_block", "s_magic")?,
            vfsmount_mnt_root: self.offset("vfsmount", "mnt_root")?,
            mount_mnt: self.offset("mount", "mnt")?,
            mount_mnt_parent: self.offset("mount", "mnt_parent")?,
            mount_mnt_mountpoint: self.offset("mount", "mnt_mountpoint")?,
            task_tgid: self.offset("task_struct", "tgid")?,
            task_cgroups: self.offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp: self.offset("css_set", "dfl_cgrp")?,
            cgroup_level: self.offset("cgroup", "level")?,
            cgroup_kn: self.offset("cgroup", "kn")?,
            cgroup_ancestors: self.offset("cgroup", "ancestors")?,
            kernfs_node_id: self.offset("kernfs_node", "id")?,
            dentry_d_sb: self.offset("dentry", "d_sb")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real kernel's BTF, where there is one: every offset resolves and
    /// the well-known ones have their well-known values.
    #[test]
    fn running_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no {VMLINUX}");
            return;
        };
        let o = btf.kernel_offsets().expect("offsets");
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8));
        assert_eq!(o.inode_i_mode, 0);
        assert!(o.file_f_path > 0 && o.mount_mnt > 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really not").is_err());
    }
}
