//! Putting kernel event timestamps on the wall clock.
//!
//! `bpf_ktime_get_ns` reads CLOCK_MONOTONIC; the exporter's ages are Unix seconds. The
//! offset between the two clocks is read fresh for each drain, so an NTP step moves
//! later conversions with it (an event's wall time is as right as the clock at drain
//! time, like every other timestamp the exporter takes).

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, read now.
#[derive(Clone, Copy, Debug)]
pub struct WallOffset {
    offset_ns: i128,
}

impl WallOffset {
    pub fn now() -> Self {
        // Monotonic read on both sides of the realtime read: the midpoint is the best
        // estimate of the monotonic time the realtime clock was read at.
        let before = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        let after = read(libc::CLOCK_MONOTONIC);
        WallOffset {
            offset_ns: real - (before + after) / 2,
        }
    }

    /// Unix seconds of a CLOCK_MONOTONIC timestamp.
    pub fn unix_seconds(&self, monotonic_ns: u64) -> f64 {
        (i128::from(monotonic_ns) + self.offset_ns) as f64 / 1e9
    }
}

/// Nanoseconds on `clock`; 0 if the clock cannot be read (it always can on Linux for
/// these two ids).
fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock event timestamps are on.
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(read(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn monotonic_now_converts_to_the_system_time() {
        let offset = WallOffset::now();
        let converted = offset.unix_seconds(monotonic_now_ns());
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        // Two clock reads apart: far below a millisecond unless the clock is stepped
        // between them.
        assert!((converted - system).abs() < 0.5, "{converted} vs {system}");
    }

    #[test]
    fn later_timestamps_are_later_by_the_same_amount() {
        let offset = WallOffset::now();
        let a = offset.unix_seconds(1_000_000_000);
        let b = offset.unix_seconds(3_500_000_000);
        assert!((b - a - 2.5).abs() < 1e-6);
    }
}
