//! The events ring's reader: a thread of its own that empties the ring whenever the
//! program wakes it and queues the state changes for the sampler thread, which
//! applies them to its trackers between dumps.
//!
//! Why a thread: the ring must never fill, and the sampler thread cannot promise that.
//! It is busy for a whole round (0.1 s at 100k sockets, seconds on a loaded host) and
//! runs at background priority. Draining there every 250 ms, with a 1 MiB ring, lost
//! 515 of 93,000 events at 9,300 connections/s on this 2-CPU machine under other
//! builds, and 10-35 % at 13-17k/s (tcpstate-bench --busy). This thread keeps the
//! daemon's normal priority, sleeps in poll until the program says a mark of the ring is
//! full (or the sampler asks for a flush), and does nothing else: about 30 ns an event.
//!
//! The queue is bounded (`limit` events): past it a batch is dropped and counted with
//! the kernel's losses, so memory stays bounded whatever the sampler does.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::kernel::events::{EventRing, StateChange, Wake};
use crate::model::socket_table::StateTransition;

/// State changes with their namespace inode: those into and out of CLOSE_WAIT, and
/// every change of the namespaces followed socket by socket.
pub type Drained = Vec<(u64, StateTransition)>;

/// How long the drain thread sleeps when nothing wakes it: events below the ring's
/// wake-up mark are fetched by the sampler's flush before each round, so this only
/// bounds how long they may wait between rounds.
const IDLE_WAIT: Duration = Duration::from_secs(1);

enum Message {
    Events(Drained),
    /// Everything the kernel had sent when flush number N was asked for is queued.
    Flushed(u64),
}

/// What the two threads share.
struct Shared {
    /// Ends the drain thread's wait.
    wake: Arc<Wake>,
    stop: AtomicBool,
    /// The last flush the sampler asked for.
    flush: AtomicU64,
    /// Events sent and not yet taken.
    queued: AtomicUsize,
    /// Events dropped because the queue was full.
    dropped: AtomicU64,
}

/// The sampler's end: takes what the drain thread queued. Dropping it stops the thread.
pub struct EventDrain {
    messages: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
    flushes: u64,
    thread: Option<JoinHandle<()>>,
}

impl EventDrain {
    /// Starts the drain thread with the calling thread's priority (start it before the
    /// sampler lowers its own). At most `limit` events wait in the queue.
    pub fn start(ring: EventRing, limit: usize) -> io::Result<EventDrain> {
        let shared = Arc::new(Shared {
            wake: ring.wake_handle(),
            stop: AtomicBool::new(false),
            flush: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let (sender, messages) = mpsc::channel();
        let thread = std::thread::Builder::new().name("events".into()).spawn({
            let shared = Arc::clone(&shared);
            move || run(ring, &shared, &sender, limit)
        })?;
        Ok(EventDrain {
            messages,
            shared,
            flushes: 0,
            thread: Some(thread),
        })
    }

    /// Everything queued so far, without waiting.
    pub fn take(&mut self) -> Drained {
        let mut out = Vec::new();
        while let Ok(message) = self.messages.try_recv() {
            self.receive(message, &mut out);
        }
        out
    }

    /// Everything the kernel sent until now: asks the drain thread to empty the ring at
    /// once and waits for it, `wait` at most (a starved drain thread must not stop a
    /// round; what it has not queued by then comes with the next take).
    pub fn flush(&mut self, wait: Duration) -> Drained {
        self.flushes += 1;
        let wanted = self.flushes;
        self.shared.flush.store(wanted, Ordering::Release);
        self.shared.wake.wake();
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(Message::Flushed(n)) if n >= wanted => return out,
                Ok(message) => self.receive(message, &mut out),
                Err(_) => return out,
            }
        }
    }

    fn receive(&self, message: Message, out: &mut Drained) {
        if let Message::Events(events) = message {
            self.shared.queued.fetch_sub(events.len(), Ordering::AcqRel);
            if out.is_empty() {
                *out = events;
            } else {
                out.extend(events);
            }
        }
    }

    /// Events dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Acquire)
    }
}

impl Drop for EventDrain {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The drain thread: wait, drain, queue, until told to stop or the sampler is gone.
fn run(mut ring: EventRing, shared: &Shared, sender: &mpsc::Sender<Message>, limit: usize) {
    let mut flushed = 0;
    let mut warned = false;
    loop {
        if let Err(e) = ring.wait(IDLE_WAIT) {
            if !warned {
                tracing::warn!(error = %e, "cannot wait on the events ring; polling it");
                warned = true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // Read before draining: what the kernel sent before the request is drained now.
        let flush = shared.flush.load(Ordering::Acquire);
        let mut events = Drained::new();
        // One ring's worth at most per pass; a ring that refills meanwhile wakes us again.
        ring.drain(|change| push_transition(change, &mut events));
        if !events.is_empty() && !queue(events, shared, sender, limit) {
            return;
        }
        if flush > flushed {
            flushed = flush;
            if sender.send(Message::Flushed(flush)).is_err() {
                return;
            }
        }
    }
}

/// Sends a batch unless the queue would pass `limit` (then it is dropped and counted).
/// False when the sampler is gone.
fn queue(events: Drained, shared: &Shared, sender: &mpsc::Sender<Message>, limit: usize) -> bool {
    let n = events.len();
    if shared.queued.load(Ordering::Acquire) + n > limit {
        shared.dropped.fetch_add(n as u64, Ordering::AcqRel);
        return true;
    }
    shared.queued.fetch_add(n, Ordering::AcqRel);
    sender.send(Message::Events(events)).is_ok()
}

/// Every change the kernel sent (it sends only what user space asked for).
fn push_transition(change: &StateChange, out: &mut Drained) {
    out.push((
        u64::from(change.netns.inum),
        StateTransition {
            cookie: change.cookie,
            at: change.unix_seconds,
            from: change.from_state(),
            to: change.to_state(),
            bound_dev_if: change.bound_dev_if,
            local: change.local,
            remote: change.remote,
        },
    ));
}
