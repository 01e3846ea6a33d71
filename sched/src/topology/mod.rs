//! The topology of one machine: packages, NUMA nodes, cores and PUs, and the
//! GPUs and NICs that hang off its NUMA nodes, with the binding policy that
//! places a node's local ranks on it ([`bind_local_ranks`]).
//!
//! The model follows hwloc's object tree (the one `lstopo` draws), cut down
//! to what placement needs:
//!
//! ```text
//! Topology
//! ├── packages: Package (P#)            a socket
//! │   └── numa_nodes: NumaNode (P#, memory)
//! │       └── cores: Core (P#)
//! │           └── pus: OS cpu numbers (what sched_setaffinity takes)
//! ├── gpus: PciDevice (bus id, vendor, model, NUMA node, NVLink island)
//! ├── nics: PciDevice (bus id, vendor, name, NUMA node)
//! └── caches: Cache (level, kind, size, the cpus sharing it)
//! ```
//!
//! Invariants a [`Topology`] keeps, whichever source built it: every PU
//! belongs to exactly one core and every core to exactly one NUMA node;
//! NUMA nodes and packages are sorted by OS index, cores by OS index within
//! their NUMA node, PUs ascending within their core; GPUs and NICs are
//! sorted by PCI bus id. There is at least one PU.
//!
//! Sources, both pure functions of their input except the file reads:
//! - [`Topology::from_hwloc_xml`]: the XML that `lstopo --of xml` writes
//!   (hwloc 2.x, and hwloc 1.x's nesting of cores inside NUMA nodes). This is
//!   how tests describe synthetic machines (`sched/tests/machines/`).
//! - [`Topology::from_sysfs`]: Linux sysfs under a root directory
//!   (`/sys` on a real machine, a fake tree in tests), the fallback when
//!   hwloc is absent.
//! - With the crate feature `hwloc`, the system's hwloc library
//!   (`hwlocality`, Debian `libhwloc-dev`): it discovers the machine (I/O
//!   devices included) and exports its XML, which the XML reader above
//!   reads, so both paths build the same model the same way.
//!
//! [`Topology::discover`] tries hwloc first when the feature is on, then
//! sysfs; [`Topology::discover_with_source`] also says which answered.
//!
//! Malformed input never panics: it is a [`TopologyError`] that names the
//! file or element and what was wrong with it.
//!
//! # Example
//! A two-core machine with a GPU, read from hwloc XML, drawn, and bound:
//!
//! ```
//! use lumen_sched::topology::{bind_local_ranks, Topology};
//!
//! let xml = r#"<topology version="2.0">
//!   <object type="Machine" os_index="0" cpuset="0x00000003">
//!     <object type="Package" os_index="0" cpuset="0x00000003">
//!       <object type="NUMANode" os_index="0" cpuset="0x00000003" local_memory="17179869184"/>
//!       <object type="Core" os_index="0" cpuset="0x00000001"><object type="PU" os_index="0"/></object>
//!       <object type="Core" os_index="1" cpuset="0x00000002"><object type="PU" os_index="1"/></object>
//!       <object type="Bridge" bridge_type="0-1" depth="0">
//!         <object type="PCIDev" pci_busid="0000:01:00.0" pci_type="0302 [10de:2330] [10de:16c1] a1">
//!           <object type="OSDev" name="cuda0" subtype="CUDA" osdev_type="5">
//!             <info name="GPUModel" value="NVIDIA H100 80GB HBM3"/>
//!           </object>
//!         </object>
//!       </object>
//!     </object>
//!   </object>
//! </topology>"#;
//! let machine = Topology::from_hwloc_xml(xml, "example.xml")?;
//! assert_eq!(
//!     machine.render(),
//!     "Machine (16GB total)\n  Package P#0\n    NUMANode P#0 (16GB)\n      Core P#0 + PU P#0\n      \
//!      Core P#1 + PU P#1\n      GPU \"NVIDIA H100 80GB HBM3\" (PCI 0000:01:00.0) cuda0\n"
//! );
//! let bindings = bind_local_ranks(&machine, 1, None)?;
//! assert_eq!(bindings[0].cpus, vec![0, 1]);
//! assert_eq!(bindings[0].gpus[0].pci_bus_id, "0000:01:00.0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod binding;
mod bitmap;
pub mod cuda;
#[cfg(feature = "hwloc")]
mod hwloc;
mod render;
mod sysfs;
mod xml;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use binding::{bind_local_ranks, BindingError, GpuRef, NicRef, RankBinding};

