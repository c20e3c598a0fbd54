//! `corral install`: put the running binary, the systemd unit and the policy
//! directory in place, then enable the service (when that makes sense).
//!
//! - `<root>/usr/local/bin/corral` (0755): a copy of the running binary;
//! - `<root>/etc/systemd/system/corral.service` (0644): packaging/corral.service,
//!   embedded at build time;
//! - `<root>/etc/corral/policies` (0755): created if missing; example policies
//!   (`--policies DIR`) are copied only into an empty directory, so an
//!   operator's files are never overwritten;
//! - `systemctl daemon-reload` + `systemctl enable --now corral`, only when
//!   installing into `/` on a host booted with systemd and without
//!   `--no-enable`; otherwise the commands are printed.
//!
//! `--dry-run` prints every action and changes nothing.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The unit file, as shipped in packaging/.
const UNIT: &str = include_str!("../../../packaging/corral.service");

const BIN_PATH: &str = "usr/local/bin/corral";
const UNIT_PATH: &str = "etc/systemd/system/corral.service";
const POLICY_DIR: &str = "etc/corral/policies";
const ENABLE: [&[&str]; 2] = [
    &["systemctl", "daemon-reload"],
    &["systemctl", "enable", "--now", "corral"],
];

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Print every action and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Install under this root prefix instead of `/` (for packaging and tests).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Example policies to copy into /etc/corral/policies if it is empty.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Do not run `systemctl daemon-reload` and `systemctl enable --now corral`.
    #[arg(long)]
    pub no_enable: bool,
}

pub fn run(args: &InstallArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the running corral binary")?;
    if !args.dry_run && is_real_root(&args.root) && !nix::unistd::Uid::effective().is_root() {
        bail!("installing into / needs root (try sudo, --dry-run or --root DIR)");
    }
    let systemd_booted = Path::new("/run/systemd/system").is_dir();
    install(args, &exe, systemd_booted, &mut run_command)
}

/// What to do about `systemctl` after the files are in place.
#[derive(Debug, PartialEq, Eq)]
enum Enable {
    Run,
    /// Print the commands instead, with the reason.
    Print(&'static str),
}

fn enable_plan(args: &InstallArgs, systemd_booted: bool) -> Enable {
    if args.no_enable {
        Enable::Print("--no-enable")
    } else if !is_real_root(&args.root) {
        Enable::Print("installed under --root, not into this system")
    } else if !systemd_booted {
        Enable::Print("systemd is not running as PID 1 here")
    } else {
        Enable::Run
    }
}

fn is_real_root(root: &Path) -> bool {
    root.canonicalize().is_ok_and(|p| p == Path::new("/"))
}

/// Prints and (unless dry-run) performs actions.
struct Actions {
    dry_run: bool,
}

impl Actions {
    fn act(&self, what: &str, f: impl FnOnce() -> io::Result<()>) -> anyhow::Result<()> {
        if self.dry_run {
            println!("install: [dry run] would {what}");
            return Ok(());
        }
        println!("install: {what}");
        f().with_context(|| format!("cannot {what}"))
    }

