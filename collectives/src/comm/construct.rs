//! Building communicators: `world` (context 0), `split` and `create`
//! (collective over the parent), `create_group` (collective over the new
//! members only).
//!
//! # Context ids
//!
//! Every communicator that shares a rank needs its own context id (the
//! tag's 20-bit context field, see [`super::tags`]). Each process keeps the
//! next free id (`NEXT_CONTEXT`); `split` agrees on a new one by taking the
//! maximum of the members' next free ids in the allgather it needs anyway
//! (MPICH's scheme), and `create_group`, whose parent's other ranks do not
//! take part, agrees through a temporary communicator in the reserved
//! context `GROUP_CONTEXT + tag`. Ids above `MAX_CONTEXT` are never handed
//! out: they belong to those agreements and to the liveness probe.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use lumen_transport::{Endpoint, Rank};

use super::tags::{GROUP_CONTEXT, MAX_CONTEXT};
use super::{Communicator, Inner, SCHEDULE_KINDS};
use crate::config::{AllreduceAlgorithm, CollectiveConfig};
use crate::element::ReduceOp;
use crate::error::{CollectiveError, Result};

/// Next free context id of this process (world is 0).
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

/// CPUs of the machine (not of this thread's affinity mask: a rank pinned to
/// one core is not a sign of oversubscription).
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts the CPUs of a kernel CPU list such as `0-3,6,8-9`.
fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                b.parse::<usize>()
                    .ok()?
                    .checked_sub(a.parse::<usize>().ok()?)?
                    + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

impl Communicator {
    /// The communicator of every rank of the job (context 0), with settings
    /// from the `LUMEN_COLL_*` variables. Collective: every rank calls it
    /// once (a job that spans nodes builds its node and leader groups here).
    pub fn world(endpoint: Endpoint) -> Result<Self> {
        let config = CollectiveConfig::from_env(|k| std::env::var(k).ok())?;
        Self::world_with_config(endpoint, config)
    }

    /// A handle on every rank of the job, made without communication (no
    /// two-level structure): the parent for [`Communicator::create_group`]
    /// where not every rank takes part, e.g. inside a runtime task or actor.
    /// Collectives on it need every rank of the job, as on `world`.
    pub fn world_handle(endpoint: Endpoint) -> Result<Self> {
        let config = CollectiveConfig::from_env(|k| std::env::var(k).ok())?;
        let members: Vec<Rank> = (0..endpoint.size()).collect();
        Self::build(endpoint, members, 0, config, false)
    }

    /// [`Communicator::world`] with explicit settings.
    pub fn world_with_config(endpoint: Endpoint, config: CollectiveConfig) -> Result<Self> {
        let members: Vec<Rank> = (0..endpoint.size()).collect();
        Self::build(endpoint, members, 0, config, true)
    }

    pub(super) fn build(
        endpoint: Endpoint,
        members: Vec<Rank>,
        context: u32,
        config: CollectiveConfig,
        hierarchical: bool,
    ) -> Result<Self> {
        let me = endpoint.rank();
        let rank = members.iter().position(|&r| r == me).unwrap_or(0) as u32;
        let members_len = members.len();
        let yield_wait = config.yield_when_idle.unwrap_or_else(|| {
            let local = (0..endpoint.size())
                .filter(|&r| endpoint.is_local(r))
                .count();
            local > online_cpus()
        });
        let comm = Communicator {
            inner: Arc::new(Inner {
                yield_wait,
                local: members.iter().map(|&m| endpoint.is_local(m)).collect(),
                schedules: (0..SCHEDULE_KINDS * members_len)
                    .map(|_| OnceLock::new())
                    .collect(),
                pending: AtomicUsize::new(0),
                endpoint,
                members,
                rank,
                context,
                sequence: AtomicU32::new(0),
                config,
                hierarchy: OnceLock::new(),
                shm: OnceLock::new(),
                exec: Mutex::new(()),
                outstanding: Mutex::new(0),
                drained: Condvar::new(),
                worker: Mutex::new(None),
                started_workers: AtomicUsize::new(0),
            }),
        };
        let hierarchy = if hierarchical {
            comm.build_hierarchy()?
        } else {
            None
        };
        let _ = comm.inner.hierarchy.set(hierarchy);
        Ok(comm)
    }

