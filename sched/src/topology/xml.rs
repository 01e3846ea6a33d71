//! hwloc XML (`lstopo --of xml`) into a [`Topology`].
//!
//! hwloc 2.x nests `<object type=...>` elements: `Machine` > `Package` >
//! (`Group`, caches) > `Core` > `PU`, with each `NUMANode` a memory child of
//! the object whose cpus are local to it and the I/O tree (`Bridge` >
//! `PCIDev` > `OSDev`) hanging off the object it is close to. hwloc 1.x put
//! cores inside the `NUMANode` instead. Both are read the same way:
//! - a PU's NUMA node is its `NUMANode` ancestor (1.x) or the NUMA node whose
//!   `cpuset` holds it (2.x); its core and package are its `Core` and
//!   `Package` ancestors (no `Core`: the PU is its own core; no `Package`:
//!   package 0);
//! - a PCI device's NUMA node is that of the first non-I/O ancestor: its
//!   single `NUMANode` child, itself if it is one, its `nodeset` if that
//!   names one node, or the single NUMA node its `cpuset` overlaps;
//! - the kind of a PCI device comes from the class in `pci_type`
//!   (`0302 [10de:20b0] ...`) and its `OSDev` children (`CUDA`,
//!   `OpenFabrics`, network); its model from the `GPUModel` info of an
//!   `OSDev` or the `PCIDevice` info of the `PCIDev`;
//! - NVLink islands are the connected components of hwloc's
//!   `NVLinkBandwidth` distance matrix (`<distances2 name="NVLinkBandwidth"
//!   indexing="gp">` over GPU OS devices), or an `NVLinkIsland` info on the
//!   GPU's `PCIDev` or `OSDev` where a tool has written one.

use std::collections::{BTreeMap, HashMap};

use roxmltree::{Document, Node};

use super::bitmap::parse_hwloc_bitmap;
use super::{
    Cache, CacheKind, Core, DeviceKind, NumaNode, Package, PciDevice, Topology, TopologyError,
};

struct Reader<'a, 'input> {
    document: &'a Document<'input>,
    what: &'a str,
}

impl<'a, 'input> Reader<'a, 'input> {
    fn error(&self, node: Node<'_, '_>, problem: impl Into<String>) -> TopologyError {
        let element = match node.attribute("type") {
            Some(kind) => format!("{} type=\"{kind}\"", node.tag_name().name()),
            None => node.tag_name().name().to_string(),
        };
        TopologyError::BadElement {
            what: self.what.to_string(),
            element,
            line: self.document.text_pos_at(node.range().start).row,
            problem: problem.into(),
        }
    }

    fn number<T: std::str::FromStr>(
        &self,
        node: Node<'_, '_>,
        attribute: &str,
    ) -> Result<Option<T>, TopologyError> {
        match node.attribute(attribute) {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                self.error(
                    node,
                    format!("attribute {attribute}={text:?} is not a number"),
                )
            }),
        }
    }

    fn cpuset(
        &self,
        node: Node<'_, '_>,
        attribute: &str,
    ) -> Result<Option<Vec<usize>>, TopologyError> {
        match node.attribute(attribute) {
            None => Ok(None),
            Some(text) => parse_hwloc_bitmap(text)
                .map(Some)
                .map_err(|problem| self.error(node, format!("attribute {attribute}: {problem}"))),
        }
    }
}

fn is_object(node: &Node<'_, '_>, kind: &str) -> bool {
    node.is_element() && node.tag_name().name() == "object" && node.attribute("type") == Some(kind)
}

fn is_io(node: &Node<'_, '_>) -> bool {
    ["Bridge", "PCIDev", "OSDev", "Misc"]
        .iter()
        .any(|kind| is_object(node, kind))
}

/// The `value` of the `<info name=... value=...>` child called `name`.
fn info<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|child| {
            child.is_element()
                && child.tag_name().name() == "info"
                && child.attribute("name") == Some(name)
        })
        .and_then(|child| child.attribute("value"))
}

fn objects<'a, 'input>(
    document: &'a Document<'input>,
    kind: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    document
        .descendants()
        .filter(move |node| is_object(node, kind))
}

struct Numa {
    os_index: u32,
    cpuset: Vec<usize>,
    memory: Option<u64>,
    package: Option<u32>,
}

