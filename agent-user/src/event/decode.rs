//! The kernel's ring-buffer record to `Raw`, with its size checked against
//! the wire type of its kind.

use agent_common::{
    event::{EventHeader, Kind, NetEvent, UnixEvent},
    file::{FileEvent, FileOpEvent, ProtectEvent},
};

/// Facts from the kernel record, before the daemon enriches it.
#[derive(Debug, Clone)]
pub struct Raw {
    pub hdr: EventHeader,
    pub body: RawBody,
}

#[derive(Debug, Clone)]
pub enum RawBody {
    Net(NetEvent),
    Unix(UnixEvent),
    File(Box<FileEvent>),
    Syscall(agent_common::syscall::SyscallEvent),
    FileOp(Box<FileOpEvent>),
    Protect(ProtectEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("event kind {kind:?} with {len} bytes, expected {want}")]
    Size { kind: Kind, len: usize, want: usize },
}

fn read<T: Copy>(b: &[u8]) -> T {
    debug_assert!(b.len() >= size_of::<T>());
    // SAFETY: length checked by callers; T is a repr(C) integer-only wire
    // type, valid for any bit pattern; read_unaligned handles alignment.
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

/// The record as the wire type `T` of `kind` (see `read`), if it is long
/// enough for one.
fn body<T: Copy>(b: &[u8], kind: Kind) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if b.len() < want {
        return Err(DecodeError::Size {
            kind,
            len: b.len(),
            want,
        });
    }
    Ok(read(b))
}

impl Raw {
    pub fn decode(b: &[u8]) -> Result<Raw, DecodeError> {
        if b.len() < size_of::<EventHeader>() {
            return Err(DecodeError::Short(b.len()));
        }
        let hdr: EventHeader = read(b);
        let kind = Kind::try_from(hdr.kind).map_err(|e| DecodeError::Kind(e.0))?;
        let body = match kind {
            Kind::Net => RawBody::Net(body(b, kind)?),
            Kind::Unix => RawBody::Unix(body(b, kind)?),
            Kind::File => RawBody::File(Box::new(body(b, kind)?)),
            Kind::Syscall => RawBody::Syscall(body(b, kind)?),
            Kind::FileOp => RawBody::FileOp(Box::new(body(b, kind)?)),
            Kind::Protect => RawBody::Protect(body(b, kind)?),
        };
        Ok(Raw { hdr, body })
    }
}
