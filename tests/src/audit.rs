//! For the audit log suites: `corral audit verify|query` on a directory,
//! and a small tmpfs to fill.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

use crate::{Daemon, ProbeRun, corral_bin, path_str};

/// As `identity`: one denied connect to 127.0.0.1:`port` (the probe's
/// `pid`, for matching events), then `n` more as fast as it can.
pub fn connect_burst(d: &Daemon, identity: &str, port: &str, n: u64) -> ProbeRun {
    let n = n.to_string();
    let steps = [
        "pid",
        "connect",
        "127.0.0.1",
        port,
        "burst",
        "127.0.0.1",
        port,
        &n,
    ];
    d.probe_as(identity, &steps)
}

/// `promtool check metrics` finds nothing to say about `body`.
pub fn promtool_clean(body: &str) {
    use std::{io::Write as _, process::Stdio};
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (installed by cargo xtask setup)");
    check
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(body.as_bytes())
        .expect("writing to promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {out:?}"
    );
}

pub fn corral(args: &[&str]) -> Output {
    Command::new(corral_bin())
        .args(args)
        .output()
        .expect("corral")
}

/// `corral audit verify DIR …`: whether it passed, and everything it said.
pub fn verify(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut a = vec!["audit", "verify", path_str(dir)];
    a.extend(extra);
    let out = corral(&a);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `corral audit query --dir DIR --json …`: the whole records.
pub fn query(dir: &Path, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["audit", "query", "--dir", path_str(dir), "--json"];
    a.extend(args);
    let out = corral(&a);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// A tmpfs of a given size mounted on a directory (made if missing);
/// unmounted when dropped, also on a panic (lazily: a daemon may still
/// hold files open in it).
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .expect("mount");
        assert!(st.success(), "mount tmpfs on {}", path.display());
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("remount");
        assert!(st.success(), "remount {}", self.path.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
