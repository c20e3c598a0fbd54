//! The operator's terminal stays the operator's: an agent started with
//! `corral run` from a terminal cannot push input into it (TIOCSTI,
//! TIOCLINUX), whether through the fds it inherited or by opening the
//! terminal by path, as root too. It runs in a session of its own, on a pty
//! the launcher relays, and a seccomp filter refuses the ioctls.
//!
//! The test plays the operator: it holds a pty pair and hands its slave to
//! `corral run` as stdin, stdout and stderr, like a shell would.

use std::{
    ffi::{CStr, CString},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use corral_tests::*;
use serde_json::Value;

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    path: String,
}

/// A pty pair; the slave in raw mode, so every injected byte is readable.
fn open_pty() -> Pty {
    // SAFETY: plain libc pty calls; fds owned right away.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt");
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let path = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        let c = CString::new(path.clone()).expect("no NUL");
        let s = libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(s >= 0, "open {path}");
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(s, &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(s, libc::TCSANOW, &t), 0);
        Pty {
            master,
            slave: OwnedFd::from_raw_fd(s),
            path,
        }
    }
}

/// Bytes waiting in the terminal's input queue: what a shell reading it
/// would run.
fn pending_input(fd: &OwnedFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) },
        0
    );
    n
}

/// Reads what has been written to the terminal (the master side) until
/// `done` holds or 10 s pass.
fn read_screen(master: &OwnedFd, mut done: impl FnMut() -> bool) -> String {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut p = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one entry; read into a local buffer.
        unsafe {
            if libc::poll(&mut p, 1, 100) > 0 {
                let mut buf = [0u8; 4096];
                let n = libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len());
                if n > 0 {
                    out.extend_from_slice(&buf[..n as usize]);
                    continue;
                }
            }
        }
        if done() {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn steps_of(screen: &str) -> Vec<Value> {
    screen
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

#[test]
fn an_agent_cannot_type_into_the_operators_terminal() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let t = open_pty();
    let (d, tail) = Daemon::start_tailed(
        "term",
        &syscall_policy("term", "enforce", "allow = [\"@default\"]"),
    );
    let fd = |f: &OwnedFd| Stdio::from(f.try_clone().expect("dup"));
    let mut launcher = Command::new(corral_bin())
        .arg("--socket")
        .arg(&d.dirs.socket)
        .args(["run", "--identity", "term", "--"])
        .arg(probe_bin())
        .args([
            "pid", "tty", "tiocsti", "0", "id\n", "tiocsti", &t.path, "id\n",
        ])
        .stdin(fd(&t.slave))
        .stdout(fd(&t.slave))
        .stderr(fd(&t.slave))
        .spawn()
        .expect("corral run");
    let screen = read_screen(&t.master, || matches!(launcher.try_wait(), Ok(Some(_))));
    let status = launcher.wait().expect("launcher");
    assert!(status.success(), "{status}: {screen}");
    let steps = steps_of(&screen);
    let step = |op: &str, n: usize| {
        steps
            .iter()
            .filter(|s| s["op"] == op)
            .nth(n)
            .unwrap_or_else(|| panic!("no {op}#{n} on the screen: {screen}"))
            .clone()
    };
    let pid = step("pid", 0)["pid"].as_u64().expect("pid");
    // The agent's terminal is a pty of its own, in a session of its own.
    let tty = step("tty", 0);
    assert_eq!(tty["sid"].as_u64(), Some(pid), "{tty:#}");
    assert!(
        tty["stdin_tty"]
            .as_str()
            .is_some_and(|p| p.starts_with("/dev/pts/") && p != t.path),
        "{tty:#}"
    );
    // Injection is refused through its own terminal and through the
    // operator's, opened by path (root: CAP_SYS_ADMIN would pass the
    // kernel's own check).
    for n in 0..2 {
        let st = step("tiocsti", n);
        assert_eq!(st["ok"], false, "{st:#}");
        assert_eq!(st["errno"], EPERM, "{st:#}");
    }
    assert_eq!(
        pending_input(&t.slave),
        0,
        "input reached the operator's shell"
    );
    for _ in 0..2 {
        let ev = tail.expect(|e| is_syscall(e, "ioctl"));
        assert_syscall_event(&ev, "term", pid, ("ioctl", 16), "kernel", "deny");
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        assert!(
            ev["syscall"]["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("TIOCSTI"),
            "{ev:#}"
        );
    }

    // Outside any identity the same ioctl types into the terminal.
    let out = probe_outside(&["tiocsti", &t.path, "id\n"]);
    assert_eq!(out.step("tiocsti", 0)["ok"], true, "{out:#?}");
    assert_eq!(pending_input(&t.slave), 3);
}

#[test]
fn without_a_terminal_the_agent_still_has_its_own_session() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let (d, _tail) = Daemon::start_tailed("noterm", &enforce_policy("noterm", "allow = []"));
    let r = d.probe_as("noterm", &["pid", "tty"]);
    assert_eq!(r.step("tty", 0)["sid"].as_u64(), Some(r.pid()), "{r:#?}");
    assert_eq!(r.step("tty", 0)["stdin_tty"], "", "{r:#?}");
}
