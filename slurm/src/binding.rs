//! Which CPUs and GPUs a task of a step owns: pure functions of the
//! allocation (the CPUs the task may run on, `SLURM_CPUS_PER_TASK`, the GPU
//! variables) and the task's local rank.
//!
//! # CPUs
//!
//! With `--cpus-per-task=c`, local rank `l` of `n` gets the `c` CPUs
//! `allowed[l*c .. (l+1)*c]` of the CPUs the task may run on (its cpuset,
//! in increasing order), so that ranks on one node never share a core. When
//! Slurm already bound the task (`task/affinity` or `task/cgroup` leave
//! exactly `c` CPUs), those are the task's. With no `--cpus-per-task`, or
//! when the allocation holds fewer CPUs than `n*c` (an oversubscribed test
//! cluster), nothing is bound: binding several ranks to one core would be
//! slower than letting the kernel spread them.
//!
//! # GPUs
//!
//! `CUDA_VISIBLE_DEVICES` names the devices this process sees; CUDA numbers
//! them 0.. in that order (the *ordinal*). Under cgroup device constraint
//! Slurm renumbers: `SLURM_STEP_GPUS=2,3` (physical) arrives as
//! `CUDA_VISIBLE_DEVICES=0,1`, so the physical id of ordinal `i` is the
//! `i`-th entry of `SLURM_STEP_GPUS` when both lists have the same length.
//! With `--gpus-per-task=g` local rank `l` takes ordinals `l*g..(l+1)*g`
//! (all of them when Slurm already gave the task exactly `g`); otherwise the
//! visible devices are split evenly, or shared round-robin when there are
//! fewer devices than ranks.

use thiserror::Error;

/// The CPUs one task should run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuBinding {
    /// Bind to these CPU numbers.
    Cpus(Vec<usize>),
    /// Leave the task where it is, for this reason.
    Unbound(&'static str),
}

/// Why a binding cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BindingError {
    /// The task sees fewer GPUs than `--gpus-per-task` times its node's tasks.
    #[error("--gpus-per-task={per_task} with {local_size} tasks on this node needs {needed} GPUs but {visible} are visible (CUDA_VISIBLE_DEVICES/SLURM_STEP_GPUS); ask Slurm for more GPUs (--gpus-per-node) or fewer tasks per node")]
    NotEnoughGpus {
        /// `--gpus-per-task`.
        per_task: u32,
        /// Tasks on the node.
        local_size: u32,
        /// GPUs needed.
        needed: u64,
        /// GPUs visible.
        visible: usize,
    },
    /// An index is out of range (`local_rank >= local_size`).
    #[error("local rank {local_rank} is not below the {local_size} tasks on this node")]
    LocalRank {
        /// The local rank.
        local_rank: u32,
        /// Tasks on the node.
        local_size: u32,
    },
}

/// The CPUs of local rank `local_rank` of `local_size`, from the CPUs the
/// task may run on (`allowed`, e.g. its `sched_getaffinity` mask) and
/// `SLURM_CPUS_PER_TASK`.
///
/// ```
/// use lumen_slurm::binding::{cpus_for_local_rank, CpuBinding};
/// let allowed: Vec<usize> = (0..8).collect();
/// assert_eq!(cpus_for_local_rank(&allowed, 1, 4, Some(2)), CpuBinding::Cpus(vec![2, 3]));
/// assert!(matches!(cpus_for_local_rank(&allowed, 1, 8, Some(2)), CpuBinding::Unbound(_)));
/// ```
pub fn cpus_for_local_rank(
    allowed: &[usize],
    local_rank: u32,
    local_size: u32,
    cpus_per_task: Option<u32>,
) -> CpuBinding {
    let Some(per_task) = cpus_per_task.filter(|&c| c > 0) else {
        return CpuBinding::Unbound("SLURM_CPUS_PER_TASK is not set");
    };
    if local_rank >= local_size {
        return CpuBinding::Unbound("the local rank is outside the node's tasks");
    }
    let mut allowed = allowed.to_vec();
    allowed.sort_unstable();
    allowed.dedup();
    let per_task = per_task as usize;
    if allowed.len() == per_task {
        return CpuBinding::Cpus(allowed);
    }
    let needed = per_task.saturating_mul(local_size as usize);
    if allowed.len() < needed {
        return CpuBinding::Unbound(
            "the task may run on fewer CPUs than its node's tasks times --cpus-per-task (oversubscribed)",
        );
    }
    let first = local_rank as usize * per_task;
    CpuBinding::Cpus(allowed[first..first + per_task].to_vec())
}