/// One machine: its processors and memory, and its GPUs and NICs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The packages (sockets), sorted by OS index.
    pub packages: Vec<Package>,
    /// The GPUs, sorted by PCI bus id.
    pub gpus: Vec<PciDevice>,
    /// The network interfaces (Ethernet, InfiniBand, ...), sorted by PCI bus id.
    pub nics: Vec<PciDevice>,
    /// The CPU caches, sorted by level, kind, then first cpu; empty when
    /// the source does not say.
    #[serde(default)]
    pub caches: Vec<Cache>,
}

/// What a cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CacheKind {
    /// Data only (L1d).
    Data,
    /// Instructions only (L1i).
    Instruction,
    /// Both.
    Unified,
}

/// One CPU cache and the cpus that share it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    /// 1 for L1, 2 for L2, ...
    pub level: u8,
    /// Data, instruction or unified.
    pub kind: CacheKind,
    /// Its size in bytes (0 when the source does not say).
    pub size_bytes: u64,
    /// The OS cpus sharing it, ascending.
    pub cpus: Vec<usize>,
}

impl Cache {
    /// `L1d`, `L1i`, `L2`, `L3`...
    pub fn name(&self) -> String {
        match self.kind {
            CacheKind::Data => format!("L{}d", self.level),
            CacheKind::Instruction => format!("L{}i", self.level),
            CacheKind::Unified => format!("L{}", self.level),
        }
    }
}

/// Where the NVIDIA driver describes its GPUs (see
/// [`Topology::name_nvidia_gpus`]).
pub const NVIDIA_PROC: &str = "/proc/driver/nvidia/gpus";

/// Which source [`Topology::discover_with_source`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The system's hwloc library (feature `hwloc`).
    Hwloc,
    /// Linux sysfs.
    Sysfs,
}

/// A package (socket) and the NUMA nodes inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// The OS index (`physical_package_id`, hwloc's `P#`).
    pub os_index: u32,
    /// Its NUMA nodes, sorted by OS index.
    pub numa_nodes: Vec<NumaNode>,
}

/// A NUMA node: memory and the cores closest to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// The OS index (`/sys/devices/system/node/nodeN`, hwloc's `P#`).
    pub os_index: u32,
    /// Its local memory in bytes, when the source says.
    pub memory_bytes: Option<u64>,
    /// Its cores, sorted by OS index.
    pub cores: Vec<Core>,
}

/// A core and its hardware threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Core {
    /// The OS index (`core_id`, unique within a package only).
    pub os_index: u32,
    /// Its PUs (hardware threads) as OS cpu numbers, ascending.
    pub pus: Vec<usize>,
}

/// What a PCI device is, as far as placement cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceKind {
    /// A GPU or other accelerator (display/3D controller class).
    Gpu,
    /// An Ethernet network interface (PCI class 0x0200).
    Ethernet,
    /// An InfiniBand (or other RDMA fabric) interface (PCI class 0x0207, or
    /// an hwloc `OpenFabrics` OS device).
    InfiniBand,
}

