//! Linux sysfs into a [`Topology`]: the fallback when hwloc is absent, and
//! the thin IO shell of this module (every other part is pure).
//!
//! Read under a root (`/sys` on a real machine):
//! - `devices/system/cpu/cpuN/topology/{physical_package_id,core_id}`: the
//!   cpus, their package and core (missing: package 0, a core per cpu);
//! - `devices/system/node/nodeN/{cpulist,meminfo}`: NUMA nodes, their cpus
//!   and `MemTotal` (no `node` directory: one NUMA node 0 with every cpu);
//! - `bus/pci/devices/*/{class,vendor,device,numa_node}` and the names under
//!   `net/` and `infiniband/`: GPUs (class 0x0300/0x0302/0x0380 from NVIDIA,
//!   AMD or Intel, or a 0x1200 accelerator) and NICs (0x0200 Ethernet,
//!   0x0207 InfiniBand). `numa_node` of -1 means unknown (or, with one NUMA
//!   node, that node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::bitmap::parse_cpu_list;
use super::{
    excerpt, Cache, CacheKind, Core, DeviceKind, NumaNode, Package, PciDevice, Topology,
    TopologyError,
};

fn read_optional(path: &Path) -> Result<Option<String>, TopologyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TopologyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn bad(path: &Path, content: &str, problem: impl Into<String>) -> TopologyError {
    TopologyError::BadFile {
        path: path.to_path_buf(),
        content: excerpt(content),
        problem: problem.into(),
    }
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Result<Option<T>, TopologyError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| bad(path, &text, "not a number")),
    }
}

fn read_hex(path: &Path) -> Result<Option<u32>, TopologyError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => {
            let trimmed = text.trim();
            let digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
            u32::from_str_radix(digits, 16)
                .map(Some)
                .map_err(|_| bad(path, &text, "not a hex number"))
        }
    }
}

/// The entries `prefixN` of a directory, as (N, path), sorted by N; none if
/// the directory is missing.
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<(u32, PathBuf)>, TopologyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn names_under(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// `Node 0 MemTotal:       16384 kB` in bytes.
fn mem_total(path: &Path, text: &str) -> Result<Option<u64>, TopologyError> {
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("MemTotal:") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let amount: u64 = words
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad(path, line, "MemTotal is not a number"))?;
        let unit = match words.next() {
            Some("kB") => 1024,
            None => 1,
            Some(other) => return Err(bad(path, line, format!("unknown unit {other:?}"))),
        };
        return amount
            .checked_mul(unit)
            .map(Some)
            .ok_or_else(|| bad(path, line, "MemTotal overflows"));
    }
    Ok(None)
}

/// `devices/system/cpu/cpuN/cache/indexK/{level,type,size,shared_cpu_list}`
/// of every cpu, each cache once (the cpus sharing one list the same set).
fn caches(root: &Path, cpus: impl Iterator<Item = usize>) -> Result<Vec<Cache>, TopologyError> {
    let mut out: Vec<Cache> = Vec::new();
    for cpu in cpus {
        let dir = root.join(format!("devices/system/cpu/cpu{cpu}/cache"));
        for (_, index) in numbered_entries(&dir, "index")? {
            let Some(level) = read_number::<u8>(&index.join("level"))? else {
                continue;
            };
            let kind_path = index.join("type");
            let kind = match read_optional(&kind_path)?.as_deref().map(str::trim) {
                Some("Data") => CacheKind::Data,
                Some("Instruction") => CacheKind::Instruction,
                Some("Unified") | None => CacheKind::Unified,
                Some(other) => {
                    return Err(bad(&kind_path, other, "not Data, Instruction or Unified"))
                }
            };
            let size_path = index.join("size");
            let size_bytes = match read_optional(&size_path)? {
                Some(text) => cache_size(&text)
                    .ok_or_else(|| bad(&size_path, &text, "not a size like 32K"))?,
                None => 0,
            };
            let list_path = index.join("shared_cpu_list");
            let shared = match read_optional(&list_path)? {
                Some(text) => {
                    parse_cpu_list(&text).map_err(|problem| bad(&list_path, &text, problem))?
                }
                None => vec![cpu],
            };
            let cache = Cache {
                level,
                kind,
                size_bytes,
                cpus: shared,
            };
            if !out.contains(&cache) {
                out.push(cache);
            }
        }
    }
    Ok(out)
}

/// `32K`, `1024K`, `32M`, `1G` or bytes.
fn cache_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let value: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    value.checked_mul(scale)
}

