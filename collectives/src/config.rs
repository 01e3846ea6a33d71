//! Algorithm selection: which schedule runs for a given size, rank count and
//! topology, and the settings that override the choice.
//!
//! Settings are read once, through a lookup function (pure, tested with a
//! map), from these variables:
//!
//! | variable | values | default |
//! |---|---|---|
//! | `LUMEN_COLL_ALLREDUCE` | `auto`, `ring`, `rd`, `rabenseifner`, `direct`, `hier` | `auto` |
//! | `LUMEN_COLL_BCAST` | `auto`, `binomial`, `scatter_allgather` | `auto` |
//! | `LUMEN_COLL_RD_MAX` | bytes: recursive doubling at or below | 16384 |
//! | `LUMEN_COLL_RING_MIN` | bytes: ring at or above (Rabenseifner between) | 262144 |
//! | `LUMEN_COLL_BCAST_LARGE` | bytes: scatter+allgather bcast at or above | 1048576 |
//! | `LUMEN_COLL_SEGMENT` | bytes per pipelined segment, 0 = none | 262144 |
//! | `LUMEN_COLL_DIRECT_MAX` | bytes per block: direct (one-round) allgather and alltoall at or below, over 2 ranks | 1024 |
//! | `LUMEN_EAGER_LIMIT` | the transport's eager limit (segments stay below it when yielding) | 16384 |
//! | `LUMEN_COLL_YIELD` | `auto`, `on`, `off`: wait by polling and yielding the core | `auto`: on when this node has more ranks than cores |
//! | `LUMEN_COLL_SHM` | `on`, `off`: shared-memory collectives inside a node ([`crate::shm`]) | `on` |
//! | `LUMEN_COLL_SHM_SLOT` | bytes per rank and step in the shared segment (the pipeline chunk) | 262144 |
//! | `LUMEN_COLL_SHM_SMALL` | bytes: a chunk this short is reduced whole by every rank (one handshake instead of two) | 4096 |
//! | `LUMEN_COLL_SHM_COPY_MIN` | bytes per block: allgather and alltoall read peers' buffers directly (`process_vm_readv`, one copy) from this size | 32768 |
//! | `LUMEN_COLL_SHM_BCAST_COPY_MIN` | bytes: bcast reads the root's buffer directly from this size, unless the node is oversubscribed (there the slot pipeline, where the root's copy overlaps the readers', measured 2-4x faster at 1 MiB over 4 ranks on 2 cores) | 32768 |
//! | `LUMEN_COLL_SHM_REDUCE_COPY_MIN` | bytes: allreduce reads peers' buffers directly (single copy) from this size | 1048576 |
//! | `LUMEN_COLL_SHM_MAX` | bytes: shared-memory allreduce/bcast up to this size, point-to-point above | unlimited |
//!
//! On a communicator whose members all share one node, `auto` uses the
//! shared-memory algorithms for allreduce, bcast and barrier (see
//! [`crate::shm`] for why). Otherwise `auto` picks, in this order: the hierarchical variant when the
//! communicator spans several nodes and some node holds several of its ranks;
//! the direct exchange up to `direct_max` bytes over 3 to 8 ranks (one
//! round of `p - 1` messages); recursive doubling up to `rd_max` bytes (latency-bound: `log2 p` rounds);
//! the ring from `ring_min` bytes (bandwidth-bound: every rank sends
//! `2(p-1)/p` of the data, in `2(p-1)` rounds); Rabenseifner in between
//! (`2 log2 p` rounds, ring-like volume). The thresholds are where the curves
//! crossed on the 2-core development VM (see BENCHMARKS.md).

use crate::error::{CollectiveError, Result};

/// Allreduce algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllreduceAlgorithm {
    /// Chosen by size, rank count and topology.
    Auto,
    /// Ring reduce-scatter + ring allgather.
    Ring,
    /// Recursive doubling.
    RecursiveDoubling,
    /// Recursive halving + recursive doubling (Rabenseifner).
    Rabenseifner,
    /// Every rank sends its buffer to every other in one round, then
    /// reduces all buffers in rank order (so every rank gets bit-identical
    /// results); for short buffers over more than two ranks.
    Direct,
    /// Reduce inside each node, allreduce among node leaders, broadcast inside.
    Hierarchical,
    /// Through a segment all members map (communicators inside one node;
    /// elsewhere `Auto`'s choice).
    Shm,
}

