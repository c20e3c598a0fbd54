//! Leaving the identity: the own cgroup, writing the own pid to the
//! parent's cgroup.procs, clone3(CLONE_INTO_CGROUP) into the parent's
//! cgroup.

use std::{
    ffi::CString,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use super::*;
use crate::emit;

fn cgroup_of(pid: &str) -> String {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    own.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2")
        .to_string()
}

fn parent_cgroup_dir() -> String {
    // SAFETY: plain syscall.
    let ppid = unsafe { libc::getppid() };
    format!("{}{}", crate::cgroup2_root(), cgroup_of(&ppid.to_string()))
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3 into the parent's cgroup; the child connects to `a` and exits
/// with 0 or the errno. Gives the child's exit code.
fn clone_into_parent(a: &SocketAddr) -> io::Result<i32> {
    let dir = CString::new(parent_cgroup_dir()).expect("no NUL");
    // SAFETY: valid path.
    let cg = cvt(unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    } as i64)?;
    // SAFETY: a fresh fd.
    let cg = unsafe { OwnedFd::from_raw_fd(cg as RawFd) };
    // Everything the child uses is built before the clone.
    let (ss, len) = raw_sa(a, 0);
    let fam = family(a);
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cg.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack behaves like fork; the child only
    // makes raw syscalls on pre-built data and exits.
    let pid = cvt(unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    })?;
    if pid == 0 {
        // SAFETY: raw syscalls only, then _exit.
        unsafe {
            let fd = libc::socket(fam, libc::SOCK_STREAM, 0);
            let rc = libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len);
            let code = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    Ok(libc::WEXITSTATUS(status))
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-cgroup" => {
            println!(
                r#"{{"op":"bp-cgroup","cgroup":{}}}"#,
                json_str(&cgroup_of("self"))
            );
            i + 1
        }
        "bp-escape" => {
            let r = std::fs::write(format!("{}/cgroup.procs", parent_cgroup_dir()), "0");
            emit("bp-escape", r);
            i + 1
        }
        "bp-clone-into-parent" => {
            let r = clone_into_parent(&sa(a(1), a(2)));
            let child = *r.as_ref().unwrap_or(&-1);
            emit_with(
                "bp-clone-into-parent",
                r.map(drop),
                &format!(r#""child_errno":{child}"#),
            );
            i + 3
        }
        _ => return None,
    })
}
