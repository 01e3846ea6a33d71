//! The authentication handshake of [`crate::auth`] over any blocking byte
//! stream ([`initiate`], [`accept`]), and its accepting side without I/O
//! ([`Acceptor`]) for event loops.
//!
//! Used for every TCP connection between ranks and for the rendezvous store.
//! Before the handshake completes, frames are limited to [`HANDSHAKE_MAX_FRAME`]
//! bytes and only the three handshake kinds are accepted.

use std::io::{Read, Write};

use thiserror::Error;

use crate::auth::{random_bytes, AuthError, JobSecret, NONCE_LEN};
use crate::frame::{encode_frame, FrameError, FrameHeader, FrameKind, HEADER_LEN};
use crate::wire::{self, ChallengeMsg, HelloMsg, WireError};

/// Largest frame accepted from a peer that has not yet authenticated.
pub const HANDSHAKE_MAX_FRAME: u32 = 4096;
/// Protocol number carried in Hello.
pub const PROTOCOL: u16 = 1;

/// Why a connection was not established.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// Reading or writing the stream failed (includes timeouts).
    #[error("i/o during handshake: {0}")]
    Io(#[from] std::io::Error),
    /// A frame header was invalid.
    #[error("bad frame during handshake: {0}")]
    Frame(#[from] FrameError),
    /// A handshake payload was malformed.
    #[error("bad handshake message: {0}")]
    Wire(#[from] WireError),
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The peer sent a frame kind that has no place at this point.
    #[error("unexpected {got:?} frame during handshake, expected {expected:?}")]
    Unexpected {
        /// What arrived.
        got: FrameKind,
        /// What the protocol needed.
        expected: FrameKind,
    },
    /// The acceptor refused us and said why.
    #[error("peer refused the connection: {0}")]
    Refused(String),
    /// Protocol numbers differ.
    #[error("peer speaks protocol {theirs}, this rank {PROTOCOL}")]
    Protocol {
        /// Peer's protocol.
        theirs: u16,
    },
}

/// Reads one complete frame of at most `max_len` payload bytes.
pub fn read_frame(
    stream: &mut impl Read,
    max_len: u32,
) -> Result<(FrameHeader, Vec<u8>), HandshakeError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header)?;
    let header = FrameHeader::decode(&header, max_len)?;
    let mut payload = vec![0u8; header.len as usize];
    stream.read_exact(&mut payload)?;
    Ok((header, payload))
}

/// Writes one control frame.
pub fn write_control(
    stream: &mut impl Write,
    kind: FrameKind,
    src: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("control payload above 4 GiB"))?;
    stream.write_all(&encode_frame(
        &FrameHeader::control(kind, src, len),
        payload,
    ))
}

fn expect(header: &FrameHeader, payload: &[u8], expected: FrameKind) -> Result<(), HandshakeError> {
    if header.kind == FrameKind::Refusal {
        return Err(HandshakeError::Refused(wire::decode_reason(
            false, payload,
        )?));
    }
    if header.kind != expected {
        return Err(HandshakeError::Unexpected {
            got: header.kind,
            expected,
        });
    }
    Ok(())
}

/// Connecting side: proves knowledge of `secret` and checks the acceptor's proof.
pub fn initiate(
    stream: &mut (impl Read + Write),
    job_id: &str,
    rank: u32,
    secret: &JobSecret,
) -> Result<(), HandshakeError> {
    let nonce_i = random_bytes();
    let hello = HelloMsg {
        protocol: PROTOCOL,
        job_id: job_id.to_string(),
        rank,
        nonce: nonce_i.to_vec(),
    };
    write_control(stream, FrameKind::Hello, rank, &hello.encode())?;
    let (header, payload) = read_frame(stream, HANDSHAKE_MAX_FRAME)?;
    expect(&header, &payload, FrameKind::Challenge)?;
    let challenge = ChallengeMsg::decode(&payload)?;
    if challenge.nonce.len() != NONCE_LEN {
        return Err(AuthError::BadNonce(challenge.nonce.len()).into());
    }
    JobSecret::verify(
        &secret.acceptor_proof(job_id, rank, &nonce_i, &challenge.nonce),
        &challenge.proof,
    )?;
    let proof = secret.initiator_proof(job_id, rank, &nonce_i, &challenge.nonce);
    write_control(stream, FrameKind::Proof, rank, &wire::encode_proof(&proof))?;
    Ok(())
}

/// Accepting side: returns the authenticated peer's rank. On failure the peer
/// is told why (when it got far enough to be told) and the caller closes.
pub fn accept(
    stream: &mut (impl Read + Write),
    job_id: &str,
    my_rank: u32,
    secret: &JobSecret,
) -> Result<u32, HandshakeError> {
    let (header, payload) = read_frame(stream, HANDSHAKE_MAX_FRAME)?;
    let (pending, challenge) = match Acceptor::hello(&header, &payload, job_id, my_rank, secret) {
        Ok(step) => step,
        Err(Refused { error, tell }) => {
            if let Some(frame) = tell {
                // Best effort: the peer may already be gone, and we close either way.
                let _ = stream.write_all(&frame);
            }
            return Err(error);
        }
    };
    stream.write_all(&challenge)?;
    let (header, payload) = read_frame(stream, HANDSHAKE_MAX_FRAME)?;
    pending.proof(&header, &payload)
}

