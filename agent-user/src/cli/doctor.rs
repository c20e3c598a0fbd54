//! `corral doctor`: what this host can enforce, without a daemon.

use serde_json::{Value, json};

use super::{client::Client, cmds::JsonFlag};

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

pub fn run(client: &Client, a: &JsonFlag) -> anyhow::Result<u8> {
    let mut checks = Vec::new();
    checks.extend(daemon_checks(client));
    basics(&mut checks);
    mechanisms(&mut checks);
    kernel_support(&mut checks);
    if a.json {
        let v: Vec<Value> = checks
            .iter()
            .map(|c| json!({ "check": c.name, "ok": c.ok, "detail": c.detail }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &checks {
            println!(
                "{} {:<26} {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    Ok(0)
}

/// What every mechanism needs: root, cgroup v2, the object, BTF.
fn basics(checks: &mut Vec<Check>) {
    checks.push(Check {
        name: "root",
        ok: nix::unistd::geteuid().is_root(),
        detail: "the daemon needs root (CAP_BPF, CAP_SYS_ADMIN)".into(),
    });
    let cg = crate::cgroup::cgroup2_root();
    checks.push(Check {
        name: "cgroup v2",
        ok: cg.is_ok(),
        detail: match &cg {
            Ok(p) => format!("mounted at {}", p.display()),
            Err(e) => e.to_string(),
        },
    });
    checks.push(Check {
        name: "eBPF object",
        ok: !crate::daemon::object_is_stub(),
        detail: if crate::daemon::object_is_stub() {
            "STUB: built without bpf-linker; run `cargo xtask setup` and rebuild".into()
        } else {
            "embedded".into()
        },
    });
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(Check {
        name: "kernel BTF",
        ok: btf,
        detail: "/sys/kernel/btf/vmlinux".into(),
    });
}

/// The mechanisms that hold files and syscalls: BPF LSM, seccomp, Landlock.
fn mechanisms(checks: &mut Vec<Check>) {
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    // Tried for real (a no-op lsm/file_open program, loaded and attached for
    // an instant): `bpf` in the LSM list is not enough on every kernel.
    let lsm_probe = crate::daemon::lsm_kernel_probe();
    checks.push(Check {
        name: "BPF LSM",
        ok: lsm_probe.is_ok(),
        detail: match &lsm_probe {
            Ok(()) => format!(
                "programs load and attach (active LSMs: {}): [files] rules and self-protection \
                 are enforced in the kernel",
                lsms.trim()
            ),
            Err(why) if lsms.is_empty() => format!(
                "NOT AVAILABLE: {why}; securityfs not mounted (mount -t securityfs none \
                 /sys/kernel/security)? [files] rules fall back to Landlock, no self-protection"
            ),
            Err(why) => format!(
                "NOT AVAILABLE: {why}; [files] rules fall back to Landlock (applied by `corral \
                 run`), no self-protection"
            ),
        },
    });
    let seccomp =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    checks.push(Check {
        name: "seccomp user notification",
        ok: seccomp.contains("user_notif"),
        detail: format!("actions: {}", seccomp.trim()),
    });
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
    let abi = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, 0usize, 0usize, 1u32) };
    checks.push(Check {
        name: "Landlock",
        ok: abi > 0,
        detail: if abi > 0 {
            format!(
                "ABI {abi}: the [files] fallback where BPF LSM is unavailable (applied by `corral \
                 run` at launch; fixed for the process tree)"
            )
        } else {
            "not available".into()
        },
    });
    checks.push(landlock_observer(abi));
}

/// How the Landlock fallback's denials would reach `corral tail`: from
/// Landlock's own audit records (nothing host-wide), or else from syscall
/// tracepoints that every syscall on the host pays for.
fn landlock_observer(abi: i64) -> Check {
    use crate::daemon::llaudit::{OBSERVED_GID, netlink::Control};
    let status = (abi >= 7)
        .then(|| Control::open().and_then(|mut c| c.status()))
        .map(|r| r.map_err(|e| e.to_string()));
    let (ok, detail) = match status {
        Some(Ok(s)) => (
            true,
            format!(
                "Landlock audit records (ABI {abi}; audit enabled={}, backlog_limit={}): no \
                 host-wide hook. The daemon enables audit while it runs if it is off, with a \
                 `task,never -F gid!={OBSERVED_GID}` rule so that only agents keep an audit \
                 context",
                s.enabled, s.backlog_limit
            ),
        ),
        Some(Err(e)) => (
            false,
            format!(
                "audit netlink unavailable ({e}): Landlock denials would be observed by syscall \
                 tracepoints, which every syscall on this host pays for"
            ),
        ),
        None => (
            false,
            format!(
                "Landlock ABI {abi} writes no audit records (ABI 7, Linux 6.15+): Landlock \
                 denials would be observed by syscall tracepoints, which every syscall on this \
                 host pays for"
            ),
        ),
    };
    Check {
        name: "Landlock denial observer",
        ok,
        detail,
    }
}

/// What the kernel's own layout allows: kill mode, the terminal filter,
/// unix socket rules.
fn kernel_support(checks: &mut Vec<Check>) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    checks.push(Check {
        name: "kernel",
        ok: true,
        detail: release,
    });
    let task = crate::daemon::task_offsets();
    checks.push(Check {
        name: "syscall kill mode",
        ok: task.seccomp_mode != 0,
        detail: if task.seccomp_mode != 0 {
            format!(
                "task_struct.seccomp.mode +{}, real_parent +{}, thread_info.status +{} (BTF): \
                 `assigned = \"kill\"` tells processes under Corral's filter (a parent is a \
                 registered `corral run` launcher) from the rest, and i386 calls from x86_64 \
                 ones; it kills AFTER the call, never prevents it",
                task.seccomp_mode, task.real_parent, task.ti_status
            )
        } else {
            "NOT AVAILABLE: task_struct.seccomp/real_parent/thread_info.status missing from \
             the kernel's BTF; processes without Corral's seccomp filter are only audited"
                .into()
        },
    });
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").unwrap_or_default();
    let seccomp =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    checks.push(Check {
        name: "terminal injection",
        ok: seccomp.contains("errno"),
        detail: format!(
            "`corral run` gives agents their own session and pty and refuses TIOCSTI/TIOCLINUX \
             with seccomp (dev.tty.legacy_tiocsti = {})",
            if legacy.is_empty() {
                "n/a"
            } else {
                legacy.trim()
            }
        ),
    });
    let unix = crate::daemon::unix_kernel_support();
    checks.push(Check {
        name: "unix socket rules",
        ok: unix.is_ok(),
        detail: match &unix {
            Ok(s) => format!(
                "cgroup connect_unix/sendmsg_unix hooks available (layout from {}); \
                 `corral status` shows whether the daemon attached them",
                s.source
            ),
            Err(why) => format!("NOT ENFORCED: {why}"),
        },
    });
}

/// What only a running daemon can tell: whether its audit log is written,
/// and what its host-wide hooks cost processes that are no agent's.
fn daemon_checks(client: &Client) -> Vec<Check> {
    if !client.socket.exists() {
        return Vec::new();
    }
    let call = client.call(hyper::Method::GET, "/v1/status", None);
    let Ok((_, v)) = super::client::block_on(call) else {
        return Vec::new();
    };
    let mut checks: Vec<Check> = audit_check(&v).into_iter().collect();
    checks.push(host_cost_check(&v));
    checks
}

/// Never a failure: a cost the operator chose by policy, stated with its
/// measured size so it is never paid unknowingly.
fn host_cost_check(status: &Value) -> Check {
    let hooks: Vec<String> = status["host_cost"]["host_wide_hooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{}: ~{} ns per syscall",
                h["hook"].as_str().unwrap_or("?"),
                h["extra_ns_per_syscall"]
            )
        })
        .collect();
    Check {
        name: "host-wide cost",
        ok: true,
        detail: if hooks.is_empty() {
            "none: no host-wide hook attached (processes outside identities pay nothing)".into()
        } else {
            format!("every process on this host pays: {}", hooks.join("; "))
        },
    }
}

