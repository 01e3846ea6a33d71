//! The step protocol (see [`super`]): steps, the `arrive` and `done`
//! flags, the guarded write of a rank's own slot, and the waits.
//!
//! Invariants: `arrive = s` is a release store made once everything of
//! step `s - 1` is finished and, where the rank wrote its slot in step
//! `s`, once the slot and its length word hold the data; readers acquire.
//! A rank writes slot index `s % D` only after every member has arrived at
//! `s - D + 1` (`begin_write`), so a slot is never overwritten while read.
//! Every wait calls `alive` about every [`LIVENESS_POLL`], so a dead rank
//! ends the wait with an error instead of a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{slot_index, Segment, SLOTS};
use crate::element::Element;
use crate::error::{CollectiveError, Result};
use crate::liveness::LIVENESS_POLL;

/// How long a waiter spins before it starts yielding the core.
const SPIN_ROUNDS: u32 = 256;

impl Segment {
    pub(super) fn next_step(&self) -> u64 {
        // Only the thread holding the communicator's execution lock gets
        // here, so a load and a store do (no locked read-modify-write).
        let step = self.step.load(Ordering::Relaxed) + 1;
        self.step.store(step, Ordering::Relaxed);
        step
    }

    /// Publishes `arrive = step`, with the length of the data this rank
    /// wrote into its slot in this step, if it wrote one.
    pub(super) fn publish(&self, step: u64, len: Option<usize>) {
        if let Some(len) = len {
            self.len_word(self.rank, slot_index(step))
                .store(len as u64, Ordering::Relaxed);
        }
        self.arrive(self.rank).store(step, Ordering::Release);
    }

    pub(super) fn check_len(
        &self,
        op: &'static str,
        peer: usize,
        step: u64,
        len: usize,
    ) -> Result<()> {
        let got = self
            .len_word(peer, slot_index(step))
            .load(Ordering::Relaxed) as usize;
        if got != len {
            return Err(CollectiveError::Mismatch {
                op,
                peer: peer as u32,
                got,
                expected: len,
            });
        }
        Ok(())
    }

    /// Spins, then yields, until `ready()`; `alive` runs about every
    /// `LIVENESS_POLL` and fails when a rank of the job has died.
    pub(super) fn wait(
        ready: impl Fn() -> bool,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        if ready() {
            return Ok(());
        }
        let mut last = Instant::now();
        let mut rounds = 0u32;
        loop {
            for _ in 0..if yield_wait { 1 } else { 32 } {
                if ready() {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            rounds = rounds.wrapping_add(1);
            if yield_wait || rounds > SPIN_ROUNDS {
                std::thread::yield_now();
            }
            if rounds % 64 == 0 && last.elapsed() >= LIVENESS_POLL {
                alive()?;
                last = Instant::now();
            }
        }
    }

    pub(super) fn wait_all(
        &self,
        flag: impl Fn(&Segment, usize) -> &AtomicU64,
        at_least: u64,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        for q in 0..self.size {
            if q != self.rank {
                Self::wait(
                    || flag(self, q).load(Ordering::Acquire) >= at_least,
                    yield_wait,
                    alive,
                )?;
            }
        }
        Ok(())
    }

    /// Waits until this rank may write its slot in `step`: every member has
    /// arrived at `step - D + 1`. The arrivals seen last time are kept, so
    /// a rank running ahead (a broadcast root) reads the others' control
    /// lines, which their owners keep writing, only every `D - 1` steps.
    pub(super) fn begin_write(
        &self,
        step: u64,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.begin_write_depth(step, SLOTS, yield_wait, alive)
    }

    /// [`Segment::begin_write`] for a ring of `depth` entries (slots or
    /// inline lines): every member has arrived at `step - depth + 1`.
    pub(super) fn begin_write_depth(
        &self,
        step: u64,
        depth: usize,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let at_least = step.saturating_sub(depth as u64 - 1);
        for q in 0..self.size {
            if q == self.rank || self.seen[q].load(Ordering::Relaxed) >= at_least {
                continue;
            }
            let flag = self.arrive(q);
            Self::wait(
                || flag.load(Ordering::Acquire) >= at_least,
                yield_wait,
                alive,
            )?;
            self.seen[q].store(flag.load(Ordering::Acquire), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes `parts` one after the other into this rank's slot of a new
    /// step, publishes it and waits until every member has published it;
    /// returns the step and its slot index. The caller then reads the other
    /// members' slots of that step.
    pub(super) fn post<T: Element>(
        &self,
        parts: &[&[T]],
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(u64, usize)> {
        let step = self.next_step();
        let slot = slot_index(step);
        self.begin_write(step, yield_wait, alive)?;
        let mut at = 0;
        for part in parts {
            self.write_own(slot, at, part);
            at += part.len();
        }
        self.publish(step, Some(at));
        self.wait_all(Segment::arrive, step, yield_wait, alive)?;
        Ok((step, slot))
    }

    /// Publishes `done = step` and waits until the members in `wait_for`
    /// (all when `None`) have: nobody's buffer is released while read.
    pub(super) fn finish(
        &self,
        step: u64,
        wait_for: Option<usize>,
        yield_wait: bool,
        alive: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.done(self.rank).store(step, Ordering::Release);
        match wait_for {
            None => self.wait_all(Segment::done, step, yield_wait, alive),
            Some(q) if q == self.rank => Ok(()),
            Some(q) => Self::wait(
                || self.done(q).load(Ordering::Acquire) >= step,
                yield_wait,
                alive,
            ),
        }
    }
}
