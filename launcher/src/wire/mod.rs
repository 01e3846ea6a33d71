//! Messages of the rendezvous store as flatbuffers (schema:
//! `launcher/schema/rendezvous.fbs`; the generated code is committed,
//! regenerate it with `scripts/regen-wire.sh`).
//!
//! Each message travels as the payload of one
//! [`FrameKind::Store`](lumen_transport::frame::FrameKind::Store) frame. A
//! client sends [`RequestFrame`]s and the server answers with [`ReplyFrame`]s
//! that echo the request's id. Every decode runs the flatbuffers verifier
//! first, so a malformed payload becomes a [`WireError`], never a panic or an
//! out-of-bounds read.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    rust_2018_idioms
)]
#[rustfmt::skip]
mod rendezvous_generated;

use flatbuffers::FlatBufferBuilder;
pub use lumen_transport::wire::WireError;
use rendezvous_generated::lumen::rendezvous as fb;

/// A client's request to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Store `value` under `key`.
    Put {
        /// The key.
        key: String,
        /// The bytes stored.
        value: Vec<u8>,
    },
    /// Fetch the value of `key`, waiting until some rank has put it.
    Get {
        /// The key.
        key: String,
    },
    /// Enter barrier number `epoch` (0, 1, 2, ... in order, per rank).
    Barrier {
        /// The barrier's number.
        epoch: u64,
    },
    /// Ask which ranks are connected, gone, and waiting in barriers.
    Status,
    /// The rank is done with the store; its disconnect is then no failure.
    Finalize,
    /// Fetch the values of `prefix/from` .. `prefix/(size-1)` in one reply,
    /// waiting until all are there; answered with [`Reply::Values`] holding
    /// as many of them as fit one frame.
    Gather {
        /// Keys are `prefix/rank`.
        prefix: String,
        /// The first rank wanted.
        from: u32,
    },
}

/// A request with the id its reply will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// Ranks that have entered one barrier that is not complete yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PendingBarrier {
    /// The barrier's number.
    pub epoch: u64,
    /// Ranks inside it, ascending.
    pub ranks: Vec<u32>,
}

/// A snapshot of who is where in the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStatus {
    /// Ranks in the job.
    pub size: u32,
    /// Ranks connected now, ascending.
    pub connected: Vec<u32>,
    /// Ranks that finalized, ascending.
    pub finalized: Vec<u32>,
    /// Ranks that disconnected without finalizing (probably crashed), ascending.
    pub departed: Vec<u32>,
    /// Barriers some ranks wait in, by ascending epoch.
    pub barriers: Vec<PendingBarrier>,
}

impl StoreStatus {
    /// Ranks that never connected: neither connected now, nor finalized, nor
    /// departed.
    pub fn never_arrived(&self) -> Vec<u32> {
        (0..self.size)
            .filter(|rank| {
                !self.connected.contains(rank)
                    && !self.finalized.contains(rank)
                    && !self.departed.contains(rank)
            })
            .collect()
    }

    /// Ranks that have not entered barrier `epoch` (all ranks when no rank has).
    pub fn missing_from_barrier(&self, epoch: u64) -> Vec<u32> {
        let inside = self
            .barriers
            .iter()
            .find(|barrier| barrier.epoch == epoch)
            .map(|barrier| barrier.ranks.as_slice())
            .unwrap_or_default();
        (0..self.size)
            .filter(|rank| !inside.contains(rank))
            .collect()
    }
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The rank is registered; first message after the handshake.
    Welcome {
        /// Ranks in the job.
        size: u32,
    },
    /// A Put or Finalize was applied.
    Done,
    /// Answer to Get.
    Value {
        /// The key asked for.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// Every rank entered barrier `epoch`.
    BarrierDone {
        /// The barrier's number.
        epoch: u64,
    },
    /// Answer to Status.
    Status(StoreStatus),
    /// The request, or the whole rendezvous, failed.
    Error {
        /// What happened and what to do.
        reason: String,
    },
    /// Answer to Gather: values of consecutive ranks from `from` on.
    Values {
        /// The rank of the first value.
        from: u32,
        /// The values, in rank order (at least one).
        values: Vec<Vec<u8>>,
    },
}

/// A reply with the id of the request it answers (0 for [`Reply::Welcome`]
/// and for errors not tied to a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyFrame {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub reply: Reply,
}

