//! `unix = [...]` rules: AF_UNIX connect()/sendmsg() judged in the kernel by
//! cgroup `connect_unix` / `sendmsg_unix` programs (Linux 6.7+).
//!
//! aya 0.14 can neither parse those sections nor attach those types, so the
//! two programs are assembled here (`asm`, `prog`), loaded with raw
//! `bpf(2)` calls, and reference the aya object's maps by fd plus one map of
//! their own, `UNIX_RULES`, created and pinned beside the others. Links are
//! pinned and handed over across restarts exactly like the sock_addr ones.
//!
//! Semantics, for an identity in enforce mode (audit mode allows and reports):
//! - pathname addresses must equal a listed path byte for byte, as the
//!   kernel sees it (up to the first NUL of `sun_path`); relative paths never
//!   match an (absolute) rule;
//! - abstract addresses (`\0name`) are judged as `@name` and need an explicit
//!   `@name` rule; the whole given name counts, trailing NULs included;
//! - unnamed addresses never reach the hooks: connect() needs an address,
//!   and a send without one goes to the peer already judged at connect();
//! - socketpair() and passed descriptors are not judged (no address).

use std::{
    collections::HashSet,
    fs,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::Path,
};

use agent_common::{
    maps,
    net::{ACTION_ALLOW, OP_CONNECT, OP_SENDMSG},
    unix::{UNIX_PATH_LEN, UnixKey, UnixRuleValue},
};
use aya::maps::{HashMap as BpfHashMap, IterableMap as _, Map, MapData, MapError, MapType};
use tracing::info;

use super::{
    kernel::{btf::Btf, sys, unix_prog as prog},
    loader::{self, LoadError},
};
use crate::policy::UnixRule;

/// Link pin names (bpffs refuses dots).
pub const LINK_CONNECT: &str = "corral_connect_unix";
pub const LINK_SENDMSG: &str = "corral_sendmsg_unix";

/// Two rule sets of every identity must fit during a reload.
const MAX_ENTRIES: u32 = 65536;

/// The kernel's unix hook attach types and `bpf_sock_addr_kern` layout.
#[derive(Clone, Copy, Debug)]
pub struct KernelSupport {
    connect: u32,
    sendmsg: u32,
    ctx: prog::CtxLayout,
    /// How it was found (BTF or version fallback), for logs and doctor.
    pub source: &'static str,
}

fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn version_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse::<u32>().ok());
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    v >= want
}

/// Whether this kernel has the cgroup unix hooks, and where the program
/// finds the address. Read from the kernel's BTF; without BTF, from the
/// version (the 6.7 layout).
pub fn kernel_support() -> Result<KernelSupport, String> {
    let rel = release();
    let no_hooks = || {
        format!("kernel {rel} has no cgroup unix hooks (BPF_CGROUP_UNIX_CONNECT needs Linux 6.7+)")
    };
    let btf = match Btf::from_sys_fs() {
        Ok(f) => f,
        Err(e) if version_at_least(&rel, (6, 7)) => {
            info!("no usable kernel BTF ({e}); assuming the Linux 6.7 unix hook layout");
            return Ok(KernelSupport {
                connect: 49,
                sendmsg: 50,
                ctx: prog::CtxLayout {
                    uaddr: 8,
                    uaddrlen: 32,
                },
                source: "kernel version (no BTF)",
            });
        }
        Err(_) => return Err(no_hooks()),
    };
    let at = |n: &str| btf.enumerator("bpf_attach_type", n);
    let (Some(connect), Some(sendmsg)) =
        (at("BPF_CGROUP_UNIX_CONNECT"), at("BPF_CGROUP_UNIX_SENDMSG"))
    else {
        return Err(no_hooks());
    };
    let field = |m: &str| btf.offset("bpf_sock_addr_kern", m).ok();
    let (Some(uaddr), Some(uaddrlen)) = (field("uaddr"), field("uaddrlen")) else {
        return Err(format!(
            "kernel {rel}: struct bpf_sock_addr_kern has no uaddr/uaddrlen in BTF"
        ));
    };
    if uaddr + 8 > uaddrlen || uaddrlen + 4 > 40 {
        return Err(format!(
            "kernel {rel}: unexpected bpf_sock_addr_kern layout (uaddr at {uaddr}, uaddrlen at \
             {uaddrlen})"
        ));
    }
    Ok(KernelSupport {
        connect: connect as u32,
        sendmsg: sendmsg as u32,
        ctx: prog::CtxLayout { uaddr, uaddrlen },
        source: "kernel BTF",
    })
}

