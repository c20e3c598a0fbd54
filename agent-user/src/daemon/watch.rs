//! Watches the policy directory and funnels every change into the one
//! reload path (`Reloader::reload`, trigger `watch`), like SIGHUP and
//! `corral policy apply` do.
//!
//! What it handles, and how:
//! - editors that write a temp file and rename it over the policy, vim's
//!   backup dance (rename to `x.toml~`, write `x.toml`, delete the backup),
//!   deletes: events on the directory itself (not on files, whose inodes
//!   come and go). A burst of events ends after `debounce` without any
//!   event, and then reloads once; a burst never delays a reload by more
//!   than [`MAX_BURST`].
//! - kubectl/ConfigMap mounts (`x.toml -> ..data/x.toml`, `..data` a
//!   symlink replaced atomically): `..`-names are policy events too.
//! - the policy dir path itself being a symlink that is swapped, or the dir
//!   being deleted and recreated: the parent is watched for the dir's name,
//!   and before each reload the path is resolved again and the watch moved
//!   when it now leads to another directory.
//!
//! Events that cannot change a policy (swap files, `~` backups, hidden temp
//! files) do not start a burst, but extend a running one: an editor's save
//! is one burst.

use std::{
    ffi::{OsStr, OsString},
    os::{
        fd::{AsFd as _, AsRawFd, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::reload::Reloader;

/// A stream of events never holds a reload back longer than this.
pub const MAX_BURST: Duration = Duration::from_secs(2);
/// While the directory is missing, how often to look for it again (the
/// parent watch usually notices sooner).
const MISSING_POLL: Duration = Duration::from_secs(2);

struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

pub struct Watcher {
    fd: AsyncFd<Fd>,
    /// As configured (may be a symlink).
    dir: PathBuf,
    /// The watch on the directory, and the (dev, inode) it watches.
    dir_wd: Option<(WatchDescriptor, (u64, u64))>,
    /// The parent directory's watch and the policy dir's name in it.
    parent: Option<(WatchDescriptor, OsString)>,
    debounce: Duration,
}

fn dir_mask() -> F {
    F::IN_CREATE
        | F::IN_DELETE
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_CLOSE_WRITE
        | F::IN_MODIFY
        | F::IN_ATTRIB
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR
}

fn parent_mask() -> F {
    F::IN_CREATE | F::IN_DELETE | F::IN_MOVED_FROM | F::IN_MOVED_TO | F::IN_ONLYDIR
}

/// Can an event on this name (in the policy dir) change the policy?
fn policy_name(name: &OsStr) -> bool {
    let n = name.to_string_lossy();
    // `..data`, `..2024_01_01_00_00_00.123`: kubectl's atomic writer.
    n.starts_with("..") || (!n.starts_with('.') && n.ends_with(".toml"))
}

impl Watcher {
    /// Sets the watches up now, so that nothing changing from here on is
    /// missed; [`Watcher::run`] reacts.
    pub fn new(dir: &Path, debounce: Duration) -> nix::Result<Watcher> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // SAFETY: `Fd` owns the inotify descriptor, which stays open and the
        // same for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(ino), Interest::READABLE) }.map_err(
            |e| {
                let (_, e) = e.into_parts();
                nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))
            },
        )?;
        let mut w = Watcher {
            fd,
            dir: dir.to_path_buf(),
            dir_wd: None,
            parent: None,
            debounce,
        };
        if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            match w.ino().add_watch(parent, parent_mask()) {
                Ok(wd) => w.parent = Some((wd, name.to_os_string())),
                Err(e) => warn!(
                    parent = %parent.display(), "cannot watch the policy dir's parent ({e}): \
                     replacing the policy dir itself will not be noticed"
                ),
            }
        }
        w.rewatch();
        if w.dir_wd.is_none() {
            return Err(nix::errno::Errno::ENOENT);
        }
        Ok(w)
    }

    fn ino(&self) -> &Inotify {
        &self.fd.get_ref().0
    }

    /// Points the directory watch at whatever `dir` leads to now. True when
    /// it moved (or the directory appeared or vanished).
    fn rewatch(&mut self) -> bool {
        let now = std::fs::metadata(&self.dir)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| (m.dev(), m.ino()));
        if self.dir_wd.as_ref().map(|(_, id)| *id) == now && now.is_some() {
            return false;
        }
        if let Some((wd, _)) = self.dir_wd.take() {
            // Already gone when the directory was deleted.
            let _ = self.ino().rm_watch(wd);
        }
        if now.is_some() {
            match self.ino().add_watch(&self.dir, dir_mask()) {
                Ok(wd) => {
                    // Re-read: the path may have moved between stat and watch.
                    let id = std::fs::metadata(&self.dir).map(|m| (m.dev(), m.ino()));
                    self.dir_wd = Some((wd, id.map_or((0, 0), |x| x)));
                    info!(dir = %self.dir.display(), "watching the policy dir");
                }
                Err(e) => warn!(dir = %self.dir.display(), "cannot watch the policy dir: {e}"),
            }
        } else {
            warn!(dir = %self.dir.display(), "the policy dir is gone; waiting for it to come back");
        }
        true
    }

    /// Waits for the next batch of events.
    async fn read(&self) -> Vec<InotifyEvent> {
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    warn!("inotify: {e}");
                    tokio::time::sleep(MISSING_POLL).await;
                    continue;
                }
            };
            match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(evs)) => return evs,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => {
                    warn!("reading inotify events: {e}");
                    tokio::time::sleep(MISSING_POLL).await;
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Does this batch hold a change that can affect the policy?
    fn relevant(&mut self, evs: &[InotifyEvent]) -> bool {
        let mut any = false;
        for e in evs {
            debug!(mask = ?e.mask, name = ?e.name, "policy dir event");
            if e.mask.contains(F::IN_Q_OVERFLOW) {
                any = true;
                continue;
            }
            if let Some((pwd, name)) = &self.parent
                && e.wd == *pwd
            {
                any |= e.name.as_deref() == Some(name.as_os_str());
                continue;
            }
            if self.dir_wd.as_ref().is_some_and(|(wd, _)| *wd == e.wd) {
                if e.mask.contains(F::IN_IGNORED) {
                    // The kernel dropped the watch (directory deleted).
                    self.dir_wd = None;
                }
                any |= match &e.name {
                    None => true,
                    Some(n) => policy_name(n),
                };
            }
        }
        any
    }

    /// Reacts to changes until the daemon stops.
    pub async fn run(mut self, reloader: Arc<Reloader>) {
        loop {
            // Wait for the start of a burst.
            let missing = self.dir_wd.is_none();
            let evs = if missing {
                tokio::select! {
                    evs = self.read() => evs,
                    _ = tokio::time::sleep(MISSING_POLL) => {
                        if self.rewatch() && self.dir_wd.is_some() {
                            let _ = reloader.reload(None, "watch").await;
                        }
                        continue;
                    }
                }
            } else {
                self.read().await
            };
            if !self.relevant(&evs) {
                continue;
            }
            // Then until it is quiet for `debounce` (or MAX_BURST passed).
            let start = Instant::now();
            let mut quiet_at = start + self.debounce;
            loop {
                tokio::select! {
                    evs = self.read() => {
                        self.relevant(&evs);
                        quiet_at = Instant::now() + self.debounce;
                    }
                    _ = tokio::time::sleep_until(quiet_at.min(start + MAX_BURST)) => break,
                }
            }
            self.rewatch();
            // Errors are logged ("the previous policy stays in force") and
            // land in `corral status`.
            let _ = reloader.reload(None, "watch").await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_names_are_policy_events() {
        for yes in ["web.toml", "..data", "..2024_01_01_00_00_00.1", "a.b.toml"] {
            assert!(policy_name(OsStr::new(yes)), "{yes}");
        }
        for no in [
            ".web.toml.swp",
            "web.toml~",
            ".web.tmp",
            "4913",
            "README",
            ".x.toml",
        ] {
            assert!(!policy_name(OsStr::new(no)), "{no}");
        }
    }

    /// Temp file + rename, a vim-style backup dance and a kubectl-style
    /// `..data` swap each make one burst that the watcher calls relevant.
    #[tokio::test]
    async fn editor_saves_are_relevant_bursts() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("web.toml"), "a").unwrap();
        let mut w = Watcher::new(d, Duration::from_millis(50)).unwrap();

        // Only a hidden temp file: nothing a reload would see.
        std::fs::write(d.join(".web.tmp"), "b").unwrap();
        let evs = w.read().await;
        assert!(!w.relevant(&evs), "{evs:?}");

        std::fs::rename(d.join(".web.tmp"), d.join("web.toml")).unwrap();
        let evs = drain(&w).await;
        assert!(w.relevant(&evs), "{evs:?}");

        std::fs::rename(d.join("web.toml"), d.join("web.toml~")).unwrap();
        std::fs::write(d.join("web.toml"), "c").unwrap();
        std::fs::remove_file(d.join("web.toml~")).unwrap();
        let evs = drain(&w).await;
        assert!(w.relevant(&evs), "{evs:?}");

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let evs = drain(&w).await;
        assert!(w.relevant(&evs), "{evs:?}");
    }

    #[tokio::test]
    async fn a_replaced_dir_is_watched_again() {
        let base = tempfile::tempdir().unwrap();
        let (a, b, link) = (
            base.path().join("a"),
            base.path().join("b"),
            base.path().join("p"),
        );
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let mut w = Watcher::new(&link, Duration::from_millis(50)).unwrap();
        // Swap the symlink atomically, as a deploy tool would.
        std::os::unix::fs::symlink(&b, base.path().join("p.new")).unwrap();
        std::fs::rename(base.path().join("p.new"), &link).unwrap();
        let evs = drain(&w).await;
        assert!(w.relevant(&evs), "the parent watch sees the swap: {evs:?}");
        assert!(w.rewatch(), "the watch moves to the new target");
        std::fs::write(b.join("x.toml"), "x").unwrap();
        let evs = drain(&w).await;
        assert!(w.relevant(&evs), "{evs:?}");
    }

    async fn drain(w: &Watcher) -> Vec<InotifyEvent> {
        let mut all = w.read().await;
        while let Ok(more) = tokio::time::timeout(Duration::from_millis(50), w.read()).await {
            all.extend(more);
        }
        all
    }
}
