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
    checks.extend(audit_check(client));
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

/// A running daemon whose audit log cannot be written (a full disk): the
/// one thing here that breaks while the host looks fine.
fn audit_check(client: &Client) -> Option<Check> {
    if !client.socket.exists() {
        return None;
    }
    let call = client.call(hyper::Method::GET, "/v1/status", None);
    let (_, v) = super::client::block_on(call).ok()?;
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
