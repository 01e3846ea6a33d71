//! Placement groups, the core worker's side: requests to the head (rank 0)
//! and their answers. The head's table and the bundle bookkeeping are in
//! `runtime/placement.rs` (pure parts in `lumen-sched`).

use std::sync::Arc;
use std::time::Duration;

use lumen_transport::Rank;

use super::{runtime_error, Inner, Reply};
use crate::error::Result;
use crate::runtime::error::RuntimeError;
use crate::runtime::placement::GroupAnswer;
use crate::runtime::protocol::RtMsg;

impl Inner {
    /// Sends a placement-group request (`message` is given its request
    /// id) to `to`, the head, and waits for the answer.
    pub(crate) fn ask_group(
        self: &Arc<Self>,
        to: Rank,
        message: impl FnOnce(u64) -> RtMsg,
        timeout: Option<Duration>,
    ) -> Result<GroupAnswer> {
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(to));
        self.send(to, &message(request))?;
        match self.await_reply(request, timeout)? {
            Reply::Group(answer) => Ok(answer),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank: to,
                what: "asking the head about a placement group".into(),
            })),
        }
    }

    pub(crate) fn answer_group(&self, request: u64, answer: GroupAnswer) {
        self.answer(request, Reply::Group(answer));
    }
}
