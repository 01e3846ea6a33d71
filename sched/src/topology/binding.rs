//! Where a node's local ranks run: their cores, NUMA node, GPUs and NIC.
//!
//! [`bind_local_ranks`] is pure: a [`Topology`], a rank count and the cpus
//! the node's launcher allows (a Slurm step's cpuset, `lumen run`'s
//! `--cpus`) in, one [`RankBinding`] per local rank out. The rules:
//!
//! 1. **Allowed cores.** A core takes part when at least one of its PUs is
//!    in `allowed_cpus` (all of them when `None`), and brings only its
//!    allowed PUs. No allowed core at all is [`BindingError::NoAllowedCpus`].
//! 2. **GPU nodes** (the node has GPUs and `ranks <= gpus`): GPUs are put in
//!    NUMA order, PCI bus id order within a NUMA node, and dealt out in
//!    blocks of `gpus / ranks` (the remainder stays unassigned): rank 0 gets
//!    the first block, and so on. A rank's NUMA node is its first GPU's;
//!    the ranks on one NUMA node share its allowed cores in disjoint,
//!    contiguous, equal blocks (the first ones one core larger when the
//!    count does not divide). When the GPU's NUMA node has no allowed core
//!    (or is unknown) the rank takes cores on the nearest NUMA node that has
//!    some, and says so in [`RankBinding::cpus_remote`].
//! 3. **CPU nodes** (no GPU, or more ranks than GPUs: then no rank gets a
//!    GPU): ranks are mapped onto NUMA nodes in blocks weighted by their
//!    allowed cores (rank `i` goes to the NUMA node holding core
//!    `i * cores / ranks` of the NUMA-ordered list), so consecutive ranks
//!    share a NUMA node and 2 ranks on a 2-package machine land on
//!    different packages; within a NUMA node, cores are split as above.
//! 4. **Oversubscription.** A NUMA node with more ranks than allowed cores
//!    gives each rank one core, cores repeating in blocks, and sets
//!    [`RankBinding::cpus_shared`].
//! 5. **NIC.** Each rank gets the NIC nearest its GPU (its NUMA node when it
//!    has none): same NUMA node, then same package, then any; among those,
//!    the fewest PCI bridges from its GPU (a NIC under the GPU's PCIe
//!    switch first), then the least used so far, then PCI order.
//!
//! What a user compares this with: `lstopo` (hwloc) shows which cores,
//! GPUs and NICs share a NUMA node; Open MPI's `mpirun --map-by numa
//! --bind-to core` binds each rank to one core, dealing ranks round-robin
//! over NUMA nodes (rank 0 on node 0, rank 1 on node 1, ...), whereas rule 3
//! deals them in blocks (Open MPI's `--map-by ppr:N:numa`) and gives a rank
//! its whole share of cores rather than one, so its worker threads have
//! somewhere to run; NVIDIA's DGX guidance (and Slurm's
//! `--gpu-bind=closest`) pairs each GPU with the cores and HCA of its NUMA
//! node, as rule 2 does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Distance, Topology};

/// A GPU of the topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRef {
    /// Its position in [`Topology::gpus`] (PCI order).
    pub index: usize,
    /// Its PCI bus id.
    pub pci_bus_id: String,
}

/// A NIC of the topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRef {
    /// Its position in [`Topology::nics`] (PCI order).
    pub index: usize,
    /// Its PCI bus id.
    pub pci_bus_id: String,
    /// Its first OS name (`mlx5_0`, `eth0`), when known.
    pub name: Option<String>,
}

/// Where one local rank runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankBinding {
    /// The rank's index among the node's ranks, `0..ranks`.
    pub local_rank: usize,
    /// The OS cpus to bind it (and its workers) to, ascending.
    pub cpus: Vec<usize>,
    /// The NUMA node of those cpus: where its memory should live.
    pub numa: u32,
    /// Its GPUs, possibly none.
    pub gpus: Vec<GpuRef>,
    /// The NIC it should use, when the node has one.
    pub nic: Option<NicRef>,
    /// That NIC is on the rank's NUMA node (what the placement policy's
    /// NIC affinity prefers).
    #[serde(default)]
    pub nic_local: bool,
    /// Other ranks are bound to some of the same cpus (more ranks than
    /// allowed cores on the NUMA node).
    pub cpus_shared: bool,
    /// The cpus are not on the NUMA node of the rank's GPU (that node has no
    /// allowed core, or the GPU's node is unknown).
    pub cpus_remote: bool,
}

/// Why no binding could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// `allowed_cpus` names no cpu of the topology.
    #[error("no allowed cpu is in the topology (allowed: {allowed:?})")]
    NoAllowedCpus {
        /// The allowed cpus given.
        allowed: Vec<usize>,
    },
}