/// A GPU or NIC on the PCI bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// What it is.
    pub kind: DeviceKind,
    /// The PCI bus id, `domain:bus:device.function` (`0000:07:00.0`).
    pub pci_bus_id: String,
    /// The PCI vendor id (0x10de NVIDIA, 0x15b3 Mellanox, ...), when known.
    pub vendor_id: Option<u16>,
    /// The PCI device id, when known.
    pub device_id: Option<u16>,
    /// The model (`NVIDIA H100 80GB HBM3`, `ConnectX-7`), when known.
    pub model: Option<String>,
    /// The OS names of the device (`cuda0`, `nvml0`, `mlx5_0`, `ib0`, `eth0`).
    pub os_names: Vec<String>,
    /// The NUMA node it hangs off, when known.
    pub numa: Option<u32>,
    /// For GPUs: the NVLink island (GPUs with the same id reach each other
    /// over NVLink), when the source gives one.
    pub nvlink_island: Option<u32>,
    /// The PCI bridges above it, host bridge first (`pci0000:00`,
    /// `0000:00:01.0`, ...; hwloc's `Bridge` objects or sysfs's device
    /// path), empty when the source does not say: what
    /// [`PciDevice::pci_hops`] measures.
    #[serde(default)]
    pub pci_path: Vec<String>,
}

impl PciDevice {
    /// PCI distance to `other`: the links between the two (up from one to
    /// the nearest bridge they share, down to the other). Two devices under
    /// one PCIe switch are 2 apart, under two switches of one host bridge 4;
    /// `None` when either path is unknown or they share no host bridge.
    pub fn pci_hops(&self, other: &PciDevice) -> Option<usize> {
        let (a, b) = (&self.pci_path, &other.pci_path);
        if a.is_empty() || b.is_empty() || a[0] != b[0] {
            return None;
        }
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        // Links: each device to its own bridge, then bridges up to the
        // nearest one they share.
        Some((a.len() - common) + (b.len() - common) + 2)
    }
}

/// How far two places of a machine are, coarsest first: the order hwloc's
/// and Open MPI's locality flags use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Distance {
    /// The same NUMA node.
    SameNuma,
    /// Different NUMA nodes of the same package.
    SamePackage,
    /// Different packages.
    OtherPackage,
    /// One side's NUMA node is unknown.
    Unknown,
}

/// Why a topology could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The XML document is not well-formed.
    #[error("{what}: not well-formed XML: {source}")]
    Xml {
        /// The document (a file name or `<string>`).
        what: String,
        /// What the XML parser said.
        source: roxmltree::Error,
    },
    /// An element of an hwloc XML document is not what hwloc writes.
    #[error("{what}: <{element}> (line {line}): {problem}")]
    BadElement {
        /// The document.
        what: String,
        /// The element, with its `type` when it has one (`object type="PU"`).
        element: String,
        /// The line of the element in the document.
        line: u32,
        /// What is wrong with it.
        problem: String,
    },
    /// A sysfs file holds something other than what the kernel writes.
    #[error("{path}: {problem} (content {content:?})")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What it held (cut to 80 characters).
        content: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The hwloc library failed (feature `hwloc`).
    #[error("hwloc: {0}")]
    Hwloc(String),
    /// The source describes no processing unit at all.
    #[error("{what}: no processing unit (PU / cpu) found")]
    NoCpus {
        /// The document or directory.
        what: String,
    },
}

impl Topology {
    /// Reads the real machine (see [`Topology::discover_with_source`]).
    pub fn discover() -> Result<Topology, TopologyError> {
        Topology::discover_with_source().map(|(topology, _)| topology)
    }

    /// Discovers this machine (hwloc when the feature is on and the library
    /// answers, else sysfs) and says which source answered.
    pub fn discover_with_source() -> Result<(Topology, Source), TopologyError> {
        #[cfg(feature = "hwloc")]
        if let Ok(mut topology) = hwloc::discover() {
            #[cfg(feature = "cuda")]
            if let Some(gpus) = cuda::driver_gpus() {
                topology.merge_driver_gpus(&gpus);
            }
            #[cfg(not(feature = "cuda"))]
            let _ = &mut topology;
            return Ok((topology, Source::Hwloc));
        }
        let mut topology = Topology::from_sysfs(std::path::Path::new("/sys"))?;
        topology.name_nvidia_gpus(std::path::Path::new(NVIDIA_PROC));
        #[cfg(feature = "cuda")]
        if let Some(gpus) = cuda::driver_gpus() {
            topology.merge_driver_gpus(&gpus);
        }
        Ok((topology, Source::Sysfs))
    }