/// The loaded programs and the rule map.
pub struct Unix {
    /// (link pin name, attach type, program).
    progs: Vec<(&'static str, u32, OwnedFd)>,
    rules: BpfHashMap<MapData, UnixKey, UnixRuleValue>,
}

fn open_pinned(mdir: &Path, name: &str) -> Result<MapData, String> {
    MapData::from_pin(mdir.join(name)).map_err(|e| format!("opening pinned map {name}: {e}"))
}

/// Opens `UNIX_RULES` left by a previous daemon, or creates and pins it.
fn rules_map(mdir: &Path) -> Result<BpfHashMap<MapData, UnixKey, UnixRuleValue>, String> {
    let path = mdir.join(maps::UNIX_RULES);
    let want = (
        size_of::<UnixKey>() as u32,
        size_of::<UnixRuleValue>() as u32,
    );
    let data = if path.exists() {
        let data = open_pinned(mdir, maps::UNIX_RULES)?;
        let info = data
            .info()
            .map_err(|e| format!("{}: {e}", maps::UNIX_RULES))?;
        let found = (info.key_size(), info.value_size());
        if found != want || !matches!(info.map_type(), Ok(MapType::Hash)) {
            return Err(format!(
                "pinned map {} under {} has key/value size {found:?}, this corral expects \
                 {want:?}: the pins come from an incompatible corral version; run `corral unload` \
                 first",
                maps::UNIX_RULES,
                mdir.display()
            ));
        }
        data
    } else {
        let fd = sys::map_create(
            sys::BPF_MAP_TYPE_HASH,
            want.0,
            want.1,
            MAX_ENTRIES,
            sys::BPF_F_NO_PREALLOC,
            maps::UNIX_RULES,
        )
        .map_err(|e| format!("creating {}: {e}", maps::UNIX_RULES))?;
        sys::obj_pin(&fd, &path).map_err(|e| format!("pinning {}: {e}", path.display()))?;
        MapData::from_fd(fd).map_err(|e| format!("{}: {e}", maps::UNIX_RULES))?
    };
    let map = Map::from_map_data(data).map_err(|e| format!("{}: {e}", maps::UNIX_RULES))?;
    BpfHashMap::try_from(map).map_err(|e| format!("{}: {e}", maps::UNIX_RULES))
}

impl Unix {
    /// Loads both programs against the pinned maps under `pin_dir` (the aya
    /// object must be loaded first). `Err` says why unix rules cannot be
    /// enforced on this host.
    pub fn load(pin_dir: &Path) -> Result<Unix, String> {
        let support = kernel_support()?;
        let mdir = loader::maps_dir(pin_dir);
        let rules = rules_map(&mdir)?;
        let cgroup_identity = open_pinned(&mdir, maps::CGROUP_IDENTITY)?;
        let identities = open_pinned(&mdir, maps::IDENTITIES)?;
        let identity_stats = open_pinned(&mdir, maps::IDENTITY_STATS)?;
        let events = open_pinned(&mdir, maps::EVENTS)?;
        let event_drops = open_pinned(&mdir, maps::EVENT_DROPS)?;
        let fd = |m: &MapData| m.fd().as_fd().as_raw_fd();
        let fds = prog::MapFds {
            cgroup_identity: fd(&cgroup_identity),
            identities: fd(&identities),
            identity_stats: fd(&identity_stats),
            events: fd(&events),
            event_drops: fd(&event_drops),
            unix_rules: fd(rules.map()),
        };
        let mut progs = Vec::new();
        for (link, name, op, attach) in [
            (LINK_CONNECT, "corral_con_unix", OP_CONNECT, support.connect),
            (LINK_SENDMSG, "corral_snd_unix", OP_SENDMSG, support.sendmsg),
        ] {
            let insns = prog::build(&prog::Params {
                op,
                ctx: support.ctx,
                maps: fds,
            })
            .map_err(|e| format!("assembling {name}: {e}"))?;
            let fd = sys::prog_load(&insns, name, attach)
                .map_err(|e| format!("loading {name} ({} insns): {e}", insns.len()))?;
            progs.push((link, attach, fd));
        }
        info!(
            layout = support.source,
            uaddr = support.ctx.uaddr,
            uaddrlen = support.ctx.uaddrlen,
            "unix socket programs loaded"
        );
        // The map fds may close now: loaded programs hold their maps.
        Ok(Unix { progs, rules })
    }