/// One GPU a task owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAssignment {
    /// The CUDA device ordinal in this process (index into
    /// `CUDA_VISIBLE_DEVICES`).
    pub ordinal: u32,
    /// The device as the node names it: the `SLURM_STEP_GPUS` entry, else the
    /// `CUDA_VISIBLE_DEVICES` entry (an index or a `GPU-…` UUID).
    pub device: String,
}

/// The GPUs of local rank `local_rank` of `local_size`.
///
/// `step_gpus` is `SLURM_STEP_GPUS` (else `SLURM_JOB_GPUS`) parsed,
/// `cuda_visible` the raw `CUDA_VISIBLE_DEVICES`, `gpus_per_task`
/// `SLURM_GPUS_PER_TASK`.
///
/// ```
/// use lumen_slurm::binding::gpus_for_local_rank;
/// // Two GPUs, physical 2 and 3, renumbered 0,1 by the cgroup; rank 1 of 2.
/// let gpus = gpus_for_local_rank(Some(&[2, 3]), Some("0,1"), 1, 2, None)?;
/// assert_eq!((gpus[0].ordinal, gpus[0].device.as_str()), (1, "3"));
/// # Ok::<(), lumen_slurm::binding::BindingError>(())
/// ```
pub fn gpus_for_local_rank(
    step_gpus: Option<&[u32]>,
    cuda_visible: Option<&str>,
    local_rank: u32,
    local_size: u32,
    gpus_per_task: Option<u32>,
) -> Result<Vec<GpuAssignment>, BindingError> {
    if local_rank >= local_size {
        return Err(BindingError::LocalRank {
            local_rank,
            local_size,
        });
    }
    let visible: Vec<String> = match cuda_visible {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned)
            .collect(),
        None => step_gpus
            .unwrap_or_default()
            .iter()
            .map(u32::to_string)
            .collect(),
    };
    let device_of = |ordinal: usize| -> String {
        match step_gpus {
            Some(step) if step.len() == visible.len() => step[ordinal].to_string(),
            _ => visible[ordinal].clone(),
        }
    };
    let count = visible.len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let (local_rank, local_size) = (local_rank as usize, local_size as usize);
    let ordinals: Vec<usize> = match gpus_per_task.filter(|&g| g > 0) {
        Some(per_task) if count == per_task as usize => (0..count).collect(),
        Some(per_task) => {
            let per = per_task as usize;
            let needed = per as u64 * local_size as u64;
            if (count as u64) < needed {
                return Err(BindingError::NotEnoughGpus {
                    per_task,
                    local_size: local_size as u32,
                    needed,
                    visible: count,
                });
            }
            (local_rank * per..(local_rank + 1) * per).collect()
        }
        None if count >= local_size => {
            let per = count / local_size;
            (local_rank * per..(local_rank + 1) * per).collect()
        }
        None => vec![local_rank % count],
    };
    Ok(ordinals
        .into_iter()
        .map(|ordinal| GpuAssignment {
            ordinal: ordinal as u32,
            device: device_of(ordinal),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordinals(gpus: &[GpuAssignment]) -> Vec<u32> {
        gpus.iter().map(|g| g.ordinal).collect()
    }

    #[test]
    fn cpus_are_split_per_local_rank() {
        let allowed: Vec<usize> = vec![7, 6, 5, 4, 3, 2, 1, 0];
        for rank in 0..4 {
            assert_eq!(
                cpus_for_local_rank(&allowed, rank, 4, Some(2)),
                CpuBinding::Cpus(vec![2 * rank as usize, 2 * rank as usize + 1])
            );
        }
        // A cpuset with holes is used in its own order.
        assert_eq!(
            cpus_for_local_rank(&[4, 5, 12, 13], 1, 2, Some(2)),
            CpuBinding::Cpus(vec![12, 13])
        );
        // Slurm already bound the task to its CPUs.
        assert_eq!(
            cpus_for_local_rank(&[9, 10], 3, 4, Some(2)),
            CpuBinding::Cpus(vec![9, 10])
        );
    }

    #[test]
    fn cpus_stay_unbound_without_a_request_or_when_oversubscribed() {
        let allowed = [0, 1];
        assert!(matches!(
            cpus_for_local_rank(&allowed, 0, 2, None),
            CpuBinding::Unbound(_)
        ));
        assert!(matches!(
            cpus_for_local_rank(&allowed, 0, 2, Some(0)),
            CpuBinding::Unbound(_)
        ));
        assert!(matches!(
            cpus_for_local_rank(&allowed, 0, 4, Some(1)),
            CpuBinding::Unbound(_)
        ));
        assert!(matches!(
            cpus_for_local_rank(&allowed, 5, 2, Some(1)),
            CpuBinding::Unbound(_)
        ));
        assert_eq!(
            cpus_for_local_rank(&allowed, 1, 2, Some(1)),
            CpuBinding::Cpus(vec![1])
        );
    }

    #[test]
    fn gpus_follow_the_renumbering() {
        let gpus = gpus_for_local_rank(Some(&[4, 5, 6, 7]), Some("0,1,2,3"), 1, 2, None).unwrap();
        assert_eq!(ordinals(&gpus), [2, 3]);
        assert_eq!(gpus[0].device, "6");
        // No cgroup renumbering: CUDA_VISIBLE_DEVICES has the physical ids.
        let gpus = gpus_for_local_rank(Some(&[4, 5]), Some("4,5"), 0, 2, None).unwrap();
        assert_eq!((gpus[0].ordinal, gpus[0].device.as_str()), (0, "4"));
        // Only SLURM_STEP_GPUS: ordinals index it.
        let gpus = gpus_for_local_rank(Some(&[1, 3]), None, 1, 2, None).unwrap();
        assert_eq!((gpus[0].ordinal, gpus[0].device.as_str()), (1, "3"));
        // UUIDs pass through.
        let gpus = gpus_for_local_rank(None, Some("GPU-aa,GPU-bb"), 1, 2, None).unwrap();
        assert_eq!(gpus[0].device, "GPU-bb");
    }

    #[test]
    fn gpus_per_task_and_sharing() {
        let visible = Some("0,1,2,3,4,5");
        assert_eq!(
            ordinals(&gpus_for_local_rank(None, visible, 2, 3, Some(2)).unwrap()),
            [4, 5]
        );
        assert_eq!(
            ordinals(&gpus_for_local_rank(None, Some("0,1"), 3, 4, Some(2)).unwrap()),
            [0, 1]
        );
        assert!(matches!(
            gpus_for_local_rank(None, Some("0,1,2"), 0, 2, Some(2)),
            Err(BindingError::NotEnoughGpus {
                needed: 4,
                visible: 3,
                ..
            })
        ));
        // Fewer GPUs than ranks: shared round-robin.
        assert_eq!(
            ordinals(&gpus_for_local_rank(None, Some("0,1"), 3, 4, None).unwrap()),
            [1]
        );
        assert!(gpus_for_local_rank(None, Some(""), 0, 1, None)
            .unwrap()
            .is_empty());
        assert!(gpus_for_local_rank(None, None, 0, 1, None)
            .unwrap()
            .is_empty());
        assert!(gpus_for_local_rank(None, None, 1, 1, None).is_err());
    }
}
