//! Time in the two clocks Corral speaks: `CLOCK_BOOTTIME`, the clock of the
//! kernel programs' timestamps and lease expiries (it keeps counting through
//! suspend, so an expiry cannot be slept past), and wall-clock time, what
//! events and records show people. A leaf: everything may use it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_BOOTTIME` now, in nanoseconds.
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// RFC 3339 of a unix ms time.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Maps a wall-clock time (unix ms) to `CLOCK_BOOTTIME` ns, through the
/// current offset between the two clocks.
pub fn wall_ms_to_boot_ns(ms: u64) -> u64 {
    let boot = boot_ns() as i128;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    (ms as i128 * 1_000_000 - wall + boot).max(1) as u64
}

/// Maps `CLOCK_BOOTTIME` (kernel timestamps) to wall-clock time, with the
/// offset between the clocks taken once (per batch of events).
pub struct BootToWall {
    offset_ns: i128,
}

impl BootToWall {
    pub fn now() -> BootToWall {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        BootToWall {
            offset_ns: wall - boot_ns() as i128,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_mapping_is_close() {
        let now = now_ms();
        let b = wall_ms_to_boot_ns(now + 1000);
        let d = b as i128 - boot_ns() as i128;
        assert!((900_000_000..1_100_000_000).contains(&d), "{d}");
    }
}