pub(super) fn read(root: &Path) -> Result<Topology, TopologyError> {
    let what = root.display().to_string();

    // cpu -> (package, core id).
    let mut cpus: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    for (cpu, dir) in numbered_entries(&root.join("devices/system/cpu"), "cpu")? {
        let topology = dir.join("topology");
        let package = read_number::<u32>(&topology.join("physical_package_id"))?.unwrap_or(0);
        let core = read_number::<u32>(&topology.join("core_id"))?.unwrap_or(cpu);
        cpus.insert(cpu as usize, (package, core));
    }

    // NUMA node -> (cpus, memory).
    let mut numas: BTreeMap<u32, (Vec<usize>, Option<u64>)> = BTreeMap::new();
    for (node, dir) in numbered_entries(&root.join("devices/system/node"), "node")? {
        let cpulist_path = dir.join("cpulist");
        let node_cpus = match read_optional(&cpulist_path)? {
            Some(text) => {
                parse_cpu_list(&text).map_err(|problem| bad(&cpulist_path, &text, problem))?
            }
            None => Vec::new(),
        };
        let meminfo_path = dir.join("meminfo");
        let memory = match read_optional(&meminfo_path)? {
            Some(text) => mem_total(&meminfo_path, &text)?,
            None => None,
        };
        for &cpu in &node_cpus {
            cpus.entry(cpu).or_insert((0, cpu as u32));
        }
        numas.insert(node, (node_cpus, memory));
    }
    if cpus.is_empty() {
        return Err(TopologyError::NoCpus { what });
    }
    if numas.is_empty() {
        numas.insert(0, (cpus.keys().copied().collect(), None));
    }
    // A cpu no NUMA node lists (offline nodes, partial trees) goes to the
    // first node rather than vanishing.
    let listed: Vec<usize> = numas
        .values()
        .flat_map(|(list, _)| list.iter().copied())
        .collect();
    let unlisted: Vec<usize> = cpus
        .keys()
        .copied()
        .filter(|cpu| !listed.contains(cpu))
        .collect();
    if let Some((_, (list, _))) = numas.iter_mut().next() {
        list.extend(unlisted);
    }

    let mut packages: BTreeMap<u32, Vec<NumaNode>> = BTreeMap::new();
    for (os_index, (node_cpus, memory_bytes)) in numas {
        let mut cores: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for cpu in node_cpus {
            if let Some(&(package, core)) = cpus.get(&cpu) {
                cores.entry((package, core)).or_default().push(cpu);
            }
        }
        let package = cores
            .keys()
            .next()
            .map(|(package, _)| *package)
            .unwrap_or(0);
        packages.entry(package).or_default().push(NumaNode {
            os_index,
            memory_bytes,
            cores: cores
                .into_iter()
                .map(|((_, os_index), pus)| Core { os_index, pus })
                .collect(),
        });
    }
    let numa_count: usize = packages.values().map(Vec::len).sum();
    let only_numa = packages.values().flatten().next().map(|node| node.os_index);

    let mut gpus = Vec::new();
    let mut nics = Vec::new();
    let pci_dir = root.join("bus/pci/devices");
    let mut pci_entries = names_under(&pci_dir);
    pci_entries.sort();
    for bus_id in pci_entries {
        let dir = pci_dir.join(&bus_id);
        let Some(class) = read_hex(&dir.join("class"))? else {
            continue;
        };
        let vendor = read_hex(&dir.join("vendor"))?;
        let device = read_hex(&dir.join("device"))?;
        let base = class >> 8;
        let kind = match base {
            0x0300 | 0x0302 | 0x0380 if matches!(vendor, Some(0x10de | 0x1002 | 0x8086)) => {
                DeviceKind::Gpu
            }
            0x1200 => DeviceKind::Gpu,
            0x0200 => DeviceKind::Ethernet,
            0x0207 => DeviceKind::InfiniBand,
            _ => continue,
        };
        let numa_path = dir.join("numa_node");
        let numa = match read_number::<i64>(&numa_path)? {
            Some(n) if n >= 0 => Some(
                u32::try_from(n)
                    .map_err(|_| bad(&numa_path, &n.to_string(), "NUMA node out of range"))?,
            ),
            _ if numa_count == 1 => only_numa,
            _ => None,
        };
        let mut os_names = names_under(&dir.join("infiniband"));
        os_names.extend(names_under(&dir.join("net")));
        // virtio NICs keep their interface one level down (virtio0/net/eth0).
        for virtio in names_under(&dir)
            .into_iter()
            .filter(|name| name.starts_with("virtio"))
        {
            os_names.extend(names_under(&dir.join(virtio).join("net")));
        }
        let pci_path = bridges_of(&dir, &bus_id);
        let device = PciDevice {
            kind,
            pci_bus_id: bus_id,
            vendor_id: vendor.and_then(|v| u16::try_from(v).ok()),
            device_id: device.and_then(|d| u16::try_from(d).ok()),
            model: None,
            os_names,
            numa,
            nvlink_island: None,
            pci_path,
        };
        match kind {
            DeviceKind::Gpu => gpus.push(device),
            DeviceKind::Ethernet | DeviceKind::InfiniBand => nics.push(device),
        }
    }

    let caches = caches(root, cpus.keys().copied())?;
    Topology {
        packages: packages
            .into_iter()
            .map(|(os_index, numa_nodes)| Package {
                os_index,
                numa_nodes,
            })
            .collect(),
        gpus,
        nics,
        caches,
    }
    .normalise(&what)
}

