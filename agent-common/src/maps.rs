//! Names of every map and program in the Corral eBPF object.
//!
//! Both halves use these constants, so a rename cannot silently break the
//! user side's `map_mut(..)`/`program_mut(..)` lookups.

/// `HashMap<u64 cgroup id, u32 identity id>`: which cgroups are agents. The
/// kernel walks a task's cgroup ancestors and the deepest tagged one wins.
pub const CGROUP_IDENTITY: &str = "CGROUP_IDENTITY";
/// `HashMap<u32 identity id, IdentityState>`: mode and active ruleset.
pub const IDENTITIES: &str = "IDENTITIES";
/// `LpmTrie<Net4Key, NetRuleList>`: IPv4 rules, keyed by ruleset + class + address.
pub const NET4_RULES: &str = "NET4_RULES";
/// `LpmTrie<Net6Key, NetRuleList>`: IPv6 rules, same layout with 16-byte addresses.
pub const NET6_RULES: &str = "NET6_RULES";
/// Ring buffer of every kernel event (`event::*`), shared by all programs.
pub const EVENTS: &str = "EVENTS";
/// `PerCpuArray<u64>[1]`: ring buffer reservations that failed (events lost).
pub const EVENT_DROPS: &str = "EVENT_DROPS";
/// `PerCpuArray<IdentityStats>[MAX_IDENTITIES]`: decisions per identity.
pub const IDENTITY_STATS: &str = "IDENTITY_STATS";
/// `HashMap<unix::UnixKey, unix::UnixRuleValue>`: AF_UNIX address rules. Not
/// in the aya object: the daemon creates and pins it beside the others.
pub const UNIX_RULES: &str = "UNIX_RULES";
/// `LpmTrie<file::FileKey, file::FileRuleValue>`: `[files]` rules, keyed by
/// ruleset + path bytes (BPF LSM `file_open`, `path_link`, `path_rename`).
pub const FILE_RULES: &str = "FILE_RULES";
/// `PerCpuArray<FileScratch>[1]`: the LSM programs' path buffer (not pinned).
pub const FILE_SCRATCH: &str = "FILE_SCRATCH";

/// `HashMap<u32 identity id, syscall::SyscallPolicy>`: each identity's
/// syscall allowlist. Pinned: `corral run` launchers read it directly
/// (`BPF_OBJ_GET` on `<pin_dir>/maps/SYSCALL_POLICY`) to answer seccomp
/// notifications, with or without a daemon running.
pub const SYSCALL_POLICY: &str = "SYSCALL_POLICY";
/// `HashMap<u32 tgid, u32 identity id>`: `corral run` launchers that
/// installed Corral's seccomp filter in their child. Each registers itself
/// before it starts the child; the entry outlives the launcher (its last
/// reports still name it) until the daemon removes dead launchers' entries. A tagged process is
/// bound by Corral's filter only if one of its parents is registered: a
/// process that installs a filter of its own is still "assigned" for
/// `assigned = "kill"`.
pub const SC_LAUNCHERS: &str = "SC_LAUNCHERS";
/// `Array<u64>[1]`: generation of the cgroup tags, bumped by the daemon
/// after every change to `CGROUP_IDENTITY`; `SYSCALL_CG_CACHE` entries of
/// another generation are stale.
pub const SYSCALL_TAG_GEN: &str = "SYSCALL_TAG_GEN";
/// Private maps of the syscall observers and the Landlock-denial observer
/// (never pinned; named here so one list covers the whole object).
pub const SC_CG_CACHE: &str = "SC_CG_CACHE";
pub const SC_LAST_CG: &str = "SC_LAST_CG";
pub const SC_PENDING: &str = "SC_PENDING";
pub const SC_AUDITED: &str = "SC_AUDITED";
pub const FILEOBS_PENDING: &str = "FILEOBS_PENDING";
pub const FILEOBS_CGROUPS: &str = "FILEOBS_CGROUPS";
/// Every map of the eBPF object (`UNIX_RULES` is not one: the daemon makes
/// it). agent-ebpf's `#[map(name = ..)]` takes only literals, so a unit test
/// of agent-user checks this list against the built object instead.
pub const OBJECT_MAPS: [&str; 18] = [
    CGROUP_IDENTITY,
    IDENTITIES,
    NET4_RULES,
    NET6_RULES,
    EVENTS,
    EVENT_DROPS,
    IDENTITY_STATS,
    FILE_RULES,
    FILE_SCRATCH,
    SYSCALL_POLICY,
    SC_LAUNCHERS,
    SYSCALL_TAG_GEN,
    SC_CG_CACHE,
    SC_LAST_CG,
    SC_PENDING,
    SC_AUDITED,
    FILEOBS_PENDING,
    FILEOBS_CGROUPS,
];
/// Program names (the Rust function names in agent-ebpf).
pub const PROG_CONNECT4: &str = "corral_connect4";
pub const PROG_CONNECT6: &str = "corral_connect6";
pub const PROG_SENDMSG4: &str = "corral_sendmsg4";
pub const PROG_SENDMSG6: &str = "corral_sendmsg6";
pub const PROG_BIND4: &str = "corral_bind4";
pub const PROG_BIND6: &str = "corral_bind6";

