//! Loading the eBPF object, pinning and re-adopting maps and links.
//!
//! Enforcement must not have a gap across a daemon restart: maps are pinned
//! by name and reused, and links are handed over by attaching the new link
//! before the old pinned one is removed (both consult the same maps, so they
//! agree while both run).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::{
    event::{EventHeader, NetEvent},
    identity::{IdentityState, IdentityStats},
    maps,
    net::{Net4Key, Net6Key, NetRuleList},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapType,
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, links::FdLink},
};
use tracing::warn;

use super::pins::{PinError, pin_replacing};
pub use super::pins::{attached_cgroups, has_pins, links_dir, maps_dir};

/// The object built by build.rs; empty when built without bpf-linker.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/corral-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this corral binary carries a stub eBPF object (it was built without bpf-linker); \
         run `cargo xtask setup` and rebuild"
    )]
    Stub,
    #[error("mounting bpffs at {path}: {source}")]
    MountBpffs { path: PathBuf, source: nix::Error },
    #[error("mounting tracefs at {path}: {source}")]
    MountTracefs { path: PathBuf, source: nix::Error },
    #[error("pin dir {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error(
        "pinned map {name} under {dir} has key/value size {found:?}, this corral expects {want:?}: \
         the pins come from an incompatible corral version; run `corral unload` first"
    )]
    Incompatible {
        name: &'static str,
        dir: PathBuf,
        found: (u32, u32),
        want: (u32, u32),
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("link {}: {message}", path.display())]
    Link { path: PathBuf, message: String },
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
}

impl From<PinError> for LoadError {
    fn from(e: PinError) -> LoadError {
        LoadError::Link {
            path: e.path,
            message: e.message,
        }
    }
}

pub fn object_is_stub() -> bool {
    OBJECT.is_empty()
}

/// Mounts bpffs at /sys/fs/bpf if the pin dir's filesystem is not bpffs.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), LoadError> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(mount_point) {
        // A custom location must already be on bpffs; pinning reports if not.
        return Ok(());
    }
    if is_bpffs(mount_point) {
        return Ok(());
    }
    warn!(
        "bpffs is not mounted at {}; mounting it",
        mount_point.display()
    );
    nix::mount::mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| LoadError::MountBpffs {
        path: mount_point.into(),
        source,
    })
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Loads the object (re-using pinned maps when present) and its programs.
pub fn load(pin_dir: &Path, ringbuf_size: u32, daemon_tgid: u32) -> Result<Ebpf, LoadError> {
    if object_is_stub() {
        return Err(LoadError::Stub);
    }
    ensure_bpffs(pin_dir)?;
    let mdir = maps_dir(pin_dir);
    fs::create_dir_all(&mdir).map_err(|source| LoadError::PinDir {
        path: mdir.clone(),
        source,
    })?;
    if has_pins(pin_dir) {
        check_layouts(&mdir)?;
    }
    // Offsets the BPF LSM programs need (zeros when BTF is unusable; those
    // programs are then not attached, see `lsm::load_and_attach`).
    let (lsm_offsets, lsm_f_path) = super::lsm::globals();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&mdir)
        .map_max_entries(maps::EVENTS, ringbuf_size)
        .override_global(maps::GLOBAL_DAEMON_TGID, &daemon_tgid, true)
        .override_global(
            maps::GLOBAL_TASK_OFFSETS,
            &super::syscalls::task_offsets(),
            true,
        )
        .override_global(maps::GLOBAL_KOFFSETS, &lsm_offsets, true)
        .override_global(maps::GLOBAL_F_PATH_OFF, &lsm_f_path, true)
        .load(OBJECT)?;
    if let Err(e) = aya_log::EbpfLogger::init(&mut ebpf) {
        // The programs log nothing today; a missing log map is not an error.
        tracing::debug!("aya-log not initialised: {e}");
    }
    for name in maps::SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        prog.load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    let name = maps::PROG_SOCK_CREATE;
    sock_create(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program { name, source })?;
    Ok(ebpf)
}

/// A program of the object, as its type (`CgroupSockAddr`, `CgroupSock`).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(LoadError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    p.try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn sock_create(ebpf: &mut Ebpf) -> Result<&mut CgroupSock, LoadError> {
    program(ebpf, maps::PROG_SOCK_CREATE)
}

