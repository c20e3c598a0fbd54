//! Checks shared by the suites: probe steps that must succeed or fail with
//! an errno, and denial events that must name the identity, the process
//! (pid and comm) and the target.

use std::net::IpAddr;

use serde_json::Value;

use crate::{ProbeRun, Tail};

pub const EPERM: i64 = 1;
pub const EACCES: i64 = 13;

impl ProbeRun {
    /// Step `op`#`n` succeeded.
    pub fn assert_ok(&self, op: &str, n: usize) {
        assert_eq!(
            self.step(op, n)["ok"],
            true,
            "{op}#{n} should succeed: {self:#?}"
        );
    }

    /// Step `op`#`n` failed, with `errno`.
    pub fn assert_errno(&self, op: &str, n: usize, errno: i64) {
        let st = self.step(op, n);
        assert_eq!(st["ok"], false, "{op}#{n} should fail: {self:#?}");
        assert_eq!(st["errno"], errno, "{op}#{n}: errno: {self:#?}");
    }

    /// Step `op`#`n` failed with EPERM.
    pub fn assert_eperm(&self, op: &str, n: usize) {
        self.assert_errno(op, n, EPERM);
    }
}

/// Asserts who an event names: its kind, the identity, the process (tgid)
/// and its comm (the probe's).
pub fn assert_event_source(ev: &Value, kind: &str, identity: &str, pid: u64) {
    assert_eq!(ev["kind"], kind, "{ev:#}");
    assert_eq!(ev["identity"], identity, "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(pid), "{ev:#}");
    assert_eq!(ev["comm"], "corral-probe", "{ev:#}");
}

/// Asserts a net denial event's identity, pid, comm and target.
pub fn assert_net_event(ev: &Value, identity: &str, pid: u64, op: &str, addr: &str, port: u16) {
    assert_event_source(ev, "net", identity, pid);
    assert_eq!(ev["net"]["op"], op, "{ev:#}");
    assert_eq!(ev["net"]["addr"], addr, "{ev:#}");
    assert_eq!(ev["net"]["port"].as_u64(), Some(port as u64), "{ev:#}");
}

/// `assert_net_event`, comparing the address as an address (the event may
/// spell it another way: `64:ff9b::7f00:1` for `64:ff9b::127.0.0.1`).
pub fn assert_net_event_ip(ev: &Value, identity: &str, pid: u64, op: &str, addr: &str, port: u16) {
    let shown: IpAddr = ev["net"]["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address: {ev:#}"));
    assert_eq!(shown, addr.parse::<IpAddr>().expect("ip"), "{ev:#}");
    let mut same = ev.clone();
    same["net"]["addr"] = Value::from(addr);
    assert_net_event(&same, identity, pid, op, addr, port);
}

/// Asserts a unix-socket event's identity, pid, comm and target.
pub fn assert_unix_event(ev: &Value, identity: &str, pid: u64, op: &str, path: &str) {
    assert_event_source(ev, "unix", identity, pid);
    assert_eq!(ev["unix"]["op"], op, "{ev:#}");
    assert_eq!(ev["unix"]["path"], path, "{ev:#}");
    assert!(ev.get("net").is_none(), "{ev:#}");
}

/// x86_64 syscall numbers the suites check events against.
pub const NR_MKDIR: u64 = 83;
pub const NR_KCMP: u64 = 312;

pub fn is_syscall(e: &Value, name: &str) -> bool {
    e["kind"] == "syscall" && e["syscall"]["name"] == name
}

/// Asserts a syscall event's identity, process, call, layer and verdict.
pub fn assert_syscall_event(
    ev: &Value,
    identity: &str,
    tgid: u64,
    (name, nr): (&str, u64),
    layer: &str,
    verdict: &str,
) {
    assert_event_source(ev, "syscall", identity, tgid);
    assert_eq!(ev["syscall"]["name"], name, "{ev:#}");
    assert_eq!(ev["syscall"]["nr"].as_u64(), Some(nr), "{ev:#}");
    assert_eq!(ev["syscall"]["layer"], layer, "{ev:#}");
    assert_eq!(ev["verdict"], verdict, "{ev:#}");
    assert!(ev["mode"].is_string(), "{ev:#}");
}

/// Asserts a file denial event's identity, process, path and access (any
/// layer; the caller checks the layer's own fields).
pub fn assert_file_event(ev: &Value, identity: &str, tgid: u64, path: &str, access: &str) {
    assert_event_source(ev, "file", identity, tgid);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["file"]["path"], path, "{ev:#}");
    assert_eq!(ev["file"]["access"], access, "{ev:#}");
}

/// Waits for the `file` event about `path` and asserts it is a denial that
/// names the identity, the process (tgid, comm), the errno by name
/// (`"EPERM"`) and an access including `access`; gives it for the layer's
/// own fields.
pub fn expect_file_denial(
    tail: &Tail,
    identity: &str,
    pid: u64,
    path: &str,
    access: &str,
    errno: &str,
) -> Value {
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["path"] == path);
    assert_event_source(&ev, "file", identity, pid);
    assert_eq!(ev["verdict"], "deny", "{ev:#}");
    assert_eq!(ev["file"]["errno"], errno, "{ev:#}");
    assert!(
        ev["file"]["access"].as_str().unwrap_or("").contains(access),
        "access {access}: {ev:#}"
    );
    ev
}

/// `expect_file_denial` for a refusal by the BPF LSM program (EPERM).
pub fn expect_lsm_denial(tail: &Tail, identity: &str, pid: u64, path: &str, access: &str) -> Value {
    let ev = expect_file_denial(tail, identity, pid, path, access, "EPERM");
    assert_eq!(ev["file"]["layer"], "lsm", "{ev:#}");
    ev
}
