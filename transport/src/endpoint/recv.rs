//! Receives: the mailbox first, then progress until a matching message
//! arrives, a matching peer dies, or the deadline passes.

use std::time::Duration;

use crate::error::TransportError;
use crate::types::{Message, Source};

use super::shared::lock;
use super::waiter::Waiter;
use super::Endpoint;

impl Endpoint {
    /// Receives the oldest message with `tag` from `src`, blocking.
    pub fn recv(&self, src: Source, tag: u64) -> Result<Message, TransportError> {
        self.recv_inner(src, tag, None)
    }

    /// Like [`Endpoint::recv`], giving up after `timeout`.
    pub fn recv_timeout(
        &self,
        src: Source,
        tag: u64,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        self.recv_inner(src, tag, Some(timeout))
    }

    /// Returns a matching message if one has arrived, without waiting.
    pub fn try_recv(&self, src: Source, tag: u64) -> Result<Option<Message>, TransportError> {
        self.progress_inner(true)?;
        Ok(self.shared.mailbox_take(src, tag))
    }

    pub(super) fn recv_inner(
        &self,
        src: Source,
        tag: u64,
        timeout: Option<Duration>,
    ) -> Result<Message, TransportError> {
        if let Source::Rank(r) = src {
            self.check_rank(r)?;
        }
        let shared = &*self.shared;
        let mut waiter = Waiter::new(shared, timeout);
        loop {
            if let Some(m) = shared.mailbox_take(src, tag) {
                return Ok(m);
            }
            let (progressed, direct) = self.progress_wanting(true, Some((src, tag)))?;
            if let Some(m) = direct {
                return Ok(m);
            }
            if progressed {
                waiter.progressed();
                continue;
            }
            let failure = match src {
                Source::Rank(r) => shared.peer_error(r),
                Source::Any => shared.any_dead(),
            };
            if let Some(e) = failure {
                // A message that arrived before the death or departure is
                // still delivered, even one another thread is handing over.
                return match self.drain_before_failure(src, tag)? {
                    Some(m) => Ok(m),
                    None => Err(e),
                };
            }
            if waiter.expired() {
                return Err(TransportError::Timeout {
                    what: format!(
                        "receive of tag {tag:#x} from {src:?} at rank {}",
                        shared.rank
                    ),
                    waited: timeout.unwrap_or_default(),
                });
            }
            waiter.pause(|| {
                lock(&shared.mailbox)
                    .queues
                    .get(&tag)
                    .is_some_and(|q| match src {
                        Source::Any => !q.is_empty(),
                        Source::Rank(r) => q.iter().any(|m| m.src == r),
                    })
            });
        }
    }

    /// A peer that sent its last message and then left is seen as gone by
    /// whichever thread checks first, while another thread (the progress
    /// thread, a receiver of another tag) may hold the ring with that message
    /// half handed over: the ring's lock is polled with `try_lock`, so a
    /// failing receive would miss it. Waits for that thread to finish, then
    /// drains what is left, and only then gives up.
    fn drain_before_failure(
        &self,
        src: Source,
        tag: u64,
    ) -> Result<Option<Message>, TransportError> {
        let shared = &*self.shared;
        drop(lock(&shared.consumer));
        // Bounded: other peers may keep the rings busy.
        for _ in 0..1024 {
            if let Some(m) = shared.mailbox_take(src, tag) {
                return Ok(Some(m));
            }
            let (progressed, direct) = self.progress_wanting(true, Some((src, tag)))?;
            if direct.is_some() {
                return Ok(direct);
            }
            if !progressed {
                break;
            }
        }
        Ok(shared.mailbox_take(src, tag))
    }
}