/// The accepting side of the handshake without I/O, for an event loop that
/// reads frames itself (the rendezvous store): [`Acceptor::hello`] takes the
/// first frame and gives the challenge to send, [`Acceptor::proof`] takes
/// the second and gives the peer's rank. [`accept`] is these two steps over
/// a blocking stream.
#[derive(Debug)]
pub struct Acceptor {
    job_id: String,
    peer: u32,
    nonce_i: Vec<u8>,
    nonce_a: [u8; NONCE_LEN],
    secret: JobSecret,
}

/// A handshake refused by the acceptor: why, and the refusal frame to send
/// the peer when it got far enough to be told.
#[derive(Debug)]
pub struct Refused {
    /// What went wrong.
    pub error: HandshakeError,
    /// A `Refusal` frame for the peer, or `None` when it is not owed one.
    pub tell: Option<Vec<u8>>,
}

impl Acceptor {
    /// Checks the peer's `Hello` and returns the step that waits for its
    /// proof, with the encoded `Challenge` frame to send first.
    pub fn hello(
        header: &FrameHeader,
        payload: &[u8],
        job_id: &str,
        my_rank: u32,
        secret: &JobSecret,
    ) -> Result<(Acceptor, Vec<u8>), Refused> {
        let quiet = |error: HandshakeError| Refused { error, tell: None };
        let told = |error: HandshakeError, reason: &str| Refused {
            error,
            tell: Some(control_frame(
                FrameKind::Refusal,
                my_rank,
                &wire::encode_reason(false, reason),
            )),
        };
        expect(header, payload, FrameKind::Hello).map_err(quiet)?;
        let hello = HelloMsg::decode(payload).map_err(|e| quiet(e.into()))?;
        if hello.protocol != PROTOCOL {
            return Err(told(
                HandshakeError::Protocol {
                    theirs: hello.protocol,
                },
                "protocol mismatch",
            ));
        }
        if hello.job_id != job_id {
            let reason = format!("this endpoint belongs to job {job_id}");
            return Err(told(
                AuthError::OtherJob {
                    theirs: hello.job_id,
                    ours: job_id.to_string(),
                }
                .into(),
                &reason,
            ));
        }
        if hello.nonce.len() != NONCE_LEN {
            return Err(quiet(AuthError::BadNonce(hello.nonce.len()).into()));
        }
        let nonce_a = random_bytes();
        let proof = secret.acceptor_proof(job_id, hello.rank, &hello.nonce, &nonce_a);
        let challenge = ChallengeMsg {
            nonce: nonce_a.to_vec(),
            proof: proof.to_vec(),
        };
        let frame = control_frame(FrameKind::Challenge, my_rank, &challenge.encode());
        let pending = Acceptor {
            job_id: job_id.to_string(),
            peer: hello.rank,
            nonce_i: hello.nonce,
            nonce_a,
            secret: secret.clone(),
        };
        Ok((pending, frame))
    }

    /// Checks the peer's `Proof`; returns its rank.
    pub fn proof(self, header: &FrameHeader, payload: &[u8]) -> Result<u32, HandshakeError> {
        expect(header, payload, FrameKind::Proof)?;
        let received = wire::decode_proof(payload)?;
        JobSecret::verify(
            &self
                .secret
                .initiator_proof(&self.job_id, self.peer, &self.nonce_i, &self.nonce_a),
            &received,
        )?;
        Ok(self.peer)
    }
}

fn control_frame(kind: FrameKind, src: u32, payload: &[u8]) -> Vec<u8> {
    // Handshake payloads are a few hundred bytes: the length always fits.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    encode_frame(&FrameHeader::control(kind, src, len), payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair(
        client_secret: JobSecret,
        client_job: &'static str,
    ) -> (Result<(), String>, Result<u32, String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server_secret = JobSecret::from_bytes([7; 32]);
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            accept(&mut s, "job-a", 0, &server_secret).map_err(|e| e.to_string())
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let client = initiate(&mut c, client_job, 5, &client_secret).map_err(|e| e.to_string());
        drop(c);
        (client, server.join().unwrap())
    }

    #[test]
    fn good_secret_connects() {
        let (c, s) = pair(JobSecret::from_bytes([7; 32]), "job-a");
        assert_eq!(c, Ok(()));
        assert_eq!(s, Ok(5));
    }

    #[test]
    fn wrong_secret_is_refused_both_ways() {
        let (c, s) = pair(JobSecret::from_bytes([8; 32]), "job-a");
        assert!(c.unwrap_err().contains("does not hold"));
        assert!(s.is_err());
    }

    #[test]
    fn other_job_is_refused() {
        let (c, s) = pair(JobSecret::from_bytes([7; 32]), "job-b");
        assert!(c.unwrap_err().contains("refused"));
        assert!(s.unwrap_err().contains("job-b"));
    }
}
