//! Where pins live under the pin dir, and the one way a pinned link is
//! replaced. A leaf: the loader, the feature modules that attach their own
//! programs (LSM, syscall observers, the hand-assembled unix programs) and
//! the enforcer all pin through here, and none of them through another.
//!
//! Enforcement must not have a gap across a daemon restart: a new link is
//! pinned beside the old one and only then takes its name.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use agent_common::maps;
use aya::programs::links::FdLink;
use tracing::info;

#[derive(Debug, thiserror::Error)]
#[error("link {}: {message}", path.display())]
pub struct PinError {
    pub path: PathBuf,
    pub message: String,
}

pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub fn links_dir(pin_dir: &Path, cgroup_id: u64) -> PathBuf {
    pin_dir.join("links").join(cgroup_id.to_string())
}

/// Whether a previous daemon left pinned maps here.
pub fn has_pins(pin_dir: &Path) -> bool {
    maps_dir(pin_dir).join(maps::IDENTITIES).exists()
}

/// Pins `link` as `links_dir/name`, retiring a link a previous daemon pinned
/// there only once the new one runs (no gap).
pub fn pin_replacing(link: FdLink, links_dir: &Path, name: &str) -> Result<(), PinError> {
    replace_pin(links_dir, name, |staging| {
        link.pin(staging).map(drop).map_err(|e| {
            format!(
                "pinning: {}",
                std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
            )
        })
    })
}

/// The one way a link pin is replaced, whoever made the link (aya, or the
/// hand-assembled unix programs): `pin_at` pins the new link beside the old
/// one, and only once it runs is the old pin removed (its last reference:
/// the old link detaches) and the new one renamed into its place. Any
/// other order leaves a moment with no program attached.
pub fn replace_pin(
    links_dir: &Path,
    name: &str,
    pin_at: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), PinError> {
    let pin = links_dir.join(name);
    // bpffs refuses names with a dot.
    let staging = links_dir.join(format!("{name}_new"));
    let _ = fs::remove_file(&staging);
    pin_at(&staging).map_err(|message| PinError {
        path: staging.clone(),
        message,
    })?;
    if pin.exists() {
        let _ = fs::remove_file(&pin);
        info!(link = %pin.display(), "replaced link left by a previous daemon");
    }
    rename(&staging, &pin)
}

fn rename(from: &Path, to: &Path) -> Result<(), PinError> {
    let f = CString::new(from.as_os_str().as_bytes()).expect("no NUL in path");
    let t = CString::new(to.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::rename(f.as_ptr(), t.as_ptr()) };
    if rc != 0 {
        return Err(PinError {
            path: to.to_path_buf(),
            message: io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Ids of cgroups that have pinned links, i.e. where programs are attached.
pub fn attached_cgroups(pin_dir: &Path) -> Vec<u64> {
    fs::read_dir(pin_dir.join("links"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