    fn note(&self, what: &str) {
        let tag = if self.dry_run { "[dry run] " } else { "" };
        println!("install: {tag}{what}");
    }
}

/// The whole installation, with the binary to copy, whether systemd is PID 1
/// and the command runner passed in (so tests can use a temp root).
fn install(
    args: &InstallArgs,
    exe: &Path,
    systemd_booted: bool,
    run_cmd: &mut dyn FnMut(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let a = Actions {
        dry_run: args.dry_run,
    };
    let root = &args.root;

    // 1. The binary. Written next to the target and renamed over it, so an
    //    installed corral that is running (the service) is replaced, not
    //    rewritten in place (ETXTBSY).
    let bin = root.join(BIN_PATH);
    if same_file(exe, &bin) {
        a.note(&format!("{} is already the running binary", bin.display()));
    } else {
        mkdir_p(&a, bin.parent().context("binary path has no parent")?)?;
        a.act(
            &format!("copy {} to {} (0755)", exe.display(), bin.display()),
            || replace_with(&bin, 0o755, |tmp| fs::copy(exe, tmp).map(drop)),
        )?;
    }

    // 2. The unit (ours: upgrades rewrite it; local changes go in drop-ins).
    let unit = root.join(UNIT_PATH);
    if fs::read_to_string(&unit).is_ok_and(|t| t == UNIT) {
        a.note(&format!("{} is up to date", unit.display()));
    } else {
        mkdir_p(&a, unit.parent().context("unit path has no parent")?)?;
        a.act(&format!("write {} (0644)", unit.display()), || {
            replace_with(&unit, 0o644, |tmp| fs::write(tmp, UNIT))
        })?;
    }

    // 3. The policy directory, and example policies only into an empty one.
    let policies = root.join(POLICY_DIR);
    let empty = is_empty_dir(&policies)?;
    mkdir_p(&a, &policies)?;
    if let Some(examples) = &args.policies {
        if !empty {
            a.note(&format!(
                "{} is not empty: leaving its policies alone (examples not copied)",
                policies.display()
            ));
        } else {
            copy_examples(&a, examples, &policies)?;
        }
    }

    // 4. The service.
    match enable_plan(args, systemd_booted) {
        Enable::Run => {
            for argv in ENABLE {
                let line = argv.join(" ");
                if args.dry_run {
                    a.note(&format!("would run `{line}`"));
                } else {
                    println!("install: run `{line}`");
                    run_cmd(argv)?;
                }
            }
        }
        Enable::Print(why) => {
            println!("install: not enabling the service ({why}); to start it, run:");
            for argv in ENABLE {
                println!("    {}", argv.join(" "));
            }
        }
    }
    Ok(())
}

/// `mkdir -p dir` with mode 0755 for the directories it creates.
fn mkdir_p(a: &Actions, dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    a.act(
        &format!("create directory {} (0755)", dir.display()),
        || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            // The umask may have narrowed it.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        },
    )
}

/// A missing directory counts as empty.
fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Copies the regular files of `from` (not subdirectories) into `to`,
/// each 0644, never replacing an existing file.
fn copy_examples(a: &Actions, from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = fs::read_dir(from)
        .with_context(|| format!("reading example policies in {}", from.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("reading {}", from.display()))?;
    files.retain(|p| p.is_file());
    files.sort();
    if files.is_empty() {
        a.note(&format!("no example policies in {}", from.display()));
    }
    for src in files {
        let dst = to.join(src.file_name().context("file name")?);
        a.act(
            &format!("copy {} to {} (0644)", src.display(), dst.display()),
            || {
                let data = fs::read(&src)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&dst)?;
                io::Write::write_all(&mut f, &data)
            },
        )?;
    }
    Ok(())
}

/// Writes `path` through a temporary sibling renamed over it, with `mode`.
fn replace_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".corral-install.tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let result = write(&tmp)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn run_command(argv: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(argv[0])
        .args(&argv[1..])
        .status()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    if !status.success() {
        bail!("`{}` failed ({status})", argv.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: &Path) -> InstallArgs {
        InstallArgs {
            dry_run: false,
            root: root.to_path_buf(),
            policies: None,
            no_enable: false,
        }
    }

    /// A fake binary and a directory of example policies.
    fn fixtures() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("corral");
        fs::write(&exe, b"#!/bin/true\n").unwrap();
        let examples = dir.path().join("examples");
        fs::create_dir(&examples).unwrap();
        fs::write(examples.join("a.toml"), "example a").unwrap();
        fs::write(examples.join("b.toml"), "example b").unwrap();
        fs::create_dir(examples.join("subdir")).unwrap();
        (dir, exe, examples)
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn no_commands(argv: &[&str]) -> anyhow::Result<()> {
        panic!("unexpected command {argv:?}")
    }

    #[test]
    fn installs_into_a_root_prefix() {
        let (_fx, exe, examples) = fixtures();
        let root = tempfile::tempdir().unwrap();
        let mut a = args(root.path());
        a.policies = Some(examples);
        // systemd "booted", but --root is not / : systemctl must not run.
        install(&a, &exe, true, &mut no_commands).unwrap();

        let bin = root.path().join(BIN_PATH);
        assert_eq!(fs::read(&bin).unwrap(), b"#!/bin/true\n");
        assert_eq!(mode(&bin), 0o755);
        let unit = root.path().join(UNIT_PATH);
        assert_eq!(fs::read_to_string(&unit).unwrap(), UNIT);
        assert_eq!(mode(&unit), 0o644);
        let policies = root.path().join(POLICY_DIR);
        assert_eq!(mode(&policies), 0o755);
        assert_eq!(
            fs::read_to_string(policies.join("a.toml")).unwrap(),
            "example a"
        );
        assert_eq!(
            fs::read_to_string(policies.join("b.toml")).unwrap(),
            "example b"
        );
        assert_eq!(mode(&policies.join("a.toml")), 0o644);
        assert!(!policies.join("subdir").exists());
        // No temporary files left behind.
        let leftovers: Vec<_> = fs::read_dir(root.path().join("usr/local/bin"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["corral"]);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let (_fx, exe, examples) = fixtures();
        let root = tempfile::tempdir().unwrap();
        let mut a = args(root.path());
        a.dry_run = true;
        a.policies = Some(examples);
        install(&a, &exe, true, &mut no_commands).unwrap();
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn dry_run_on_this_system_runs_nothing() {
        let (_fx, exe, _) = fixtures();
        let mut a = args(Path::new("/"));
        a.dry_run = true;
        // Even with systemd "booted", a dry run only prints the commands.
        install(&a, &exe, true, &mut no_commands).unwrap();
    }

    #[test]
    fn never_overwrites_an_operators_policies() {
        let (_fx, exe, examples) = fixtures();
        let root = tempfile::tempdir().unwrap();
        let policies = root.path().join(POLICY_DIR);
        fs::create_dir_all(&policies).unwrap();
        fs::write(policies.join("a.toml"), "mine").unwrap();
        let mut a = args(root.path());
        a.policies = Some(examples);
        install(&a, &exe, false, &mut no_commands).unwrap();
        assert_eq!(fs::read_to_string(policies.join("a.toml")).unwrap(), "mine");
        assert!(!policies.join("b.toml").exists());
    }

    #[test]
    fn reinstalling_is_fine_and_upgrades_the_binary() {
        let (_fx, exe, examples) = fixtures();
        let root = tempfile::tempdir().unwrap();
        let mut a = args(root.path());
        a.policies = Some(examples);
        install(&a, &exe, false, &mut no_commands).unwrap();
        fs::write(root.path().join(POLICY_DIR).join("a.toml"), "edited").unwrap();
        fs::write(&exe, b"new").unwrap();
        install(&a, &exe, false, &mut no_commands).unwrap();
        assert_eq!(fs::read(root.path().join(BIN_PATH)).unwrap(), b"new");
        let a_toml = root.path().join(POLICY_DIR).join("a.toml");
        assert_eq!(fs::read_to_string(a_toml).unwrap(), "edited");
    }

    #[test]
    fn enables_only_on_this_systemd_host() {
        let tmp = tempfile::tempdir().unwrap();
        let slash = args(Path::new("/"));
        assert_eq!(enable_plan(&slash, true), Enable::Run);
        assert!(matches!(enable_plan(&slash, false), Enable::Print(_)));
        let mut no_enable = args(Path::new("/"));
        no_enable.no_enable = true;
        assert!(matches!(enable_plan(&no_enable, true), Enable::Print(_)));
        assert!(matches!(
            enable_plan(&args(tmp.path()), true),
            Enable::Print(_)
        ));
    }

    #[test]
    fn the_unit_starts_the_installed_binary() {
        assert!(UNIT.contains(&format!("\nExecStart=/{BIN_PATH} daemon ")));
        assert!(UNIT.contains(&format!("--policy-dir /{POLICY_DIR}")));
    }
}
