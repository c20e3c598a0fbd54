//! The daemon's side of `[syscalls]`: keeping `SYSCALL_POLICY` current,
//! running the `sys_enter`/`sys_exit` observers, and making their events
//! readable.
//!
//! - `SYSCALL_POLICY` (pinned) holds one value per live identity, written in
//!   one map update each, so a launcher answering a notification reads
//!   either the old policy or the new one. Identities without a
//!   `[syscalls]` section have an unconfined value; an orphaned identity
//!   (policy file gone, processes left) allows only what every process needs
//!   to exit; a removed identity has no value (launchers then refuse).
//! - The observers run for every syscall on the host, so they are attached
//!   only while some identity has a `[syscalls]` section, and detached when
//!   none has. Their links are pinned under `<pin_dir>/links/syscalls/` and
//!   handed over to the next daemon like the others (new link first).
//! - After every change of cgroup tags the daemon bumps `SYSCALL_TAG_GEN`,
//!   which invalidates the observers' cgroup→identity cache at once.

use std::{
    collections::HashSet,
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::{
    identity::Mode,
    maps,
    syscall::{
        LauncherEntry, NR_SOCKET, PSEUDO_SOCKET_UNIX, SyscallEvent, SyscallPolicy, TaskOffsets,
        clear_bit, socket_pseudo,
    },
};
use aya::{
    Btf, Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, MapError},
    programs::{BtfTracePoint, links::FdLink},
};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::mechanism::{Mechanism, MechanismState};
use crate::{
    event::{self, Event},
    policy::{
        Action, IdentityPolicy,
        syscalls::{SyscallsPolicy, name_bytes},
    },
};

/// Offset of `task_struct.seccomp.mode` in the running kernel, from BTF;
/// 0 when it cannot be found (then the observers never kill). Read once.
pub fn seccomp_mode_offset() -> u32 {
    task_offsets().seccomp_mode
}

/// Removes the marks of launchers that died without removing their own
/// (SIGKILL), so the map does not fill up. (A later process given such a
/// pid vouches for nobody either way: the kernel side compares start times.)
fn prune_launchers(ebpf: &mut Ebpf) {
    let Some(m) = ebpf.map_mut(maps::SC_LAUNCHERS) else {
        return;
    };
    let Ok(mut m) = BpfHashMap::<_, u32, LauncherEntry>::try_from(m) else {
        return;
    };
    let dead: Vec<u32> = m
        .iter()
        .filter_map(Result::ok)
        .filter(|(tgid, e)| {
            crate::sandbox::launcher_mark::start_ticks(*tgid) != Some(e.start_ticks)
        })
        .map(|(tgid, _)| tgid)
        .collect();
    for tgid in dead {
        let _ = m.remove(&tgid);
    }
}

/// `task_struct` offsets for the syscall observers (zeros where BTF does
/// not say: no kill mode then, and an i386 call is judged as unknown).
pub fn task_offsets() -> TaskOffsets {
    static OFF: std::sync::OnceLock<TaskOffsets> = std::sync::OnceLock::new();
    *OFF.get_or_init(read_task_offsets)
}

fn read_task_offsets() -> TaskOffsets {
    let b = match super::kernel::btf::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            warn!("reading kernel BTF ({e}): `assigned = \"kill\"` is unavailable");
            return TaskOffsets::default();
        }
    };
    let seccomp_mode = match (
        b.offset("task_struct", "seccomp"),
        b.offset("seccomp", "mode"),
    ) {
        (Ok(a), Ok(m)) if a + m > 0 => a + m,
        _ => {
            warn!("BTF has no task_struct.seccomp.mode: `assigned = \"kill\"` is unavailable");
            0
        }
    };
    let ti_status = match (
        b.offset("task_struct", "thread_info"),
        b.offset("thread_info", "status"),
    ) {
        (Ok(a), Ok(s)) => a + s,
        _ => 0,
    };
    let real_parent = b.offset("task_struct", "real_parent").unwrap_or(0);
    let tgid = b.offset("task_struct", "tgid").unwrap_or(0);
    let start_boottime = b.offset("task_struct", "start_boottime").unwrap_or(0);
    if real_parent == 0 || tgid == 0 || ti_status == 0 || start_boottime == 0 {
        // Without them launched agents cannot be told from assigned ones,
        // nor i386 calls from x86_64 ones: refuse to kill rather than guess.
        warn!(
            "BTF lacks task_struct.real_parent/tgid/thread_info.status: `assigned = \"kill\"` is unavailable"
        );
        return TaskOffsets::default();
    }
    TaskOffsets {
        seccomp_mode,
        real_parent,
        tgid,
        ti_status,
        start_boottime,
        _pad: 0,
    }
}