/// A running daemon whose audit log cannot be written (a full disk): the
/// one thing here that breaks while the host looks fine.
fn audit_check(v: &Value) -> Option<Check> {
    let a = &v["audit"];
    if a.is_null() {
        return None;
    }
    let f = &a["failing"];
    Some(Check {
        name: "audit log",
        ok: f.is_null(),
        detail: if f.is_null() {
            format!(
                "written ({}, {} records lost so far)",
                a["dir"].as_str().unwrap_or("?"),
                a["lost"]
            )
        } else {
            format!(
                "FAILING ({}) since {}, {} records not written: free space in {}; enforcement \
                 goes on and the log declares the gap when it recovers",
                f["error"].as_str().unwrap_or("?"),
                f["since"].as_str().unwrap_or("?"),
                f["not_written"],
                a["dir"].as_str().unwrap_or("?")
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cost_is_stated_with_its_size() {
        let none = host_cost_check(&json!({ "host_cost": { "host_wide_hooks": [] } }));
        assert!(
            none.ok && none.detail.starts_with("none"),
            "{}",
            none.detail
        );
        let v = json!({ "host_cost": { "host_wide_hooks": [
            { "hook": "syscall observers (sys_enter/sys_exit)", "extra_ns_per_syscall": 85 }
        ] } });
        let c = host_cost_check(&v);
        assert_eq!(
            c.detail,
            "every process on this host pays: syscall observers (sys_enter/sys_exit): ~85 ns per syscall"
        );
    }
}
