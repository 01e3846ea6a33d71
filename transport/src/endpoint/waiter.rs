//! The clock of every blocking call ([`Waiter`]): spin for
//! `TransportConfig::spin`, then sleep on the doorbell in naps of at most
//! 2 ms, checking local peers' liveness every millisecond.
//!
//! Invariant: while spinning, a waiter counts as a TCP poller (it reads the
//! sockets itself, so the background receiver steps aside); it stops
//! counting before it sleeps and when dropped, which hands the sockets back
//! to that thread.

use std::time::{Duration, Instant};

use super::shared::Shared;

/// A waiting loop's clock: spin first, then sleep, and poll liveness now and then.
///
/// While spinning, the waiter counts as a TCP poller (its loop reads the
/// sockets), which lets the background receiver step aside; it stops counting
/// before it sleeps, which hands the sockets back to that thread at once.
pub(super) struct Waiter<'a> {
    pub(super) shared: &'a Shared,
    pub(super) spin: Duration,
    pub(super) start: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) last_check: Instant,
    pub(super) rounds: u32,
    pub(super) spinning: bool,
    pub(super) polling: bool,
}

/// Spin rounds between two clock reads (a clock read costs as much as a
/// ring poll; the spin phase may overshoot by this many rounds).
pub(super) const ROUNDS_PER_CLOCK: u32 = 16;

/// Largest rendezvous message whose sender spins through the receiver's copy.
pub(super) const SPIN_DURING_COPY_MAX: u64 = 2 << 20;

impl<'a> Waiter<'a> {
    pub(super) fn new(shared: &'a Shared, timeout: Option<Duration>) -> Self {
        Self::with_spin(shared, shared.config.spin, timeout)
    }

    pub(super) fn with_spin(shared: &'a Shared, spin: Duration, timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Waiter {
            shared,
            spin,
            start: now,
            deadline: timeout.map(|t| now + t),
            last_check: now,
            rounds: 0,
            spinning: true,
            polling: false,
        }
    }

    pub(super) fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Bytes arrived: restart the spin phase, so that a wait for a large
    /// message that keeps streaming in stays in the polling phase (a sleep
    /// hands reading to the background thread and costs two wake-ups per
    /// burst) and only sleeps once the wire has been quiet for `spin`.
    pub(super) fn progressed(&mut self) {
        self.start = Instant::now();
        self.spinning = true;
    }

    /// Waits a little; `ready` is re-checked just before sleeping.
    pub(super) fn pause(&mut self, ready: impl FnOnce() -> bool) {
        let shared = self.shared;
        self.rounds = self.rounds.wrapping_add(1);
        if self.spinning {
            if !self.polling && shared.tcp_readers.active() {
                shared.tcp_readers.register_poller();
                self.polling = true;
            }
            if self.rounds % ROUNDS_PER_CLOCK != 0 {
                std::hint::spin_loop();
                return;
            }
        }
        let now = Instant::now();
        if now.duration_since(self.last_check) >= Duration::from_millis(1) {
            self.last_check = now;
            shared.check_local_peers();
        }
        if self.spinning && now.duration_since(self.start) < self.spin {
            std::hint::spin_loop();
            return;
        }
        self.spinning = false;
        if self.polling {
            self.polling = false;
            shared.tcp_readers.unregister_poller(true);
        }
        let mut nap = Duration::from_millis(2);
        if let Some(deadline) = self.deadline {
            nap = nap.min(deadline.saturating_duration_since(now));
        }
        shared.sleep(nap, || ready() || shared.rings_pending());
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.polling {
            self.shared.tcp_readers.unregister_poller(false);
        }
    }
}
