//! Booting the guest: QEMU under a hard timeout, in its own process group,
//! killed with xtask or on timeout or error; the serial console's result
//! marker is the outcome.

use std::{
    env, fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{MARKER, kernel::Kernel};
use crate::util;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Accel {
    Tcg,
    Kvm,
}

/// KVM only where it can run a stock kernel: /dev/kvm opens read-write and
/// is backed by kvm_intel/kvm_amd, not PVM (whose guests die on the first
/// SHLX and then hang). `CORRAL_VM_ACCEL=tcg|kvm` overrides.
pub(super) fn accel() -> Accel {
    match env::var("CORRAL_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if rw && !module("kvm_pvm") && (module("kvm_intel") || module("kvm_amd")) {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Kills QEMU's process group unless it already exited.
struct Qemu {
    child: Child,
    done: bool,
}

impl Qemu {
    fn kill(&mut self) {
        if self.done {
            return;
        }
        let pgid = self.child.id() as i32;
        // SAFETY: plain syscall on the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// QEMU booting `k` with `initrd`, killed with its parent.
fn command(k: &Kernel, initrd: &Path, accel: Accel) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Tcg => c.args(["-accel", "tcg", "-cpu", "qemu64"]),
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
    };
    c.args(["-m", "1024", "-smp", "2", "-no-reboot", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 quiet lsm={}", k.lsm))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        c.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

pub(super) fn boot(k: &Kernel, initrd: &Path, accel: Accel, timeout: Duration) -> Result<()> {
    let mut c = command(k, initrd, accel);
    println!(
        "vm: booting ({accel:?}, timeout {}s): {}",
        timeout.as_secs(),
        util::display(&c)
    );
    let child = c.spawn().context("starting qemu-system-x86_64")?;
    let mut q = Qemu { child, done: false };
    let stdout = q.child.stdout.take().context("qemu stdout")?;
    let mut stderr = q.child.stderr.take().context("qemu stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut result: Option<bool> = None;
    let mut tail: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            q.kill();
            bail!(
                "the guest did not finish within {}s (QEMU killed); last output:\n{}",
                timeout.as_secs(),
                tail.join("\n")
            );
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                println!("vm| {line}");
                if let Some(r) = line.trim().strip_prefix(MARKER) {
                    result = Some(r.trim() == "pass");
                }
                tail.push(line);
                if tail.len() > 40 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // stdout closed: QEMU is exiting (poweroff); give it a moment.
    let exit_deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < exit_deadline {
        if let Ok(Some(_)) = q.child.try_wait() {
            q.done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    q.kill();
    let qemu_err = err_thread.join().unwrap_or_default();
    match result {
        Some(true) => {
            println!("vm: guest tests passed");
            Ok(())
        }
        Some(false) => bail!("guest tests failed (output above)"),
        None => bail!(
            "the guest ended without a result marker; QEMU stderr: {}\nlast output:\n{}",
            qemu_err.trim(),
            tail.join("\n")
        ),
    }
}
