//! The operator's terminal stays the operator's.
//!
//! An agent that holds the terminal `corral run` was started from could
//! push input into it (`ioctl(TIOCSTI)`, `TIOCLINUX` selection pastes): the
//! shell that launched it would then run those bytes as the operator, often
//! root. Three layers, so that no uid and no fd gets there:
//! 1. The agent runs in a session of its own (`setsid`): a terminal it
//!    inherited or opens by path is never its controlling terminal, and the
//!    kernel refuses TIOCSTI on such a terminal without CAP_SYS_ADMIN.
//! 2. When stdin, stdout or stderr is a terminal, the agent gets a pty of
//!    its own instead (its controlling terminal), and the launcher relays
//!    bytes between it and the operator's terminal (what `sudo use_pty`,
//!    `su --pty` and `systemd-run --pty` do). Whatever the agent injects
//!    lands in its own input; it never holds an fd of the operator's one.
//! 3. A seccomp filter refuses TIOCSTI and TIOCLINUX with EPERM, whatever
//!    the fd, for root too (CAP_SYS_ADMIN passes the kernel's own check),
//!    and on every syscall ABI. For an identity with `[syscalls]` the
//!    syscall filter notifies these calls instead (see `seccomp`): the
//!    launcher refuses and reports them, and this filter is left out (its
//!    EPERM would win over the notification).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicI32, Ordering},
    thread::JoinHandle,
};

const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
/// `ioctl(master, TIOCGPTPEER, flags)`: the pty's other end, no path lookup.
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const NR_IOCTL_X86_64: u32 = 16;
/// x32 (`__X32_SYSCALL_BIT | 514`) and i386 (`int 0x80`) numbers of ioctl.
const NR_IOCTL_X32: u32 = 0x4000_0000 | 514;
const NR_IOCTL_I386: u32 = 54;
use super::cbpf::{
    AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, JEQ_K, LD_W_ABS, OFF_ARCH, OFF_ARG1_LO, OFF_NR, RET_ALLOW,
    RET_EPERM, RET_K, ins,
};

/// ioctls refused on every fd: input injection (TIOCSTI, TIOCLINUX's
/// selection paste), and console keymap changes that bind a key to a
/// string or another key (KDSKBSENT, KDSKBENT, KDSETKEYCODE; root only)
/// for the operator to press later.
pub const REFUSED: [u32; 5] = [TIOCSTI, TIOCLINUX, 0x4b49, 0x4b47, 0x4b4d];

/// The terminal-injection filter (layer 3): ioctl on the x86_64, x32 and
/// i386 ABIs, by its `cmd`.
fn filter() -> Vec<libc::sock_filter> {
    let n = REFUSED.len() as u8;
    // Indices: 8 loads cmd, 9.. compare it, then ALLOW at 9+n, EPERM after.
    let mut p = vec![
        /* 0 */ ins(LD_W_ABS, OFF_ARCH, 0, 0),
        /* 1 */ ins(JEQ_K, AUDIT_ARCH_I386, 0, 2),
        /* 2 */ ins(LD_W_ABS, OFF_NR, 0, 0),
        /* 3 */ ins(JEQ_K, NR_IOCTL_I386, 4, 5 + n),
        /* 4 */ ins(JEQ_K, AUDIT_ARCH_X86_64, 0, 4 + n),
        /* 5 */ ins(LD_W_ABS, OFF_NR, 0, 0),
        /* 6 */ ins(JEQ_K, NR_IOCTL_X86_64, 1, 0),
        /* 7 */ ins(JEQ_K, NR_IOCTL_X32, 0, 1 + n),
        /* 8 */ ins(LD_W_ABS, OFF_ARG1_LO, 0, 0),
    ];
    for (i, cmd) in REFUSED.iter().enumerate() {
        p.push(ins(JEQ_K, *cmd, n - i as u8, 0));
    }
    p.push(ins(RET_K, RET_ALLOW, 0, 0));
    p.push(ins(RET_K, RET_EPERM, 0, 0));
    p
}

