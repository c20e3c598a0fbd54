//! The launcher's mark in `SC_LAUNCHERS`: what tells the syscall observers
//! that a tagged process with a seccomp filter runs under Corral's filter
//! (a parent of it is a registered launcher), and not under one it
//! installed itself to pass for a launched agent and escape `assigned =
//! "kill"`. Registered before the child starts; removed on drop (the
//! daemon removes the marks of launchers that died).

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub struct LauncherMark {
    map: OwnedFd,
    tgid: u32,
}

fn bpf(cmd: libc::c_long, attr: &ElemAttr) -> io::Result<()> {
    // SAFETY: `attr` points at a live key and value of the map's sizes
    // (u32, u32) for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl LauncherMark {
    /// Registers this process as the launcher of `identity_id`.
    pub fn register(map_path: &Path, identity_id: u32) -> io::Result<LauncherMark> {
        let map = super::supervisor::obj_get_rw(map_path, true)?;
        let tgid = std::process::id();
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &ElemAttr {
                map_fd: map.as_raw_fd() as u32,
                _pad: 0,
                key: &tgid as *const u32 as u64,
                value: &identity_id as *const u32 as u64,
                flags: 0,
            },
        )?;
        Ok(LauncherMark { map, tgid })
    }
}

impl Drop for LauncherMark {
    fn drop(&mut self) {
        let _ = bpf(
            BPF_MAP_DELETE_ELEM,
            &ElemAttr {
                map_fd: self.map.as_raw_fd() as u32,
                _pad: 0,
                key: &self.tgid as *const u32 as u64,
                value: 0,
                flags: 0,
            },
        );
    }
}
