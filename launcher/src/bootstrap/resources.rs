//! The rank's share of a Slurm allocation: CPUs it is bound to
//! (`sched_setaffinity`) and GPUs it is given, computed by the pure policy
//! of [`lumen_slurm::binding`] from what the environment says.

use lumen_slurm::binding::{cpus_for_local_rank, gpus_for_local_rank, CpuBinding, GpuAssignment};

use super::error::BootstrapError;
use super::Env;
use crate::env::{LaunchKind, World};

/// What the allocation gives one rank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RankResources {
    /// CPUs the process was bound to; `None` when it was left unbound (the
    /// reason is logged at debug level).
    pub cpus: Option<Vec<usize>>,
    /// GPUs of this rank: CUDA ordinal in this process and the node's name
    /// for the device.
    pub gpus: Vec<GpuAssignment>,
}

/// Computes (and applies, for CPUs) the rank's share of the allocation.
pub(super) fn bind_resources(world: &World, env: Env<'_>) -> Result<RankResources, BootstrapError> {
    if !matches!(world.kind, LaunchKind::Slurm { .. }) {
        return Ok(RankResources::default());
    }
    let number = |name: &str| env(name).and_then(|v| v.trim().parse::<u32>().ok());
    let step_gpus: Option<Vec<u32>> = env("SLURM_STEP_GPUS")
        .or_else(|| env("SLURM_JOB_GPUS"))
        .map(|list| {
            list.split(',')
                .filter_map(|g| g.trim().parse().ok())
                .collect()
        });
    let gpus = gpus_for_local_rank(
        step_gpus.as_deref(),
        env("CUDA_VISIBLE_DEVICES").as_deref(),
        world.local_rank,
        world.local_size,
        number("SLURM_GPUS_PER_TASK"),
    )
    .map_err(|source| BootstrapError::Gpus {
        rank: world.rank,
        source,
    })?;
    let cpus = match cpus_for_local_rank(
        &allowed_cpus(),
        world.local_rank,
        world.local_size,
        number("SLURM_CPUS_PER_TASK"),
    ) {
        CpuBinding::Cpus(cpus) => {
            if let Err(source) = set_affinity(&cpus) {
                return Err(BootstrapError::Affinity {
                    rank: world.rank,
                    cpus,
                    source,
                });
            }
            Some(cpus)
        }
        CpuBinding::Unbound(reason) => {
            tracing::debug!(rank = world.rank, reason, "not binding CPUs");
            None
        }
    };
    Ok(RankResources { cpus, gpus })
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