/// Pins from another build of corral must not be reused blindly: a changed
/// value layout would be read as garbage by the new programs.
fn check_layouts(mdir: &Path) -> Result<(), LoadError> {
    let expect: [(&'static str, u32, u32); 7] = [
        (
            maps::FILE_RULES,
            4 + size_of::<agent_common::file::FileKey>() as u32,
            size_of::<agent_common::file::FileRuleValue>() as u32,
        ),
        (maps::CGROUP_IDENTITY, 8, 4),
        (maps::IDENTITIES, 4, size_of::<IdentityState>() as u32),
        (
            maps::NET4_RULES,
            4 + size_of::<Net4Key>() as u32,
            size_of::<NetRuleList>() as u32,
        ),
        (
            maps::NET6_RULES,
            4 + size_of::<Net6Key>() as u32,
            size_of::<NetRuleList>() as u32,
        ),
        (maps::IDENTITY_STATS, 4, size_of::<IdentityStats>() as u32),
        (
            maps::SYSCALL_POLICY,
            4,
            size_of::<agent_common::syscall::SyscallPolicy>() as u32,
        ),
    ];
    for (name, k, v) in expect {
        let path = mdir.join(name);
        if !path.exists() {
            continue;
        }
        let data = aya::maps::MapData::from_pin(&path)
            .map_err(|source| LoadError::Map { name, source })?;
        let info = data
            .info()
            .map_err(|source| LoadError::Map { name, source })?;
        let found = (info.key_size(), info.value_size());
        if found != (k, v) {
            return Err(LoadError::Incompatible {
                name,
                dir: mdir.to_path_buf(),
                found,
                want: (k, v),
            });
        }
        let _ = info.map_type().map(|t| t == MapType::LpmTrie);
    }
    // Event layouts are checked by the decoder; keep the sizes referenced so
    // a change to them is a deliberate edit here too.
    let _ = (size_of::<EventHeader>(), size_of::<NetEvent>());
    Ok(())
}

/// Attaches every socket program (sock_create and the sock_addr set) at
/// `cgroup` and pins the links under `links_dir`, replacing links a previous
/// daemon pinned there without a gap.
pub fn attach_sock_addr(ebpf: &mut Ebpf, cgroup: &Path, links_dir: &Path) -> Result<(), LoadError> {
    fs::create_dir_all(links_dir).map_err(|source| LoadError::PinDir {
        path: links_dir.to_path_buf(),
        source,
    })?;
    let cg = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let link_err = |name: &str| {
        let path = links_dir.join(name);
        move |e: aya::programs::links::LinkError| LoadError::Link {
            path,
            message: e.to_string(),
        }
    };
    // First, so no socket of a kind nothing judges is made while the others
    // are being attached.
    let name = maps::PROG_SOCK_CREATE;
    let perr = |source| LoadError::Program { name, source };
    let prog = sock_create(ebpf)?;
    let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(perr)?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(perr)?
        .try_into()
        .map_err(link_err(name))?;
    pin_replacing(link, links_dir, name)?;
    for name in maps::SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let id = prog
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(|source| LoadError::Program { name, source })?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|source| LoadError::Program { name, source })?
            .try_into()
            .map_err(link_err(name))?;
        pin_replacing(link, links_dir, name)?;
    }
    Ok(())
}

/// Removes the tracepoint observer's pinned links (the audit records
/// observe instead).
pub fn detach_fileobs(pin_dir: &Path) {
    let dir = pin_dir.join("links").join("fileobs");
    for (name, _) in maps::FILEOBS_PROGRAMS
        .iter()
        .chain(maps::FILEOBS_TP_PROGRAMS.iter())
    {
        let _ = fs::remove_file(dir.join(name));
    }
}

