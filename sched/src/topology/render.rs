//! `lstopo`-like text: one object per line, indented by depth, P# indices.

use std::fmt::Write;

use super::{DeviceKind, PciDevice, Topology};

/// Memory as lstopo writes it: the largest unit that keeps at least two
/// digits (`12GB`, `1024GB`, `512MB`).
fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TB"),
        (1 << 30, "GB"),
        (1 << 20, "MB"),
        (1 << 10, "KB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit * 10 {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

fn device_line(device: &PciDevice) -> String {
    let kind = match device.kind {
        DeviceKind::Gpu => "GPU",
        DeviceKind::Ethernet => "Net",
        DeviceKind::InfiniBand => "OpenFabrics",
    };
    let label = device
        .model
        .clone()
        .or_else(|| device.os_names.first().cloned())
        .unwrap_or_else(|| match (device.vendor_id, device.device_id) {
            (Some(vendor), Some(id)) => format!("{vendor:04x}:{id:04x}"),
            _ => "unknown".to_string(),
        });
    let mut line = format!("{kind} \"{label}\" (PCI {})", device.pci_bus_id);
    if device.model.is_some() && !device.os_names.is_empty() {
        let _ = write!(line, " {}", device.os_names.join(","));
    }
    if let Some(island) = device.nvlink_island {
        let _ = write!(line, " NVLink island {island}");
    }
    line
}

pub(super) fn render(topology: &Topology) -> String {
    let mut out = String::new();
    match topology.memory_bytes() {
        Some(bytes) => {
            let _ = writeln!(out, "Machine ({} total)", size(bytes));
        }
        None => out.push_str("Machine\n"),
    }
    let devices: Vec<&PciDevice> = topology.gpus.iter().chain(topology.nics.iter()).collect();
    for package in &topology.packages {
        let _ = writeln!(out, "  Package P#{}", package.os_index);
        for node in &package.numa_nodes {
            match node.memory_bytes {
                Some(bytes) => {
                    let _ = writeln!(out, "    NUMANode P#{} ({})", node.os_index, size(bytes));
                }
                None => {
                    let _ = writeln!(out, "    NUMANode P#{}", node.os_index);
                }
            }
            let node_cpus: Vec<usize> = node
                .cores
                .iter()
                .flat_map(|core| core.pus.iter().copied())
                .collect();
            if let Some(line) = cache_line(topology, &node_cpus) {
                let _ = writeln!(out, "      {line}");
            }
            for core in &node.cores {
                let pus: Vec<String> = core.pus.iter().map(|pu| format!("PU P#{pu}")).collect();
                let _ = writeln!(out, "      Core P#{} + {}", core.os_index, pus.join(" + "));
            }
            for device in devices.iter().filter(|d| d.numa == Some(node.os_index)) {
                let _ = writeln!(out, "      {}", device_line(device));
            }
        }
    }
    for device in devices.iter().filter(|d| d.numa.is_none()) {
        let _ = writeln!(out, "  {} (NUMA node unknown)", device_line(device));
    }
    out
}

/// `Caches: L3 128MB x1, L2 512KB x16, ...`: the caches whose cpus all lie
/// in `cpus`, by level (highest first), counted per name and size.
fn cache_line(topology: &Topology, cpus: &[usize]) -> Option<String> {
    let mut groups: Vec<(u8, String, u64, usize)> = Vec::new();
    for cache in topology
        .caches
        .iter()
        .filter(|c| c.cpus.iter().all(|cpu| cpus.contains(cpu)))
    {
        let name = cache.name();
        match groups
            .iter_mut()
            .find(|g| g.1 == name && g.2 == cache.size_bytes)
        {
            Some(group) => group.3 += 1,
            None => groups.push((cache.level, name, cache.size_bytes, 1)),
        }
    }
    if groups.is_empty() {
        return None;
    }
    groups.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let parts: Vec<String> = groups
        .iter()
        .map(|(_, name, bytes, count)| format!("{name} {} x{count}", size(*bytes)))
        .collect();
    Some(format!("Caches: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes() {
        assert_eq!(size(24 << 30), "24GB");
        assert_eq!(size(12 << 30), "12GB");
        assert_eq!(size(1536 << 20), "1536MB");
        assert_eq!(size(100), "100B");
    }
}
