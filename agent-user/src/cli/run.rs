//! `corral run`: start a command as an agent identity.
//!
//! The child joins the identity's cgroup before `execve`, so the program's
//! first instruction already runs tagged; `no_new_privs` is set so it cannot
//! gain privileges through setuid binaries. The launcher stays outside the
//! cgroup as the child's parent and forwards signals.

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
};

use anyhow::{Context as _, bail};
use hyper::{Method, StatusCode};
use nix::{
    sys::signal::{SigHandler, Signal, signal},
    unistd::User,
};

use super::client::{self, Client};
use crate::sandbox::Confinement;
use crate::views::{FilesLayer, LaunchPolicy};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The identity to run as.
    #[arg(long)]
    pub identity: String,
    /// Run as this user (name or uid) instead of the caller.
    #[arg(long)]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Exit status when the identity is unknown.
pub const EXIT_UNKNOWN_IDENTITY: u8 = 2;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnknownIdentity(pub String);

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn run(client: &Client, args: &RunArgs) -> anyhow::Result<u8> {
    let (cgroup, policy) = fetch(client, &args.identity)?;
    // Shared with the pre_exec closure, which must be 'static; taken back
    // after spawn for supervision.
    let confinement = Arc::new(Confinement::prepare(&args.identity, &policy)?);

    // Everything the child needs is prepared here: between fork and exec
    // only async-signal-safe calls are allowed (no allocation).
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
    let user = match &args.user {
        Some(u) => Some(resolve_user(u)?),
        None => None,
    };
    let as_root = user
        .as_ref()
        .map_or_else(|| nix::unistd::geteuid().is_root(), |u| u.uid.is_root());
    if as_root {
        eprintln!("{}", root_warning(&args.identity, &policy));
    }
    let observed = join_observed_group(&policy);
    let mut cmd = command(
        args,
        user.as_ref(),
        observed,
        procs.as_raw_fd(),
        confinement.clone(),
    );
    forward_signals()?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}` as {}", args.command[0], args.identity))?;
    CHILD.store(child.id() as i32, Ordering::Relaxed);
    drop(procs);
    drop(cmd);
    let confinement =
        Arc::into_inner(confinement).expect("the Command held the only other reference");
    let status = confinement.supervise(&mut child)?;
    use std::os::unix::process::ExitStatusExt as _;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    })
}

/// The identity's cgroup and the launch view of its policy.
fn fetch(client: &Client, identity: &str) -> anyhow::Result<(PathBuf, LaunchPolicy)> {
    let (status, v) =
        client::block_on(client.call(Method::GET, &format!("/v1/identities/{identity}"), None))?;
    if status == StatusCode::NOT_FOUND {
        return Err(UnknownIdentity(client::api_error(status, &v).to_string()).into());
    }
    if !status.is_success() {
        return Err(client::api_error(status, &v));
    }
    let cgroup = PathBuf::from(v["cgroup"].as_str().context("daemon sent no cgroup path")?);
    if v["orphaned"].as_bool() == Some(true) {
        bail!("identity `{identity}` has no policy file any more");
    }

    // Only what the launch applies: with many network rules the whole view
    // is tens of MB to build and parse (an older daemon ignores the query
    // and sends everything, which still works).
    let (pstatus, policy) = client::block_on(client.call(
        Method::GET,
        &format!("/v1/policy/{identity}?sections=files,syscalls"),
        None,
    ))?;
    if !pstatus.is_success() {
        return Err(client::api_error(pstatus, &policy));
    }
    let policy: LaunchPolicy = serde_json::from_value(policy)
        .context("the daemon sent a policy view this corral cannot read (versions differ?)")?;
    Ok((cgroup, policy))
}

/// The agent's command: its user, then (in the child, between fork and
/// exec) no new privileges, the confinement, and last the cgroup.
fn command(
    args: &RunArgs,
    user: Option<&User>,
    observed: Option<libc::gid_t>,
    procs_fd: std::os::fd::RawFd,
    conf: Arc<Confinement>,
) -> Command {
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    if let Some(u) = user {
        cmd.env("HOME", &u.dir)
            .env("USER", &u.name)
            .env("LOGNAME", &u.name);
    }
    let ids = user.map(|u| {
        let mut groups = groups_of(u);
        groups.extend(observed);
        (u.uid.as_raw(), u.gid.as_raw(), groups)
    });
    // SAFETY: the closure only makes raw syscalls on pre-built data.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some((uid, gid, groups)) = &ids
                && (libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            conf.apply_in_child()?;
            // Joining the cgroup is the last step before exec: the
            // launcher's own set-up calls above are not the agent's (the
            // syscall observers would report them, or kill for them), and
            // the program's first instruction still runs tagged. The fd was
            // opened by the launcher, whose credentials the kernel checks.
            // "0" moves the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn forward_signals() -> anyhow::Result<()> {
    // The child runs in a session of its own (see sandbox::terminal): the
    // terminal's ^C reaches it through its pty, and signals sent to the
    // launcher are passed on. The launcher must outlive it to report its
    // status.
    // SAFETY: installing plain handlers before any child exists.
    unsafe {
        for s in [
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            signal(s, SigHandler::Handler(forward))?;
        }
    }
    Ok(())
}

/// Root inside an identity is not held by the cgroup programs: it can move
/// itself out of the identity's cgroup, after which nothing Corral enforces
/// applies. `corral run` says so on every start (tests/tests/bypass_net_cgroup.rs
/// shows each way out).
fn root_warning(identity: &str, policy: &LaunchPolicy) -> String {
    let held_by = if policy.files.policy.confined {
        policy.files.enforced_by
    } else {
        FilesLayer::None
    };
    let leave = match held_by {
        FilesLayer::Landlock => {
            "Its [files] rules (Landlock) stop writes to cgroup.procs, but not \
             clone3(CLONE_INTO_CGROUP), which starts a child in another cgroup"
        }
        FilesLayer::Lsm => {
            "It stays in its identity only while its [files] rules keep it away from \
             the cgroup file system (clone3(CLONE_INTO_CGROUP) needs only a directory fd)"
        }
        _ => {
            "It has no file confinement: writing its pid into another cgroup's \
             cgroup.procs, or clone3(CLONE_INTO_CGROUP), takes it out of its identity"
        }
    };
    format!(
        "corral: WARNING: `{identity}` runs as ROOT. {leave}; once out, none of the \
         identity's rules apply. Root can also detach Corral's programs (bpf()) and send \
         through AF_PACKET sockets, which network rules never see. Start agents with \
         --user USER."
    )
}

/// The daemon's audit observer names each refused process only if the
/// agent was forked by a member of its group (`daemon::llaudit`): the
/// launcher joins it before the fork, and the agent keeps it. The group
/// owns no file, so membership grants nothing.
fn join_observed_group(policy: &LaunchPolicy) -> Option<libc::gid_t> {
    let want = policy.files.audit.as_ref()?.gid?;
    let gid = nix::unistd::Gid::from_raw(want);
    let mut groups = nix::unistd::getgroups().unwrap_or_default();
    if !groups.contains(&gid) {
        groups.push(gid);
    }
    match nix::unistd::setgroups(&groups) {
        Ok(()) => Some(want),
        Err(e) => {
            eprintln!(
                "corral: files: denials will carry the agent's first pid, not each process's: \
                 joining group {want} needs root ({e})"
            );
            None
        }
    }
}

fn resolve_user(spec: &str) -> anyhow::Result<User> {
    let u = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(nix::unistd::Uid::from_raw(uid))?,
        Err(_) => User::from_name(spec)?,
    };
    u.with_context(|| format!("no such user `{spec}`"))
}

fn groups_of(u: &User) -> Vec<libc::gid_t> {
    let name = CString::new(u.name.as_bytes()).unwrap_or_default();
    nix::unistd::getgrouplist(&name, u.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![u.gid.as_raw()])
}
