//! Listening: on an ephemeral port (bind to port 0, or listen() with no
//! bind), accepting whoever connects.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    time::{Duration, Instant},
};

use super::*;
use crate::emit;

fn local_port(fd: RawFd) -> u16 {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss is valid for len bytes.
    unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    // SAFETY: sin_port and sin6_port sit at the same offset.
    let sin = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
    u16::from_be(sin.sin_port)
}

fn listen_accept(a: &str) -> io::Result<()> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip(a), 0))?;
    let port = l.local_addr()?.port();
    println!(r#"{{"op":"bp-listening","port":{port}}}"#);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    l.set_nonblocking(true)?;
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match l.accept() {
            Ok((mut c, peer)) => {
                c.set_nonblocking(false)?;
                c.write_all(b"corral-bp-inbound")?;
                println!(r#"{{"op":"bp-accepted","peer":"{peer}"}}"#);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-listen-accept" => {
            emit("bp-listen-accept", listen_accept(a(1)));
            i + 2
        }
        "bp-listen-auto" => {
            let r = sock(libc::AF_INET, libc::SOCK_STREAM, 0).and_then(|s| {
                // SAFETY: plain syscall on our socket.
                cvt(unsafe { libc::listen(s.as_raw_fd(), 1) } as i64)?;
                Ok(local_port(s.as_raw_fd()))
            });
            let port = *r.as_ref().unwrap_or(&0);
            emit_with("bp-listen-auto", r.map(drop), &format!(r#""port":{port}"#));
            i + 1
        }
        _ => return None,
    })
}
