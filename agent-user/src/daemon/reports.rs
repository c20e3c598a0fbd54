//! The report socket: `corral run` launchers send what they refuse or audit
//! (`sandbox::report`), one `LauncherReport` datagram each, and the events
//! join the kernel's in the event pipeline unchanged (same record, same
//! decoding and enrichment).
//!
//! Anyone may send to the socket (launchers run as the operator's user), so
//! a report is accepted only from a registered launcher (`SC_LAUNCHERS`:
//! its tgid, with the start time it registered, from the kernel's
//! `SCM_CREDENTIALS`) and only about its own identity.

use std::{
    io::IoSliceMut,
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::{Path, PathBuf},
};

use agent_common::{
    maps,
    syscall::{LAUNCHER_REPORT_MAGIC, LauncherEntry, LauncherReport},
};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::PassCred};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// What the event pipeline gets from a launcher.
pub enum Report {
    /// A `SyscallEvent` record, as the ring buffer would hold it.
    Event(Vec<u8>),
    /// Events a source (`launcher`, `landlock-audit`) could not deliver.
    Lost(u64, &'static str),
}

/// The report socket, beside the daemon's state.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("report.sock")
}

/// Binds the socket (mode 0666: launchers run as any user; reports are
/// authenticated by sender, see above) and serves it on a thread of its own.
pub fn start(state_dir: &Path, pin_dir: &Path, tx: mpsc::Sender<Report>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(state_dir);
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    setsockopt(&sock, PassCred, &true).map_err(std::io::Error::from)?;
    let launchers = super::pins::maps_dir(pin_dir).join(maps::SC_LAUNCHERS);
    std::thread::Builder::new()
        .name("launcher-reports".into())
        .spawn(move || serve(&sock, &launchers, &tx))?;
    Ok(())
}

fn serve(sock: &UnixDatagram, launchers: &Path, tx: &mpsc::Sender<Report>) {
    let mut map: Option<BpfHashMap<MapData, u32, LauncherEntry>> = None;
    let mut buf = [0u8; size_of::<LauncherReport>() + 1];
    loop {
        let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (n, pid) = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(m) => {
                let pid = m.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(u) => Some(u.pid() as u32),
                        _ => None,
                    })
                });
                (m.bytes, pid)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                warn!("launcher report socket: {e}; launcher reports stop");
                return;
            }
        };
        if n != size_of::<LauncherReport>() {
            debug!(n, "launcher report of the wrong size, ignored");
            continue;
        }
        // SAFETY: exactly one plain-data record's bytes.
        let r: LauncherReport = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        if r.magic != LAUNCHER_REPORT_MAGIC {
            continue;
        }
        if map.is_none() {
            map = MapData::from_pin(launchers)
                .ok()
                .and_then(|d| BpfHashMap::try_from(Map::HashMap(d)).ok());
        }
        let Some(pid) = pid else { continue };
        if !vouched(map.as_ref(), pid, r.event.hdr.identity) {
            debug!(pid, "launcher report from an unregistered sender, ignored");
            continue;
        }
        if r.lost > 0 {
            let _ = tx.blocking_send(Report::Lost(r.lost.into(), "launcher"));
        }
        let ev = &r.event;
        // SAFETY: `SyscallEvent` is repr(C) plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (ev as *const agent_common::syscall::SyscallEvent).cast::<u8>(),
                size_of_val(ev),
            )
        };
        if tx.blocking_send(Report::Event(bytes.to_vec())).is_err() {
            return;
        }
    }
}

/// `pid` (the kernel's word for the sender) is a launcher registered for
/// `identity`: alive with the registered start time, or already gone. A
/// launcher exits right after its agent, often before this thread reads
/// its last reports, and those are the ones that matter; a process that
/// took a dead launcher's pid is alive with another start time, so it
/// could only pass by dying between its send and this read, and would at
/// most add a false event (it changes no decision).
fn vouched(map: Option<&BpfHashMap<MapData, u32, LauncherEntry>>, pid: u32, identity: u32) -> bool {
    let Some(e) = map.and_then(|m| m.get(&pid, 0).ok()) else {
        return false;
    };
    e.identity == identity
        && crate::sandbox::launcher_mark::start_ticks(pid).is_none_or(|t| t == e.start_ticks)
}