pub(super) fn parse(text: &str, what: &str) -> Result<Topology, TopologyError> {
    // lstopo writes `<!DOCTYPE topology SYSTEM "hwloc2.dtd">`.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let document =
        Document::parse_with_options(text, options).map_err(|source| TopologyError::Xml {
            what: what.to_string(),
            source,
        })?;
    let reader = Reader {
        document: &document,
        what,
    };
    let root = document.root_element();
    if root.tag_name().name() != "topology" {
        return Err(reader.error(root, "the root element is not <topology>"));
    }

    // NUMA nodes, keyed by OS index.
    let mut numas: BTreeMap<u32, Numa> = BTreeMap::new();
    for (logical, node) in objects(&document, "NUMANode").enumerate() {
        let os_index = reader
            .number::<u32>(node, "os_index")?
            .unwrap_or(logical as u32);
        let cpuset = reader.cpuset(node, "cpuset")?.unwrap_or_default();
        let memory = reader.number::<u64>(node, "local_memory")?;
        let package = package_of(&reader, node)?;
        if numas
            .insert(
                os_index,
                Numa {
                    os_index,
                    cpuset,
                    memory,
                    package,
                },
            )
            .is_some()
        {
            return Err(reader.error(node, format!("a second NUMA node with os_index {os_index}")));
        }
    }

    // PUs into (package, NUMA node, core).
    let mut placed: BTreeMap<(u32, u32), BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
    let mut numa_package: BTreeMap<u32, u32> = BTreeMap::new();
    let mut seen_pus: HashMap<usize, ()> = HashMap::new();
    for pu in objects(&document, "PU") {
        let cpu = reader
            .number::<usize>(pu, "os_index")?
            .ok_or_else(|| reader.error(pu, "a PU without os_index"))?;
        if cpu > super::bitmap::MAX_CPU {
            return Err(reader.error(pu, format!("os_index {cpu} is implausibly large")));
        }
        if seen_pus.insert(cpu, ()).is_some() {
            return Err(reader.error(pu, format!("a second PU with os_index {cpu}")));
        }
        let package = package_of(&reader, pu)?.unwrap_or(0);
        let numa = match pu.ancestors().find(|node| is_object(node, "NUMANode")) {
            Some(node) => reader.number::<u32>(node, "os_index")?.unwrap_or(0),
            None if numas.is_empty() => 0,
            None => numas
                .values()
                .find(|numa| numa.cpuset.contains(&cpu))
                .map(|numa| numa.os_index)
                .ok_or_else(|| reader.error(pu, format!("PU {cpu} is in no NUMA node's cpuset")))?,
        };
        let core = match pu.ancestors().find(|node| is_object(node, "Core")) {
            Some(node) => reader
                .number::<u32>(node, "os_index")?
                .unwrap_or(cpu as u32),
            None => cpu as u32,
        };
        let numa_package = *numa_package.entry(numa).or_insert(package);
        placed
            .entry((numa_package, numa))
            .or_default()
            .entry(core)
            .or_default()
            .push(cpu);
    }
    if seen_pus.is_empty() {
        return Err(TopologyError::NoCpus {
            what: what.to_string(),
        });
    }

    // Assemble packages; NUMA nodes without cpus (GPU memory, CXL) keep
    // their package ancestor, else package 0.
    let mut packages: BTreeMap<u32, Vec<NumaNode>> = BTreeMap::new();
    let mut all_numas: Vec<u32> = numas.keys().copied().collect();
    for &(_, numa) in placed.keys() {
        if !all_numas.contains(&numa) {
            all_numas.push(numa);
        }
    }
    for numa in all_numas {
        let package = numa_package
            .get(&numa)
            .copied()
            .or_else(|| numas.get(&numa).and_then(|n| n.package))
            .unwrap_or(0);
        let cores = placed
            .remove(&(package, numa))
            .unwrap_or_default()
            .into_iter()
            .map(|(os_index, pus)| Core { os_index, pus })
            .collect();
        packages.entry(package).or_default().push(NumaNode {
            os_index: numa,
            memory_bytes: numas.get(&numa).and_then(|n| n.memory),
            cores,
        });
    }

    let islands = nvlink_islands(&reader)?;
    let mut gpus = Vec::new();
    let mut nics = Vec::new();
    for pci in objects(&document, "PCIDev") {
        if let Some(device) = pci_device(&reader, pci, &numas, &islands)? {
            match device.kind {
                DeviceKind::Gpu => gpus.push(device),
                DeviceKind::Ethernet | DeviceKind::InfiniBand => nics.push(device),
            }
        }
    }

    let caches = caches(&reader, &document)?;
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
    .normalise(what)
}

