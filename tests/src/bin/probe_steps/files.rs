//! File steps of the probe (for the `[files]` tests):
//!
//! open PATH r|w|rw | create PATH | trunc PATH | readdir DIR | mkdir DIR |
//! unlink PATH | exec PATH | link FROM TO | rename FROM TO |
//! symlink TARGET LINK | chdir DIR |
//! open-loop PATH N   (N × open(O_RDONLY)+close; ns per pair, errors counted) |
//! syscall-loop N   (N × getppid: what any syscall pays for syscall hooks) |
//! sandbox-self NAME   (names itself NAME, then stacks a Landlock domain of
//!                      its own that refuses every file read: what an agent
//!                      does to pass its denials off as another identity's)

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path, time::Instant};

use std::os::unix::fs::PermissionsExt as _;

use super::emit;

pub fn is_step(op: &str) -> bool {
    matches!(
        op,
        "open"
            | "create"
            | "trunc"
            | "readdir"
            | "mkdir"
            | "unlink"
            | "exec"
            | "link"
            | "rename"
            | "symlink"
            | "chdir"
            | "chmod"
            | "fchmod"
            | "chown"
            | "open-loop"
            | "syscall-loop"
            | "sandbox-self"
    )
}

fn cstr(p: &str) -> CString {
    CString::new(Path::new(p).as_os_str().as_bytes()).expect("no NUL")
}

/// open(2) then close; the errno of the open.
fn open_close(path: &str, flags: i32) -> io::Result<()> {
    let c = cstr(path);
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    Ok(())
}

fn step_open_loop(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let n: u64 = a(2).parse().expect("count");
    let c = cstr(a(1));
    let mut errors = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            errors += 1;
        } else {
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
        }
    }
    let ns = start.elapsed().as_nanos() as u64 / n.max(1);
    println!(r#"{{"op":"open-loop","count":{n},"errors":{errors},"ns_per_op":{ns}}}"#);
    i + 3
}

fn step_open(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let flags = match a(2) {
        "r" => libc::O_RDONLY,
        "w" => libc::O_WRONLY,
        "rw" => libc::O_RDWR,
        m => panic!("open mode {m}: r, w or rw"),
    };
    emit("open", open_close(a(1), flags));
    i + 3
}

fn step_exec(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    // Success means the program started (its exit status is not
    // the question).
    let r = std::process::Command::new(a(1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(drop);
    emit("exec", r);
    i + 2
}

fn step_chmod(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let mode = u32::from_str_radix(a(2), 8).expect("octal mode");
    emit(
        "chmod",
        std::fs::set_permissions(a(1), std::fs::Permissions::from_mode(mode)),
    );
    i + 3
}

fn step_fchmod(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    // By descriptor: opened for reading, which the rules allow.
    let mode = u32::from_str_radix(a(2), 8).expect("octal mode");
    let r = std::fs::File::open(a(1))
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(mode)));
    emit("fchmod", r);
    i + 3
}

fn step_chown(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let uid = a(2).parse().expect("uid");
    let gid = a(3).parse().expect("gid");
    emit(
        "chown",
        std::os::unix::fs::chown(a(1), Some(uid), Some(gid)),
    );
    i + 4
}

fn step_syscall_loop(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let n: u64 = a(1).parse().expect("count");
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: a syscall without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let ns = start.elapsed().as_nanos() as u64 / n.max(1);
    println!(r#"{{"op":"syscall-loop","count":{n},"errors":0,"ns_per_op":{ns}}}"#);
    i + 2
}

/// Runs step `args[i]`; returns the index of the next step.
pub fn step(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    match a(0) {
        "open" => step_open(args, i),
        "sandbox-self" => {
            let name = cstr(a(1));
            // SAFETY: a valid C string; the probe is single-threaded, so
            // the domain covers the steps that follow.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            let r = agent_user::sandbox::landlock::empty_ruleset()
                .and_then(|fd| agent_user::sandbox::landlock::restrict_thread(&fd, 0));
            emit("sandbox-self", r);
            i + 2
        }
        "create" => {
            emit(
                "create",
                open_close(a(1), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC),
            );
            i + 2
        }
        "trunc" => {
            emit("trunc", open_close(a(1), libc::O_WRONLY | libc::O_TRUNC));
            i + 2
        }
        "readdir" => {
            emit("readdir", std::fs::read_dir(a(1)).map(drop));
            i + 2
        }
        "mkdir" => {
            emit("mkdir", std::fs::create_dir(a(1)));
            i + 2
        }
        "unlink" => {
            emit("unlink", std::fs::remove_file(a(1)));
            i + 2
        }
        "exec" => step_exec(args, i),
        "link" => {
            emit("link", std::fs::hard_link(a(1), a(2)));
            i + 3
        }
        "rename" => {
            emit("rename", std::fs::rename(a(1), a(2)));
            i + 3
        }
        "symlink" => {
            emit("symlink", std::os::unix::fs::symlink(a(1), a(2)));
            i + 3
        }
        "chdir" => {
            emit("chdir", std::env::set_current_dir(a(1)));
            i + 2
        }
        "chmod" => step_chmod(args, i),
        "fchmod" => step_fchmod(args, i),
        "chown" => step_chown(args, i),
        "open-loop" => step_open_loop(args, i),
        "syscall-loop" => step_syscall_loop(args, i),
        other => unreachable!("not a file step: {other}"),
    }
}
