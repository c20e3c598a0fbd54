//! Self-protection by the BPF LSM programs, for every identity (with or
//! without `[files]`): no leaving the identity's cgroup, no touching
//! Corral's pins and cgroupfs, no bpf(), no signals or ptrace across
//! identities, no mounts. The `[files]` rules are in `files_lsm.rs`.
//!
//! Like `files_lsm.rs`, these say "skipping: …" where BPF LSM is
//! unavailable and run for real in `cargo xtask vm-test`'s QEMU guest.
//! Every denial test shows the errno inside the identity, success outside
//! it (untagged), and the event with identity, tgid, comm and path.

use std::{ffi::CString, path::Path};

use corral_tests::*;

#[test]
fn cgroup_escape_and_bpffs_are_refused() {
    let Some((_t, d)) = lsm_lab() else { return };
    let tail = d.tail(None);
    let root = cgroup2_root().display().to_string();
    let own = d.dirs.parent_cgroup().join("netonly").display().to_string();
    let pin = d.dirs.pin_dir.join("maps/IDENTITIES").display().to_string();
    let link_pin = d
        .dirs
        .pin_dir
        .join("links/lsm/corral_file_open")
        .display()
        .to_string();
    let sub = d
        .dirs
        .parent_cgroup()
        .join("netonly/sub")
        .display()
        .to_string();
    for identity in ["netonly", "files"] {
        let r = d.probe_as(
            identity,
            &[
                "pid",
                "join-cgroup",
                &root,
                "join-cgroup",
                &own,
                "open",
                &pin,
                "r",
                "clone-into-cgroup",
                &root,
                "unlink",
                &link_pin,
                "rename",
                &pin,
                &format!("{pin}2"),
                "mkdir",
                &sub,
            ],
        );
        r.assert_eperm("join-cgroup", 0);
        r.assert_eperm("join-cgroup", 1);
        r.assert_eperm("open", 0);
        r.assert_eperm("clone-into-cgroup", 0);
        r.assert_eperm("unlink", 0); // unpinning a link
        r.assert_eperm("rename", 0);
        r.assert_eperm("mkdir", 0); // mkdir in cgroupfs
        assert!(Path::new(&link_pin).exists() && Path::new(&pin).exists());
        // Events arrive in order; `expect` skips what comes before a match.
        let procs = format!("{root}/cgroup.procs");
        let ev = tail.expect(|e| {
            e["kind"] == "file" && e["identity"] == identity && e["file"]["path"] == procs.as_str()
        });
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        assert_event_source(&ev, "file", identity, r.pid());
        let ev = tail.expect(|e| {
            e["kind"] == "file" && e["identity"] == identity && e["file"]["path"] == pin.as_str()
        });
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
        let ev = tail.expect(|e| {
            e["kind"] == "protect"
                && e["identity"] == identity
                && e["protect"]["op"] == "clone-into-cgroup"
        });
        assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
        let ev = tail.expect(|e| {
            e["kind"] == "file"
                && e["identity"] == identity
                && e["file"]["path"] == link_pin.as_str()
        });
        assert_eq!(ev["file"]["op"], "unlink", "{ev:#}");
        assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    }
    // Outside: an untagged process may move itself (to where it already is).
    let here = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
    let rel = here
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2");
    let mine = format!("{root}{rel}");
    probe_outside(&["join-cgroup", &mine]).assert_ok("join-cgroup", 0);
}

#[test]
fn bpf_is_refused() {
    let Some((_t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("netonly"));
    let r = d.probe_as("netonly", &["pid", "bpf-map"]);
    r.assert_eperm("bpf-map", 0);
    let ev = tail.expect(|e| e["kind"] == "protect");
    assert_eq!(ev["protect"]["op"], "bpf", "{ev:#}");
    assert_event_source(&ev, "protect", "netonly", r.pid());
    assert_eq!(ev["reason"], "self-protection", "{ev:#}");
    probe_outside(&["bpf-map"]).assert_ok("bpf-map", 0);
}

#[test]
fn signals_and_ptrace_across_identities_are_refused() {
    let Some((_t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("netonly"));
    let daemon_pid = d.status()["daemon"]["pid"]
        .as_u64()
        .expect("daemon pid")
        .to_string();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("sleep");
    let other = sleeper.id().to_string();
    let r = d.probe_as(
        "netonly",
        &[
            "pid",
            "signal",
            &daemon_pid,
            "18",
            "signal",
            &other,
            "18",
            "ptrace",
            &daemon_pid,
            "ptrace",
            &other,
        ],
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    r.assert_eperm("signal", 0); // the daemon
    r.assert_eperm("signal", 1); // an untagged process
    r.assert_eperm("ptrace", 0);
    r.assert_eperm("ptrace", 1);
    let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "signal");
    assert_eq!(ev["protect"]["target_is_daemon"], true, "{ev:#}");
    assert_eq!(ev["protect"]["arg"], 18, "{ev:#}");
    assert_event_source(&ev, "protect", "netonly", r.pid());
    let ev = tail.expect(|e| e["kind"] == "protect" && e["protect"]["op"] == "ptrace");
    assert_eq!(ev["protect"]["target_is_daemon"], true, "{ev:#}");
    // Within its own identity a process may signal (here: itself).
    d.probe_as("netonly", &["signal", "self", "18"])
        .assert_ok("signal", 0);
    // Outside: the daemon may be signalled (SIGCONT is harmless).
    probe_outside(&["signal", &daemon_pid, "18"]).assert_ok("signal", 0);
}

#[test]
fn mounts_are_refused() {
    let Some((t, d)) = lsm_lab() else { return };
    let tail = d.tail(Some("files"));
    let dir = t.p("rw");
    // A tmpfs the harness mounts, for the umount attempt.
    let m = t.p("rw/m");
    std::fs::create_dir_all(&m).expect("mkdir");
    let c = |s: &str| CString::new(s).unwrap();
    // SAFETY: valid strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c("tmpfs").as_ptr(),
            c(&m).as_ptr(),
            c("tmpfs").as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "harness mount");
    let r = d.probe_as("files", &["pid", "mount-tmpfs", &dir, "umount", &m]);
    // SAFETY: as above.
    let still = unsafe { libc::umount(c(&m).as_ptr()) } == 0;
    r.assert_eperm("mount-tmpfs", 0);
    r.assert_eperm("umount", 0);
    assert!(still, "the tmpfs was still mounted");
    let ev = tail.expect(|e| e["kind"] == "file" && e["file"]["op"] == "mount");
    assert_eq!(ev["file"]["path"], dir.as_str(), "{ev:#}");
    assert_eq!(ev["tgid"].as_u64(), Some(r.pid()), "{ev:#}");
    probe_outside(&["mount-tmpfs", &dir]).assert_ok("mount-tmpfs", 0);
}
