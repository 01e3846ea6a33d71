//! GPUs as the CUDA driver sees them (feature `cuda`: cudarc with the
//! driver loaded at run time, so builds need no CUDA), merged into a
//! topology read from sysfs or hwloc: the driver knows each GPU's model
//! and memory, and which pairs reach each other directly (peer access over
//! NVLink or a PCIe switch), which sysfs does not. NVML is not used: the
//! driver API answers what placement needs, and cudarc has no NVML.
//!
//! The merge ([`Topology::merge_driver_gpus`]) is a pure function over
//! [`DriverGpu`]s, tested here; only [`driver_gpus`] needs a GPU.

use super::{DeviceKind, PciDevice, Topology};

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverGpu {
    /// `domain:bus:device.function`, as the driver prints it (`0000:3B:00.0`).
    pub pci_bus_id: String,
    /// The model (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Device memory in bytes.
    pub memory: u64,
    /// Indices (in the same list) of the GPUs this one has peer access to.
    pub peers: Vec<usize>,
}

/// Peer-access islands: GPUs joined by peer access, transitively (union of
/// the pairs), numbered by their lowest member.
pub fn islands(gpus: &[DriverGpu]) -> Vec<u32> {
    let mut parent: Vec<usize> = (0..gpus.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, gpu) in gpus.iter().enumerate() {
        for &j in gpu.peers.iter().filter(|&&j| j < gpus.len()) {
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            parent[a.max(b)] = a.min(b);
        }
    }
    let roots: Vec<usize> = (0..gpus.len()).map(|i| root(&mut parent, i)).collect();
    let mut numbers: Vec<usize> = roots.clone();
    numbers.sort_unstable();
    numbers.dedup();
    roots
        .iter()
        .map(|r| numbers.binary_search(r).unwrap_or(0) as u32)
        .collect()
}

/// A bus id in sysfs's spelling: lower case, a 4-digit domain when it fits
/// (the driver prints 8 digits on some versions).
fn sysfs_style(bus: &str) -> String {
    let bus = bus.trim().to_lowercase();
    match bus.split_once(':') {
        Some((domain, rest)) => {
            let digits = domain.trim_start_matches('0');
            format!("{digits:0>4}:{rest}")
        }
        None => bus,
    }
}

fn same_bus(a: &str, b: &str) -> bool {
    sysfs_style(a) == sysfs_style(b)
}

impl Topology {
    /// Merges what the driver says (see the module docs): a GPU found on
    /// the bus gets the driver's model when it has none and its peer-access
    /// island when the source gave no NVLink island; a GPU the bus scan
    /// missed (a container without its sysfs) is added with an unknown
    /// NUMA node. `cudaN` names follow the driver's order.
    pub fn merge_driver_gpus(&mut self, gpus: &[DriverGpu]) {
        let islands = islands(gpus);
        let known_islands = self.gpus.iter().any(|g| g.nvlink_island.is_some());
        for (i, gpu) in gpus.iter().enumerate() {
            let name = format!("cuda{i}");
            let found = self
                .gpus
                .iter_mut()
                .find(|g| same_bus(&g.pci_bus_id, &gpu.pci_bus_id));
            let device = match found {
                Some(device) => device,
                None => {
                    self.gpus.push(PciDevice {
                        kind: DeviceKind::Gpu,
                        pci_bus_id: sysfs_style(&gpu.pci_bus_id),
                        vendor_id: Some(0x10de),
                        device_id: None,
                        model: None,
                        os_names: Vec::new(),
                        numa: None,
                        nvlink_island: None,
                        pci_path: Vec::new(),
                    });
                    self.gpus.last_mut().expect("just pushed")
                }
            };
            if device.model.is_none() && !gpu.name.is_empty() {
                device.model = Some(gpu.name.clone());
            }
            if !known_islands {
                device.nvlink_island = Some(islands[i]);
            }
            if !device.os_names.contains(&name) {
                device.os_names.push(name);
            }
        }
        self.gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
    }
}

/// The GPUs the CUDA driver sees, or `None` without a driver or a GPU.
#[cfg(feature = "cuda")]
pub fn driver_gpus() -> Option<Vec<DriverGpu>> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { sys::is_culib_present() } {
        return None;
    }
    result::init().ok()?;
    let count = result::device::get_count().ok()? as usize;
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        devices.push(result::device::get(i as i32).ok()?);
    }
    let mut gpus = Vec::with_capacity(count);
    for (i, &device) in devices.iter().enumerate() {
        let mut bus = [0 as std::ffi::c_char; 32];
        // SAFETY: the buffer's length is passed; the driver writes a
        // NUL-terminated string.
        unsafe { sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, device) }
            .result()
            .ok()?;
        let bus: Vec<u8> = bus
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let name = result::device::get_name(device).unwrap_or_default();
        // SAFETY: `device` came from cuDeviceGet.
        let memory = unsafe { result::device::total_mem(device) }.unwrap_or(0) as u64;
        let mut peers = Vec::new();
        for (j, &other) in devices.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut can = 0;
            // SAFETY: both devices came from cuDeviceGet; `can` is written.
            let ok = unsafe { sys::cuDeviceCanAccessPeer(&mut can, device, other) }.result();
            if ok.is_ok() && can != 0 {
                peers.push(j);
            }
        }
        gpus.push(DriverGpu {
            pci_bus_id: String::from_utf8_lossy(&bus).into_owned(),
            name,
            memory,
            peers,
        });
    }
    Some(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(bus: &str, peers: &[usize]) -> DriverGpu {
        DriverGpu {
            pci_bus_id: bus.into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory: 80 << 30,
            peers: peers.to_vec(),
        }
    }

    #[test]
    fn peer_access_makes_islands() {
        let gpus = [
            gpu("0000:07:00.0", &[1]),
            gpu("0000:0F:00.0", &[0]),
            gpu("0000:47:00.0", &[3]),
            gpu("0000:4E:00.0", &[2]),
            gpu("0000:87:00.0", &[9]),
        ];
        assert_eq!(islands(&gpus), vec![0, 0, 1, 1, 2]);
    }

    #[test]
    fn driver_gpus_name_the_bus_ones_and_fill_in_missing_ones() {
        let mut topology = Topology::from_hwloc_xml(
            include_str!("../../tests/machines/laptop.xml"),
            "laptop.xml",
        )
        .expect("the laptop machine");
        topology.gpus = vec![PciDevice {
            kind: DeviceKind::Gpu,
            pci_bus_id: "0000:07:00.0".into(),
            vendor_id: Some(0x10de),
            device_id: Some(0x2330),
            model: None,
            os_names: vec![],
            numa: Some(0),
            nvlink_island: None,
            pci_path: Vec::new(),
        }];
        topology.merge_driver_gpus(&[gpu("00000000:07:00.0", &[1]), gpu("00000000:0F:00.0", &[0])]);
        assert_eq!(topology.gpus.len(), 2);
        let first = &topology.gpus[0];
        assert_eq!(first.model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(first.numa, Some(0), "the bus scan's NUMA node is kept");
        assert_eq!(first.nvlink_island, Some(0));
        assert_eq!(first.os_names, vec!["cuda0".to_string()]);
        let second = &topology.gpus[1];
        assert_eq!(second.numa, None, "a GPU the bus scan missed");
        assert_eq!(second.nvlink_island, Some(0));
    }
}
