//! Binding a rank to cores near its GPU and NIC, at start-up: the machine
//! is discovered once (`lumen_sched::topology`: hwloc XML or sysfs), the
//! pure policy (`lumen_sched::topology::bind_local_ranks`) chooses the
//! cores of each local rank within the cpus this process may use (the
//! cpuset `lumen run`, `taskset` or Slurm gives it), and this module applies
//! the choice to **every thread of the process** (the transport's threads
//! exist already; the executor's and actors' threads start after and
//! inherit it).
//!
//! `LUMEN_BIND` ([`BindPolicy`]): `auto` (default) binds when every local
//! rank gets cores of its own and Slurm did not bind the rank already
//! (`--cpus-per-task`); `cores` always binds (ranks share cores when there
//! are more ranks than cores); `none` leaves placement to the OS. The
//! binding is logged at `LUMEN_LOG=info` and returned by
//! [`Runtime::binding`](super::Runtime::binding).
//!
//! The machine comes from `LUMEN_TOPOLOGY_XML` when it names an hwloc XML
//! file (as hwloc's own `HWLOC_XMLFILE`: for machines whose sysfs says too
//! little, and for tests on synthetic machines), else from discovery.
//!
//! # GPUs
//! A rank bound next to GPUs owns them: unless `LUMEN_NUM_GPUS` or the
//! Slurm allocation already said which GPUs the rank has, its binding's
//! GPUs become its GPU set, and its process is narrowed to them —
//! `CUDA_VISIBLE_DEVICES` is set to their indices in PCI order, with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA counts them in that order too,
//! before anything in the process initialises CUDA. Inside the process
//! they are then CUDA ordinals `0..k`, the ids tasks and actors get
//! (`Runtime::gpu_ids`). A `CUDA_VISIBLE_DEVICES` set already (by the
//! user, or by Slurm's gres binding) is left as it is: the rank then uses
//! what it names.
//!
//! # Memory
//! The node's object arena is shared by its local ranks, so it is not
//! bound to one NUMA node as a whole. Its pages are placed where they are
//! first written (Linux's default local policy): by the rank creating the
//! object, on that rank's bound cores, so on its NUMA node. Large objects
//! (at least [`NUMA_BIND_MIN`]) are also asked for on the rank's node
//! explicitly (`mbind(MPOL_PREFERRED)` over the object's pages, see the
//! store), which covers blocks reused after an object of another NUMA
//! node was freed.

use lumen_sched::topology::{bind_local_ranks, RankBinding, Topology, TopologyError};

use super::config::BindPolicy;

/// The CPUs this process may run on now.
fn allowed_cpus() -> Option<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None).ok()?;
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// Sets the affinity of every thread of this process to `cpus`.
fn pin_process(cpus: &[usize]) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu);
    }
    // This thread first: threads it starts later inherit the set.
    rustix::thread::sched_setaffinity(None, &set)?;
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // A thread that ended meanwhile is not an error.
        if let Some(pid) = rustix::process::Pid::from_raw(tid) {
            let _ = rustix::thread::sched_setaffinity(Some(pid), &set);
        }
    }
    Ok(())
}

