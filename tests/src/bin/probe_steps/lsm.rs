//! Probe steps for the BPF-LSM tests (bypass closers, self-protection):
//!
//! hold PATH   (open O_RDONLY and keep the fd; prints {"op":"hold","fd":N}) |
//! reopen-fd FD|held   (open /proc/self/fd/FD for reading) | read-fd FD|held |
//! truncate-path PATH   (truncate(2): no open) |
//! o-path-reopen PATH   (O_PATH open, then a read re-open through /proc/self/fd) |
//! openat2 PATH | uring-open PATH   (io_uring IORING_OP_OPENAT, read-only) |
//! append PATH   (O_WRONLY|O_APPEND) | ro-trunc PATH   (O_RDONLY|O_TRUNC) |
//! chdir-deep NAME N   (chdir NAME, N times, relative) |
//! join-cgroup DIR   (write "0" to DIR/cgroup.procs) | write-file PATH DATA |
//! bpf-map   (bpf(BPF_MAP_CREATE) of a tiny array) | signal PID|self SIG | ptrace PID |
//! mount-tmpfs DIR | umount DIR |
//! clone-into-cgroup DIR   (clone3(CLONE_INTO_CGROUP); the child exits at once) |
//! landlock-read PATH... --   (Landlock: read+exec beneath each)

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::{
    emit,
    uring::{Ring, Sqe},
};

pub fn is_step(op: &str) -> bool {
    matches!(
        op,
        "hold"
            | "truncate-path"
            | "reopen-fd"
            | "read-fd"
            | "o-path-reopen"
            | "openat2"
            | "uring-open"
            | "append"
            | "ro-trunc"
            | "chdir-deep"
            | "join-cgroup"
            | "write-file"
            | "bpf-map"
            | "signal"
            | "ptrace"
            | "mount-tmpfs"
            | "umount"
            | "clone-into-cgroup"
            | "landlock-read"
    )
}

/// The fd of the last `hold`.
static HELD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn fd_arg(a: &str) -> i32 {
    if a == "held" {
        HELD.load(std::sync::atomic::Ordering::Relaxed)
    } else {
        a.parse().expect("fd")
    }
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

fn open_fd(path: &str, flags: i32) -> io::Result<i32> {
    let c = cstr(path);
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) } as i64)
        .map(|fd| fd as i32)
}

fn close(fd: i32) {
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

fn open_close(path: &str, flags: i32) -> io::Result<()> {
    open_fd(path, flags).map(close)
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn openat2(path: &str) -> io::Result<()> {
    let c = cstr(path);
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: 0,
    };
    // SAFETY: valid path and open_how for the duration of the call.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    })?;
    close(fd as i32);
    Ok(())
}

// --- io_uring (the ring: `probe_steps/uring.rs`): one IORING_OP_OPENAT ------

const IORING_OP_OPENAT: u8 = 18;

/// Opens `path` read-only through io_uring; the CQE's result is the errno.
fn uring_open(path: &str) -> io::Result<()> {
    let c = cstr(path);
    let fd = Ring::new(false)?.run(Sqe {
        opcode: IORING_OP_OPENAT,
        fd: libc::AT_FDCWD,
        addr: c.as_ptr() as u64,
        op_flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
        ..Sqe::default()
    })?;
    close(fd);
    Ok(())
}

/// clone3 with CLONE_INTO_CGROUP: the child starts in `dir`'s cgroup and
/// exits at once.
fn clone_into_cgroup(dir: &str) -> io::Result<()> {
    // O_PATH: no open of the directory is judged, so only the clone can be.
    let fd = open_fd(dir, libc::O_PATH | libc::O_DIRECTORY)?;
    // struct clone_args (v2): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
    args[4] = libc::SIGCHLD as u64;
    args[10] = fd as u64;
    // SAFETY: args outlives the call; the child only calls _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, args.as_ptr(), size_of_val(&args)) };
    if pid == 0 {
        // SAFETY: the child, right after clone: nothing to clean up.
        unsafe { libc::_exit(0) };
    }
    let r = check(pid);
    close(fd);
    if let Ok(pid) = r {
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    }
    r.map(drop)
}

// --- Landlock (benchmark baseline) ---------------------------------------------

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// Restricts this process to reading and executing beneath `paths` (ABI 1
/// file accesses; everything else refused).
fn landlock_read(paths: &[String]) -> io::Result<()> {
    const ALL_V1: u64 = (1 << 13) - 1;
    const READ: u64 = (1 << 0) | (1 << 2) | (1 << 3); // EXECUTE, READ_FILE, READ_DIR
    let attr = RulesetAttr {
        handled_access_fs: ALL_V1,
    };
    // SAFETY: attr outlives the call.
    let rs = check(unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size_of::<RulesetAttr>(),
            0u32,
        )
    })? as i32;
    for p in paths {
        let dir = open_fd(p, libc::O_PATH)?;
        // Directory rights on a file are EINVAL.
        let is_dir = Path::new(p).is_dir();
        let rule = PathBeneath {
            allowed_access: if is_dir { READ } else { READ & !(1 << 3) },
            parent_fd: dir,
        };
        // SAFETY: rule outlives the call; 1 = LANDLOCK_RULE_PATH_BENEATH.
        let r = check(unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                rs,
                1u32,
                &rule as *const PathBeneath,
                0u32,
            )
        });
        close(dir);
        r?;
    }
    // SAFETY: plain prctl and syscall.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as i64)?;
    let r = check(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, rs, 0u32) });
    close(rs);
    r.map(drop)
}

