//! A process-shared lock that survives the death of its holder.
//!
//! The lock word (in the arena header) holds the holder's process id, or 0
//! when free; a second word counts sleepers so that `unlock` makes a system
//! call only when somebody sleeps (the classic futex mutex of Drepper,
//! "Futexes Are Tricky", 2011, with the pid as the locked value). Acquiring
//! is one compare-and-swap when uncontended; a contended acquirer spins
//! briefly, then sleeps on the futex (not `FUTEX_PRIVATE`: the word is shared
//! between processes) with a 5 ms timeout, and on every wake-up checks
//! whether the recorded holder is still alive. A dead holder (pidfd reports
//! it exited, or `kill(pid, 0)` says it does not exist) is replaced with a
//! compare-and-swap, and the caller learns it took the lock over
//! ([`Acquired::Recovered`]) so it can repair what the holder may have left
//! half-done.
//!
//! Why not a `PTHREAD_MUTEX_ROBUST` mutex: it needs the holder's thread to be
//! registered in the kernel's robust list, which Rust's standard library does
//! not expose and which is per thread, not per process; the pid word gives the
//! same guarantee for our use (whole processes die, threads do not die while
//! holding it: the guard unlocks on unwind) in a few lines. The futex and
//! liveness calls are the platform layer's (`lumen_transport::sys`). Limits: every
//! process of the node must share a pid namespace, and a holder's pid reused
//! by a new process within the 5 ms check would look alive (the lock then waits
//! for that process instead; it does not break mutual exclusion).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lumen_transport::sys::{futex_wait, futex_wake_one, process_alive};

/// The lock's two words, `#[repr(C)]` inside the arena header.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RobustLock {
    owner: AtomicU32,
    sleepers: AtomicU32,
}

/// How the lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// From a holder that unlocked.
    Clean,
    /// Taken over from the dead process `pid`; protected state may be half-updated.
    Recovered(u32),
}

const SPINS: u32 = 200;
const SLEEP: Duration = Duration::from_millis(5);

impl RobustLock {
    /// Takes the lock for process `me` (non-zero), waiting as long as needed.
    pub(crate) fn lock(&self, me: u32) -> Acquired {
        if self.try_take(me) {
            return Acquired::Clean;
        }
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if self.owner.load(Ordering::Relaxed) == 0 && self.try_take(me) {
                return Acquired::Clean;
            }
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let holder = self.owner.load(Ordering::SeqCst);
            if holder == 0 {
                if self.try_take(me) {
                    break Acquired::Clean;
                }
                continue;
            }
            futex_wait(&self.owner, holder, SLEEP);
            let now = self.owner.load(Ordering::SeqCst);
            if now == holder
                && now != me
                && !process_alive(holder)
                && self
                    .owner
                    .compare_exchange(holder, me, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                tracing::warn!(
                    dead = holder,
                    "object arena lock held by a dead process: taken over"
                );
                break Acquired::Recovered(holder);
            }
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn try_take(&self, me: u32) -> bool {
        self.owner
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Releases the lock (the caller holds it).
    pub(crate) fn unlock(&self) {
        self.owner.store(0, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake_one(&self.owner);
        }
    }

    /// The holder's pid, 0 when free (for tests).
    #[cfg(test)]
    pub(crate) fn holder(&self) -> u32 {
        self.owner.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn mutual_exclusion_between_threads() {
        let lock = Arc::new(RobustLock::default());
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let me = std::process::id();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        assert_eq!(lock.lock(me), Acquired::Clean);
                        // A non-atomic read-modify-write: lost updates would show.
                        let v = counter.load(Ordering::Relaxed);
                        std::hint::spin_loop();
                        counter.store(v + 1, Ordering::Relaxed);
                        lock.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
        assert_eq!(lock.holder(), 0);
    }

    #[test]
    fn dead_holder_is_taken_over() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(!process_alive(dead));
        assert!(process_alive(std::process::id()));
        let lock = RobustLock::default();
        assert_eq!(lock.lock(dead), Acquired::Clean); // "dead" took it, then died
        assert_eq!(lock.lock(std::process::id()), Acquired::Recovered(dead));
        lock.unlock();
    }
}