/// `cgroup/sock_create`: refuses inet sockets no rule class judges (SCTP,
/// UDP-Lite, raw, ping, ...). Attached beside the sock_addr programs.
pub const PROG_SOCK_CREATE: &str = "corral_sock_create";

/// Every cgroup sock_addr program, for loaders that attach them as a set.
pub const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_BIND4,
    PROG_BIND6,
];

/// BPF LSM programs: (program name, LSM hook). They load only where the
/// kernel runs BPF LSM; the daemon treats them as optional and says so.
pub const PROG_FILE_OPEN: &str = "corral_file_open";
pub const PROG_PATH_LINK: &str = "corral_path_link";
pub const PROG_PATH_RENAME: &str = "corral_path_rename";
pub const PROG_SB_MOUNT: &str = "corral_sb_mount";
pub const PROG_MOVE_MOUNT: &str = "corral_move_mount";
pub const PROG_LSM_BPF: &str = "corral_lsm_bpf";
pub const PROG_TASK_KILL: &str = "corral_task_kill";
pub const PROG_PTRACE: &str = "corral_ptrace_access_check";
pub const PROG_PATH_MKNOD: &str = "corral_path_mknod";
pub const PROG_PATH_MKDIR: &str = "corral_path_mkdir";
pub const PROG_PATH_SYMLINK: &str = "corral_path_symlink";
pub const PROG_PATH_UNLINK: &str = "corral_path_unlink";
pub const PROG_PATH_RMDIR: &str = "corral_path_rmdir";
pub const PROG_PATH_TRUNCATE: &str = "corral_path_truncate";
pub const PROG_PATH_CHMOD: &str = "corral_path_chmod";
/// Signals through a file's owner (SIGIO/SIGURG), and setting that owner.
pub const PROG_FILE_SIGIO: &str = "corral_file_send_sigiotask";
pub const PROG_FILE_FCNTL: &str = "corral_file_fcntl";
pub const PROG_FILE_IOCTL: &str = "corral_file_ioctl";
/// What changes a task's view of the file system.
pub const PROG_SB_PIVOTROOT: &str = "corral_sb_pivotroot";
pub const PROG_USERNS_CREATE: &str = "corral_userns_create";
pub const PROG_PATH_CHOWN: &str = "corral_path_chown";
pub const PROG_SB_UMOUNT: &str = "corral_sb_umount";
pub const PROG_TASK_ALLOC: &str = "corral_task_alloc";
/// Socket families no cgroup program judges (see agent-ebpf `lsm::sockets`).
pub const PROG_SOCKET_CREATE: &str = "corral_socket_create";
pub const LSM_PROGRAMS: [(&str, &str); 24] = [
    (PROG_FILE_OPEN, "file_open"),
    (PROG_PATH_LINK, "path_link"),
    (PROG_PATH_RENAME, "path_rename"),
    (PROG_PATH_MKNOD, "path_mknod"),
    (PROG_PATH_MKDIR, "path_mkdir"),
    (PROG_PATH_SYMLINK, "path_symlink"),
    (PROG_PATH_UNLINK, "path_unlink"),
    (PROG_PATH_RMDIR, "path_rmdir"),
    (PROG_PATH_TRUNCATE, "path_truncate"),
    (PROG_PATH_CHMOD, "path_chmod"),
    (PROG_PATH_CHOWN, "path_chown"),
    (PROG_SB_MOUNT, "sb_mount"),
    (PROG_MOVE_MOUNT, "move_mount"),
    (PROG_SB_UMOUNT, "sb_umount"),
    (PROG_TASK_ALLOC, "task_alloc"),
    (PROG_LSM_BPF, "bpf"),
    (PROG_TASK_KILL, "task_kill"),
    (PROG_PTRACE, "ptrace_access_check"),
    (PROG_FILE_SIGIO, "file_send_sigiotask"),
    (PROG_FILE_FCNTL, "file_fcntl"),
    (PROG_FILE_IOCTL, "file_ioctl"),
    (PROG_SB_PIVOTROOT, "sb_pivotroot"),
    (PROG_USERNS_CREATE, "userns_create"),
    (PROG_SOCKET_CREATE, "socket_create"),
];