fn step_o_path_reopen(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    match open_fd(a(1), libc::O_PATH) {
        Ok(fd) => {
            emit("o-path", Ok(()));
            emit(
                "o-path-reopen",
                open_close(&format!("/proc/self/fd/{fd}"), libc::O_RDONLY),
            );
            close(fd);
        }
        Err(e) => emit("o-path", Err(e)),
    }
    i + 2
}

fn step_bpf_map(_args: &[String], i: usize) -> usize {
    // union bpf_attr for BPF_MAP_CREATE: type, key size, value size,
    // max entries (the rest zero).
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: attr outlives the call; 0 = BPF_MAP_CREATE.
    let r = check(unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) });
    emit("bpf-map", r.map(|fd| close(fd as i32)));
    i + 1
}

fn step_signal(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let pid: i32 = if a(1) == "self" {
        std::process::id() as i32
    } else {
        a(1).parse().expect("pid")
    };
    let sig: i32 = a(2).parse().expect("signal");
    // SAFETY: plain syscall.
    emit(
        "signal",
        check(unsafe { libc::kill(pid, sig) } as i64).map(drop),
    );
    i + 3
}

fn step_hold(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    match open_fd(a(1), libc::O_RDONLY) {
        Ok(fd) => {
            HELD.store(fd, std::sync::atomic::Ordering::Relaxed);
            println!(r#"{{"op":"hold","ok":true,"errno":0,"fd":{fd}}}"#)
        }
        Err(e) => emit("hold", Err(e)),
    }
    i + 2
}

fn step_read_fd(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let fd = fd_arg(a(1));
    let mut b = [0u8; 16];
    // SAFETY: reads into our own buffer.
    let r = check(unsafe { libc::pread(fd, b.as_mut_ptr().cast(), b.len(), 0) } as i64);
    emit("read-fd", r.map(drop));
    i + 2
}

fn step_write_file(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(a(1))
        .and_then(|mut f| std::io::Write::write_all(&mut f, a(2).as_bytes()));
    emit("write-file", r);
    i + 3
}

fn step_ptrace(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let pid: i32 = a(1).parse().expect("pid");
    // SAFETY: PTRACE_SEIZE does not stop the target; detach at once.
    let r = check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) });
    if r.is_ok() {
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    }
    emit("ptrace", r.map(drop));
    i + 2
}

fn step_mount_tmpfs(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let dir = cstr(a(1));
    let fs = cstr("tmpfs");
    // SAFETY: valid strings for the duration of the call.
    let r =
        check(
            unsafe { libc::mount(fs.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) }
                as i64,
        );
    if r.is_ok() {
        unsafe { libc::umount(dir.as_ptr()) };
    }
    emit("mount-tmpfs", r.map(drop));
    i + 2
}

fn step_landlock_read(args: &[String], i: usize) -> usize {
    let mut j = i + 1;
    let mut paths = Vec::new();
    while j < args.len() && args[j] != "--" {
        paths.push(args[j].clone());
        j += 1;
    }
    emit("landlock-read", landlock_read(&paths));
    j + 1
}

/// Runs step `args[i]`; returns the index of the next step.
pub fn step(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    match a(0) {
        "hold" => step_hold(args, i),
        "reopen-fd" => {
            emit(
                "reopen-fd",
                open_close(&format!("/proc/self/fd/{}", fd_arg(a(1))), libc::O_RDONLY),
            );
            i + 2
        }
        "read-fd" => step_read_fd(args, i),
        "o-path-reopen" => step_o_path_reopen(args, i),
        "truncate-path" => {
            let c = cstr(a(1));
            // SAFETY: valid NUL-terminated path.
            let r = check(unsafe { libc::truncate(c.as_ptr(), 0) } as i64);
            emit("truncate-path", r.map(drop));
            i + 2
        }
        "openat2" => {
            emit("openat2", openat2(a(1)));
            i + 2
        }
        "uring-open" => {
            emit("uring-open", uring_open(a(1)));
            i + 2
        }
        "append" => {
            emit("append", open_close(a(1), libc::O_WRONLY | libc::O_APPEND));
            i + 2
        }
        "ro-trunc" => {
            emit("ro-trunc", open_close(a(1), libc::O_RDONLY | libc::O_TRUNC));
            i + 2
        }
        "chdir-deep" => {
            let n: usize = a(2).parse().expect("count");
            let r = (0..n).try_for_each(|_| std::env::set_current_dir(a(1)));
            emit("chdir-deep", r);
            i + 3
        }
        "join-cgroup" => {
            emit(
                "join-cgroup",
                std::fs::write(format!("{}/cgroup.procs", a(1)), "0"),
            );
            i + 2
        }
        "write-file" => step_write_file(args, i),
        "bpf-map" => step_bpf_map(args, i),
        "signal" => step_signal(args, i),
        "ptrace" => step_ptrace(args, i),
        "mount-tmpfs" => step_mount_tmpfs(args, i),
        "umount" => {
            let dir = cstr(a(1));
            // SAFETY: valid string for the duration of the call.
            let r = check(unsafe { libc::umount(dir.as_ptr()) } as i64);
            emit("umount", r.map(drop));
            i + 2
        }
        "clone-into-cgroup" => {
            emit("clone-into-cgroup", clone_into_cgroup(a(1)));
            i + 2
        }
        "landlock-read" => step_landlock_read(args, i),
        other => unreachable!("not an lsm step: {other}"),
    }
}
