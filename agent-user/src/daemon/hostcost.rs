//! What Corral's host-wide hooks cost every process on the host, measured
//! on this host when they are attached: the daemon (itself untagged) times
//! a plain syscall just before and just after attaching, and `corral
//! status`/`doctor` say so while they stay attached. A syscall tracepoint
//! puts every task on the slow syscall path, tagged or not.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

const NONE: u64 = u64::MAX;

/// Extra ns per syscall measured when the syscall observers were attached
/// (`NONE` while detached).
static SYSCALL_OBSERVERS: AtomicU64 = AtomicU64::new(NONE);
/// The same for the Landlock-denial file observer.
static FILE_OBSERVER: AtomicU64 = AtomicU64::new(NONE);

pub enum Hook {
    SyscallObservers,
    FileObserver,
}

fn slot(h: &Hook) -> &'static AtomicU64 {
    match h {
        Hook::SyscallObservers => &SYSCALL_OBSERVERS,
        Hook::FileObserver => &FILE_OBSERVER,
    }
}

/// Median ns of one `getppid` over a few short loops (~10 ms in all).
pub fn per_syscall_ns() -> f64 {
    const N: u32 = 20_000;
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..N {
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            t.elapsed().as_nanos() as f64 / f64::from(N)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Runs `attach`, timing a syscall before and after; records the
/// difference when it succeeded.
pub fn attach_measured<T, E>(h: Hook, attach: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let before = per_syscall_ns();
    let r = attach()?;
    let after = per_syscall_ns();
    slot(&h).store((after - before).max(0.0).round() as u64, Ordering::Relaxed);
    Ok(r)
}

pub fn detached(h: Hook) {
    slot(&h).store(NONE, Ordering::Relaxed);
}

/// For `corral status`: each host-wide hook in place and its cost.
pub fn view() -> Value {
    let mut hooks = Vec::new();
    for (name, h) in [
        ("syscall observers (sys_enter/sys_exit)", &SYSCALL_OBSERVERS),
        ("file denial observer (Landlock fallback)", &FILE_OBSERVER),
    ] {
        let ns = h.load(Ordering::Relaxed);
        if ns != NONE {
            hooks.push(json!({
                "hook": name,
                "extra_ns_per_syscall": ns,
                "note": format!("host-wide: every syscall on this host pays ~{ns} ns (measured when attached)"),
            }));
        }
    }
    json!({ "host_wide_hooks": hooks })
}