    /// Attaches both programs at `cgroup` and pins the links under
    /// `links_dir`, replacing links a previous daemon pinned there only once
    /// the new ones run (as `loader::attach_sock_addr` does).
    pub fn attach(&self, cgroup: &Path, links_dir: &Path) -> Result<(), LoadError> {
        fs::create_dir_all(links_dir).map_err(|source| LoadError::PinDir {
            path: links_dir.to_path_buf(),
            source,
        })?;
        let cg = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        for (name, attach, prog) in &self.progs {
            let link =
                sys::link_create(prog, cg.as_raw_fd(), *attach).map_err(|e| LoadError::Link {
                    path: links_dir.join(name),
                    message: format!("BPF_LINK_CREATE: {e}"),
                })?;
            super::pins::replace_pin(links_dir, name, |staging| {
                sys::obj_pin(&link, staging).map_err(|e| format!("pinning: {e}"))
            })?;
        }
        Ok(())
    }

    /// Writes an identity's rules under `ruleset`; returns the keys written.
    pub fn write(&mut self, ruleset: u32, rules: &[UnixRule]) -> Result<Vec<UnixKey>, MapError> {
        let mut keys = Vec::with_capacity(rules.len());
        for r in rules {
            let k = key(ruleset, &r.path);
            let v = UnixRuleValue {
                rule_id: r.id,
                action: ACTION_ALLOW,
            };
            if let Err(e) = self.rules.insert(k, v, 0) {
                self.delete(&keys);
                return Err(e);
            }
            keys.push(k);
        }
        Ok(keys)
    }

    pub fn delete(&mut self, keys: &[UnixKey]) {
        for k in keys {
            let _ = self.rules.remove(k);
        }
    }

    /// Entries whose ruleset is not in `active`.
    pub fn stale(&self, active: &HashSet<u32>) -> Vec<UnixKey> {
        self.rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !active.contains(&k.ruleset))
            .collect()
    }
}

/// Removes every unix link pin under `pin_dir` (detaching the programs).
pub fn detach_all(pin_dir: &Path) {
    for cg in loader::attached_cgroups(pin_dir) {
        let dir = loader::links_dir(pin_dir, cg);
        for name in [LINK_CONNECT, LINK_SENDMSG] {
            for pin in [dir.join(name), dir.join(format!("{name}_new"))] {
                if fs::remove_file(&pin).is_ok() {
                    info!(link = %pin.display(), "unix link detached");
                }
            }
        }
    }
}

/// The map key of a policy path: `/a/b` as is, `@name` as `\0name`.
pub fn key(ruleset: u32, path: &str) -> UnixKey {
    let mut k = UnixKey {
        ruleset,
        path_len: 0,
        path: [0; UNIX_PATH_LEN],
    };
    let bytes: Vec<u8> = match path.strip_prefix('@') {
        Some(name) => std::iter::once(0).chain(name.bytes()).collect(),
        None => path.bytes().collect(),
    };
    let n = bytes.len().min(UNIX_PATH_LEN);
    k.path[..n].copy_from_slice(&bytes[..n]);
    k.path_len = n as u32;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_paths_and_abstract_names() {
        let k = key(7, "/run/nscd/socket");
        assert_eq!((k.ruleset, k.path_len), (7, 16));
        assert_eq!(&k.path[..16], b"/run/nscd/socket");
        assert!(k.path[16..].iter().all(|&b| b == 0));
        let k = key(1, "@corral-test");
        assert_eq!(k.path_len, 12);
        assert_eq!(&k.path[..12], b"\0corral-test");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("6.18.44-fc-v769", (6, 7)));
        assert!(version_at_least("6.7.0", (6, 7)));
        assert!(!version_at_least("6.6.30-generic", (6, 7)));
        assert!(!version_at_least("5.15.0", (6, 7)));
        assert!(version_at_least("7.0", (6, 7)));
    }

    /// The running kernel's layout, when there is one to read.
    #[test]
    fn reads_this_kernel() {
        if !Path::new(crate::daemon::kernel::btf::VMLINUX).exists()
            || !version_at_least(&release(), (6, 7))
        {
            return;
        }
        let s = kernel_support().expect("6.7+ kernel with BTF");
        assert_eq!((s.connect, s.sendmsg), (49, 50));
        assert_eq!((s.ctx.uaddr, s.ctx.uaddrlen), (8, 32));
    }
}