/// The PCI bridges above a device, host bridge first, from where its sysfs
/// entry really is (`/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0`);
/// empty when the link cannot be followed.
fn bridges_of(dir: &std::path::Path, bus_id: &str) -> Vec<String> {
    let Ok(real) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let parts: Vec<String> = real
        .components()
        .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
        .collect();
    let Some(root) = parts
        .iter()
        .position(|p| p.starts_with("pci") && p.contains(':'))
    else {
        return Vec::new();
    };
    parts[root..]
        .iter()
        .filter(|p| p.as_str() != bus_id)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(name: &str) -> FakeSysfs {
            let dir =
                std::env::temp_dir().join(format!("lumen-sysfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeSysfs(dir)
        }
        fn write(&self, path: &str, content: &str) {
            let path = self.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn two_numa_machine(name: &str) -> FakeSysfs {
        let sys = FakeSysfs::new(name);
        // 2 packages, one NUMA node each, 2 cores x 2 PUs per package.
        for cpu in 0..8u32 {
            let package = cpu / 4;
            let core = (cpu % 4) / 2;
            sys.write(
                &format!("devices/system/cpu/cpu{cpu}/topology/physical_package_id"),
                &format!("{package}\n"),
            );
            sys.write(
                &format!("devices/system/cpu/cpu{cpu}/topology/core_id"),
                &format!("{core}\n"),
            );
        }
        sys.write("devices/system/cpu/online", "0-7\n");
        sys.write("devices/system/node/node0/cpulist", "0-3\n");
        sys.write(
            "devices/system/node/node0/meminfo",
            "Node 0 MemTotal:       16384 kB\nNode 0 MemFree: 1 kB\n",
        );
        sys.write("devices/system/node/node1/cpulist", "4-7\n");
        sys.write(
            "devices/system/node/node1/meminfo",
            "Node 1 MemTotal:       16384 kB\n",
        );
        for (bus, class, vendor, numa) in [
            ("0000:07:00.0", "0x030200", "0x10de", "0"),
            ("0000:87:00.0", "0x030200", "0x10de", "1"),
            ("0000:08:00.0", "0x020700", "0x15b3", "0"),
            ("0000:00:1f.0", "0x060100", "0x8086", "-1"),
        ] {
            sys.write(
                &format!("bus/pci/devices/{bus}/class"),
                &format!("{class}\n"),
            );
            sys.write(
                &format!("bus/pci/devices/{bus}/vendor"),
                &format!("{vendor}\n"),
            );
            sys.write(&format!("bus/pci/devices/{bus}/device"), "0x1234\n");
            sys.write(
                &format!("bus/pci/devices/{bus}/numa_node"),
                &format!("{numa}\n"),
            );
        }
        sys.write("bus/pci/devices/0000:08:00.0/infiniband/mlx5_0/ports", "");
        sys
    }

    #[test]
    fn nvidia_gpus_are_named_from_the_driver() {
        let sys = two_numa_machine("nvidia");
        let dev = "bus/pci/devices/0000:77:00.0";
        sys.write(&format!("{dev}/class"), "0x030200\n");
        sys.write(&format!("{dev}/vendor"), "0x10de\n");
        sys.write(&format!("{dev}/device"), "0x2330\n");
        sys.write(&format!("{dev}/numa_node"), "1\n");
        let mut t = read(&sys.0).expect("a topology");
        let at = t
            .gpus
            .iter()
            .position(|g| g.pci_bus_id == "0000:77:00.0")
            .expect("the GPU");
        assert_eq!(t.gpus[at].model, None);
        sys.write(
            "proc/0000:77:00.0/information",
            "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   123\nDevice Minor: \t 3\n",
        );
        t.name_nvidia_gpus(&sys.0.join("proc"));
        assert_eq!(t.gpus[at].model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert!(t.gpus[at].os_names.contains(&"nvidia3".to_string()));
        // No driver file: nothing changes, nothing fails.
        t.name_nvidia_gpus(&sys.0.join("nowhere"));
        assert_eq!(
            t.gpus[at]
                .os_names
                .iter()
                .filter(|n| n.starts_with("nvidia"))
                .count(),
            1
        );
    }

    #[test]
    fn caches_are_read_once_each() {
        let sys = two_numa_machine("caches");
        for cpu in 0..8u32 {
            let base = format!("devices/system/cpu/cpu{cpu}/cache");
            let core_first = cpu / 2 * 2;
            sys.write(&format!("{base}/index0/level"), "1\n");
            sys.write(&format!("{base}/index0/type"), "Data\n");
            sys.write(&format!("{base}/index0/size"), "48K\n");
            sys.write(
                &format!("{base}/index0/shared_cpu_list"),
                &format!("{core_first}-{}\n", core_first + 1),
            );
            let package_first = cpu / 4 * 4;
            sys.write(&format!("{base}/index1/level"), "3\n");
            sys.write(&format!("{base}/index1/type"), "Unified\n");
            sys.write(&format!("{base}/index1/size"), "32M\n");
            sys.write(
                &format!("{base}/index1/shared_cpu_list"),
                &format!("{package_first}-{}\n", package_first + 3),
            );
        }
        let t = read(&sys.0).expect("a topology");
        assert_eq!(t.caches.len(), 4 + 2, "{:?}", t.caches);
        let l3: Vec<&Cache> = t.caches.iter().filter(|c| c.level == 3).collect();
        assert_eq!(l3[0].size_bytes, 32 << 20);
        assert_eq!(l3[1].cpus, vec![4, 5, 6, 7]);
        assert!(
            t.render().contains("Caches: L3 32MB x1, L1d 48KB x2"),
            "{}",
            t.render()
        );
        sys.write("devices/system/cpu/cpu0/cache/index0/size", "lots\n");
        assert!(matches!(read(&sys.0), Err(TopologyError::BadFile { .. })));
    }

    #[test]
    fn reads_a_fake_two_socket_tree() {
        let sys = two_numa_machine("two");
        let topology = read(&sys.0).unwrap();
        assert_eq!(topology.packages.len(), 2);
        assert_eq!(topology.cpus_of_numa(1), vec![4, 5, 6, 7]);
        assert_eq!(topology.numa_node(0).unwrap().cores.len(), 2);
        assert_eq!(topology.numa_node(0).unwrap().cores[0].pus, vec![0, 1]);
        assert_eq!(topology.memory_bytes(), Some(2 * 16384 * 1024));
        assert_eq!(topology.gpus.len(), 2);
        assert_eq!(topology.gpus_near(1)[0].pci_bus_id, "0000:87:00.0");
        assert_eq!(topology.nics.len(), 1);
        assert_eq!(topology.nics[0].kind, DeviceKind::InfiniBand);
        assert_eq!(topology.nics[0].os_names, vec!["mlx5_0".to_string()]);
        assert_eq!(topology.numa_of_cpu(5), Some(1));
    }

    #[test]
    fn no_numa_directories_is_one_numa_node() {
        let sys = FakeSysfs::new("flat");
        for cpu in 0..4 {
            sys.write(&format!("devices/system/cpu/cpu{cpu}/online"), "1\n");
        }
        let topology = read(&sys.0).unwrap();
        assert_eq!(topology.numa_nodes().count(), 1);
        assert_eq!(topology.cpus(), vec![0, 1, 2, 3]);
        // No topology files: each cpu is its own core.
        assert_eq!(topology.cores().count(), 4);
    }

    #[test]
    fn malformed_files_are_errors() {
        let sys = two_numa_machine("bad-cpulist");
        sys.write("devices/system/node/node1/cpulist", "4-x\n");
        let error = read(&sys.0).unwrap_err();
        assert!(
            matches!(error, TopologyError::BadFile { ref path, .. } if path.ends_with("node1/cpulist")),
            "{error}"
        );

        let sys = two_numa_machine("bad-package");
        sys.write(
            "devices/system/cpu/cpu3/topology/physical_package_id",
            "zero\n",
        );
        assert!(matches!(read(&sys.0), Err(TopologyError::BadFile { .. })));

        let sys = two_numa_machine("bad-class");
        sys.write("bus/pci/devices/0000:07:00.0/class", "display\n");
        assert!(matches!(read(&sys.0), Err(TopologyError::BadFile { .. })));

        let sys = two_numa_machine("bad-meminfo");
        sys.write(
            "devices/system/node/node0/meminfo",
            "Node 0 MemTotal: lots kB\n",
        );
        assert!(matches!(read(&sys.0), Err(TopologyError::BadFile { .. })));

        let empty = FakeSysfs::new("empty");
        assert!(matches!(read(&empty.0), Err(TopologyError::NoCpus { .. })));
    }
}
