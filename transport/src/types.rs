//! The plain types every layer of the transport shares: ranks, messages,
//! receive filters, region keys, peer addresses, endpoint options, and how a
//! peer is reached ([`Route`]) and what became of it (`PEER_*`).
//!
//! A leaf module by design: it imports none of `endpoint`, `tcp`, `stripe`
//! (they all import it), which is what keeps the endpoint and its backends
//! free of import circles. The public items are re-exported at the crate
//! root and under `lumen_transport::endpoint`, where users name them.

use std::net::SocketAddr;

use crate::auth::JobSecret;
use crate::config::TransportConfig;
use crate::error::TransportError;

pub use crate::{Rank, RESERVED_TAGS};

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub src: Rank,
    /// Tag given by the sender.
    pub tag: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Which sender a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Any rank.
    Any,
    /// Only this rank.
    Rank(Rank),
}

/// Handle of a registered region, valid at the rank that registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionKey(pub u64);

/// Where a peer is reached; published through the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    /// The peer's rank.
    pub rank: Rank,
    /// Its node index (ranks with the same node share memory).
    pub node: u32,
    /// Its process id.
    pub pid: i32,
    /// Its TCP listener.
    pub tcp: SocketAddr,
    /// Address of a probe word in its memory, to test single-copy reads.
    pub probe: u64,
}

impl PeerAddress {
    /// Text form `rank/node/pid/probe/ip:port`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}/{}/{}/{}/{}",
            self.rank, self.node, self.pid, self.probe, self.tcp
        )
        .into_bytes()
    }

    /// Parses [`PeerAddress::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, TransportError> {
        let bad = || {
            TransportError::PeerTable(format!(
                "malformed peer address {:?}",
                String::from_utf8_lossy(bytes)
            ))
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.splitn(5, '/');
        let mut next = || parts.next().ok_or_else(bad);
        Ok(PeerAddress {
            rank: next()?.parse().map_err(|_| bad())?,
            node: next()?.parse().map_err(|_| bad())?,
            pid: next()?.parse().map_err(|_| bad())?,
            probe: next()?.parse().map_err(|_| bad())?,
            tcp: next()?.parse().map_err(|_| bad())?,
        })
    }
}

/// Who this endpoint is.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// This rank.
    pub rank: Rank,
    /// Ranks in the job.
    pub size: u32,
    /// This rank's node index.
    pub node: u32,
    /// Index among the ranks of this node.
    pub local_rank: u32,
    /// Ranks on this node.
    pub local_size: u32,
    /// Job id (names the segment, checked in every handshake).
    pub job_id: String,
    /// The job's secret.
    pub secret: JobSecret,
    /// Settings.
    pub config: TransportConfig,
}

/// Name of a node's segment: `lumen-{job_id}-n{node}` under /dev/shm.
pub fn segment_name(job_id: &str, node: u32) -> String {
    format!("lumen-{job_id}-n{node}")
}

/// How this rank reaches a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route {
    Myself,
    Local(usize),
    Remote,
}

pub(crate) const PEER_ALIVE: u8 = 0;
pub(crate) const PEER_DEPARTED: u8 = 1;
pub(crate) const PEER_DEAD: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_round_trip_and_garbage() {
        let a = PeerAddress {
            rank: 3,
            node: 1,
            pid: 42,
            tcp: "10.1.2.3:4567".parse().unwrap(),
            probe: 99,
        };
        assert_eq!(PeerAddress::decode(&a.encode()).unwrap(), a);
        assert!(PeerAddress::decode(b"3/1/x/9/1.2.3.4:5").is_err());
        assert!(PeerAddress::decode(b"").is_err());
        assert!(PeerAddress::decode(&[0xff, 0xfe]).is_err());
    }
}
