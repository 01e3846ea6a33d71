//! Point-to-point messages between members of a communicator, in a tag
//! space of their own per communicator (apart from the collectives').

use super::Communicator;
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};
use crate::schedule::Combine;

impl Communicator {
    /// Sends `data` to communicator rank `dst` under `tag` (a space of its
    /// own per communicator, apart from the collectives').
    pub fn send<T: Element>(&self, dst: u32, tag: u32, data: &[T]) -> Result<()> {
        self.check_rank("send", dst)?;
        self.send_bytes(
            "send",
            dst as usize,
            self.p2p_tag(tag),
            bytemuck::cast_slice(data),
        )
    }

    /// Receives the oldest message with `tag` from communicator rank `src`.
    pub fn recv<T: Element>(&self, src: u32, tag: u32) -> Result<Vec<T>> {
        self.check_rank("recv", src)?;
        let data = self.recv_bytes("recv", src as usize, self.p2p_tag(tag))?;
        if data.len() % std::mem::size_of::<T>() != 0 {
            return Err(CollectiveError::Mismatch {
                op: "recv",
                peer: src,
                got: data.len(),
                expected: data.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>(),
            });
        }
        Ok(bytemuck::pod_collect_to_vec(&data))
    }

    /// Receives into `buffer`, which must have the message's exact length.
    pub fn recv_into_slice<T: Element>(&self, src: u32, tag: u32, buffer: &mut [T]) -> Result<()> {
        self.check_rank("recv", src)?;
        self.recv_into(
            "recv",
            src as usize,
            self.p2p_tag(tag),
            buffer,
            Combine::Copy,
            ReduceOp::Sum,
        )
    }
}