/// Broadcast algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcastAlgorithm {
    /// Chosen by size.
    Auto,
    /// Binomial tree of the whole buffer.
    Binomial,
    /// Binomial scatter, then ring allgather (van de Geijn).
    ScatterAllgather,
    /// Through a segment all members map (communicators inside one node;
    /// elsewhere `Auto`'s choice).
    Shm,
}

/// Settings of the collectives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectiveConfig {
    /// Forced allreduce algorithm, or `Auto`.
    pub allreduce: AllreduceAlgorithm,
    /// Forced broadcast algorithm, or `Auto`.
    pub bcast: BcastAlgorithm,
    /// Recursive doubling up to this many bytes.
    pub rd_max: usize,
    /// Ring from this many bytes.
    pub ring_min: usize,
    /// Scatter+allgather broadcast from this many bytes.
    pub bcast_large: usize,
    /// Messages above this size are cut into segments of this size, each
    /// received and reduced before the next is taken (keeps the reduced data
    /// in cache); 0 disables.
    pub segment: usize,
    /// Wait for messages by polling and yielding the core (`Some(true)`),
    /// with the transport's spin-then-sleep (`Some(false)`), or decide by
    /// whether the node has more ranks than cores (`None`).
    pub yield_when_idle: Option<bool>,
    /// The transport's eager limit (`LUMEN_EAGER_LIMIT`): segments stay
    /// below it on oversubscribed nodes.
    pub eager_limit: usize,
    /// Allgather and alltoall blocks up to this many bytes go in one round
    /// (every send, then every receive) instead of the ring / pairwise
    /// exchange, when there are more than two ranks.
    pub direct_max: usize,
    /// Shared-memory collectives inside a node.
    pub shm: bool,
    /// Bytes per rank and step of the shared segment.
    pub shm_slot: usize,
    /// Chunks up to this many bytes are reduced whole by every rank.
    pub shm_small: usize,
    /// Shared-memory allreduce and bcast up to this many bytes.
    pub shm_max: usize,
    /// Blocks of at least this many bytes are read straight from the
    /// peer's buffer (allgather, alltoall, bcast) where the node allows it.
    pub shm_copy_min: usize,
    /// Allreduce of at least this many bytes reads peers' buffers directly.
    pub shm_reduce_copy_min: usize,
    /// Bcast of at least this many bytes reads the root's buffer directly.
    pub shm_bcast_copy_min: usize,
}

impl Default for CollectiveConfig {
    fn default() -> Self {
        CollectiveConfig {
            allreduce: AllreduceAlgorithm::Auto,
            bcast: BcastAlgorithm::Auto,
            rd_max: 16 * 1024,
            ring_min: 256 * 1024,
            bcast_large: 1024 * 1024,
            segment: 256 * 1024,
            yield_when_idle: None,
            eager_limit: 16 * 1024,
            direct_max: 1024,
            shm: true,
            shm_slot: 256 * 1024,
            shm_small: 4096,
            shm_max: usize::MAX,
            shm_copy_min: 32 * 1024,
            shm_reduce_copy_min: 1024 * 1024,
            shm_bcast_copy_min: 32 * 1024,
        }
    }
}

fn bytes(variable: &'static str, value: &str) -> Result<usize> {
    let v = value.trim();
    let (digits, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => 0,
    };
    digits
        .parse::<usize>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|d| d.checked_mul(scale))
        .ok_or_else(|| CollectiveError::Config {
            variable,
            value: value.to_string(),
            expected: "a byte count such as 65536, 64K or 1M",
        })
}