/// One live identity as the enforcer knows it.
pub struct LiveIdentity {
    pub id: u32,
    pub name: String,
    pub ruleset: u32,
    /// `None`: orphaned (policy file removed while processes remain).
    pub policy: Option<Arc<IdentityPolicy>>,
    /// Its cgroup and the cgroups assigned to it.
    pub cgroups: Vec<PathBuf>,
}

/// The value an identity's launchers and observers judge by.
pub fn value_for(l: &LiveIdentity) -> SyscallPolicy {
    match &l.policy {
        Some(p) => match &p.syscalls {
            Some(s) => s.map_value(l.ruleset, p.mode, &l.name),
            None => {
                let mut v = SyscallPolicy::empty();
                v.generation = l.ruleset;
                v.mode = p.mode.into();
                v.name = name_bytes(&l.name);
                v
            }
        },
        // Everything denied but exiting, like the network rules of an
        // orphaned identity.
        None => SyscallsPolicy::exit_only().map_value(l.ruleset, Mode::Enforce, &l.name),
    }
}

/// Bound on the remembered allow sets; past it they are forgotten, and
/// agents launched before count as unknown (observers attached).
const SERVED_MAX: usize = 4096;

/// Syscall state the enforcer owns beside the `Ebpf` object.
pub struct Syscalls {
    pin_dir: PathBuf,
    /// Why the observers cannot run here, if they cannot.
    observers: Result<(), String>,
    attached: bool,
    /// Whether `task_struct.seccomp.mode` was found (kill mode needs it).
    kill_capable: bool,
    /// The kernel judges AF_UNIX connects by path (`[network] unix`). When
    /// it cannot (before Linux 6.7), `socket:unix` is withheld: `@default`
    /// grants AF_UNIX client sockets only because their destinations are
    /// judged.
    unix_enforced: bool,
    /// When dead launchers' marks were last removed.
    last_prune: Option<std::time::Instant>,
    /// The allow sets written, by (identity, generation): what a running
    /// agent's filter was compiled from.
    served: super::syscall_need::Served,
}

impl Syscalls {
    /// Loads the observer programs (not yet attached). A kernel that
    /// refuses them leaves syscall events and kill mode unavailable, said
    /// loudly; seccomp enforcement by `corral run` does not depend on them.
    pub fn new(ebpf: &mut Ebpf, pin_dir: &Path) -> Syscalls {
        let observers = load_programs(ebpf);
        if let Err(why) = &observers {
            warn!("syscall observers unavailable: {why}");
            // Programs a previous daemon left would run against rules
            // nobody keeps in step with them.
            detach_pins(pin_dir);
        }
        Syscalls {
            pin_dir: pin_dir.to_path_buf(),
            observers,
            attached: false,
            kill_capable: seccomp_mode_offset() != 0,
            unix_enforced: true,
            last_prune: None,
            served: Default::default(),
        }
    }

    pub fn set_unix_enforced(&mut self, on: bool) {
        self.unix_enforced = on;
    }

    fn policy_map(
        ebpf: &mut Ebpf,
    ) -> Result<BpfHashMap<&mut MapData, u32, SyscallPolicy>, MapError> {
        let m = ebpf
            .map_mut(maps::SYSCALL_POLICY)
            .expect("SYSCALL_POLICY in object");
        BpfHashMap::try_from(m)
    }

