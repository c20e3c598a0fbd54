//! The guest's initramfs (gzip'd cpio, rebuilt each run): busybox, an
//! `/init` that mounts the kernel filesystems and runs the tests, our
//! binaries, and every library `ldd` names.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result};

use super::{GUEST_TESTS, LANDLOCK_IN_GUEST, MARKER, SANITY_TEST, Tests, VmArgs};
use crate::util;

/// Shared libraries `ldd` names for `bin` (none for static binaries).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = util::cmd("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copies `from` to `root/to` (following symlinks), without debug info for
/// our own binaries (they are large and the guest unpacks them into RAM).
fn install(from: &Path, root: &Path, to: &Path, strip: bool) -> Result<()> {
    let dst = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    if strip && util::which("objcopy").is_some() {
        let ok = util::cmd("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&dst)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
    }
    fs::copy(from, &dst).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One command the guest runs: program, arguments, extra environment.
type GuestRun = (String, Vec<String>, Vec<(String, String)>);

fn init_script(runs: &[GuestRun], modules: &[String]) -> String {
    let mut s = String::from(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
exec </dev/null
echo "CORRAL-VM: kernel $(uname -r), active LSMs: $(cat /sys/kernel/security/lsm), cpus: $(nproc)"
export HOME=/root RUST_BACKTRACE=1 CORRAL_BIN=/corral/target/release/corral CORRAL_VM=1
rc=0
"#,
    );
    // Dependencies come first in `modules`; a failure is said, and the
    // test that needs the module fails in the guest.
    for m in modules {
        s.push_str(&format!(
            "insmod /lib/modules/{m}.ko || echo 'CORRAL-VM: insmod {m} failed'\n"
        ));
    }
    for (exe, args, envs) in runs {
        let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
        let envs: Vec<String> = envs
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        s.push_str(&format!(
            "echo {}\n{} {exe} {} || rc=1\n",
            shell_quote(&format!("CORRAL-VM: running {exe} {}", args.join(" "))),
            envs.join(" "),
            args.join(" ")
        ));
    }
    s.push_str(&format!(
        "if [ $rc = 0 ]; then echo \"{MARKER} pass\"; else echo \"{MARKER} fail\"; fi\n\
         sync\npoweroff -f\n"
    ));
    s
}

/// Where the bundled policies are in the guest (`golden` reads them).
const GUEST_POLICIES: &str = "/corral/policies";

/// What the guest runs: each guest suite (filtered), the sanity test of
/// the native suites, and the LSM benchmark when asked; their binaries are
/// added to `bins`.
fn test_runs(
    t: &Tests,
    args: &VmArgs,
    guest_dir: &Path,
    bins: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<Vec<GuestRun>> {
    let mut runs = Vec::new();
    let filter = args.filter.clone();
    for (name, exe) in &t.binaries {
        let guest = guest_dir
            .join("deps")
            .join(exe.file_name().context("exe name")?);
        let at = guest.display().to_string();
        let before = runs.len();
        let env = || vec![("CORRAL_BUNDLED_POLICIES".into(), GUEST_POLICIES.into())];
        let mut targs: Vec<String> = vec!["--test-threads=1".into()];
        if GUEST_TESTS.contains(&name.as_str()) {
            targs.extend(filter.clone());
            runs.push((at.clone(), targs, env()));
        } else if name == SANITY_TEST.0
            && filter.as_deref().is_none_or(|f| SANITY_TEST.1.contains(f))
        {
            targs.extend([SANITY_TEST.1.to_owned(), "--exact".into()]);
            runs.push((at.clone(), targs, env()));
        }
        if let Some((_, only)) = LANDLOCK_IN_GUEST.iter().find(|(n, _)| n == name) {
            let f = filter.clone().unwrap_or_else(|| only.to_string());
            let mut targs: Vec<String> = vec!["--test-threads=1".into()];
            targs.extend(Some(f).filter(|f| !f.is_empty()));
            let env = vec![("CORRAL_NO_BPF_LSM".into(), "1".into())];
            runs.push((at.clone(), targs, env));
        }
        if args.bench && name == "files_lsm" {
            runs.push((
                at.clone(),
                vec![
                    "--test-threads=1".into(),
                    "--ignored".into(),
                    "--nocapture".into(),
                    "bench_file_open".into(),
                ],
                vec![("CORRAL_VM_BENCH".into(), "1".into())],
            ));
        }
        if runs.len() > before {
            bins.push((exe.clone(), guest.clone()));
        }
    }
    Ok(runs)
}

/// `lib` at its real path on the host, and its own path as a symlink to
/// that when it differs (the dynamic loader is `/lib64/ld-linux…` ->
/// `/usr/lib/x86_64-linux-gnu/…`): Landlock judges the real file, as on
/// the host.
fn install_real(lib: &Path, root: &Path) -> Result<()> {
    let real = fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    install(&real, root, &real, false)?;
    let link = root.join(lib.strip_prefix("/").unwrap_or(lib));
    if real != lib && fs::symlink_metadata(&link).is_err() {
        if let Some(d) = link.parent() {
            fs::create_dir_all(d)?;
        }
        std::os::unix::fs::symlink(&real, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), real.display()))?;
    }
    Ok(())
}

/// The host's merged-/usr layout (`/lib -> usr/lib`, ...) in the guest
/// too, so libraries sit at the real paths they have on the host: rules
/// that allow `/usr/` (Landlock, which checks the real file) then cover
/// the dynamic loader there as here.
fn merged_usr(root: &Path) -> Result<()> {
    for d in ["lib", "lib64", "lib32", "libx32"] {
        let host = Path::new("/").join(d);
        let Ok(target) = fs::read_link(&host) else {
            continue;
        };
        fs::create_dir_all(root.join(&target))?;
        std::os::unix::fs::symlink(&target, root.join(d))
            .with_context(|| format!("linking {d} -> {}", target.display()))?;
    }
    Ok(())
}

pub(super) fn initramfs(
    stage: &Path,
    t: &Tests,
    modules: &[super::modules::Module],
    args: &VmArgs,
) -> Result<PathBuf> {
    let root = stage.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cleaning {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    merged_usr(&root)?;
    let busybox = util::which("busybox")
        .or_else(|| Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()))
        .context("busybox not found (apt-get install busybox-static)")?;
    install(&busybox, &root, Path::new("/bin/busybox"), false)?;
    // The test harness finds the probe next to `deps/`, as cargo lays out.
    let guest_dir = Path::new("/corral/target/release");
    let mut bins: Vec<(PathBuf, PathBuf)> = vec![
        (t.corral.clone(), guest_dir.join("corral")),
        (t.probe.clone(), guest_dir.join("corral-probe")),
    ];
    let runs = test_runs(t, args, guest_dir, &mut bins)?;
    // The Landlock suite's exec tests copy it into their trees.
    let true_bin = Path::new("/usr/bin/true");
    if true_bin.is_file() {
        bins.push((true_bin.to_path_buf(), true_bin.to_path_buf()));
    }
    let runs = match &args.exec {
        Some(cmd) => vec![("sh".into(), vec!["-c".into(), cmd.clone()], Vec::new())],
        None => runs,
    };
    let mut libs: BTreeSet<PathBuf> = BTreeSet::new();
    for (host, guest) in &bins {
        install(host, &root, guest, true)?;
        libs.extend(libraries(host)?);
    }
    libs.extend(libraries(&busybox)?);
    for e in fs::read_dir(&t.policies)?.flatten() {
        let p = e.path();
        if let Some(name) = p
            .file_name()
            .filter(|_| p.extension().is_some_and(|x| x == "toml"))
        {
            install(&p, &root, &Path::new(GUEST_POLICIES).join(name), false)?;
        }
    }
    for lib in &libs {
        install_real(lib, &root)?;
    }
    let etc = root.join("etc");
    fs::create_dir_all(&etc)?;
    // `nobody`: the tests that run agents with `--user`.
    fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let mdir = root.join("lib/modules");
    fs::create_dir_all(&mdir)?;
    for m in modules {
        fs::write(mdir.join(format!("{}.ko", m.name)), &m.bytes)?;
    }
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    let init = root.join("init");
    fs::write(&init, init_script(&runs, &names))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let out = stage.join("initramfs.cpio.gz");
    let script = format!(
        "cd {} && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > {}",
        shell_quote(&root.display().to_string()),
        shell_quote(&out.display().to_string())
    );
    util::run(util::cmd("sh").args(["-c", &script]))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_runs_everything_and_reports() {
        let s = init_script(
            &[(
                "/corral/t".into(),
                vec!["--test-threads=1".into(), "a b".into()],
                vec![("X".into(), "1".into())],
            )],
            &["libcrc32c".into(), "sctp".into()],
        );
        assert!(s.contains("insmod /lib/modules/libcrc32c.ko ||"));
        assert!(s.find("libcrc32c.ko").unwrap() < s.find("sctp.ko").unwrap());
        assert!(s.contains("X='1' /corral/t '--test-threads=1' 'a b' || rc=1"));
        assert!(s.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(s.contains("CORRAL-VM-RESULT: pass"));
        assert!(s.trim_end().ends_with("poweroff -f"));
    }
}