/// Syscall observers (`tp_btf`): every syscall of every task passes them,
/// untagged tasks after one cache lookup. Their links are pinned under
/// `<pin_dir>/links/syscalls/`.
pub const PROG_SYS_ENTER: &str = "corral_sys_enter";
pub const PROG_SYS_EXIT: &str = "corral_sys_exit";
pub const SYSCALL_PROGRAMS: [(&str, &str); 2] =
    [(PROG_SYS_ENTER, "sys_enter"), (PROG_SYS_EXIT, "sys_exit")];

/// The Landlock-denial observer (syscall tracepoints): reports
/// failed opens/execs of tagged processes where BPF LSM is unavailable. Its
/// maps (`FILEOBS_PENDING`, `FILEOBS_CGROUPS`) are private and not pinned.
pub const PROG_FILEOBS_ENTER: &str = "corral_fileobs_enter";
pub const PROG_FILEOBS_EXIT: &str = "corral_fileobs_exit";
/// (program, tracepoint) pairs of the generic fallback (tp_btf), in attach
/// order.
pub const FILEOBS_PROGRAMS: [(&str, &str); 2] = [
    (PROG_FILEOBS_ENTER, "sys_enter"),
    (PROG_FILEOBS_EXIT, "sys_exit"),
];
/// (program, `syscalls:` tracepoint) pairs of the preferred form: one per
/// observed syscall, so no other syscall runs a program.
pub const FILEOBS_TP_PROGRAMS: [(&str, &str); 12] = [
    ("corral_fo_enter_open", "sys_enter_open"),
    ("corral_fo_exit_open", "sys_exit_open"),
    ("corral_fo_enter_openat", "sys_enter_openat"),
    ("corral_fo_exit_openat", "sys_exit_openat"),
    ("corral_fo_enter_openat2", "sys_enter_openat2"),
    ("corral_fo_exit_openat2", "sys_exit_openat2"),
    ("corral_fo_enter_creat", "sys_enter_creat"),
    ("corral_fo_exit_creat", "sys_exit_creat"),
    ("corral_fo_enter_execve", "sys_enter_execve"),
    ("corral_fo_exit_execve", "sys_exit_execve"),
    ("corral_fo_enter_execveat", "sys_enter_execveat"),
    ("corral_fo_exit_execveat", "sys_exit_execveat"),
];

/// Global overridden at load time with the daemon's tgid (never judged).
pub const GLOBAL_DAEMON_TGID: &str = "CORRAL_DAEMON_TGID";
/// Global overridden at load time with `file::KernelOffsets` from BTF.
pub const GLOBAL_KOFFSETS: &str = "CORRAL_KOFFSETS";
/// Global overridden at load time with `struct file` → `f_path` (a separate
/// scalar: `bpf_d_path` needs it as a verifier-known constant).
pub const GLOBAL_F_PATH_OFF: &str = "CORRAL_F_PATH_OFF";
/// Global overridden at load time with `syscall::TaskOffsets` from BTF
/// (`seccomp_mode` 0: unknown, and then no process is ever killed).
pub const GLOBAL_TASK_OFFSETS: &str = "CORRAL_TASK_OFFSETS";