    /// Brings `SYSCALL_POLICY` in line with the live identities (one update
    /// per changed identity; stale ids deleted), then attaches or detaches
    /// the observers and invalidates their cgroup cache.
    pub fn sync(&mut self, ebpf: &mut Ebpf, live: &[LiveIdentity]) -> Result<(), MapError> {
        let mut m = Self::policy_map(ebpf)?;
        let mut keep = HashSet::new();
        for l in live {
            keep.insert(l.id);
            let mut want = value_for(l);
            if !self.unix_enforced && want.allowed_bit(PSEUDO_SOCKET_UNIX) {
                warn!(
                    identity = %l.name,
                    "`socket:unix` withheld: this kernel does not judge AF_UNIX destinations \
                     (unix rules need Linux 6.7); allow `socket` to grant AF_UNIX sockets anyway"
                );
                clear_bit(&mut want.allow, PSEUDO_SOCKET_UNIX);
            }
            if m.get(&l.id, 0).ok() != Some(want) {
                m.insert(l.id, want, 0)?;
            }
            if self.served.len() >= SERVED_MAX {
                self.served.clear();
            }
            self.served.insert((l.id, want.generation), want.allow);
        }
        let stale: Vec<u32> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        self.tags_changed(ebpf);
        self.refresh(ebpf, live);
        Ok(())
    }