/// Chooses and applies this rank's binding (local rank `local_rank` of
/// `local_size` on its node). `slurm_cpus`: the cpus Slurm bound the rank
/// to already (`--cpus-per-task`), reported as its binding under `auto`.
/// Never fails the rank: what cannot be done is logged and `None` returned.
pub(crate) fn bind_rank(
    policy: BindPolicy,
    rank: u32,
    local_rank: usize,
    local_size: usize,
    slurm_cpus: Option<&[usize]>,
) -> Option<RankBinding> {
    if policy == BindPolicy::None {
        return None;
    }
    let topology = match machine() {
        Ok(topology) => topology,
        Err(e) => {
            tracing::info!(rank, "not binding: the machine's topology is unknown ({e})");
            return None;
        }
    };
    if let (BindPolicy::Auto, Some(cpus)) = (policy, slurm_cpus) {
        // Slurm bound the process; say what that binding is near.
        let binding = bind_local_ranks(&topology, 1, Some(cpus)).ok()?.pop()?;
        let binding = RankBinding {
            local_rank,
            ..binding
        };
        tracing::info!(rank, "bound by Slurm: {}", describe(&binding));
        return Some(binding);
    }
    let allowed = allowed_cpus();
    let bindings = match bind_local_ranks(&topology, local_size, allowed.as_deref()) {
        Ok(bindings) => bindings,
        Err(e) => {
            tracing::info!(rank, "not binding: {e}");
            return None;
        }
    };
    let mine = bindings.into_iter().nth(local_rank)?;
    if policy == BindPolicy::Auto && mine.cpus_shared {
        tracing::info!(
            rank,
            "not binding: {local_size} local ranks share {} cpus (LUMEN_BIND=cores binds anyway)",
            allowed.as_ref().map_or(0, Vec::len)
        );
        return None;
    }
    if let Err(e) = pin_process(&mine.cpus) {
        tracing::warn!(rank, "binding to cpus {:?} failed: {e}", mine.cpus);
        return None;
    }
    tracing::info!(rank, "bound: {}", describe(&mine));
    Some(mine)
}

fn describe(binding: &RankBinding) -> String {
    let gpus: Vec<String> = binding
        .gpus
        .iter()
        .map(|g| format!("GPU {} ({})", g.index, g.pci_bus_id))
        .collect();
    format!(
        "local rank {} on NUMA node {}, cpus {:?}{}{}",
        binding.local_rank,
        binding.numa,
        binding.cpus,
        if gpus.is_empty() {
            String::new()
        } else {
            format!(", {}", gpus.join(", "))
        },
        binding
            .nic
            .as_ref()
            .map(|n| format!(", NIC {}", n.name.as_deref().unwrap_or(&n.pci_bus_id)))
            .unwrap_or_default()
    )
}

/// Objects at least this large are asked for on the creating rank's NUMA
/// node explicitly (smaller ones are left to first touch: the system call
/// would cost more than the remote accesses it saves).
pub(crate) const NUMA_BIND_MIN: usize = 1 << 20;

/// The machine: `LUMEN_TOPOLOGY_XML`'s hwloc XML file, or discovery.
pub(crate) fn machine() -> Result<Topology, TopologyError> {
    match std::env::var_os("LUMEN_TOPOLOGY_XML") {
        Some(path) if !path.is_empty() => {
            Topology::from_hwloc_xml_file(std::path::Path::new(&path))
        }
        _ => Topology::discover(),
    }
}

/// The `CUDA_VISIBLE_DEVICES` value for a binding's GPUs (their indices
/// in PCI order), or `None` when it has none.
pub(crate) fn visible_devices(binding: &RankBinding) -> Option<String> {
    if binding.gpus.is_empty() {
        return None;
    }
    let ids: Vec<String> = binding.gpus.iter().map(|g| g.index.to_string()).collect();
    Some(ids.join(","))
}

/// Narrows this process to its binding's GPUs (see the module docs);
/// returns the CUDA ordinals its tasks get, or `None` when the binding has
/// no GPU or `CUDA_VISIBLE_DEVICES` was set already.
pub(crate) fn narrow_visible_gpus(rank: u32, binding: &RankBinding) -> Option<Vec<u32>> {
    let visible = visible_devices(binding)?;
    if let Ok(already) = std::env::var("CUDA_VISIBLE_DEVICES") {
        tracing::info!(
            rank,
            "CUDA_VISIBLE_DEVICES={already} is set already: not narrowing it to GPUs {visible} of the binding"
        );
        return None;
    }
    // Set at start-up, before the executor and anything that reads CUDA's
    // variables runs (the transport's threads do not read the environment).
    std::env::set_var("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    std::env::set_var("CUDA_VISIBLE_DEVICES", &visible);
    tracing::info!(
        rank,
        "CUDA_VISIBLE_DEVICES={visible} (the GPUs next to its cores)"
    );
    Some((0..binding.gpus.len() as u32).collect())
}