impl CollectiveConfig {
    /// Reads the `LUMEN_COLL_*` variables through `lookup` (normally
    /// `|name| std::env::var(name).ok()`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut config = CollectiveConfig::default();
        if let Some(v) = lookup("LUMEN_COLL_ALLREDUCE") {
            config.allreduce = match v.trim() {
                "auto" | "" => AllreduceAlgorithm::Auto,
                "ring" => AllreduceAlgorithm::Ring,
                "rd" | "recursive_doubling" => AllreduceAlgorithm::RecursiveDoubling,
                "rabenseifner" => AllreduceAlgorithm::Rabenseifner,
                "direct" => AllreduceAlgorithm::Direct,
                "hier" | "hierarchical" => AllreduceAlgorithm::Hierarchical,
                "shm" => AllreduceAlgorithm::Shm,
                _ => {
                    return Err(CollectiveError::Config {
                        variable: "LUMEN_COLL_ALLREDUCE",
                        value: v,
                        expected: "one of auto, ring, rd, rabenseifner, direct, hier, shm",
                    })
                }
            };
        }
        if let Some(v) = lookup("LUMEN_COLL_BCAST") {
            config.bcast = match v.trim() {
                "auto" | "" => BcastAlgorithm::Auto,
                "binomial" => BcastAlgorithm::Binomial,
                "scatter_allgather" => BcastAlgorithm::ScatterAllgather,
                "shm" => BcastAlgorithm::Shm,
                _ => {
                    return Err(CollectiveError::Config {
                        variable: "LUMEN_COLL_BCAST",
                        value: v,
                        expected: "one of auto, binomial, scatter_allgather, shm",
                    })
                }
            };
        }
        if let Some(v) = lookup("LUMEN_COLL_YIELD") {
            config.yield_when_idle = match v.trim() {
                "auto" | "" => None,
                "on" | "1" | "true" => Some(true),
                "off" | "0" | "false" => Some(false),
                _ => {
                    return Err(CollectiveError::Config {
                        variable: "LUMEN_COLL_YIELD",
                        value: v,
                        expected: "one of auto, on, off",
                    })
                }
            };
        }
        if let Some(v) = lookup("LUMEN_COLL_SHM") {
            config.shm = match v.trim() {
                "on" | "1" | "true" | "" => true,
                "off" | "0" | "false" => false,
                _ => {
                    return Err(CollectiveError::Config {
                        variable: "LUMEN_COLL_SHM",
                        value: v,
                        expected: "on or off",
                    })
                }
            };
        }
        for (name, slot) in [
            ("LUMEN_COLL_RD_MAX", &mut config.rd_max),
            ("LUMEN_COLL_RING_MIN", &mut config.ring_min),
            ("LUMEN_COLL_BCAST_LARGE", &mut config.bcast_large),
            ("LUMEN_COLL_SEGMENT", &mut config.segment),
            ("LUMEN_EAGER_LIMIT", &mut config.eager_limit),
            ("LUMEN_COLL_DIRECT_MAX", &mut config.direct_max),
            ("LUMEN_COLL_SHM_SLOT", &mut config.shm_slot),
            ("LUMEN_COLL_SHM_SMALL", &mut config.shm_small),
            ("LUMEN_COLL_SHM_MAX", &mut config.shm_max),
            ("LUMEN_COLL_SHM_COPY_MIN", &mut config.shm_copy_min),
            (
                "LUMEN_COLL_SHM_REDUCE_COPY_MIN",
                &mut config.shm_reduce_copy_min,
            ),
            (
                "LUMEN_COLL_SHM_BCAST_COPY_MIN",
                &mut config.shm_bcast_copy_min,
            ),
        ] {
            if let Some(v) = lookup(name) {
                *slot = bytes(name, &v)?;
            }
        }
        Ok(config)
    }

    /// The allreduce algorithm for `bytes` bytes over `p` ranks; `hierarchy`
    /// says whether the communicator spans nodes with several ranks on some.
    /// Never returns `Auto`; `Hierarchical` only when `hierarchy` is true.
    pub fn choose_allreduce(&self, bytes: usize, p: usize, hierarchy: bool) -> AllreduceAlgorithm {
        let flat = |bytes: usize| {
            // Direct sends p - 1 copies of the buffer where recursive
            // doubling sends log2 p: worth it only for few ranks.
            if p <= 8 && self.direct(bytes, p) {
                AllreduceAlgorithm::Direct
            } else if bytes <= self.rd_max || p <= 2 && bytes < self.ring_min {
                AllreduceAlgorithm::RecursiveDoubling
            } else if bytes >= self.ring_min {
                AllreduceAlgorithm::Ring
            } else {
                AllreduceAlgorithm::Rabenseifner
            }
        };
        match self.allreduce {
            AllreduceAlgorithm::Auto if hierarchy => AllreduceAlgorithm::Hierarchical,
            AllreduceAlgorithm::Auto => flat(bytes),
            AllreduceAlgorithm::Hierarchical if !hierarchy => flat(bytes),
            // Only reached where no segment exists.
            AllreduceAlgorithm::Shm => flat(bytes),
            forced => forced,
        }
    }

    /// Whether an allgather or alltoall with blocks of `block_bytes` over
    /// `p` ranks goes in one direct round.
    pub fn direct(&self, block_bytes: usize, p: usize) -> bool {
        p > 2 && block_bytes <= self.direct_max
    }

    /// The broadcast algorithm for `bytes` bytes over `p` ranks;
    /// `oversubscribed` when ranks wait by yielding (more ranks than cores).
    /// There the binomial tree's root runs ahead of its children, fills the
    /// shared-memory rings and then waits for room in 2 ms naps; the
    /// scatter+allgather keeps every rank in step (64 KiB over 4 ranks on 2
    /// cores: 141 -> 36 us), so it takes over from `bcast_large / 128`.
    pub fn choose_bcast(&self, bytes: usize, p: usize, oversubscribed: bool) -> BcastAlgorithm {
        let large = if oversubscribed {
            self.bcast_large / 128
        } else {
            self.bcast_large
        };
        match self.bcast {
            BcastAlgorithm::Auto | BcastAlgorithm::Shm if p > 2 && bytes >= large => {
                BcastAlgorithm::ScatterAllgather
            }
            BcastAlgorithm::Auto | BcastAlgorithm::Shm => BcastAlgorithm::Binomial,
            forced => forced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<CollectiveConfig> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CollectiveConfig::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn parses_and_rejects() {
        let c = config(&[
            ("LUMEN_COLL_ALLREDUCE", "ring"),
            ("LUMEN_COLL_SEGMENT", "64K"),
            ("LUMEN_COLL_RD_MAX", "2048"),
        ])
        .unwrap();
        assert_eq!(c.allreduce, AllreduceAlgorithm::Ring);
        assert_eq!(c.segment, 65536);
        assert_eq!(c.rd_max, 2048);
        assert!(config(&[("LUMEN_COLL_ALLREDUCE", "fast")]).is_err());
        assert!(config(&[("LUMEN_COLL_SEGMENT", "12Q")]).is_err());
        assert!(config(&[("LUMEN_COLL_SEGMENT", "")]).is_err());
        assert_eq!(config(&[]).unwrap(), CollectiveConfig::default());
    }

    #[test]
    fn selection_by_size_and_topology() {
        let c = CollectiveConfig::default();
        use AllreduceAlgorithm::*;
        assert_eq!(c.choose_allreduce(8, 4, false), Direct);
        assert_eq!(c.choose_allreduce(8, 2, false), RecursiveDoubling);
        assert_eq!(c.choose_allreduce(4096, 4, false), RecursiveDoubling);
        assert_eq!(c.choose_allreduce(8, 16, false), RecursiveDoubling);
        assert_eq!(c.choose_allreduce(65536, 4, false), Rabenseifner);
        assert_eq!(c.choose_allreduce(4 << 20, 4, false), Ring);
        assert_eq!(c.choose_allreduce(8, 6, true), Hierarchical);
        let forced = CollectiveConfig {
            allreduce: Hierarchical,
            ..c.clone()
        };
        assert_eq!(forced.choose_allreduce(8, 4, false), Direct);
        assert_eq!(
            c.choose_bcast(8 << 20, 4, false),
            BcastAlgorithm::ScatterAllgather
        );
        assert_eq!(c.choose_bcast(8 << 20, 2, false), BcastAlgorithm::Binomial);
        assert_eq!(c.choose_bcast(65536, 4, false), BcastAlgorithm::Binomial);
        assert_eq!(
            c.choose_bcast(65536, 4, true),
            BcastAlgorithm::ScatterAllgather
        );
    }
}