    /// Attaches the observers while some tagged process has nobody else to
    /// report for it (`syscall_need`), detaches them when none has.
    pub fn refresh(&mut self, ebpf: &mut Ebpf, live: &[LiveIdentity]) {
        // Marks of dead launchers go after a grace period in which their
        // last reports are still accepted.
        if self
            .last_prune
            .is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(30))
        {
            prune_launchers(ebpf);
            self.last_prune = Some(std::time::Instant::now());
        }
        let confined: Vec<super::syscall_need::Confined> = live
            .iter()
            .filter(|l| l.policy.as_ref().is_some_and(|p| p.syscalls.is_some()))
            .map(|l| super::syscall_need::Confined {
                id: l.id,
                cgroups: l.cgroups.clone(),
                value: value_for(l),
            })
            .collect();
        let why = if confined.is_empty() {
            None
        } else {
            let launchers: std::collections::HashMap<u32, LauncherEntry> = ebpf
                .map(maps::SC_LAUNCHERS)
                .and_then(|m| BpfHashMap::<_, u32, LauncherEntry>::try_from(m).ok())
                .map(|m| m.iter().filter_map(Result::ok).collect())
                .unwrap_or_default();
            super::syscall_need::why(&confined, &launchers, &self.served)
        };
        if why.is_some() && !self.attached {
            info!(
                why = why.as_deref().unwrap_or(""),
                "attaching the host-wide syscall observers"
            );
        }
        self.set_observers(ebpf, why.is_some());
    }

    /// Every cached cgroup→identity answer is stale from now on.
    pub fn tags_changed(&self, ebpf: &mut Ebpf) {
        let Some(m) = ebpf.map_mut(maps::SYSCALL_TAG_GEN) else {
            return;
        };
        let Ok(mut a) = Array::<_, u64>::try_from(m) else {
            return;
        };
        let g = a.get(&0, 0).unwrap_or(0);
        if let Err(e) = a.set(0, g.wrapping_add(1), 0) {
            warn!("bumping the syscall tag generation: {e}");
        }
    }

    /// `attached` means attached by this daemon: links a previous daemon
    /// pinned run its programs with its own (unpinned) cache and tag
    /// generation, which nobody bumps any more, so they are always replaced
    /// (new link first) or removed.
    fn set_observers(&mut self, ebpf: &mut Ebpf, want: bool) {
        if self.observers.is_err() {
            return;
        }
        if want && !self.attached {
            let pin_dir = self.pin_dir.clone();
            match super::hostcost::attach_measured(super::hostcost::Hook::SyscallObservers, || {
                attach(ebpf, &pin_dir)
            }) {
                Ok(()) => {
                    self.attached = true;
                    info!("syscall observers attached (sys_enter, sys_exit)");
                }
                Err(e) => {
                    warn!("syscall observers NOT attached: {e}");
                    self.observers = Err(format!("attaching: {e}"));
                    detach_pins(&self.pin_dir);
                }
            }
        } else if !want && (self.attached || links_dir(&self.pin_dir).exists()) {
            detach_pins(&self.pin_dir);
            self.attached = false;
            super::hostcost::detached(super::hostcost::Hook::SyscallObservers);
            info!("no tagged process needs them: syscall observers detached");
        }
    }

    /// What `corral status` lists for syscall confinement.
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        let notif = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
            .unwrap_or_default()
            .contains("user_notif");
        let obs = self.observers.as_ref().err();
        vec![
            Mechanism {
                name: "syscalls (seccomp filter from `corral run`, answered live)",
                state: MechanismState::of(notif),
                detail: if notif {
                    format!(
                        "`corral run` installs a seccomp filter before exec: hot allowed \
                         syscalls pass in the kernel; every other one (`deny` entries and \
                         32-bit/x32 syscalls included) is answered and reported by the launcher \
                         from {}/maps/{} (live), and fails with ENOSYS if the launcher is gone. \
                         Processes not started by `corral run` carry no filter: see `assigned`",
                        self.pin_dir.display(),
                        maps::SYSCALL_POLICY
                    )
                } else {
                    "NOT ENFORCED: the kernel lacks SECCOMP_RET_USER_NOTIF; `corral run` refuses \
                     identities with a [syscalls] section"
                        .into()
                },
            },
            Mechanism {
                name: "syscall events (sys_enter/sys_exit observers)",
                state: MechanismState::of(obs.is_none()),
                detail: match obs {
                    None => "launched agents' refusals come from their launcher; these \
                             host-wide observers are attached only while a tagged process of an \
                             identity with [syscalls] has no live launcher (assigned processes, \
                             orphaned agents) or uses a hot syscall its policy dropped: then \
                             `corral status` shows their measured cost per syscall"
                        .into(),
                    Some(why) => format!(
                        "NOT REPORTED: {why}; seccomp still refuses, but `corral tail` shows no \
                         syscall events and `assigned = \"kill\"` kills nothing"
                    ),
                },
            },
            Mechanism {
                name: "syscall kill mode (assigned = \"kill\")",
                state: MechanismState::of(obs.is_none() && self.kill_capable),
                detail: if obs.is_none() && self.kill_capable {
                    "AFTER THE FACT: a tagged process without Corral's seccomp filter is killed \
                     (SIGKILL) on a syscall its policy does not allow, but that call still runs; \
                     it is not prevented. Start agents with `corral run` to prevent calls"
                        .into()
                } else {
                    "NOT ENFORCED: needs the syscall observers and task_struct.seccomp in the \
                     kernel's BTF; processes without the filter are only audited"
                        .into()
                },
            },
        ]
    }
}

fn load_programs(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    for (name, tp) in maps::SYSCALL_PROGRAMS {
        let p: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        p.load(tp, &btf).map_err(|e| {
            format!(
                "loading {name} (tp_btf/{tp}): {}",
                std::error::Error::source(&e).map_or(e.to_string(), |s| format!("{e}: {s}"))
            )
        })?;
    }
    Ok(())
}

/// The pinned `SYSCALL_POLICY` (what launchers open).
pub fn map_path(pin_dir: &Path) -> PathBuf {
    super::pins::maps_dir(pin_dir).join(maps::SYSCALL_POLICY)
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links").join("syscalls")
}

