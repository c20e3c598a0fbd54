//! Types and names shared by Corral's eBPF programs and its daemon.
//!
//! Everything here crosses the kernel/user boundary, so every struct is
//! `#[repr(C)]` with explicit padding and a size assertion, and no field is a
//! Rust enum, `bool` or `Option`: the user side decodes `u32` codes with
//! `TryFrom` and rejects values it does not know.
#![no_std]

pub mod event;
pub mod file;
pub mod identity;
pub mod maps;
pub mod net;
pub mod syscall;
pub mod unix;

/// Implements `aya::Pod` for wire types when the user side builds this crate.
#[macro_export]
#[doc(hidden)]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C), Copy, has explicit padding and no
            // invalid bit patterns (integers and integer arrays only).
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// Error for a `u32` wire code that names no known variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCode(pub u32);

/// Declares a user-side enum over `u32` wire constants, with `TryFrom<u32>`.
#[macro_export]
#[doc(hidden)]
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $code:path),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl TryFrom<u32> for $name {
            type Error = $crate::UnknownCode;
            fn try_from(v: u32) -> Result<Self, Self::Error> {
                match v {
                    $(x if x == $code => Ok(Self::$variant),)*
                    other => Err($crate::UnknownCode(other)),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                match v { $($name::$variant => $code),* }
            }
        }
    };
}
