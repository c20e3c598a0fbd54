//! What changes a tagged task's view of the file system. Opens and path
//! changes are judged by host path (`files::open::host_path`, the path
//! walk up to the mount namespace's root), so chroot stays allowed; what
//! would move that root or hand an unprivileged agent mounts is refused.

use agent_common::file::{IDENTITY_FLAG_FILES, PROTECT_PIVOT_ROOT, PROTECT_USERNS};
use aya_ebpf::programs::LsmContext;

use super::{EPERM, protect::emit};
use crate::identity;

/// `lsm/sb_pivotroot(old_path, new_path)`: pivot_root makes another mount
/// the namespace's root, so the walk would end there (every identity:
/// Corral's protected paths are judged by host path too).
pub fn sb_pivotroot(_ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    emit(&s, PROTECT_PIVOT_ROOT, 0, 0, 0, false);
    -EPERM
}

/// `lsm/userns_create(cred)`: a user namespace gives an unprivileged
/// process CAP_SYS_ADMIN over new mount namespaces — chroot, cloned and
/// new mount trees (`open_tree`, `fsmount`). Refused to identities with
/// `[files]`, as a class; the opens such views allow are also refused
/// (no host path), this makes the refusal early and visible.
pub fn userns_create(_ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    if s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
    }
    emit(&s, PROTECT_USERNS, 0, 0, 0, false);
    -EPERM
}