/// Loads and attaches the Landlock-denial observer (see agent-ebpf
/// `fileobs`), pinning its links under `<pin_dir>/links/fileobs` like the
/// others. Preferred: one `syscalls:` tracepoint per observed syscall (other
/// syscalls run no program; needs tracefs, mounted here if missing);
/// fallback: tp_btf `sys_enter`/`sys_exit`. Returns which form runs.
/// Optional: the caller reports a failure and carries on (denials then do
/// not reach `corral tail`).
pub fn attach_fileobs(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<&'static str, LoadError> {
    let dir = pin_dir.join("links").join("fileobs");
    fs::create_dir_all(&dir).map_err(|source| LoadError::PinDir {
        path: dir.clone(),
        source,
    })?;
    // `CORRAL_FILE_OBSERVER_BTF=1` forces the fallback (benchmarks compare).
    let forced = std::env::var_os("CORRAL_FILE_OBSERVER_BTF").map(|_| LoadError::Link {
        path: dir.clone(),
        message: "CORRAL_FILE_OBSERVER_BTF is set".into(),
    });
    let per_syscall = forced.map_or_else(ensure_tracefs, Err).and_then(|()| {
        for (name, tracepoint) in maps::FILEOBS_TP_PROGRAMS {
            let perr = |source| LoadError::Program { name, source };
            let prog: &mut aya::programs::TracePoint = ebpf
                .program_mut(name)
                .ok_or(perr(aya::programs::ProgramError::UnexpectedProgramType))?
                .try_into()
                .map_err(perr)?;
            prog.load().map_err(perr)?;
            let id = prog.attach("syscalls", tracepoint).map_err(perr)?;
            let link: FdLink = prog.take_link(id).map_err(perr)?.try_into().map_err(
                |e: aya::programs::links::LinkError| LoadError::Link {
                    path: dir.join(name),
                    message: e.to_string(),
                },
            )?;
            pin_replacing(link, &dir, name)?;
        }
        Ok(())
    });
    let (form, stale): (&'static str, Vec<&str>) = match per_syscall {
        Ok(()) => (
            "syscall tracepoints (sys_enter/sys_exit of open, openat, openat2, creat, execve, \
             execveat)",
            maps::FILEOBS_PROGRAMS.iter().map(|p| p.0).collect(),
        ),
        Err(e) => {
            warn!(
                "per-syscall tracepoints unavailable ({e}); observing with tp_btf sys_enter/sys_exit"
            );
            let btf = aya::Btf::from_sys_fs().map_err(|e| LoadError::Link {
                path: "/sys/kernel/btf/vmlinux".into(),
                message: e.to_string(),
            })?;
            for (name, tracepoint) in maps::FILEOBS_PROGRAMS {
                let perr = |source| LoadError::Program { name, source };
                let prog: &mut aya::programs::BtfTracePoint = ebpf
                    .program_mut(name)
                    .ok_or(perr(aya::programs::ProgramError::UnexpectedProgramType))?
                    .try_into()
                    .map_err(perr)?;
                prog.load(tracepoint, &btf).map_err(perr)?;
                let id = prog.attach().map_err(perr)?;
                let link: FdLink = prog.take_link(id).map_err(perr)?.into();
                pin_replacing(link, &dir, name)?;
            }
            (
                "tp_btf sys_enter/sys_exit (every syscall runs it)",
                maps::FILEOBS_TP_PROGRAMS.iter().map(|p| p.0).collect(),
            )
        }
    };
    // Links of the other form, left by an earlier daemon, would observe
    // twice: retire them (the new form runs already).
    for name in stale {
        let _ = fs::remove_file(dir.join(name));
    }
    Ok(form)
}

/// tracefs at /sys/kernel/tracing (aya looks there for tracepoint ids).
fn ensure_tracefs() -> Result<(), LoadError> {
    let at = Path::new("/sys/kernel/tracing");
    if fs::read_dir(at).is_ok_and(|mut d| d.next().is_some()) {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        at,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| LoadError::MountTracefs {
        path: at.into(),
        source,
    })
}

/// Removes every pinned link and map: enforcement ends. Used by
/// `corral unload` and by `--unload-on-exit`.
pub fn unload(pin_dir: &Path) -> io::Result<()> {
    // Launchers still holding the syscall map must refuse from now on.
    super::syscalls::empty_pinned_policy(pin_dir)?;
    let links = pin_dir.join("links");
    if links.exists() {
        for cg in fs::read_dir(&links)?.flatten() {
            for l in fs::read_dir(cg.path())?.flatten() {
                // Removing the pin detaches once no fd holds the link.
                fs::remove_file(l.path())?;
            }
            fs::remove_dir(cg.path())?;
        }
        fs::remove_dir(&links)?;
    }
    let mdir = maps_dir(pin_dir);
    if mdir.exists() {
        for m in fs::read_dir(&mdir)?.flatten() {
            fs::remove_file(m.path())?;
        }
        fs::remove_dir(&mdir)?;
    }
    if pin_dir.exists() {
        fs::remove_dir(pin_dir)?;
    }
    Ok(())
}
