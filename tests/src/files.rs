//! For the `[files]` suites: a scratch tree addressed by real path (rules
//! name real paths), TOML lists, and the probe's own real path; for the BPF
//! LSM suites also the standard tree and its identities, and a daemon that
//! says "skipping" where BPF LSM is unavailable (and must have it in the
//! QEMU guest of `cargo xtask vm-test`).

use std::path::PathBuf;

use crate::{Daemon, is_root, probe_bin};

/// A scratch tree under a temp dir, removed on drop.
pub struct ScratchTree {
    _t: tempfile::TempDir,
    /// The tree's real path (symlinks resolved).
    pub root: PathBuf,
}

impl ScratchTree {
    /// The directories `dirs`, and the files `files` each holding "data\n".
    pub fn new(dirs: &[&str], files: &[&str]) -> ScratchTree {
        let t = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(t.path()).expect("real path");
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in files {
            std::fs::write(root.join(f), "data\n").expect("write");
        }
        ScratchTree { _t: t, root }
    }

    /// The real path of `rel` in the tree, as a string.
    pub fn p(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

/// `"a", "b"`: the inside of a TOML array of strings.
pub fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The probe binary's real path (what a rule must name to let it run).
pub fn probe_real() -> String {
    std::fs::canonicalize(probe_bin())
        .expect("probe")
        .display()
        .to_string()
}

/// The system paths the probe needs to start (libc, the loader,
/// /proc/self/maps): readable in every `[files]` identity of the suites.
pub const PROBE_SYSTEM_READ: [&str; 5] = ["/usr/", "/lib/", "/lib64/", "/etc/", "/proc/"];

/// Running in the QEMU guest of `cargo xtask vm-test` (`CORRAL_VM`), where
/// a missing BPF LSM is a failure, not a reason to skip.
pub fn in_vm() -> bool {
    std::env::var_os("CORRAL_VM").is_some()
}

impl Daemon {
    /// Whether the BPF LSM half enforces `[files]` here; in the VM it must
    /// (the test fails otherwise).
    pub fn bpf_lsm_enforcing(&self) -> bool {
        let m = self.mechanism("bpf lsm: files");
        let on = m["state"] == "enforcing";
        // In the guest BPF LSM must run, unless a suite of the Landlock
        // fallback switched it off on purpose (`CORRAL_NO_BPF_LSM`).
        assert!(
            on || !in_vm() || std::env::var_os("CORRAL_NO_BPF_LSM").is_some(),
            "BPF LSM must be enforcing in the VM: {m}\n{}",
            self.log_text()
        );
        on
    }

    /// `bpf_lsm_enforcing`, saying "skipping: …" and why when not.
    pub fn bpf_lsm_or_skip(&self) -> bool {
        let on = self.bpf_lsm_enforcing();
        if !on {
            crate::skip(&format!(
                "BPF LSM unavailable (proven in cargo xtask vm-test): {}",
                self.mechanism("bpf lsm: files")["detail"]
            ));
        }
        on
    }
}

/// Starts a daemon on `policies`; `None` (after saying why) without root
/// or where BPF LSM is unavailable.
pub fn lsm_daemon(policies: &[(&str, &str)]) -> Option<Daemon> {
    if !is_root() {
        return None;
    }
    let d = Daemon::start(policies);
    d.bpf_lsm_or_skip().then_some(d)
}

/// The BPF LSM suites' tree: kb/{a.md, sub/b.md}, kbx/doc, kb.md,
/// secret.txt, shadow, hostname, hostname.bak, tickets/{t.txt, t2.txt,
/// t3.txt, vip/x}, rw/, and the probe copied to bin/ and nox/.
pub fn lsm_tree() -> ScratchTree {
    let t = ScratchTree::new(
        &["kb/sub", "kbx", "tickets/vip", "rw", "bin", "nox"],
        &[
            "kb/a.md",
            "kb/sub/b.md",
            "kbx/doc",
            "kb.md",
            "secret.txt",
            "shadow",
            "hostname",
            "hostname.bak",
            "tickets/t.txt",
            "tickets/t2.txt",
            "tickets/t3.txt",
            "tickets/vip/x",
        ],
    );
    for d in ["bin", "nox"] {
        std::fs::copy(probe_bin(), t.root.join(d).join("corral-probe")).expect("copy probe");
    }
    t
}

/// The identity `files` over an `lsm_tree`: the system paths plus the
/// tree's rules (read kb/, hostname; write tickets/, rw/; exec bin/; deny
/// tickets/vip/, shadow). An exec list, so reading does not imply
/// executing.
pub fn lsm_files_policy(t: &ScratchTree) -> String {
    let mut read: Vec<String> = PROBE_SYSTEM_READ.map(String::from).to_vec();
    read.extend([t.p("kb/"), t.p("hostname"), probe_real()]);
    let write = [String::from("/dev/null"), t.p("tickets/"), t.p("rw/")];
    let exec = [
        probe_real(),
        t.p("bin/"),
        "/lib/".into(),
        "/lib64/".into(),
        "/usr/lib/".into(),
        "/usr/lib64/".into(),
    ];
    let deny = [t.p("tickets/vip/"), t.p("shadow")];
    format!(
        "[identity]\nname = \"files\"\nmode = \"enforce\"\n[files]\nread = [{}]\nwrite = [{}]\n\
         exec = [{}]\ndeny = [{}]\n",
        toml_list(&read),
        toml_list(&write),
        toml_list(&exec),
        toml_list(&deny)
    )
}

/// The identity `netonly`, without `[files]`: self-protection still applies.
pub const NETONLY_POLICY: &str =
    "[identity]\nname = \"netonly\"\nmode = \"enforce\"\n[network]\nallow = []\n";

/// An `lsm_tree` and a daemon with the identities `files`
/// (`lsm_files_policy`) and `netonly`; `None` (after saying why) where
/// BPF LSM is unavailable.
pub fn lsm_lab() -> Option<(ScratchTree, Daemon)> {
    let t = lsm_tree();
    let p = lsm_files_policy(&t);
    let d = lsm_daemon(&[("files", &p), ("netonly", NETONLY_POLICY)])?;
    Some((t, d))
}