/// A NUMA node's allowed cores (each its allowed PUs).
struct NumaCores {
    numa: u32,
    cores: Vec<Vec<usize>>,
}

/// Binds `ranks` local ranks on `topology` (see the module doc for the
/// rules). `allowed_cpus`: the cpus the ranks may use, `None` for all.
pub fn bind_local_ranks(
    topology: &Topology,
    ranks: usize,
    allowed_cpus: Option<&[usize]>,
) -> Result<Vec<RankBinding>, BindingError> {
    let allowed = |cpu: &usize| allowed_cpus.is_none_or(|list| list.contains(cpu));
    let numas: Vec<NumaCores> = topology
        .numa_nodes()
        .map(|node| NumaCores {
            numa: node.os_index,
            cores: node
                .cores
                .iter()
                .map(|core| core.pus.iter().copied().filter(allowed).collect::<Vec<_>>())
                .filter(|pus| !pus.is_empty())
                .collect(),
        })
        .filter(|numa| !numa.cores.is_empty())
        .collect();
    if numas.is_empty() {
        return Err(BindingError::NoAllowedCpus {
            allowed: allowed_cpus.map(<[usize]>::to_vec).unwrap_or_default(),
        });
    }
    if ranks == 0 {
        return Ok(Vec::new());
    }

    // Per rank: the NUMA node its cpus come from, its GPUs, the NUMA node
    // its NIC should be near, and whether the cpus are remote.
    let mut plan: Vec<(usize, Vec<GpuRef>, Option<u32>, bool)> = Vec::with_capacity(ranks);
    if !topology.gpus.is_empty() && ranks <= topology.gpus.len() {
        let mut order: Vec<usize> = (0..topology.gpus.len()).collect();
        order.sort_by_key(|&i| {
            (
                topology.gpus[i].numa.unwrap_or(u32::MAX),
                topology.gpus[i].pci_bus_id.clone(),
            )
        });
        let per_rank = topology.gpus.len() / ranks;
        for rank in 0..ranks {
            let gpus: Vec<GpuRef> = order[rank * per_rank..(rank + 1) * per_rank]
                .iter()
                .map(|&index| GpuRef {
                    index,
                    pci_bus_id: topology.gpus[index].pci_bus_id.clone(),
                })
                .collect();
            let gpu_numa = topology.gpus[order[rank * per_rank]].numa;
            let exact = numas.iter().position(|n| Some(n.numa) == gpu_numa);
            let (slot, remote) = match exact {
                Some(slot) => (slot, false),
                None => {
                    let nearest = (0..numas.len())
                        .min_by_key(|&slot| {
                            (
                                topology.numa_distance(gpu_numa, Some(numas[slot].numa)),
                                slot,
                            )
                        })
                        .unwrap_or(0);
                    (nearest, true)
                }
            };
            plan.push((slot, gpus, gpu_numa.or(Some(numas[slot].numa)), remote));
        }
    } else {
        let total: usize = numas.iter().map(|n| n.cores.len()).sum();
        for rank in 0..ranks {
            let mut position = rank * total / ranks;
            let mut slot = 0;
            while position >= numas[slot].cores.len() {
                position -= numas[slot].cores.len();
                slot += 1;
            }
            plan.push((slot, Vec::new(), Some(numas[slot].numa), false));
        }
    }

    // Split each NUMA node's cores among the ranks planned onto it.
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (rank, (slot, ..)) in plan.iter().enumerate() {
        members.entry(*slot).or_default().push(rank);
    }
    let mut cpus: Vec<(Vec<usize>, bool)> = vec![(Vec::new(), false); ranks];
    for (slot, ranks_here) in &members {
        let cores = &numas[*slot].cores;
        let (n, m) = (cores.len(), ranks_here.len());
        for (position, &rank) in ranks_here.iter().enumerate() {
            cpus[rank] = if m <= n {
                let (start, end) = (position * n / m, (position + 1) * n / m);
                (cores[start..end].iter().flatten().copied().collect(), false)
            } else {
                (cores[position * n / m].clone(), true)
            };
        }
    }

    let mut nic_uses = vec![0usize; topology.nics.len()];
    let mut bindings = Vec::with_capacity(ranks);
    for (local_rank, ((slot, gpus, near, remote), (mut rank_cpus, cpus_shared))) in
        plan.into_iter().zip(cpus).enumerate()
    {
        let gpu = gpus.first().and_then(|g| topology.gpus.get(g.index));
        let nic_index = (0..topology.nics.len()).min_by_key(|&i| {
            let distance = match near {
                Some(numa) => topology.device_distance(&topology.nics[i], numa),
                None => Distance::Unknown,
            };
            // Among NICs as near by NUMA, the fewest PCI bridges from the
            // rank's GPU (one PCIe switch: GPU-direct without the host bridge).
            let hops = gpu
                .and_then(|g| g.pci_hops(&topology.nics[i]))
                .unwrap_or(usize::MAX);
            (distance, hops, nic_uses[i], i)
        });
        let nic_local = nic_index.is_some_and(|i| {
            topology.device_distance(&topology.nics[i], numas[slot].numa) == Distance::SameNuma
        });
        let nic = nic_index.map(|index| {
            nic_uses[index] += 1;
            let nic = &topology.nics[index];
            NicRef {
                index,
                pci_bus_id: nic.pci_bus_id.clone(),
                name: nic.os_names.first().cloned(),
            }
        });
        rank_cpus.sort_unstable();
        bindings.push(RankBinding {
            local_rank,
            cpus: rank_cpus,
            numa: numas[slot].numa,
            gpus,
            nic,
            nic_local,
            cpus_shared,
            cpus_remote: remote,
        });
    }
    Ok(bindings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::DeviceKind;
    use crate::topology::{Core, NumaNode, Package, PciDevice};

    /// One package, NUMA nodes of the given core counts (one PU per core,
    /// numbered in order), the given GPUs as (bus id, NUMA node).
    fn machine(cores_per_numa: &[usize], gpus: &[(&str, u32)]) -> Topology {
        let mut next = 0;
        let numa_nodes = cores_per_numa
            .iter()
            .enumerate()
            .map(|(numa, &count)| NumaNode {
                os_index: numa as u32,
                memory_bytes: None,
                cores: (0..count)
                    .map(|_| {
                        next += 1;
                        Core {
                            os_index: next as u32 - 1,
                            pus: vec![next - 1],
                        }
                    })
                    .collect(),
            })
            .collect();
        Topology {
            packages: vec![Package {
                os_index: 0,
                numa_nodes,
            }],
            gpus: gpus
                .iter()
                .map(|(bus, numa)| PciDevice {
                    kind: DeviceKind::Gpu,
                    pci_bus_id: bus.to_string(),
                    vendor_id: Some(0x10de),
                    device_id: None,
                    model: None,
                    os_names: Vec::new(),
                    numa: Some(*numa),
                    nvlink_island: None,
                    pci_path: Vec::new(),
                })
                .collect(),
            nics: Vec::new(),
            caches: Vec::new(),
        }
    }

    #[test]
    fn uneven_core_counts_give_the_first_ranks_one_more() {
        let topology = machine(&[5], &[]);
        let bindings = bind_local_ranks(&topology, 2, None).unwrap();
        assert_eq!(bindings[0].cpus, vec![0, 1]);
        assert_eq!(bindings[1].cpus, vec![2, 3, 4]);
        assert!(bindings.iter().all(|b| b.nic.is_none()));
    }

    #[test]
    fn gpus_are_dealt_in_numa_then_pci_order() {
        // GPUs listed out of NUMA order: the one on NUMA node 0 comes first.
        let topology = machine(
            &[2, 2],
            &[
                ("0000:01:00.0", 1),
                ("0000:02:00.0", 0),
                ("0000:03:00.0", 1),
            ],
        );
        let bindings = bind_local_ranks(&topology, 3, None).unwrap();
        let buses: Vec<&str> = bindings
            .iter()
            .map(|b| b.gpus[0].pci_bus_id.as_str())
            .collect();
        assert_eq!(buses, vec!["0000:02:00.0", "0000:01:00.0", "0000:03:00.0"]);
        assert_eq!(bindings[0].cpus, vec![0, 1]);
        assert_eq!(bindings[1].cpus, vec![2]);
        assert_eq!(bindings[2].cpus, vec![3]);
        // One rank, three GPUs: it takes all three, NUMA node 0's first.
        let one = bind_local_ranks(&topology, 1, None).unwrap();
        assert_eq!(one[0].gpus.len(), 3);
        assert_eq!(one[0].numa, 0);
    }

    #[test]
    fn weighted_blocks_follow_the_allowed_cores() {
        // NUMA node 0 has 1 allowed core, node 1 has 3: of 4 ranks, 1 and 3.
        let topology = machine(&[4, 4], &[]);
        let allowed = [0, 4, 5, 6];
        let bindings = bind_local_ranks(&topology, 4, Some(&allowed)).unwrap();
        let numas: Vec<u32> = bindings.iter().map(|b| b.numa).collect();
        assert_eq!(numas, vec![0, 1, 1, 1]);
        assert!(bindings.iter().all(|b| b.cpus.len() == 1 && !b.cpus_shared));
    }

    #[test]
    fn zero_ranks_is_an_empty_binding() {
        assert_eq!(
            bind_local_ranks(&machine(&[2], &[]), 0, None),
            Ok(Vec::new())
        );
    }
}
