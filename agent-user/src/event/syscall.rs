//! `syscall` events in their JSON form.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyscallInfo {
    /// x86_64 syscall number.
    pub nr: u32,
    /// Its name (`#N` for a number not in Corral's table).
    pub name: String,
    /// `kernel` (the seccomp filter itself), `notify` (the launcher answered
    /// the notification, or nobody did: closed), `kill` (`assigned =
    /// "kill"`) or `observed` (a process without the filter; audit).
    pub layer: String,
    /// The errno the caller got (`EPERM`, `ENOSYS`); absent when the call ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// What the arguments say, when they are values worth showing
    /// (`socket`: `AF_PACKET SOCK_RAW`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `SyscallEvent` to its JSON form.
pub fn syscall_info(e: &agent_common::syscall::SyscallEvent) -> SyscallInfo {
    use agent_common::syscall::{self as sc, Layer};
    // Numbers of another ABI are not x86_64 names (`int 0x80` getpid is 20,
    // x86_64 writev).
    let name = if e.nr & sc::NR_IA32_FLAG != 0 {
        format!("ia32:#{}", e.nr & !sc::NR_IA32_FLAG)
    } else if e.nr & sc::X32_SYSCALL_BIT != 0 {
        format!("x32:#{}", e.nr & !sc::X32_SYSCALL_BIT)
    } else {
        crate::policy::syscalls::name_of(e.nr).map_or_else(|| format!("#{}", e.nr), str::to_string)
    };
    let layer = match Layer::try_from(e.layer) {
        Ok(Layer::Kernel) => "kernel",
        Ok(Layer::Notify) => "notify",
        Ok(Layer::Kill) => "kill",
        Ok(Layer::Observed) => "observed",
        Err(_) => "unknown",
    };
    let errno = match e.errno {
        0 => None,
        1 => Some("EPERM".to_string()),
        38 => Some("ENOSYS".to_string()),
        n => Some(format!("errno {n}")),
    };
    let terminal = (e.nr == sc::NR_IOCTL).then(|| match e.args[1] as u32 {
        sc::TIOCSTI => "TIOCSTI (terminal input injection)".to_string(),
        sc::TIOCLINUX => "TIOCLINUX (terminal input injection)".to_string(),
        c => format!("cmd {c:#x}"),
    });
    let detail = (e.nr == sc::NR_SOCKET)
        .then(|| {
            let family = match e.args[0] as u32 {
                sc::AF_UNIX => "AF_UNIX".to_string(),
                sc::AF_INET => "AF_INET".to_string(),
                sc::AF_INET6 => "AF_INET6".to_string(),
                sc::AF_NETLINK => format!("AF_NETLINK protocol {}", e.args[2] as u32),
                sc::AF_PACKET => "AF_PACKET".to_string(),
                sc::AF_VSOCK => "AF_VSOCK".to_string(),
                f => format!("family {f}"),
            };
            let ty = match e.args[1] as u32 & sc::SOCK_TYPE_MASK {
                1 => "SOCK_STREAM".to_string(),
                2 => "SOCK_DGRAM".to_string(),
                3 => "SOCK_RAW".to_string(),
                5 => "SOCK_SEQPACKET".to_string(),
                10 => "SOCK_PACKET".to_string(),
                t => format!("type {t}"),
            };
            let needs =
                match sc::socket_pseudo(e.args[0] as u32, e.args[1] as u32, e.args[2] as u32) {
                    0 => String::new(),
                    p => format!(
                        " (needs `{}`)",
                        crate::policy::syscalls::name_of(p).unwrap_or("?")
                    ),
                };
            format!("{family} {ty}{needs}")
        })
        .or(terminal);
    SyscallInfo {
        nr: e.nr,
        name,
        layer: layer.to_string(),
        errno,
        detail,
    }
}