/// What the launcher prepared: the filter, and a pty when the launch has a
/// terminal.
pub struct Terminal {
    prog: Vec<libc::sock_filter>,
    pty: Option<Pty>,
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    /// Which of 0, 1, 2 were terminals (they get the slave in the child).
    ttys: [bool; 3],
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty on a plain fd number.
    unsafe { libc::isatty(fd) == 1 }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Terminal {
    /// Parent, before fork.
    pub fn prepare() -> io::Result<Terminal> {
        let ttys = [is_tty(0), is_tty(1), is_tty(2)];
        let pty = if ttys.iter().any(|t| *t) {
            match open_pty(ttys) {
                Ok(p) => Some(p),
                // No devpts (a bare initramfs, some containers): the own
                // session and the filter still keep the operator's terminal
                // out of reach; the agent just shares it for output.
                Err(e) => {
                    eprintln!(
                        "corral run: no pty for the agent ({e}); it keeps the terminal it was \
                         given, in a session of its own, with TIOCSTI refused"
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Terminal {
            prog: filter(),
            pty,
        })
    }

    /// The syscall filter takes over refusing (and reporting) injection.
    pub fn leave_to_syscall_filter(&mut self) {
        self.prog.clear();
    }

    /// Child, between fork and exec (raw syscalls only): own session, the
    /// pty as controlling terminal in place of the operator's, then the
    /// filter (`no_new_privs` is already set).
    pub fn apply_in_child(&self) -> io::Result<()> {
        // SAFETY: raw syscalls on fds and data prepared before fork.
        unsafe {
            cvt(libc::setsid())?;
            if let Some(p) = &self.pty {
                let slave = p.slave.as_raw_fd();
                cvt(libc::ioctl(slave, libc::TIOCSCTTY, 0))?;
                for (fd, tty) in p.ttys.iter().enumerate() {
                    if *tty {
                        cvt(libc::dup2(slave, fd as RawFd))?;
                    }
                }
            }
            if self.prog.is_empty() {
                return Ok(());
            }
            let fprog = libc::sock_fprog {
                len: self.prog.len() as u16,
                filter: self.prog.as_ptr().cast_mut(),
            };
            cvt(libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            ) as libc::c_int)?;
        }
        Ok(())
    }

    /// Parent, after spawn: relays between the operator's terminal and the
    /// agent's pty until the agent's side closes. Returns the guard that
    /// puts the operator's terminal back.
    pub fn start_relay(self) -> io::Result<Option<Relay>> {
        let Some(Pty {
            master,
            slave,
            ttys,
        }) = self.pty
        else {
            return Ok(None);
        };
        drop(slave);
        // Keystrokes go to the agent's pty as typed: its line discipline
        // (echo, ^C) does the rest. Only from the foreground: a launcher
        // started in the background (`&`) that touched the terminal's modes
        // or read it would be stopped (SIGTTOU/SIGTTIN), and the shell owns
        // the keyboard then.
        let relay_input = ttys[0] && foreground(0);
        let saved = if relay_input { raw_mode(0)? } else { None };
        let out_fd: RawFd = if ttys[1] {
            1
        } else if ttys[2] {
            2
        } else {
            0
        };
        WINCH_FROM.store(out_fd, Ordering::Relaxed);
        WINCH_TO.store(master.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: installing a handler that only makes two ioctls.
        unsafe { libc::signal(libc::SIGWINCH, on_winch as *const () as libc::sighandler_t) };
        let (stop_r, stop_w) = pipe()?;
        let master2 = master.try_clone()?;
        let input = ttys[0]
            .then(|| std::thread::spawn(move || copy_until(0, master2.as_raw_fd(), Some(stop_r))));
        let output = std::thread::spawn(move || copy_until(master.as_raw_fd(), out_fd, None));
        Ok(Some(Relay {
            saved,
            input,
            output: Some(output),
            stop: Some(stop_w),
        }))
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh fds, owned from here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn open_pty(ttys: [bool; 3]) -> io::Result<Pty> {
    // SAFETY: plain libc pty calls; fds owned right away.
    unsafe {
        let m = cvt(libc::posix_openpt(
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let master = OwnedFd::from_raw_fd(m);
        cvt(libc::grantpt(m))?;
        cvt(libc::unlockpt(m))?;
        let s = cvt(libc::ioctl(m, TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY))?;
        let slave = OwnedFd::from_raw_fd(s);
        // The operator's window size and modes, so the agent sees the same
        // terminal; suspend (^Z) is passed on as a byte: a stopped agent
        // would hang the launcher and the operator's terminal with it.
        let from = ttys.iter().position(|t| *t).unwrap_or(0) as RawFd;
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(s, libc::TIOCSWINSZ, &ws);
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(from, &mut t) == 0 {
            t.c_cc[libc::VSUSP] = 0;
            libc::tcsetattr(s, libc::TCSANOW, &t);
        }
        Ok(Pty {
            master,
            slave,
            ttys,
        })
    }
}

/// Whether this process group owns the terminal on `fd`.
fn foreground(fd: RawFd) -> bool {
    // SAFETY: plain calls on a terminal fd.
    unsafe { libc::tcgetpgrp(fd) == libc::getpgrp() }
}

fn raw_mode(fd: RawFd) -> io::Result<Option<libc::termios>> {
    // SAFETY: termios calls on a terminal fd with a zeroed struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Ok(None);
        }
        let saved = t;
        libc::cfmakeraw(&mut t);
        cvt(libc::tcsetattr(fd, libc::TCSANOW, &t))?;
        Ok(Some(saved))
    }
}

static WINCH_FROM: AtomicI32 = AtomicI32::new(-1);
static WINCH_TO: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let (from, to) = (
        WINCH_FROM.load(Ordering::Relaxed),
        WINCH_TO.load(Ordering::Relaxed),
    );
    // SAFETY: ioctl is async-signal-safe; the struct lives on this stack.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Copies `from` → `to` until `from` ends (EOF, or EIO once every slave
/// fd is closed) or `stop` becomes readable.
fn copy_until(from: RawFd, to: RawFd, stop: Option<OwnedFd>) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: from,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_ref().map_or(-1, |s| s.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfd entries (fd -1 is ignored).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // SAFETY: reading into a local buffer.
        let r = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        let mut done = 0usize;
        while done < r as usize {
            // SAFETY: writing bytes just read.
            let w = unsafe { libc::write(to, buf[done..].as_ptr().cast(), r as usize - done) };
            if w <= 0 {
                if w < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            done += w as usize;
        }
    }
}

/// The running relay; `finish` after the agent exited.
pub struct Relay {
    saved: Option<libc::termios>,
    input: Option<JoinHandle<()>>,
    output: Option<JoinHandle<()>>,
    stop: Option<OwnedFd>,
}

impl Relay {
    /// Lets the agent's last output through, stops reading the operator's
    /// keystrokes and restores the terminal's modes.
    pub fn finish(mut self) {
        if let Some(o) = self.output.take() {
            // Ends at EIO once no process holds the pty any more; a
            // background child of the agent that keeps it is cut off.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
            while !o.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.restore();
    }

    fn restore(&mut self) {
        drop(self.stop.take());
        if let Some(i) = self.input.take() {
            let _ = i.join();
        }
        if let Some(t) = self.saved.take() {
            // SAFETY: restoring the modes read from this terminal, then
            // dropping input nobody read: a terminal's answer to a query
            // the agent wrote last must not reach the shell as typed input.
            unsafe {
                libc::tcsetattr(0, libc::TCSADRAIN, &t);
                libc::tcflush(0, libc::TCIFLUSH);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program the way the kernel would, on `(arch,
    /// nr, cmd)`.
    fn eval(arch: u32, nr: u32, cmd: u32) -> u32 {
        let prog = filter();
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    a = match i.k {
                        OFF_ARCH => arch,
                        OFF_NR => nr,
                        _ => cmd,
                    }
                }
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                _ => return i.k,
            }
        }
    }

    #[test]
    fn refuses_terminal_injection_on_every_abi_and_nothing_else() {
        use super::super::cbpf::{AUDIT_ARCH_X86_64, RET_ALLOW, RET_EPERM};
        let x86 = AUDIT_ARCH_X86_64;
        for cmd in REFUSED {
            assert_eq!(eval(x86, NR_IOCTL_X86_64, cmd), RET_EPERM);
            assert_eq!(eval(x86, NR_IOCTL_X32, cmd), RET_EPERM);
            assert_eq!(eval(AUDIT_ARCH_I386, NR_IOCTL_I386, cmd), RET_EPERM);
        }
        // Other ioctls, other syscalls with the same argument, and each
        // ABI's ioctl number under another ABI (54 is setsockopt on x86_64)
        // pass.
        assert_eq!(
            eval(x86, NR_IOCTL_X86_64, libc::TIOCGWINSZ as u32),
            RET_ALLOW
        );
        assert_eq!(eval(x86, 1, TIOCSTI), RET_ALLOW);
        assert_eq!(eval(x86, NR_IOCTL_I386, TIOCSTI), RET_ALLOW);
        assert_eq!(eval(AUDIT_ARCH_I386, NR_IOCTL_X86_64, TIOCSTI), RET_ALLOW);
    }
}
