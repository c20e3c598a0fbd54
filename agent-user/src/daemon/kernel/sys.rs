//! The raw `bpf(2)` calls aya cannot make for us here: map create, program
//! load with an expected attach type aya does not know, pin, link create.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

use super::asm::Insn;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_F_NO_PREALLOC: u32 = 1;

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live repr(C) prefix of `union bpf_attr` for `cmd`;
    // the kernel reads (and for some commands writes) only `size` bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        map_name: name16(name),
        ..Default::default()
    };
    sys_bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

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
}

#[derive(Debug, thiserror::Error)]
#[error("BPF_PROG_LOAD: {errno}{}", if log.is_empty() { String::new() } else { format!("; verifier: {log}") })]
pub struct ProgLoadError {
    pub errno: io::Error,
    /// The end of the verifier log (the part that says why).
    pub log: String,
}

/// Loads a `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` program for `attach_type`. On
/// failure, loads again with the verifier log on to say why.
pub fn prog_load(insns: &[Insn], name: &str, attach_type: u32) -> Result<OwnedFd, ProgLoadError> {
    let license = c"GPL";
    let attempt = |log: &mut Vec<u8>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: if log.is_empty() { 0 } else { 1 },
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name16(name),
            prog_ifindex: 0,
            expected_attach_type: attach_type,
        };
        sys_bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    match attempt(&mut Vec::new()) {
        Ok(fd) => Ok(fd),
        Err(errno) => {
            let mut log = vec![0u8; 4 << 20];
            let _ = attempt(&mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join(" | ");
            Err(ProgLoadError { errno, log: tail })
        }
    }
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

fn c_path(path: &std::path::Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

pub fn obj_pin(fd: &OwnedFd, path: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let p = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: p.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// Attaches `prog` at the cgroup `cgroup_fd` as a bpf_link (multi-attach,
/// detached when the last reference — fd or pin — goes).
pub fn link_create(prog: &OwnedFd, cgroup_fd: i32, attach_type: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup_fd as u32,
        attach_type,
        flags: 0,
    };
    sys_bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}
