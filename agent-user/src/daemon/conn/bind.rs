//! The API socket files, created with their final owner and mode: a socket
//! bound in place and chmod'ed afterwards has a window in which anyone the
//! umask lets through can connect and keep the connection.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;

/// Binds `path` with `mode` (and group `gid`), replacing a stale socket
/// file but never a live daemon's. The socket is bound inside a private
/// (0700) directory next to `path`, given its mode there, and renamed into
/// place, so it is reachable only once its mode is final.
pub fn bind(path: &Path, mode: u32, gid: Option<nix::unistd::Gid>) -> anyhow::Result<UnixListener> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another corral daemon is already serving {}",
            path.display()
        );
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let private = dir.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let r = bind_in(&private, path, mode, gid);
    let _ = std::fs::remove_dir_all(&private);
    r
}

fn bind_in(
    private: &Path,
    path: &Path,
    mode: u32,
    gid: Option<nix::unistd::Gid>,
) -> anyhow::Result<UnixListener> {
    let tmp = private.join("sock");
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if let Some(g) = gid {
        nix::unistd::chown(&tmp, None, Some(g))?;
    }
    // Atomically replaces a stale socket file left by a daemon that died.
    std::fs::rename(&tmp, path).with_context(|| format!("placing {}", path.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    #[tokio::test]
    async fn binds_with_the_final_mode_and_replaces_a_stale_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("api.sock");
        std::fs::write(&p, "stale").unwrap();
        let l = bind(&p, 0o660, None).unwrap();
        let md = std::fs::metadata(&p).unwrap();
        assert!(md.file_type().is_socket());
        assert_eq!(md.mode() & 0o777, 0o660);
        let _c = std::os::unix::net::UnixStream::connect(&p).unwrap();
        assert!(l.accept().await.is_ok());
        // Only the socket is left beside it.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let again = bind(&p, 0o600, None);
        assert!(
            again.unwrap_err().to_string().contains("already serving"),
            "a live socket is never replaced"
        );
    }
}