    /// Splits into disjoint communicators, as `MPI_Comm_split`: ranks passing
    /// the same `color` form one, ordered by `key` and then by rank here;
    /// `None` (MPI_UNDEFINED) joins none and gets `None`. Collective.
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<Communicator>> {
        let _guard = self.enter();
        self.split_with(color, key, true)
    }

    /// The communicator of the listed ranks (ranks of this communicator), in
    /// that order, as `MPI_Comm_create`; ranks not listed get `None`.
    /// Collective over this communicator; every rank passes the same list.
    pub fn create(&self, ranks: &[u32]) -> Result<Option<Communicator>> {
        for &r in ranks {
            self.check_rank("create", r)?;
        }
        let _guard = self.enter();
        let position = ranks.iter().position(|&r| r == self.rank());
        self.split_with(position.map(|_| 0), position.unwrap_or(0) as i64, true)
    }

    /// A communicator of `ranks` (in that order), collective over those
    /// ranks only (`MPI_Comm_create_group`): the others need not call it,
    /// so a subset of ranks — the ranks hosting a placement group's bundles,
    /// say — can build its communicator on its own. Every member passes the
    /// same `ranks` and `tag`; concurrent calls whose groups share a rank
    /// must use different tags.
    pub fn create_group(&self, ranks: &[u32], tag: u16) -> Result<Communicator> {
        for &r in ranks {
            self.check_rank("create_group", r)?;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(&twice) = ranks.iter().find(|&&r| !seen.insert(r)) {
            return Err(CollectiveError::DuplicateRank {
                op: "create_group",
                rank: twice,
                ranks: ranks.to_vec(),
            });
        }
        if !ranks.contains(&self.rank()) {
            return Err(CollectiveError::NotMember {
                op: "create_group",
                rank: self.rank(),
                ranks: ranks.to_vec(),
            });
        }
        let members: Vec<Rank> = ranks
            .iter()
            .map(|&r| self.inner.members[r as usize])
            .collect();
        // Agree on a context id among the members only, through a
        // communicator in the reserved context of this tag.
        let agreement = Communicator::build(
            self.inner.endpoint.clone(),
            members.clone(),
            GROUP_CONTEXT + u32::from(tag),
            CollectiveConfig {
                shm: false,
                ..self.inner.config.clone()
            },
            false,
        )?;
        let mut next = [u64::from(NEXT_CONTEXT.load(Ordering::Acquire))];
        agreement.allreduce_impl(
            &mut next,
            ReduceOp::Max,
            AllreduceAlgorithm::RecursiveDoubling,
        )?;
        let context = next[0] as u32;
        if context > MAX_CONTEXT {
            return Err(CollectiveError::ContextsExhausted(context));
        }
        NEXT_CONTEXT.fetch_max(context + 1, Ordering::AcqRel);
        Communicator::build(
            self.inner.endpoint.clone(),
            members,
            context,
            self.inner.config.clone(),
            true,
        )
    }

    pub(super) fn split_with(
        &self,
        color: Option<u32>,
        key: i64,
        hierarchical: bool,
    ) -> Result<Option<Communicator>> {
        let next = NEXT_CONTEXT.load(Ordering::Acquire);
        let mine = [
            u64::from(color.is_some()),
            u64::from(color.unwrap_or(0)),
            key as u64,
            u64::from(next),
        ];
        let p = self.size() as usize;
        let mut table = vec![0u64; 4 * p];
        table[4 * self.rank() as usize..][..4].copy_from_slice(&mine);
        self.allgather_in_place_impl(&mut table)?;
        let context = table.chunks(4).map(|e| e[3]).max().unwrap_or(1) as u32;
        if context > MAX_CONTEXT {
            return Err(CollectiveError::ContextsExhausted(context));
        }
        NEXT_CONTEXT.fetch_max(context + 1, Ordering::AcqRel);
        let Some(color) = color else {
            return Ok(None);
        };
        let mut chosen: Vec<(i64, usize)> = table
            .chunks(4)
            .enumerate()
            .filter(|(_, e)| e[0] == 1 && e[1] == u64::from(color))
            .map(|(r, e)| (e[2] as i64, r))
            .collect();
        chosen.sort();
        let members = chosen.iter().map(|&(_, r)| self.inner.members[r]).collect();
        Communicator::build(
            self.inner.endpoint.clone(),
            members,
            context,
            self.inner.config.clone(),
            hierarchical,
        )
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