/// Attaches both observers and pins their links, replacing links a previous
/// daemon pinned without a gap (the new link runs before the old goes).
fn attach(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<(), String> {
    let dir = links_dir(pin_dir);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, _) in maps::SYSCALL_PROGRAMS {
        let p: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        let id = p.attach().map_err(|e| format!("attaching {name}: {e}"))?;
        let link: FdLink = p.take_link(id).map_err(|e| format!("{name}: {e}"))?.into();
        super::pins::pin_replacing(link, &dir, name).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes the observers' pinned links (they detach once no fd holds them).
pub fn detach_pins(pin_dir: &Path) {
    let dir = links_dir(pin_dir);
    let Ok(rd) = fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        if let Err(err) = fs::remove_file(e.path()) {
            warn!("removing {}: {err}", e.path().display());
        }
    }
    let _ = fs::remove_dir(&dir);
}

/// Makes the pinned `SYSCALL_POLICY` refuse every notified syscall before
/// its pin goes (`corral unload`): launchers still holding the map must
/// fail closed, not keep answering from a policy nobody maintains.
pub fn empty_pinned_policy(pin_dir: &Path) -> io::Result<()> {
    let path = map_path(pin_dir);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).map_err(io::Error::other)?;
    let mut m: BpfHashMap<MapData, u32, SyscallPolicy> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(io::Error::other)?;
    let keys: Vec<u32> = m.keys().filter_map(Result::ok).collect();
    for k in keys {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// Fills `ev.syscall`, and `rule` when a `deny` entry decided.
pub fn complete(ev: &mut Event, x: &SyscallEvent, policy: Option<&IdentityPolicy>) {
    ev.syscall = Some(event::syscall_info(x));
    let Some(s) = policy.and_then(|p| p.syscalls.as_ref()) else {
        return;
    };
    let nr = effective_nr(s, x);
    if let Some((Action::Deny, e)) = s.deciding_entry(nr) {
        ev.rule = Some(e.describe(Action::Deny));
    }
}

/// For `socket`, the pseudo-syscall that refused it when `socket` itself is
/// allowed.
fn effective_nr(s: &SyscallsPolicy, x: &SyscallEvent) -> u32 {
    if x.nr == NR_SOCKET && s.allowed.contains(NR_SOCKET) {
        let p = socket_pseudo(x.args[0] as u32, x.args[1] as u32, x.args[2] as u32);
        if p != 0 {
            return p;
        }
    }
    x.nr
}

/// The `syscalls` object of `GET /v1/identities[/NAME]`.
pub fn summary(p: &IdentityPolicy) -> Value {
    match &p.syscalls {
        None => json!({ "confined": false, "note": "no [syscalls] section: not confined" }),
        Some(s) => json!({
            "confined": true,
            "allowed": s.allowed.len(),
            "denied": s.denied.len(),
            "assigned": s.assigned,
        }),
    }
}

/// The `syscalls` object of `GET /v1/policy/NAME`.
pub fn policy_json(p: &IdentityPolicy) -> Value {
    let Some(s) = &p.syscalls else {
        return json!({
            "confined": false,
            "note": "no [syscalls] section: no syscall confinement",
        });
    };
    let entries = |list: &[crate::policy::syscalls::SyscallEntry]| -> Vec<Value> {
        list.iter()
            .map(|e| {
                json!({
                    "entry": e.text,
                    "origin": e.origin,
                    "syscalls": e.set.len(),
                    "group": crate::policy::syscalls::group(&e.text).map(|g| g.summary),
                })
            })
            .collect()
    };
    json!({
        "confined": true,
        "allow": entries(&s.allow),
        "deny": entries(&s.deny),
        "assigned": s.assigned,
        "allowed": s.allowed,
        "denied": s.denied,
        "allowed_count": s.allowed.len(),
        "in_kernel_allow_at_launch": s.hot_allowed(),
        "note": match s.assigned {
            crate::policy::syscalls::Assigned::Kill => "processes without the seccomp filter \
                (corral assign) are KILLED after the fact on a syscall not allowed: the call \
                itself still runs",
            crate::policy::syscalls::Assigned::Audit => "processes without the seccomp filter \
                (corral assign) are audited only",
        },
    })
}
