//! Mutual challenge-response authentication on the per-job secret (HMAC-SHA256).
//!
//! ```text
//! initiator                                   acceptor
//!   Hello { job_id, rank, nonce_i }  ───────▶  job_id must match
//!                                    ◀───────  Challenge { nonce_a, mac(acceptor, nonce_i, nonce_a) }
//!   verify acceptor's mac
//!   Proof { mac(initiator, nonce_a, nonce_i) } ▶ verify
//! ```
//!
//! Both macs bind the role, the job id, the initiator's rank and both nonces, so
//! a proof cannot be replayed on another connection, reflected back to its
//! sender, or reused by a rank claiming another rank number. Nothing but these
//! three frames is accepted before the proof checks out.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Length of nonces and macs in bytes.
pub const NONCE_LEN: usize = 32;

/// The secret shared by all ranks of one job.
#[derive(Clone, PartialEq, Eq)]
pub struct JobSecret([u8; 32]);

impl std::fmt::Debug for JobSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSecret(..)")
    }
}

/// A secret that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not 64 hexadecimal digits.
    #[error("job secret must be 64 hexadecimal digits (32 bytes), got {len} characters")]
    BadHex {
        /// Length of what was given.
        len: usize,
    },
}

impl JobSecret {
    /// A fresh random secret (from the OS generator).
    pub fn random() -> Self {
        JobSecret(random_bytes())
    }

    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        JobSecret(bytes)
    }

    /// Derives a job secret from a longer-lived key and a context string
    /// (for example a per-user key file and the Slurm job and step ids).
    pub fn derive(key: &[u8], context: &str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(b"lumen-job-secret\0");
        mac.update(context.as_bytes());
        JobSecret(mac.finalize().into_bytes().into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecretError::BadHex { len: text.len() });
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| SecretError::BadHex { len: text.len() })?;
        }
        Ok(JobSecret(out))
    }

    /// 64 lowercase hex digits (to pass the secret to child processes).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(
        &self,
        role: Role,
        job_id: &str,
        initiator_rank: u32,
        first: &[u8],
        second: &[u8],
    ) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(match role {
            Role::Initiator => b"lumen-initiator\0",
            Role::Acceptor => b"lumen-acceptor\0\0",
        });
        mac.update(&(job_id.len() as u64).to_le_bytes());
        mac.update(job_id.as_bytes());
        mac.update(&initiator_rank.to_le_bytes());
        mac.update(first);
        mac.update(second);
        mac.finalize().into_bytes().into()
    }

    /// The acceptor's proof, sent in the Challenge.
    pub fn acceptor_proof(
        &self,
        job_id: &str,
        initiator_rank: u32,
        nonce_i: &[u8],
        nonce_a: &[u8],
    ) -> [u8; 32] {
        self.mac(Role::Acceptor, job_id, initiator_rank, nonce_i, nonce_a)
    }

    /// The initiator's proof, sent in the Proof frame.
    pub fn initiator_proof(
        &self,
        job_id: &str,
        initiator_rank: u32,
        nonce_i: &[u8],
        nonce_a: &[u8],
    ) -> [u8; 32] {
        self.mac(Role::Initiator, job_id, initiator_rank, nonce_a, nonce_i)
    }

    /// Checks a proof in constant time.
    pub fn verify(expected: &[u8; 32], received: &[u8]) -> Result<(), AuthError> {
        if received.len() != expected.len() {
            return Err(AuthError::BadProof);
        }
        let diff = expected
            .iter()
            .zip(received)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(AuthError::BadProof)
        }
    }
}

#[derive(Clone, Copy)]
enum Role {
    Initiator,
    Acceptor,
}

/// Why a handshake failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The proof does not match: the peer does not hold this job's secret.
    #[error("authentication failed: the peer does not hold this job's secret")]
    BadProof,
    /// The peer belongs to a different job.
    #[error("peer belongs to job {theirs:?}, this rank to job {ours:?}")]
    OtherJob {
        /// Peer's job id.
        theirs: String,
        /// This rank's job id.
        ours: String,
    },
    /// A nonce of the wrong length.
    #[error("nonce of {0} bytes, expected {NONCE_LEN}")]
    BadNonce(usize),
}

/// 32 random bytes from the operating system.
pub fn random_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    rand::fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_roles_differ() {
        let s = JobSecret::random();
        let (ni, na) = (random_bytes(), random_bytes());
        let a = s.acceptor_proof("job", 3, &ni, &na);
        let i = s.initiator_proof("job", 3, &ni, &na);
        assert_ne!(a, i, "a reflected proof must not verify");
        assert!(JobSecret::verify(&s.acceptor_proof("job", 3, &ni, &na), &a).is_ok());
        assert!(JobSecret::verify(&s.acceptor_proof("job", 4, &ni, &na), &a).is_err());
        assert!(JobSecret::verify(&s.acceptor_proof("other", 3, &ni, &na), &a).is_err());
        let other = JobSecret::random();
        assert!(JobSecret::verify(&other.acceptor_proof("job", 3, &ni, &na), &a).is_err());
        assert!(JobSecret::verify(&a, &a[..31]).is_err());
    }

    #[test]
    fn hex_round_trip() {
        let s = JobSecret::random();
        assert_eq!(JobSecret::from_hex(&s.to_hex()), Ok(s));
        assert!(JobSecret::from_hex("abc").is_err());
        assert!(JobSecret::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn derive_depends_on_context() {
        assert_ne!(
            JobSecret::derive(b"k", "1.0"),
            JobSecret::derive(b"k", "1.1")
        );
        assert_eq!(
            JobSecret::derive(b"k", "1.0"),
            JobSecret::derive(b"k", "1.0")
        );
    }
}
