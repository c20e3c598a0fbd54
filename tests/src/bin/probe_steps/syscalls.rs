//! Syscall steps of the probe (for the `[syscalls]` tests). Each makes the
//! named syscall itself (`syscall(2)`, no libc wrapper in between) and
//! prints `{"op":..,"name":..,"ok":..,"errno":N}`:
//!
//! sys NAME [PATH]        one call: mkdir PATH, rmdir PATH, getpgrp, getppid,
//!                        uname, sysinfo, kcmp, personality |
//! sys-thread NAME [PATH] the same from a new thread |
//! sys-exec STEPS...      execve the probe itself with STEPS (the filter and
//!                        the identity must survive exec) |
//! io-uring-setup         io_uring_setup(8, ..) |
//! socket FAMILY          socket(): packet, raw (AF_INET SOCK_RAW ICMP),
//!                        netlink-route, netlink-generic, vsock, unix, inet |
//! sys-loop NAME N        N calls of getppid or getpgrp; ns per call |
//! tiocsti FD|PATH TEXT   ioctl(TIOCSTI) of each byte of TEXT into the
//!                        terminal on fd FD, or opened at PATH |
//! ia32-getpid            getpid through `int 0x80` (the i386 ABI; number 20) |
//! tty                    the session id and the terminal on stdin |
//! seccomp-own            no_new_privs + a seccomp filter of its own that
//!                        allows everything (what a process would do to pass
//!                        for one under Corral's filter)

use std::{ffi::CString, io, os::unix::process::CommandExt as _, time::Instant};

pub fn is_step(op: &str) -> bool {
    matches!(
        op,
        "sys"
            | "sys-thread"
            | "sys-exec"
            | "io-uring-setup"
            | "socket"
            | "sys-loop"
            | "tiocsti"
            | "ia32-getpid"
            | "tty"
            | "seccomp-own"
    )
}

