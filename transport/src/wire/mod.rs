//! Control messages as flatbuffers (schema: `transport/schema/transport.fbs`;
//! the generated code is committed, regenerate with `scripts/regen-wire.sh`).
//!
//! Every decode goes through the flatbuffers verifier first, so a malformed
//! control payload becomes a [`WireError`], never a panic or an out-of-bounds read.

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    rust_2018_idioms
)]
#[rustfmt::skip]
mod transport_generated;

use flatbuffers::FlatBufferBuilder;
use thiserror::Error;
pub use transport_generated::lumen::wire::*;

/// A control payload that failed verification.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The flatbuffers verifier rejected the bytes.
    #[error("malformed {message} message: {detail}")]
    Malformed {
        /// Which table was expected.
        message: &'static str,
        /// The verifier's finding.
        detail: String,
    },
    /// A required field is absent.
    #[error("{message} message lacks field {field}")]
    MissingField {
        /// Which table.
        message: &'static str,
        /// Which field.
        field: &'static str,
    },
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

/// Decoded [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloMsg {
    /// Protocol version of the sender.
    pub protocol: u16,
    /// The sender's job.
    pub job_id: String,
    /// The sender's rank.
    pub rank: u32,
    /// Initiator nonce.
    pub nonce: Vec<u8>,
}

impl HelloMsg {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(128);
        let job_id = b.create_string(&self.job_id);
        let nonce = b.create_vector(&self.nonce);
        let root = Hello::create(
            &mut b,
            &HelloArgs {
                protocol: self.protocol,
                job_id: Some(job_id),
                rank: self.rank,
                nonce: Some(nonce),
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let m = verified::<Hello<'_>>("Hello", bytes)?;
        Ok(HelloMsg {
            protocol: m.protocol(),
            job_id: m
                .job_id()
                .ok_or(WireError::MissingField {
                    message: "Hello",
                    field: "job_id",
                })?
                .to_string(),
            rank: m.rank(),
            nonce: m.nonce().map(|v| v.bytes().to_vec()).unwrap_or_default(),
        })
    }
}

/// Decoded [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeMsg {
    /// Acceptor nonce.
    pub nonce: Vec<u8>,
    /// Acceptor proof.
    pub proof: Vec<u8>,
}

impl ChallengeMsg {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(128);
        let nonce = b.create_vector(&self.nonce);
        let proof = b.create_vector(&self.proof);
        let root = Challenge::create(
            &mut b,
            &ChallengeArgs {
                nonce: Some(nonce),
                proof: Some(proof),
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let m = verified::<Challenge<'_>>("Challenge", bytes)?;
        Ok(ChallengeMsg {
            nonce: m.nonce().map(|v| v.bytes().to_vec()).unwrap_or_default(),
            proof: m.proof().map(|v| v.bytes().to_vec()).unwrap_or_default(),
        })
    }
}

/// Encodes a [`Proof`].
pub fn encode_proof(proof: &[u8]) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(64);
    let proof = b.create_vector(proof);
    let root = Proof::create(&mut b, &ProofArgs { proof: Some(proof) });
    b.finish(root, None);
    b.finished_data().to_vec()
}

/// Verifies and decodes a [`Proof`].
pub fn decode_proof(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let m = verified::<Proof<'_>>("Proof", bytes)?;
    Ok(m.proof().map(|v| v.bytes().to_vec()).unwrap_or_default())
}

/// Encodes a reason string as a [`Refusal`] or [`Goodbye`] (same shape).
pub fn encode_reason(goodbye: bool, reason: &str) -> Vec<u8> {
    let mut b = FlatBufferBuilder::with_capacity(64 + reason.len());
    let text = b.create_string(reason);
    if goodbye {
        let root = Goodbye::create(&mut b, &GoodbyeArgs { reason: Some(text) });
        b.finish(root, None);
    } else {
        let root = Refusal::create(&mut b, &RefusalArgs { reason: Some(text) });
        b.finish(root, None);
    }
    b.finished_data().to_vec()
}

