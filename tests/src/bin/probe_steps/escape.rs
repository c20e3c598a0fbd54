//! Probe steps for the ways out of an identity that BPF LSM closes beyond
//! plain opens: signal owners and changed views of the file system.
//!
//! setown PID|self   (fcntl(F_SETOWN) on a pipe) |
//! setown-ex-self   (fcntl(F_SETOWN_EX, {F_OWNER_PID, self})) |
//! fiosetown-self   (ioctl(FIOSETOWN, self) on a socket) |
//! userns   (unshare(CLONE_NEWUSER) in a forked child; prints
//! {"op":"userns-child","pid":N} first) |
//! chroot DIR   (chroot + chdir /: the remaining steps run inside) |
//! pivot-root NEW OLD |
//! open-tree-read DIR REL   (open_tree(OPEN_TREE_CLONE) of DIR, then read
//! REL through the detached copy; emits "open-tree" and "open-tree-read") |
//! fd-setsig FD SIG | fd-async FD | fd-fioasync FD   (arm an inherited fd
//! for signals: F_SETSIG, F_SETFL O_ASYNC, ioctl FIOASYNC on) |
//! execve PATH   (fork + raw execve, no other file opened: works in a bare
//! chroot; ok when the program started) |
//! fsmount-create NAME   (a new tmpfs from fsopen/fsmount, never attached;
//! creates NAME in it; emits "fsmount" and "fsmount-create")

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::emit;

pub fn is_step(op: &str) -> bool {
    matches!(
        op,
        "setown"
            | "setown-ex-self"
            | "fiosetown-self"
            | "userns"
            | "chroot"
            | "pivot-root"
            | "open-tree-read"
            | "fsmount-create"
            | "execve"
            | "fd-setsig"
            | "fd-async"
            | "fd-fioasync"
    )
}

fn cstr(p: &str) -> CString {
    CString::new(Path::new(p).as_os_str().as_bytes()).expect("no NUL")
}

fn check(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A pipe's read end (the write end is closed at once).
fn pipe_fd() -> i32 {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: our own fd.
    unsafe { libc::close(fds[1]) };
    fds[0]
}

fn close(fd: i32) {
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

const F_OWNER_PID: i32 = 1;
const F_SETOWN_EX: i32 = 15;
const F_SETSIG: i32 = 10;
const FIOSETOWN: libc::Ioctl = 0x8901;

/// `struct f_owner_ex`.
#[repr(C)]
struct OwnerEx {
    kind: i32,
    pid: i32,
}
const SYS_OPEN_TREE: i64 = 428;
const OPEN_TREE_CLONE: u32 = 1;
const SYS_FSOPEN: i64 = 430;
const SYS_FSCONFIG: i64 = 431;
const SYS_FSMOUNT: i64 = 432;
const FSCONFIG_CMD_CREATE: u32 = 6;

fn step_fiosetown_self(_args: &[String], i: usize) -> usize {
    let me = std::process::id() as i32;
    let s = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    let pid: i32 = me;
    // SAFETY: FIOSETOWN reads one int from `pid`.
    let r = check(unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            FIOSETOWN,
            &pid as *const i32,
        )
    } as i64);
    emit("fiosetown", r.map(drop));
    i + 1
}

fn step_userns(_args: &[String], i: usize) -> usize {
    // In a child: the probe itself stays where it is.
    // SAFETY: the probe is single-threaded here; the child only
    // calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain syscalls in the child.
        unsafe {
            let rc = libc::unshare(libc::CLONE_NEWUSER);
            let e = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(e);
        }
    }
    let mut status = 0;
    // SAFETY: our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let code = libc::WEXITSTATUS(status);
    // Events name the child: say which it was.
    println!(r#"{{"op":"userns-child","pid":{pid}}}"#);
    emit(
        "userns",
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        },
    );
    i + 1
}

fn step_open_tree_read(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let d = cstr(a(1));
    // SAFETY: valid path; the fd is closed below.
    let tree = check(unsafe {
        libc::syscall(
            SYS_OPEN_TREE,
            libc::AT_FDCWD,
            d.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32,
        )
    });
    match tree {
        Ok(t) => {
            emit("open-tree", Ok(()));
            let rel = cstr(a(2));
            // SAFETY: valid path relative to our tree fd.
            let r = check(unsafe {
                libc::openat(t as i32, rel.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
            } as i64);
            if let Ok(fd) = r {
                close(fd as i32);
            }
            close(t as i32);
            emit("open-tree-read", r.map(drop));
        }
        Err(e) => emit("open-tree", Err(e)),
    }
    i + 3
}

fn step_execve(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let path = cstr(a(1));
    let mut fds = [0i32; 2];
    // SAFETY: a pipe whose write end closes on a successful exec;
    // the child only makes async-signal-safe calls.
    let r = unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let pid = libc::fork();
        if pid == 0 {
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = *libc::__errno_location();
            libc::write(fds[1], (&e as *const i32).cast(), 4);
            libc::_exit(127);
        }
        libc::close(fds[1]);
        let mut e = 0i32;
        let n = libc::read(fds[0], (&mut e as *mut i32).cast(), 4);
        libc::close(fds[0]);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        if n == 4 {
            Err(io::Error::from_raw_os_error(e))
        } else {
            Ok(())
        }
    };
    emit("execve", r);
    i + 2
}