/// The cache objects: hwloc 2.x's `L1Cache` ... `L5Cache`, `L1iCache` ...
/// `L3iCache`, and hwloc 1.x's `Cache` with a `depth`; `cache_type` 0 is
/// unified, 1 data, 2 instruction.
fn caches(reader: &Reader<'_, '_>, document: &Document<'_>) -> Result<Vec<Cache>, TopologyError> {
    let mut out = Vec::new();
    for node in document.descendants() {
        if !node.is_element() || node.tag_name().name() != "object" {
            continue;
        }
        let Some(kind) = node.attribute("type") else {
            continue;
        };
        let (level, instruction) = match kind.strip_prefix('L') {
            Some(rest) if rest.ends_with("iCache") => {
                (rest.trim_end_matches("iCache").parse::<u8>().ok(), true)
            }
            Some(rest) if rest.ends_with("Cache") => {
                (rest.trim_end_matches("Cache").parse::<u8>().ok(), false)
            }
            _ if kind == "Cache" => (reader.number::<u8>(node, "depth")?, false),
            _ => continue,
        };
        let Some(level) = level else {
            return Err(reader.error(node, "a cache without a level"));
        };
        let kind = match (instruction, reader.number::<u8>(node, "cache_type")?) {
            (true, _) | (false, Some(2)) => CacheKind::Instruction,
            (false, Some(1)) => CacheKind::Data,
            _ => CacheKind::Unified,
        };
        out.push(Cache {
            level,
            kind,
            size_bytes: reader.number::<u64>(node, "cache_size")?.unwrap_or(0),
            cpus: reader.cpuset(node, "cpuset")?.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The OS index of the `Package` ancestor of `node` (its position among
/// packages when it has no `os_index`).
fn package_of(reader: &Reader<'_, '_>, node: Node<'_, '_>) -> Result<Option<u32>, TopologyError> {
    let Some(package) = node.ancestors().find(|n| is_object(n, "Package")) else {
        return Ok(None);
    };
    match reader.number::<u32>(package, "os_index")? {
        Some(index) => Ok(Some(index)),
        None => Ok(objects(reader.document, "Package")
            .position(|p| p == package)
            .map(|p| p as u32)),
    }
}

/// The class, vendor and device of `pci_type="0302 [10de:20b0] [10de:1450] a1"`.
fn pci_type(text: &str) -> Option<(u16, u16, u16)> {
    let mut words = text.split_whitespace();
    let class = u16::from_str_radix(words.next()?, 16).ok()?;
    let ids = words.next()?.strip_prefix('[')?.strip_suffix(']')?;
    let (vendor, device) = ids.split_once(':')?;
    Some((
        class,
        u16::from_str_radix(vendor, 16).ok()?,
        u16::from_str_radix(device, 16).ok()?,
    ))
}

/// hwloc 2.x's `osdev_type` numbers (and 1.x's names).
fn osdev_kind(osdev: Node<'_, '_>) -> Option<DeviceKind> {
    let subtype = osdev.attribute("subtype").unwrap_or("");
    let backend = info(osdev, "Backend").unwrap_or("");
    if ["CUDA", "NVML", "RSMI", "OpenCL", "LevelZero", "ROCm"]
        .iter()
        .any(|name| subtype == *name || backend == *name)
    {
        return Some(DeviceKind::Gpu);
    }
    if subtype == "OpenFabrics" || backend == "OpenFabrics" {
        return Some(DeviceKind::InfiniBand);
    }
    match osdev.attribute("osdev_type").map(str::trim) {
        Some("1" | "5" | "GPU" | "CoProcessor") => Some(DeviceKind::Gpu),
        Some("3" | "OpenFabrics") => Some(DeviceKind::InfiniBand),
        Some("2" | "Network") => Some(DeviceKind::Ethernet),
        _ => None,
    }
}

fn pci_device(
    reader: &Reader<'_, '_>,
    pci: Node<'_, '_>,
    numas: &BTreeMap<u32, Numa>,
    islands: &HashMap<roxmltree::NodeId, u32>,
) -> Result<Option<PciDevice>, TopologyError> {
    let bus_id = pci
        .attribute("pci_busid")
        .ok_or_else(|| reader.error(pci, "a PCIDev without pci_busid"))?;
    let ids = match pci.attribute("pci_type") {
        Some(text) => Some(pci_type(text).ok_or_else(|| {
            reader.error(
                pci,
                format!("pci_type {text:?} is not \"CCCC [vvvv:dddd] ...\""),
            )
        })?),
        None => None,
    };
    let osdevs: Vec<Node<'_, '_>> = pci
        .children()
        .filter(|child| is_object(child, "OSDev"))
        .collect();
    let from_osdevs: Vec<DeviceKind> = osdevs
        .iter()
        .filter_map(|osdev| osdev_kind(*osdev))
        .collect();
    let from_class = ids.and_then(|(class, vendor, _)| match class {
        0x0300 | 0x0302 | 0x0380 if [0x10de, 0x1002, 0x8086].contains(&vendor) => {
            Some(DeviceKind::Gpu)
        }
        0x1200 => Some(DeviceKind::Gpu),
        0x0207 => Some(DeviceKind::InfiniBand),
        0x0200 => Some(DeviceKind::Ethernet),
        _ => None,
    });
    let kind = if from_osdevs.contains(&DeviceKind::Gpu) || from_class == Some(DeviceKind::Gpu) {
        DeviceKind::Gpu
    } else if from_osdevs.contains(&DeviceKind::InfiniBand)
        || from_class == Some(DeviceKind::InfiniBand)
    {
        DeviceKind::InfiniBand
    } else if from_osdevs.contains(&DeviceKind::Ethernet)
        || from_class == Some(DeviceKind::Ethernet)
    {
        DeviceKind::Ethernet
    } else {
        return Ok(None);
    };
    let model = osdevs
        .iter()
        .find_map(|osdev| info(*osdev, "GPUModel"))
        .or_else(|| info(pci, "PCIDevice"))
        .map(str::to_string);
    let os_names = osdevs
        .iter()
        .filter_map(|osdev| osdev.attribute("name").map(str::to_string))
        .collect();
    let mut nvlink_island = None;
    for node in std::iter::once(pci).chain(osdevs.iter().copied()) {
        if let Some(id) = islands.get(&node.id()) {
            nvlink_island = Some(*id);
        }
        if let Some(text) = info(node, "NVLinkIsland") {
            nvlink_island = Some(text.trim().parse().map_err(|_| {
                reader.error(node, format!("info NVLinkIsland={text:?} is not a number"))
            })?);
        }
    }
    Ok(Some(PciDevice {
        kind,
        pci_bus_id: bus_id.to_string(),
        vendor_id: ids.map(|(_, vendor, _)| vendor),
        device_id: ids.map(|(_, _, device)| device),
        model,
        os_names,
        numa: numa_of_io(reader, pci, numas)?,
        nvlink_island: if kind == DeviceKind::Gpu {
            nvlink_island
        } else {
            None
        },
        pci_path: bridges_above(pci),
    }))
}

/// The `Bridge` objects above an I/O object, host bridge first: a PCI
/// bridge by its bus id, a host bridge by the buses it serves (or its
/// index among the document's objects).
fn bridges_above(node: Node<'_, '_>) -> Vec<String> {
    let mut path: Vec<String> = node
        .ancestors()
        .skip(1)
        .filter(|a| is_object(a, "Bridge"))
        .map(|bridge| match bridge.attribute("pci_busid") {
            Some(bus) => bus.to_string(),
            None => format!(
                "host:{}",
                bridge
                    .attribute("bridge_pci")
                    .or_else(|| bridge.attribute("gp_index"))
                    .or_else(|| bridge.attribute("os_index"))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{:?}", bridge.id()))
            ),
        })
        .collect();
    path.reverse();
    path
}

/// The NUMA node an I/O object hangs off (see the module doc).
fn numa_of_io(
    reader: &Reader<'_, '_>,
    pci: Node<'_, '_>,
    numas: &BTreeMap<u32, Numa>,
) -> Result<Option<u32>, TopologyError> {
    let Some(parent) = pci
        .ancestors()
        .skip(1)
        .find(|node| node.is_element() && !is_io(node))
    else {
        return Ok(None);
    };
    if is_object(&parent, "NUMANode") {
        return reader.number(parent, "os_index");
    }
    let numa_children: Vec<Node<'_, '_>> = parent
        .children()
        .filter(|child| is_object(child, "NUMANode"))
        .collect();
    if let [single] = numa_children.as_slice() {
        return reader.number(*single, "os_index");
    }
    if let Some(nodeset) = reader.cpuset(parent, "nodeset")? {
        if let [single] = nodeset.as_slice() {
            return Ok(u32::try_from(*single).ok());
        }
    }
    if let Some(cpuset) = reader.cpuset(parent, "cpuset")? {
        let overlapping: Vec<u32> = numas
            .values()
            .filter(|numa| numa.cpuset.iter().any(|cpu| cpuset.contains(cpu)))
            .map(|numa| numa.os_index)
            .collect();
        if let [single] = overlapping.as_slice() {
            return Ok(Some(*single));
        }
    }
    if numas.len() <= 1 {
        return Ok(numas.keys().next().copied().or(Some(0)));
    }
    Ok(None)
}

/// NVLink islands from `<distances2 name="NVLinkBandwidth" indexing="gp">`:
/// objects linked by a non-zero bandwidth (either direction) share an
/// island; islands are numbered in order of their first object.
fn nvlink_islands(
    reader: &Reader<'_, '_>,
) -> Result<HashMap<roxmltree::NodeId, u32>, TopologyError> {
    let mut by_gp: HashMap<u64, Node<'_, '_>> = HashMap::new();
    for node in reader
        .document
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "object")
    {
        if let Some(gp) = reader.number::<u64>(node, "gp_index")? {
            by_gp.insert(gp, node);
        }
    }
    let mut islands = HashMap::new();
    let mut next_island = 0;
    for matrix in reader.document.descendants().filter(|n| {
        n.is_element()
            && matches!(n.tag_name().name(), "distances2" | "distances2hetero")
            && n.attribute("name") == Some("NVLinkBandwidth")
    }) {
        let text_of = |tag: &str| {
            matrix
                .children()
                .filter(|child| child.is_element() && child.tag_name().name() == tag)
                .filter_map(|child| child.text())
                .collect::<Vec<_>>()
                .join(" ")
        };
        // distances2hetero writes "type:gp" pairs; keep the gp index.
        let indexes: Vec<u64> = text_of("indexes")
            .split_whitespace()
            .map(|word| word.rsplit(':').next().unwrap_or(word).parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| reader.error(matrix, "an <indexes> entry is not a number"))?;
        let values: Vec<u64> = text_of("u64values")
            .split_whitespace()
            .map(str::parse::<u64>)
            .collect::<Result<_, _>>()
            .map_err(|_| reader.error(matrix, "a <u64values> entry is not a number"))?;
        let n = indexes.len();
        if values.len() != n * n {
            return Err(reader.error(
                matrix,
                format!("{} values for {n} objects (want {})", values.len(), n * n),
            ));
        }
        // Union-find over the linked pairs.
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for i in 0..n {
            for j in 0..n {
                if i != j && values[i * n + j] > 0 {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let mut numbered: HashMap<usize, u32> = HashMap::new();
        for (i, gp) in indexes.iter().enumerate() {
            let component = root(&mut parent, i);
            let island = *numbered.entry(component).or_insert_with(|| {
                next_island += 1;
                next_island - 1
            });
            let node = by_gp.get(gp).ok_or_else(|| {
                reader.error(matrix, format!("index {gp} names no object's gp_index"))
            })?;
            islands.insert(node.id(), island);
        }
    }
    Ok(islands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_paths_and_the_nic_under_each_gpus_switch() {
        // One NUMA node, one host bridge, two PCIe switches, each with a GPU
        // and a NIC; the NIC of the second switch sorts first by bus id.
        let xml = r#"<topology>
          <object type="Machine" os_index="0">
            <object type="NUMANode" os_index="0" local_memory="1024">
              <object type="Package" os_index="0">
                <object type="Core" os_index="0"><object type="PU" os_index="0"/></object>
                <object type="Core" os_index="1"><object type="PU" os_index="1"/></object>
              </object>
              <object type="Bridge" bridge_pci="0000:[00-ff]">
                <object type="Bridge" pci_busid="0000:00:01.0">
                  <object type="PCIDev" pci_busid="0000:02:00.0" pci_type="0302 [10de:2330] [10de:16c1] a1"/>
                  <object type="PCIDev" pci_busid="0000:03:00.0" pci_type="0207 [15b3:1021] [15b3:0041] 00"/>
                </object>
                <object type="Bridge" pci_busid="0000:00:02.0">
                  <object type="PCIDev" pci_busid="0000:05:00.0" pci_type="0302 [10de:2330] [10de:16c1] a1"/>
                  <object type="PCIDev" pci_busid="0000:01:00.0" pci_type="0207 [15b3:1021] [15b3:0041] 00"/>
                </object>
              </object>
            </object>
          </object>
        </topology>"#;
        let topology = parse(xml, "switches.xml").unwrap();
        assert_eq!(
            topology.gpus[0].pci_path,
            vec!["host:0000:[00-ff]".to_string(), "0000:00:01.0".to_string()]
        );
        let (gpu_a, nic_b, nic_a) = (&topology.gpus[0], &topology.nics[0], &topology.nics[1]);
        assert_eq!(nic_a.pci_bus_id, "0000:03:00.0");
        assert_eq!(gpu_a.pci_hops(nic_a), Some(2), "one switch");
        assert_eq!(gpu_a.pci_hops(nic_b), Some(4), "through the host bridge");
        let bindings = crate::topology::bind_local_ranks(&topology, 2, None).unwrap();
        let nics: Vec<&str> = bindings
            .iter()
            .map(|b| b.nic.as_ref().unwrap().pci_bus_id.as_str())
            .collect();
        assert_eq!(
            nics,
            vec!["0000:03:00.0", "0000:01:00.0"],
            "each GPU's own switch"
        );
    }

    #[test]
    fn hwloc_1_nesting_puts_cores_inside_numa_nodes() {
        let xml = r#"<topology>
          <object type="Machine" os_index="0">
            <object type="NUMANode" os_index="0" local_memory="1024">
              <object type="Package" os_index="0">
                <object type="Core" os_index="0"><object type="PU" os_index="0"/><object type="PU" os_index="2"/></object>
                <object type="Core" os_index="1"><object type="PU" os_index="1"/><object type="PU" os_index="3"/></object>
              </object>
              <object type="Bridge">
                <object type="PCIDev" pci_busid="0000:3b:00.0" pci_type="0200 [8086:1572] [8086:0000] 01">
                  <object type="OSDev" name="eth0" osdev_type="2"/>
                </object>
              </object>
            </object>
          </object>
        </topology>"#;
        let topology = parse(xml, "v1.xml").unwrap();
        assert_eq!(topology.numa_nodes().count(), 1);
        assert_eq!(topology.numa_node(0).unwrap().memory_bytes, Some(1024));
        assert_eq!(topology.numa_node(0).unwrap().cores[0].pus, vec![0, 2]);
        assert_eq!(topology.nics[0].numa, Some(0));
        assert_eq!(topology.nics[0].os_names, vec!["eth0".to_string()]);
    }

    #[test]
    fn no_numa_node_no_core_is_one_numa_node_of_single_pu_cores() {
        let xml = r#"<topology><object type="Machine"><object type="PU" os_index="0"/><object type="PU" os_index="1"/></object></topology>"#;
        let topology = parse(xml, "flat.xml").unwrap();
        assert_eq!(topology.packages.len(), 1);
        assert_eq!(topology.cores().count(), 2);
        assert_eq!(topology.numa_of_cpu(1), Some(0));
    }

    #[test]
    fn nvlink_islands_from_bandwidths_and_from_info() {
        let gpu = |gp: u32, bus: &str| {
            format!(
                r#"<object type="PCIDev" pci_busid="{bus}" pci_type="0302 [10de:2330] [10de:16c1] a1"><object type="OSDev" gp_index="{gp}" name="cuda{gp}" subtype="CUDA" osdev_type="5"/></object>"#
            )
        };
        // GPUs 10-11 linked, 12-13 linked, no link across.
        let xml = format!(
            r#"<topology><object type="Machine"><object type="PU" os_index="0"/>{}{}{}{}</object>
            <distances2 type="OSDev" nbobjs="4" kind="9" name="NVLinkBandwidth" indexing="gp">
              <indexes length="11">10 11 12 13</indexes>
              <u64values length="31">0 9 0 0 9 0 0 0 0 0 0 9 0 0 9 0</u64values>
            </distances2></topology>"#,
            gpu(10, "0000:01:00.0"),
            gpu(11, "0000:02:00.0"),
            gpu(12, "0000:03:00.0"),
            gpu(13, "0000:04:00.0"),
        );
        let topology = parse(&xml, "islands.xml").unwrap();
        let islands: Vec<Option<u32>> = topology.gpus.iter().map(|g| g.nvlink_island).collect();
        assert_eq!(islands, vec![Some(0), Some(0), Some(1), Some(1)]);

        let xml = r#"<topology><object type="PU" os_index="0"/><object type="PCIDev" pci_busid="0000:01:00.0" pci_type="0302 [10de:2330] [10de:16c1] a1"><info name="NVLinkIsland" value="3"/></object></topology>"#;
        assert_eq!(
            parse(xml, "info.xml").unwrap().gpus[0].nvlink_island,
            Some(3)
        );
    }
}