    /// Reads a sysfs tree rooted at `root` (`/sys` on a real machine):
    /// `devices/system/node/node*/{cpulist,meminfo}`,
    /// `devices/system/cpu/cpu*/topology/{physical_package_id,core_id}` and
    /// `bus/pci/devices/*/{class,vendor,device,numa_node}`. Missing files are
    /// tolerated (no NUMA directories: one NUMA node 0 with every cpu; no
    /// topology files: package 0, one core per cpu); unreadable contents are
    /// errors.
    pub fn from_sysfs(root: &std::path::Path) -> Result<Topology, TopologyError> {
        sysfs::read(root)
    }

    /// Names the NVIDIA GPUs that sysfs found only by PCI id, from the
    /// driver's `/proc/driver/nvidia/gpus/<bus id>/information` (its
    /// `Model:` line, what NVML reports as the name) under `dir`, and adds
    /// `nvidia<minor>` to their OS names from its `Device Minor:` line.
    /// GPUs without such a file (no driver loaded) are left as they are.
    pub fn name_nvidia_gpus(&mut self, dir: &std::path::Path) {
        for gpu in self.gpus.iter_mut().filter(|g| g.vendor_id == Some(0x10de)) {
            let path = dir.join(gpu.pci_bus_id.to_lowercase()).join("information");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for line in text.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match key.trim() {
                    "Model" if gpu.model.is_none() && !value.is_empty() => {
                        gpu.model = Some(value.to_string());
                    }
                    "Device Minor" => {
                        if let Ok(minor) = value.parse::<u32>() {
                            let name = format!("nvidia{minor}");
                            if !gpu.os_names.contains(&name) {
                                gpu.os_names.push(name);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Parses an hwloc XML document (`lstopo --of xml`); `what` names it in
    /// errors (a file name).
    pub fn from_hwloc_xml(text: &str, what: &str) -> Result<Topology, TopologyError> {
        xml::parse(text, what)
    }

    /// Reads and parses an hwloc XML file.
    pub fn from_hwloc_xml_file(path: &std::path::Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        xml::parse(&text, &path.display().to_string())
    }

    /// Every NUMA node, in package then OS-index order.
    pub fn numa_nodes(&self) -> impl Iterator<Item = &NumaNode> + '_ {
        self.packages
            .iter()
            .flat_map(|package| package.numa_nodes.iter())
    }

    /// The NUMA node with OS index `numa`.
    pub fn numa_node(&self, numa: u32) -> Option<&NumaNode> {
        self.numa_nodes().find(|node| node.os_index == numa)
    }

    /// The OS index of the package holding NUMA node `numa`.
    pub fn package_of_numa(&self, numa: u32) -> Option<u32> {
        self.packages
            .iter()
            .find(|package| package.numa_nodes.iter().any(|node| node.os_index == numa))
            .map(|package| package.os_index)
    }

    /// Every core, in NUMA order.
    pub fn cores(&self) -> impl Iterator<Item = &Core> + '_ {
        self.numa_nodes().flat_map(|node| node.cores.iter())
    }

    /// Every PU (OS cpu number), ascending.
    pub fn cpus(&self) -> Vec<usize> {
        let mut cpus: Vec<usize> = self
            .cores()
            .flat_map(|core| core.pus.iter().copied())
            .collect();
        cpus.sort_unstable();
        cpus
    }

    /// The NUMA node of OS cpu `cpu`.
    pub fn numa_of_cpu(&self, cpu: usize) -> Option<u32> {
        self.numa_nodes()
            .find(|node| node.cores.iter().any(|core| core.pus.contains(&cpu)))
            .map(|node| node.os_index)
    }

    /// The OS cpus of NUMA node `numa`, ascending (empty if there is no
    /// such node).
    pub fn cpus_of_numa(&self, numa: u32) -> Vec<usize> {
        let mut cpus: Vec<usize> = self
            .numa_node(numa)
            .into_iter()
            .flat_map(|node| node.cores.iter().flat_map(|core| core.pus.iter().copied()))
            .collect();
        cpus.sort_unstable();
        cpus
    }

    /// The GPUs attached to NUMA node `numa`, in PCI order.
    pub fn gpus_near(&self, numa: u32) -> Vec<&PciDevice> {
        self.gpus
            .iter()
            .filter(|gpu| gpu.numa == Some(numa))
            .collect()
    }

    /// The NICs attached to NUMA node `numa`, in PCI order.
    pub fn nics_near(&self, numa: u32) -> Vec<&PciDevice> {
        self.nics
            .iter()
            .filter(|nic| nic.numa == Some(numa))
            .collect()
    }

    /// How far NUMA node `a` is from NUMA node `b`.
    pub fn numa_distance(&self, a: Option<u32>, b: Option<u32>) -> Distance {
        let (Some(a), Some(b)) = (a, b) else {
            return Distance::Unknown;
        };
        if a == b {
            return Distance::SameNuma;
        }
        match (self.package_of_numa(a), self.package_of_numa(b)) {
            (Some(pa), Some(pb)) if pa == pb => Distance::SamePackage,
            (Some(_), Some(_)) => Distance::OtherPackage,
            _ => Distance::Unknown,
        }
    }

    /// How far a PCI device is from NUMA node `numa`.
    pub fn device_distance(&self, device: &PciDevice, numa: u32) -> Distance {
        self.numa_distance(device.numa, Some(numa))
    }

    /// Total memory in bytes over the NUMA nodes that report it.
    pub fn memory_bytes(&self) -> Option<u64> {
        let sizes: Vec<u64> = self
            .numa_nodes()
            .filter_map(|node| node.memory_bytes)
            .collect();
        (!sizes.is_empty()).then(|| sizes.iter().sum())
    }

    /// The machine as indented text, like `lstopo`'s text mode (also the
    /// [`Display`](std::fmt::Display) of a topology).
    pub fn render(&self) -> String {
        render::render(self)
    }

    /// Puts the invariants in place after a source has filled the tree:
    /// sorted everywhere, empty cores, NUMA nodes and packages dropped.
    fn normalise(mut self, what: &str) -> Result<Topology, TopologyError> {
        for package in &mut self.packages {
            for node in &mut package.numa_nodes {
                for core in &mut node.cores {
                    core.pus.sort_unstable();
                    core.pus.dedup();
                }
                node.cores.retain(|core| !core.pus.is_empty());
                node.cores
                    .sort_by_key(|core| (core.os_index, core.pus.first().copied()));
            }
            package.numa_nodes.sort_by_key(|node| node.os_index);
        }
        self.packages
            .retain(|package| !package.numa_nodes.is_empty());
        self.packages.sort_by_key(|package| package.os_index);
        self.gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
        self.nics.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
        for cache in &mut self.caches {
            cache.cpus.sort_unstable();
            cache.cpus.dedup();
        }
        self.caches.retain(|cache| !cache.cpus.is_empty());
        self.caches
            .sort_by_key(|c| (c.level, c.kind, c.cpus.first().copied()));
        self.caches.dedup();
        if self.cores().next().is_none() {
            return Err(TopologyError::NoCpus {
                what: what.to_string(),
            });
        }
        Ok(self)
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Cuts file content for an error message.
fn excerpt(content: &str) -> String {
    content.trim().chars().take(80).collect()
}