fn verified<'a, T>(message: &'static str, bytes: &'a [u8]) -> Result<T, WireError>
where
    T: flatbuffers::Follow<'a, Inner = T> + flatbuffers::Verifiable + 'a,
{
    flatbuffers::root::<T>(bytes).map_err(|e| WireError::Malformed {
        message,
        detail: e.to_string(),
    })
}

fn missing(message: &'static str, field: &'static str) -> WireError {
    WireError::MissingField { message, field }
}

impl RequestFrame {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let extra = match &self.request {
            Request::Put { key, value } => key.len() + value.len(),
            Request::Get { key } => key.len(),
            Request::Gather { prefix, .. } => prefix.len(),
            _ => 0,
        };
        let mut b = FlatBufferBuilder::with_capacity(64 + extra);
        let (kind, body) = match &self.request {
            Request::Put { key, value } => {
                let key = b.create_string(key);
                let value = b.create_vector(value);
                let args = fb::PutArgs {
                    key: Some(key),
                    value: Some(value),
                };
                (
                    fb::Request::Put,
                    fb::Put::create(&mut b, &args).as_union_value(),
                )
            }
            Request::Get { key } => {
                let key = b.create_string(key);
                let args = fb::GetArgs { key: Some(key) };
                (
                    fb::Request::Get,
                    fb::Get::create(&mut b, &args).as_union_value(),
                )
            }
            Request::Barrier { epoch } => {
                let args = fb::BarrierArgs { epoch: *epoch };
                let body = fb::Barrier::create(&mut b, &args).as_union_value();
                (fb::Request::Barrier, body)
            }
            Request::Status => {
                let body = fb::Status::create(&mut b, &fb::StatusArgs {}).as_union_value();
                (fb::Request::Status, body)
            }
            Request::Finalize => {
                let body = fb::Finalize::create(&mut b, &fb::FinalizeArgs {}).as_union_value();
                (fb::Request::Finalize, body)
            }
            Request::Gather { prefix, from } => {
                let prefix = b.create_string(prefix);
                let args = fb::GatherArgs {
                    prefix: Some(prefix),
                    from: *from,
                };
                let body = fb::Gather::create(&mut b, &args).as_union_value();
                (fb::Request::Gather, body)
            }
        };
        let root = fb::RequestFrame::create(
            &mut b,
            &fb::RequestFrameArgs {
                id: self.id,
                request_type: kind,
                request: Some(body),
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const NAME: &str = "RequestFrame";
        let m = verified::<fb::RequestFrame<'_>>(NAME, bytes)?;
        let request = match m.request_type() {
            fb::Request::Put => {
                let put = m.request_as_put().ok_or(missing(NAME, "request"))?;
                Request::Put {
                    key: put.key().ok_or(missing("Put", "key"))?.to_string(),
                    value: put.value().map(|v| v.bytes().to_vec()).unwrap_or_default(),
                }
            }
            fb::Request::Get => {
                let get = m.request_as_get().ok_or(missing(NAME, "request"))?;
                Request::Get {
                    key: get.key().ok_or(missing("Get", "key"))?.to_string(),
                }
            }
            fb::Request::Barrier => {
                let barrier = m.request_as_barrier().ok_or(missing(NAME, "request"))?;
                Request::Barrier {
                    epoch: barrier.epoch(),
                }
            }
            fb::Request::Status => Request::Status,
            fb::Request::Finalize => Request::Finalize,
            fb::Request::Gather => {
                let gather = m.request_as_gather().ok_or(missing(NAME, "request"))?;
                Request::Gather {
                    prefix: gather
                        .prefix()
                        .ok_or(missing("Gather", "prefix"))?
                        .to_string(),
                    from: gather.from(),
                }
            }
            _ => return Err(missing(NAME, "request")),
        };
        Ok(RequestFrame {
            id: m.id(),
            request,
        })
    }
}

impl ReplyFrame {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let extra = match &self.reply {
            Reply::Value { key, value } => key.len() + value.len(),
            Reply::Error { reason } => reason.len(),
            Reply::Status(status) => 4 * 4 * status.size as usize,
            Reply::Values { values, .. } => values.iter().map(|v| v.len() + 16).sum(),
            _ => 0,
        };
        let mut b = FlatBufferBuilder::with_capacity(64 + extra);
        let (kind, body) = match &self.reply {
            Reply::Welcome { size } => {
                let args = fb::WelcomeArgs { size: *size };
                let body = fb::Welcome::create(&mut b, &args).as_union_value();
                (fb::Reply::Welcome, body)
            }
            Reply::Done => {
                let body = fb::Done::create(&mut b, &fb::DoneArgs {}).as_union_value();
                (fb::Reply::Done, body)
            }
            Reply::Value { key, value } => {
                let key = b.create_string(key);
                let value = b.create_vector(value);
                let args = fb::ValueArgs {
                    key: Some(key),
                    value: Some(value),
                };
                (
                    fb::Reply::Value,
                    fb::Value::create(&mut b, &args).as_union_value(),
                )
            }
            Reply::BarrierDone { epoch } => {
                let args = fb::BarrierDoneArgs { epoch: *epoch };
                let body = fb::BarrierDone::create(&mut b, &args).as_union_value();
                (fb::Reply::BarrierDone, body)
            }
            Reply::Status(status) => {
                let connected = b.create_vector(&status.connected);
                let finalized = b.create_vector(&status.finalized);
                let departed = b.create_vector(&status.departed);
                let entries: Vec<_> = status
                    .barriers
                    .iter()
                    .map(|barrier| {
                        let ranks = b.create_vector(&barrier.ranks);
                        fb::BarrierEntry::create(
                            &mut b,
                            &fb::BarrierEntryArgs {
                                epoch: barrier.epoch,
                                ranks: Some(ranks),
                            },
                        )
                    })
                    .collect();
                let barriers = b.create_vector(&entries);
                let args = fb::StatusReportArgs {
                    size: status.size,
                    connected: Some(connected),
                    finalized: Some(finalized),
                    departed: Some(departed),
                    barriers: Some(barriers),
                };
                let body = fb::StatusReport::create(&mut b, &args).as_union_value();
                (fb::Reply::StatusReport, body)
            }
            Reply::Error { reason } => {
                let reason = b.create_string(reason);
                let args = fb::ErrorArgs {
                    reason: Some(reason),
                };
                (
                    fb::Reply::Error,
                    fb::Error::create(&mut b, &args).as_union_value(),
                )
            }
            Reply::Values { from, values } => {
                let blobs: Vec<_> = values
                    .iter()
                    .map(|value| {
                        let value = b.create_vector(value);
                        fb::Blob::create(&mut b, &fb::BlobArgs { value: Some(value) })
                    })
                    .collect();
                let values = b.create_vector(&blobs);
                let args = fb::ValuesArgs {
                    from: *from,
                    values: Some(values),
                };
                let body = fb::Values::create(&mut b, &args).as_union_value();
                (fb::Reply::Values, body)
            }
        };
        let root = fb::ReplyFrame::create(
            &mut b,
            &fb::ReplyFrameArgs {
                id: self.id,
                reply_type: kind,
                reply: Some(body),
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        const NAME: &str = "ReplyFrame";
        let m = verified::<fb::ReplyFrame<'_>>(NAME, bytes)?;
        let ranks = |v: Option<flatbuffers::Vector<'_, u32>>| -> Vec<u32> {
            v.map(|v| v.iter().collect()).unwrap_or_default()
        };
        let reply = match m.reply_type() {
            fb::Reply::Welcome => {
                let welcome = m.reply_as_welcome().ok_or(missing(NAME, "reply"))?;
                Reply::Welcome {
                    size: welcome.size(),
                }
            }
            fb::Reply::Done => Reply::Done,
            fb::Reply::Value => {
                let value = m.reply_as_value().ok_or(missing(NAME, "reply"))?;
                Reply::Value {
                    key: value.key().ok_or(missing("Value", "key"))?.to_string(),
                    value: value
                        .value()
                        .map(|v| v.bytes().to_vec())
                        .unwrap_or_default(),
                }
            }
            fb::Reply::BarrierDone => {
                let done = m.reply_as_barrier_done().ok_or(missing(NAME, "reply"))?;
                Reply::BarrierDone {
                    epoch: done.epoch(),
                }
            }
            fb::Reply::StatusReport => {
                let report = m.reply_as_status_report().ok_or(missing(NAME, "reply"))?;
                Reply::Status(StoreStatus {
                    size: report.size(),
                    connected: ranks(report.connected()),
                    finalized: ranks(report.finalized()),
                    departed: ranks(report.departed()),
                    barriers: report
                        .barriers()
                        .map(|entries| {
                            entries
                                .iter()
                                .map(|entry| PendingBarrier {
                                    epoch: entry.epoch(),
                                    ranks: ranks(entry.ranks()),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            fb::Reply::Error => {
                let error = m.reply_as_error().ok_or(missing(NAME, "reply"))?;
                Reply::Error {
                    reason: error.reason().unwrap_or_default().to_string(),
                }
            }
            fb::Reply::Values => {
                let found = m.reply_as_values().ok_or(missing(NAME, "reply"))?;
                Reply::Values {
                    from: found.from(),
                    values: found
                        .values()
                        .map(|blobs| {
                            blobs
                                .iter()
                                .map(|blob| {
                                    blob.value().map(|v| v.bytes().to_vec()).unwrap_or_default()
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            }
            _ => return Err(missing(NAME, "reply")),
        };
        Ok(ReplyFrame { id: m.id(), reply })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Put {
                key: "ep/3".into(),
                value: vec![1, 2, 3],
            },
            Request::Put {
                key: String::new(),
                value: Vec::new(),
            },
            Request::Get { key: "ep/0".into() },
            Request::Barrier { epoch: 7 },
            Request::Status,
            Request::Finalize,
            Request::Gather {
                prefix: "endpoint".into(),
                from: 3,
            },
        ];
        for (id, request) in requests.into_iter().enumerate() {
            let frame = RequestFrame {
                id: id as u64 + 1,
                request,
            };
            assert_eq!(RequestFrame::decode(&frame.encode()), Ok(frame));
        }
    }

    #[test]
    fn replies_round_trip() {
        let status = StoreStatus {
            size: 6,
            connected: vec![0, 1, 3],
            finalized: vec![4],
            departed: vec![5],
            barriers: vec![PendingBarrier {
                epoch: 2,
                ranks: vec![0, 3],
            }],
        };
        let replies = [
            Reply::Welcome { size: 4 },
            Reply::Done,
            Reply::Value {
                key: "k".into(),
                value: vec![9; 1000],
            },
            Reply::BarrierDone { epoch: 3 },
            Reply::Status(status.clone()),
            Reply::Error {
                reason: "rank 3 left".into(),
            },
            Reply::Values {
                from: 2,
                values: vec![b"a".to_vec(), Vec::new(), vec![7; 300]],
            },
        ];
        for reply in replies {
            let frame = ReplyFrame { id: 42, reply };
            assert_eq!(ReplyFrame::decode(&frame.encode()), Ok(frame));
        }
        assert_eq!(status.never_arrived(), vec![2]);
        assert_eq!(status.missing_from_barrier(2), vec![1, 2, 4, 5]);
        assert_eq!(status.missing_from_barrier(9), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut state = 7u64;
        let valid = RequestFrame {
            id: 1,
            request: Request::Put {
                key: "key".into(),
                value: vec![5; 40],
            },
        }
        .encode();
        for len in 0..400 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) as u8
                })
                .collect();
            let _ = RequestFrame::decode(&bytes);
            let _ = ReplyFrame::decode(&bytes);
            // Corrupt a valid message byte by byte to reach the deeper checks.
            if len < valid.len() {
                bytes = valid.clone();
                bytes[len] ^= (state >> 40) as u8 | 1;
                let _ = RequestFrame::decode(&bytes);
                let _ = ReplyFrame::decode(&bytes);
            }
        }
        assert!(RequestFrame::decode(&[]).is_err());
        assert!(ReplyFrame::decode(&[0; 8]).is_err());
    }
}
