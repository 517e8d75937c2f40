//! The reading end of the events ring buffer: drained without blocking, or waited on
//! (epoll) together with a [`Wake`] another thread can ring.
//!
//! The ring is the only part of the events mode that has to keep up with the TCP stack:
//! a full ring drops events. So it can be moved to a thread of its own (it is `Send`),
//! away from the maps, the counters and the tracker that the sampler owns.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};

use super::{NetnsId, StateChange, WallOffset, abi};

/// The ring's consumer side.
pub struct EventRing {
    ring: RingBuf<MapData>,
    max_per_drain: usize,
    malformed: u64,
    wake: Arc<Wake>,
    /// Made at the first `wait`.
    epoll: Option<OwnedFd>,
}

impl EventRing {
    pub(super) fn new(ring: RingBuf<MapData>, max_per_drain: usize) -> io::Result<EventRing> {
        Ok(EventRing {
            ring,
            max_per_drain,
            malformed: 0,
            wake: Arc::new(Wake::new()?),
            epoll: None,
        })
    }

    /// Hands every event waiting in the ring to `on_event`, oldest first, and returns
    /// how many there were. Never blocks; stops after one ring's worth so a producer
    /// faster than the callback cannot keep it looping.
    pub fn drain(&mut self, mut on_event: impl FnMut(&StateChange)) -> usize {
        let clock = WallOffset::now();
        let mut count = 0;
        while count < self.max_per_drain {
            let Some(item) = self.ring.next() else { break };
            let Some(raw) = abi::decode(&item) else {
                self.malformed += 1;
                continue;
            };
            drop(item);
            count += 1;
            on_event(&StateChange {
                monotonic_ns: raw.timestamp_ns,
                unix_seconds: clock.unix_seconds(raw.timestamp_ns),
                cookie: raw.cookie,
                netns: NetnsId {
                    inum: raw.netns_inum,
                    cookie: raw.netns_cookie,
                },
                from: raw.old_state,
                to: raw.new_state,
                bound_dev_if: raw.bound_dev_if,
                local: raw.local,
                remote: raw.remote,
            });
        }
        count
    }

    /// How many events one `drain` hands over at most: what the ring holds.
    pub fn capacity(&self) -> usize {
        self.max_per_drain
    }

    /// Ring records that did not decode (a program/loader mismatch; should stay 0).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// A handle another thread can ring to end a `wait` early.
    pub fn wake_handle(&self) -> Arc<Wake> {
        Arc::clone(&self.wake)
    }

    /// Sleeps until the program wakes the reader (`EventsConfig::wakeup_bytes` wait in
    /// the ring, or with the kernel's default, an event after the reader caught up),
    /// the wake handle is rung, or `timeout` passes. Returns whether the handle was
    /// rung (and clears it). A signal ends the wait early, as a timeout would.
    ///
    /// Edge-triggered (epoll): the ring's fd is readable whenever any event waits, so a
    /// level-triggered wait would return at once for the events below the wake-up mark
    /// and the reader would spin on them; this one returns only when the program wakes
    /// it, so a burst costs one wake-up per mark's worth.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        let epoll = match &self.epoll {
            Some(epoll) => epoll,
            None => self.epoll.insert(epoll_on(&[
                (self.ring.as_fd().as_raw_fd(), libc::EPOLLIN | libc::EPOLLET),
                (self.wake.0.as_raw_fd(), libc::EPOLLIN),
            ])?),
        };
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `ready` is a valid, writable array of two epoll_events.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), ready.as_mut_ptr(), 2, millis) };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(error),
            };
        }
        let rung = ready[..n as usize].iter().any(|e| e.u64 == 1);
        if rung {
            self.wake.clear();
        }
        Ok(rung)
    }
}

/// An epoll instance watching `fds` (fd, events); each is reported with its index as
/// its data.
fn epoll_on(fds: &[(RawFd, libc::c_int)]) -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 creates a new fd or fails; no memory is passed.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    for (index, (watched, events)) in fds.iter().enumerate() {
        let mut event = libc::epoll_event {
            events: *events as u32,
            u64: index as u64,
        };
        // SAFETY: valid epoll and watched fds, and a live epoll_event.
        if unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, *watched, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(epoll)
}

impl AsFd for EventRing {
    /// The ring buffer's fd: readable (poll, epoll) when the program woke the reader.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// A flag one thread raises to end the ring reader's `wait` (an eventfd).
pub struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: eventfd creates a new fd or fails; no memory is passed.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Raises the flag: a `wait` in progress or the next one returns at once.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. It can only fail
        // when the counter is about to overflow, and it is then raised anyway.
        unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd;
        // EAGAIN (already clear) is fine.
        unsafe {
            libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8);
        }
    }
}