/// Verifies and decodes a [`Refusal`] or [`Goodbye`] reason.
pub fn decode_reason(goodbye: bool, bytes: &[u8]) -> Result<String, WireError> {
    let reason = if goodbye {
        verified::<Goodbye<'_>>("Goodbye", bytes)?
            .reason()
            .map(str::to_string)
    } else {
        verified::<Refusal<'_>>("Refusal", bytes)?
            .reason()
            .map(str::to_string)
    };
    Ok(reason.unwrap_or_default())
}

/// Decoded [`ReadyToSend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyToSendMsg {
    /// Sequence number the receiver acknowledges.
    pub cookie: u64,
    /// Message length.
    pub len: u64,
    /// Sender's process id.
    pub pid: i32,
    /// Address of the message in the sender.
    pub addr: u64,
}

impl ReadyToSendMsg {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(64);
        let root = ReadyToSend::create(
            &mut b,
            &ReadyToSendArgs {
                cookie: self.cookie,
                len: self.len,
                pid: self.pid,
                addr: self.addr,
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let m = verified::<ReadyToSend<'_>>("ReadyToSend", bytes)?;
        Ok(ReadyToSendMsg {
            cookie: m.cookie(),
            len: m.len(),
            pid: m.pid(),
            addr: m.addr(),
        })
    }
}

/// Decoded [`GetRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetRequestMsg {
    /// Requester's id for the answer.
    pub request: u64,
    /// Region key at the target.
    pub region: u64,
    /// Byte offset in the region.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl GetRequestMsg {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(64);
        let root = GetRequest::create(
            &mut b,
            &GetRequestArgs {
                request: self.request,
                region: self.region,
                offset: self.offset,
                len: self.len,
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let m = verified::<GetRequest<'_>>("GetRequest", bytes)?;
        Ok(GetRequestMsg {
            request: m.request(),
            region: m.region(),
            offset: m.offset(),
            len: m.len(),
        })
    }
}

/// Decoded [`GetGrant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetGrantMsg {
    /// The request answered.
    pub request: u64,
    /// Owner's process id.
    pub pid: i32,
    /// Address of the requested bytes in the owner.
    pub addr: u64,
    /// Number of bytes.
    pub len: u64,
    /// Set when the request was refused.
    pub error: Option<String>,
}

impl GetGrantMsg {
    /// Serialises.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = FlatBufferBuilder::with_capacity(64);
        let error = self.error.as_deref().map(|e| b.create_string(e));
        let root = GetGrant::create(
            &mut b,
            &GetGrantArgs {
                request: self.request,
                pid: self.pid,
                addr: self.addr,
                len: self.len,
                error,
            },
        );
        b.finish(root, None);
        b.finished_data().to_vec()
    }

    /// Verifies and decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let m = verified::<GetGrant<'_>>("GetGrant", bytes)?;
        Ok(GetGrantMsg {
            request: m.request(),
            pid: m.pid(),
            addr: m.addr(),
            len: m.len(),
            error: m.error().map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = HelloMsg {
            protocol: 1,
            job_id: "j".into(),
            rank: 7,
            nonce: vec![1; 32],
        };
        assert_eq!(HelloMsg::decode(&h.encode()), Ok(h));
        let r = ReadyToSendMsg {
            cookie: 1,
            len: 2,
            pid: 3,
            addr: 4,
        };
        assert_eq!(ReadyToSendMsg::decode(&r.encode()), Ok(r));
        let g = GetGrantMsg {
            request: 1,
            pid: 2,
            addr: 3,
            len: 4,
            error: Some("no".into()),
        };
        assert_eq!(GetGrantMsg::decode(&g.encode()), Ok(g));
        assert_eq!(
            decode_reason(true, &encode_reason(true, "bye")),
            Ok("bye".into())
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut state = 99u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 33) as u8
                })
                .collect();
            let _ = HelloMsg::decode(&bytes);
            let _ = ReadyToSendMsg::decode(&bytes);
            let _ = GetGrantMsg::decode(&bytes);
        }
        assert!(HelloMsg::decode(&[]).is_err());
    }
}