fn print(op: &str, name: &str, r: io::Result<i64>) {
    let line = match r {
        Ok(v) => format!(r#"{{"op":"{op}","name":"{name}","ok":true,"errno":0,"ret":{v}}}"#),
        Err(e) => format!(
            r#"{{"op":"{op}","name":"{name}","ok":false,"errno":{}}}"#,
            e.raw_os_error().unwrap_or(-1)
        ),
    };
    println!("{line}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

fn ret(r: libc::c_long) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether `name` takes a path argument.
fn takes_path(name: &str) -> bool {
    matches!(name, "mkdir" | "rmdir")
}

/// One raw syscall by name.
pub fn call(name: &str, path: Option<&str>) -> io::Result<i64> {
    let c = path.map(|p| CString::new(p).expect("no NUL"));
    let p = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: each call gets valid pointers (path, or a buffer of the size
    // the kernel writes) or plain integers.
    unsafe {
        match name {
            "mkdir" => ret(libc::syscall(libc::SYS_mkdir, p, 0o755)),
            "rmdir" => ret(libc::syscall(libc::SYS_rmdir, p)),
            "getpgrp" => ret(libc::syscall(libc::SYS_getpgrp)),
            "getppid" => ret(libc::syscall(libc::SYS_getppid)),
            "uname" => {
                let mut u: libc::utsname = std::mem::zeroed();
                ret(libc::syscall(libc::SYS_uname, &mut u as *mut libc::utsname))
            }
            "sysinfo" => {
                let mut s: libc::sysinfo = std::mem::zeroed();
                ret(libc::syscall(
                    libc::SYS_sysinfo,
                    &mut s as *mut libc::sysinfo,
                ))
            }
            "kcmp" => {
                let me = libc::getpid();
                ret(libc::syscall(
                    libc::SYS_kcmp,
                    me,
                    me,
                    0, /* KCMP_FILE */
                    0,
                    0,
                ))
            }
            "personality" => ret(libc::syscall(libc::SYS_personality, 0xffff_ffffu64)),
            other => panic!("probe: no raw call for `{other}`"),
        }
    }
}

fn socket(kind: &str) -> io::Result<i64> {
    let (family, ty, proto) = match kind {
        "packet" => (
            libc::AF_PACKET,
            libc::SOCK_RAW,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "netlink-route" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
        "netlink-generic" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_GENERIC),
        "vsock" => (libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        "unix" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
        "inet" => (libc::AF_INET, libc::SOCK_STREAM, 0),
        // Kinds the cgroup sock_create program tells apart (protocol as the
        // kernel resolves it).
        "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM, 0),
        "udp" => (libc::AF_INET, libc::SOCK_DGRAM, 0),
        "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM, 0),
        "mptcp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP),
        "udplite" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        "udplite6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
        "sctp" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
        "sctp-seq6" => (libc::AF_INET6, libc::SOCK_SEQPACKET, libc::IPPROTO_SCTP),
        "l2tp" => (libc::AF_INET, libc::SOCK_DGRAM, 115),
        "ping" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "ping6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
        "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        "raw-tcp" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP),
        // AF_RXRPC over IPv4 UDP: the kernel's krxrpcio thread sends.
        "rxrpc" => (33, libc::SOCK_DGRAM, libc::AF_INET),
        // AF_RDS: over TCP, a krdsd worker connects for the caller.
        "rds" => (21, libc::SOCK_SEQPACKET, 0),
        // The kernel turns this into an AF_PACKET socket.
        "inet-packet" => (
            libc::AF_INET,
            10, // SOCK_PACKET
            (libc::ETH_P_ALL as u16).to_be() as i32,
        ),
        other => panic!("probe: unknown socket kind `{other}`"),
    };
    // SAFETY: plain syscalls; the fd is closed at once.
    unsafe {
        let fd = ret(libc::syscall(
            libc::SYS_socket,
            family,
            ty | libc::SOCK_CLOEXEC,
            proto,
        ))?;
        libc::close(fd as i32);
        Ok(0)
    }
}

fn tiocsti(target: &str, text: &str) -> io::Result<i64> {
    let (fd, opened) = match target.parse::<i32>() {
        Ok(fd) => (fd, false),
        Err(_) => {
            let p = CString::new(target).expect("no NUL");
            // SAFETY: plain open; closed below.
            (
                ret(unsafe { libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) } as i64)?
                    as i32,
                true,
            )
        }
    };
    let mut r = Ok(0);
    for b in text.bytes() {
        // SAFETY: TIOCSTI reads one byte from the pointer.
        r = ret(unsafe { libc::ioctl(fd, libc::TIOCSTI, &b as *const u8) } as i64);
        if r.is_err() {
            break;
        }
    }
    if opened {
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
    }
    r
}

/// getpid (20 in the i386 table; 20 is writev on x86_64) through the
/// 32-bit entry point, from this 64-bit process.
fn ia32_getpid() -> io::Result<i64> {
    let mut rax: i64 = 20;
    // SAFETY: int 0x80 with a syscall that takes no arguments; it clobbers
    // only eax (and the flags) on return.
    unsafe {
        std::arch::asm!("int 0x80", inout("rax") rax, options(nostack));
    }
    if (-4095..0).contains(&rax) {
        return Err(io::Error::from_raw_os_error(-rax as i32));
    }
    Ok(rax)
}

fn step_sys(args: &[String], i: usize) -> usize {
    let op = args[i].as_str();
    let name = args[i + 1].clone();
    let path = takes_path(&name).then(|| args[i + 2].clone());
    let r = if op == "sys" {
        call(&name, path.as_deref())
    } else {
        let n = name.clone();
        std::thread::spawn(move || call(&n, path.as_deref()))
            .join()
            .expect("thread")
    };
    print(op, &name, r);
    i + 2 + usize::from(takes_path(&name))
}

fn step_io_uring_setup(args: &[String], i: usize) -> usize {
    let op = args[i].as_str();
    let mut params = [0u8; 120];
    // SAFETY: `params` is a zeroed io_uring_params (120 bytes).
    let r = unsafe {
        ret(libc::syscall(
            libc::SYS_io_uring_setup,
            8,
            params.as_mut_ptr(),
        ))
    };
    if let Ok(fd) = r {
        // SAFETY: closing the ring we just made.
        unsafe { libc::close(fd as i32) };
    }
    print(op, "io_uring_setup", r);
    i + 1
}

fn step_seccomp_own(args: &[String], i: usize) -> usize {
    let op = args[i].as_str();
    let prog = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_ALLOW,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: prctl, then seccomp with a live one-instruction program.
    let r = unsafe {
        ret(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long).and_then(|_| {
            ret(libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            ))
        })
    };
    print(op, "seccomp", r);
    i + 1
}

fn step_tty(_args: &[String], i: usize) -> usize {
    // SAFETY: plain calls; ttyname's buffer is copied at once.
    let (sid, name) = unsafe {
        let n = libc::ttyname(0);
        let name = if n.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned()
        };
        (libc::getsid(0), name)
    };
    println!(r#"{{"op":"tty","ok":true,"errno":0,"sid":{sid},"stdin_tty":"{name}"}}"#);
    i + 1
}

fn step_sys_loop(args: &[String], i: usize) -> usize {
    let name = args[i + 1].as_str();
    let n: u64 = args[i + 2].parse().expect("iterations");
    let mut errors = 0u64;
    let start = Instant::now();
    for _ in 0..n {
        errors += u64::from(call(name, None).is_err());
    }
    let ns = start.elapsed().as_nanos() as u64 / n.max(1);
    println!(
        r#"{{"op":"sys-loop","name":"{name}","iters":{n},"ns_per_call":{ns},"errors":{errors}}}"#
    );
    i + 3
}

/// Runs the step at `args[i]`; returns the index of the next step.
pub fn step(args: &[String], i: usize) -> usize {
    let op = args[i].as_str();
    match op {
        "sys" | "sys-thread" => step_sys(args, i),
        "sys-exec" => {
            let exe = std::env::current_exe().expect("exe");
            let e = std::process::Command::new(exe).args(&args[i + 1..]).exec();
            print(op, "execve", Err(e));
            args.len()
        }
        "io-uring-setup" => step_io_uring_setup(args, i),
        "socket" => {
            print(op, &args[i + 1], socket(&args[i + 1]));
            i + 2
        }
        "tiocsti" => {
            print(op, &args[i + 1], tiocsti(&args[i + 1], &args[i + 2]));
            i + 3
        }
        "seccomp-own" => step_seccomp_own(args, i),
        "tty" => step_tty(args, i),
        "ia32-getpid" => {
            print(op, "getpid", ia32_getpid());
            i + 1
        }
        "sys-loop" => step_sys_loop(args, i),
        other => panic!("unknown syscall step {other}"),
    }
}