fn step_fsmount_create(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    // SAFETY: plain syscalls with valid strings; fds closed below.
    let m = unsafe {
        check(libc::syscall(SYS_FSOPEN, c"tmpfs".as_ptr(), 0u32)).and_then(|fs| {
            let r = check(libc::syscall(
                SYS_FSCONFIG,
                fs as i32,
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0,
            ))
            .and_then(|_| check(libc::syscall(SYS_FSMOUNT, fs as i32, 0u32, 0u32)));
            close(fs as i32);
            r
        })
    };
    match m {
        Ok(mfd) => {
            emit("fsmount", Ok(()));
            let name = cstr(a(1));
            // SAFETY: valid path relative to our mount fd.
            let r = check(unsafe {
                libc::openat(
                    mfd as i32,
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o644,
                )
            } as i64);
            if let Ok(fd) = r {
                close(fd as i32);
            }
            close(mfd as i32);
            emit("fsmount-create", r.map(drop));
        }
        Err(e) => emit("fsmount", Err(e)),
    }
    i + 2
}

pub fn step(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let me = std::process::id() as i32;
    match a(0) {
        "setown" => {
            let who = if a(1) == "self" {
                me
            } else {
                a(1).parse().expect("pid")
            };
            let fd = pipe_fd();
            // SAFETY: plain fcntl on our fd.
            let r = check(unsafe { libc::fcntl(fd, libc::F_SETOWN, who) } as i64);
            close(fd);
            emit("setown", r.map(drop));
            i + 2
        }
        "setown-ex-self" => {
            let fd = pipe_fd();
            let owner = OwnerEx {
                kind: F_OWNER_PID,
                pid: me,
            };
            // SAFETY: `owner` outlives the call.
            let r = check(unsafe { libc::fcntl(fd, F_SETOWN_EX, &owner as *const OwnerEx) } as i64);
            close(fd);
            emit("setown-ex", r.map(drop));
            i + 1
        }
        "fiosetown-self" => step_fiosetown_self(args, i),
        "userns" => step_userns(args, i),
        "chroot" => {
            let d = cstr(a(1));
            // SAFETY: valid paths.
            let r = check(unsafe { libc::chroot(d.as_ptr()) } as i64)
                .and_then(|_| check(unsafe { libc::chdir(c"/".as_ptr()) } as i64));
            emit("chroot", r.map(drop));
            i + 2
        }
        "pivot-root" => {
            let (n, o) = (cstr(a(1)), cstr(a(2)));
            // SAFETY: valid paths.
            let r = check(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) });
            emit("pivot-root", r.map(drop));
            i + 3
        }
        "open-tree-read" => step_open_tree_read(args, i),
        "fd-setsig" => {
            let fd: i32 = a(1).parse().expect("fd");
            let sig: i32 = a(2).parse().expect("signal");
            // SAFETY: plain fcntl on an inherited fd.
            let r = check(unsafe { libc::fcntl(fd, F_SETSIG, sig) } as i64);
            emit("fd-setsig", r.map(drop));
            i + 3
        }
        "fd-async" => {
            let fd: i32 = a(1).parse().expect("fd");
            // SAFETY: plain fcntl on an inherited fd.
            let r = check(unsafe {
                let fl = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC)
            } as i64);
            emit("fd-async", r.map(drop));
            i + 2
        }
        "fd-fioasync" => {
            let fd: i32 = a(1).parse().expect("fd");
            let on: i32 = 1;
            // SAFETY: FIOASYNC reads one int.
            let r = check(unsafe { libc::ioctl(fd, libc::FIOASYNC, &on as *const i32) } as i64);
            emit("fd-fioasync", r.map(drop));
            i + 2
        }
        "execve" => step_execve(args, i),
        "fsmount-create" => step_fsmount_create(args, i),
        other => panic!("unknown escape step {other}"),
    }
}
