//! The topology sources and the binding policy on the synthetic machines of
//! `tests/machines/` (hwloc 2.x XML) and on this real machine (sysfs).

use std::collections::BTreeSet;
use std::path::PathBuf;

use lumen_sched::topology::{
    bind_local_ranks, BindingError, DeviceKind, Distance, Topology, TopologyError,
};

fn machine(name: &str) -> Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/machines")
        .join(name);
    Topology::from_hwloc_xml_file(&path).unwrap_or_else(|error| panic!("{name}: {error}"))
}

#[test]
fn dgx_like_node_is_read_whole() {
    let dgx = machine("dgx-like.xml");
    assert_eq!(dgx.packages.len(), 2);
    assert_eq!(dgx.numa_nodes().count(), 4);
    assert_eq!(dgx.cores().count(), 64);
    assert_eq!(dgx.cpus(), (0..64).collect::<Vec<_>>());
    assert_eq!(dgx.cpus_of_numa(2), (32..48).collect::<Vec<_>>());
    assert_eq!(dgx.numa_of_cpu(20), Some(1));
    assert_eq!(dgx.package_of_numa(3), Some(1));
    assert_eq!(dgx.memory_bytes(), Some(1024 << 30));
    assert_eq!(dgx.gpus.len(), 8);
    assert_eq!(dgx.nics.len(), 4);
    for numa in 0..4 {
        assert_eq!(dgx.gpus_near(numa).len(), 2, "GPUs near NUMA node {numa}");
        assert_eq!(dgx.nics_near(numa).len(), 1, "NICs near NUMA node {numa}");
    }
    assert!(dgx.gpus.iter().all(|gpu| gpu.nvlink_island == Some(0)));
    assert!(dgx.gpus.iter().all(|gpu| gpu.vendor_id == Some(0x10de)));
    assert_eq!(dgx.gpus[0].model.as_deref(), Some("NVIDIA A100-SXM4-40GB"));
    assert!(dgx
        .nics
        .iter()
        .all(|nic| nic.kind == DeviceKind::InfiniBand));
    assert_eq!(
        dgx.nics[0].os_names,
        vec!["ib0".to_string(), "mlx5_0".to_string()]
    );
    assert_eq!(dgx.numa_distance(Some(0), Some(0)), Distance::SameNuma);
    assert_eq!(dgx.numa_distance(Some(0), Some(1)), Distance::SamePackage);
    assert_eq!(dgx.numa_distance(Some(0), Some(2)), Distance::OtherPackage);
    assert_eq!(dgx.device_distance(&dgx.nics[3], 0), Distance::OtherPackage);

    let text = dgx.render();
    assert!(text.starts_with("Machine (1024GB total)\n  Package P#0\n    NUMANode P#0 (256GB)\n      Caches: L3 128MB x1\n      Core P#0 + PU P#0\n"), "{text}");
    assert!(
        text.contains("GPU \"NVIDIA A100-SXM4-40GB\" (PCI 0000:07:00.0) cuda0 NVLink island 0"),
        "{text}"
    );
    assert!(
        text.contains("OpenFabrics \"MT28908 Family [ConnectX-6]\" (PCI 0000:8b:00.0) ib2,mlx5_2"),
        "{text}"
    );
}

#[test]
fn eight_ranks_on_the_dgx_like_node_sit_next_to_their_gpu_and_nic() {
    let dgx = machine("dgx-like.xml");
    let bindings = bind_local_ranks(&dgx, 8, None).unwrap();
    assert_eq!(bindings.len(), 8);
    let mut used_gpus = BTreeSet::new();
    let mut used_cpus = BTreeSet::new();
    for binding in &bindings {
        assert_eq!(binding.gpus.len(), 1);
        let gpu = &dgx.gpus[binding.gpus[0].index];
        assert!(used_gpus.insert(gpu.pci_bus_id.clone()));
        assert_eq!(gpu.numa, Some(binding.numa), "rank {}", binding.local_rank);
        assert_eq!(binding.cpus.len(), 8, "half of a 16-core NUMA node");
        for cpu in &binding.cpus {
            assert_eq!(dgx.numa_of_cpu(*cpu), Some(binding.numa));
            assert!(used_cpus.insert(*cpu), "cpu {cpu} bound twice");
        }
        let nic = binding.nic.as_ref().expect("a NIC");
        assert_eq!(dgx.nics[nic.index].numa, Some(binding.numa));
        assert!(binding.nic_local, "its NIC is on its NUMA node");
        assert!(!binding.cpus_shared && !binding.cpus_remote);
    }
    // Ranks 0 and 1 share NUMA node 0's GPUs in PCI order.
    assert_eq!(bindings[0].gpus[0].pci_bus_id, "0000:07:00.0");
    assert_eq!(bindings[1].gpus[0].pci_bus_id, "0000:0f:00.0");
    assert_eq!(bindings[0].cpus, (0..8).collect::<Vec<_>>());
    assert_eq!(bindings[1].cpus, (8..16).collect::<Vec<_>>());

    // Four ranks: two GPUs each, one NUMA node each.
    let four = bind_local_ranks(&dgx, 4, None).unwrap();
    for (rank, binding) in four.iter().enumerate() {
        assert_eq!(binding.numa, rank as u32);
        assert_eq!(binding.gpus.len(), 2);
        assert_eq!(binding.cpus.len(), 16);
    }
}

#[test]
fn grace_hopper_like_node_gets_one_rank_per_gpu_and_numa_node() {
    let gh = machine("grace-hopper-like.xml");
    assert_eq!(gh.numa_nodes().count(), 4);
    assert!(gh.numa_nodes().all(|node| node.cores.len() == 72));
    assert_eq!(gh.gpus.len(), 4);
    assert_eq!(gh.nics.len(), 4);
    let bindings = bind_local_ranks(&gh, 4, None).unwrap();
    let numas: BTreeSet<u32> = bindings.iter().map(|binding| binding.numa).collect();
    assert_eq!(numas.len(), 4);
    for binding in &bindings {
        assert_eq!(binding.cpus.len(), 72);
        assert_eq!(gh.gpus[binding.gpus[0].index].numa, Some(binding.numa));
        assert_eq!(
            gh.nics[binding.nic.as_ref().unwrap().index].numa,
            Some(binding.numa)
        );
        assert_eq!(binding.cpus, gh.cpus_of_numa(binding.numa));
    }
}

#[test]
fn laptop_ranks_get_disjoint_cores() {
    let laptop = machine("laptop.xml");
    assert_eq!(laptop.packages.len(), 1);
    assert_eq!(laptop.cores().count(), 8);
    assert_eq!(laptop.cpus().len(), 16);
    assert!(laptop.gpus.is_empty());
    assert_eq!(laptop.nics.len(), 1);
    assert_eq!(laptop.nics[0].kind, DeviceKind::Ethernet);
    assert_eq!(laptop.nics[0].numa, Some(0));
    assert_eq!(laptop.numa_node(0).unwrap().cores[1].pus, vec![1, 9]);

    let bindings = bind_local_ranks(&laptop, 2, None).unwrap();
    let first: BTreeSet<usize> = bindings[0].cpus.iter().copied().collect();
    let second: BTreeSet<usize> = bindings[1].cpus.iter().copied().collect();
    assert!(first.is_disjoint(&second));
    assert_eq!(first.len(), 8, "four cores with both hyperthreads");
    assert_eq!(bindings[0].cpus, vec![0, 1, 2, 3, 8, 9, 10, 11]);
    assert!(bindings
        .iter()
        .all(|b| b.gpus.is_empty() && b.nic.as_ref().map(|n| n.index) == Some(0)));

    // Twelve ranks on eight cores: cores are shared and it says so.
    let crowded = bind_local_ranks(&laptop, 12, None).unwrap();
    assert!(crowded.iter().all(|b| b.cpus_shared && b.cpus.len() == 2));
}

#[test]
fn allowed_cpus_restrict_the_binding() {
    let dgx = machine("dgx-like.xml");
    // A Slurm-like cpuset: the first 4 cores of each NUMA node.
    let allowed: Vec<usize> = (0..4).flat_map(|numa| 16 * numa..16 * numa + 4).collect();
    let bindings = bind_local_ranks(&dgx, 8, Some(&allowed)).unwrap();
    for binding in &bindings {
        assert_eq!(binding.cpus.len(), 2);
        assert!(binding.cpus.iter().all(|cpu| allowed.contains(cpu)));
        assert!(binding
            .cpus
            .iter()
            .all(|cpu| dgx.numa_of_cpu(*cpu) == Some(binding.numa)));
    }
    // Only NUMA node 0 allowed: ranks of the other GPUs take cores there
    // and say they are remote.
    let only_zero: Vec<usize> = (0..16).collect();
    let bindings = bind_local_ranks(&dgx, 4, Some(&only_zero)).unwrap();
    assert!(!bindings[0].cpus_remote);
    assert!(bindings[1..].iter().all(|b| b.cpus_remote && b.numa == 0));
    assert!(bindings
        .iter()
        .flat_map(|b| b.cpus.iter())
        .all(|cpu| *cpu < 16));

    // A cpuset outside the machine is an error.
    assert!(matches!(
        bind_local_ranks(&dgx, 1, Some(&[500])),
        Err(BindingError::NoAllowedCpus { .. })
    ));
}

#[test]
fn cpu_only_ranks_spread_over_packages() {
    let dgx = machine("dgx-like.xml");
    // More ranks than GPUs: the CPU rules, no GPUs handed out.
    let bindings = bind_local_ranks(&dgx, 16, None).unwrap();
    assert!(bindings
        .iter()
        .all(|b| b.gpus.is_empty() && b.cpus.len() == 4));
    let per_numa: Vec<usize> = (0..4)
        .map(|n| bindings.iter().filter(|b| b.numa == n).count())
        .collect();
    assert_eq!(per_numa, vec![4, 4, 4, 4]);
    assert!(
        bindings.windows(2).all(|w| w[0].numa <= w[1].numa),
        "blocks, not round robin"
    );

    let gh = machine("grace-hopper-like.xml");
    let two = bind_local_ranks(&gh, 2, Some(&(0..288).collect::<Vec<_>>())).unwrap();
    assert_eq!(two.len(), 2);
    assert_ne!(two[0].numa, two[1].numa);
}

#[test]
fn topologies_and_bindings_are_serde_types() {
    // No JSON crate among sched's dependencies: check the bounds the
    // runtime needs to ship them.
    fn shippable<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    shippable::<Topology>();
    shippable::<lumen_sched::topology::RankBinding>();
}

#[test]
fn malformed_xml_is_an_error_not_a_panic() {
    let cases = [
        ("", "not well-formed"),
        ("<topology><object type=\"PU\"", "not well-formed"),
        ("<machine/>", "root element"),
        ("<topology version=\"2.0\"/>", "no processing unit"),
        ("<topology><object type=\"PU\"/></topology>", "without os_index"),
        ("<topology><object type=\"PU\" os_index=\"zero\"/></topology>", "not a number"),
        ("<topology><object type=\"PU\" os_index=\"99999999\"/></topology>", "implausibly large"),
        (
            "<topology><object type=\"NUMANode\" os_index=\"0\" cpuset=\"0xq\"/><object type=\"PU\" os_index=\"0\"/></topology>",
            "cpuset",
        ),
        (
            "<topology><object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x2\"/><object type=\"PU\" os_index=\"0\"/></topology>",
            "no NUMA node's cpuset",
        ),
        (
            "<topology><object type=\"PU\" os_index=\"0\"/><object type=\"PU\" os_index=\"0\"/></topology>",
            "a second PU",
        ),
        (
            "<topology><object type=\"PU\" os_index=\"0\"/><object type=\"PCIDev\" pci_type=\"0302\"/></topology>",
            "without pci_busid",
        ),
        (
            "<topology><object type=\"PU\" os_index=\"0\"/><object type=\"PCIDev\" pci_busid=\"0000:01:00.0\" pci_type=\"junk\"/></topology>",
            "pci_type",
        ),
        (
            "<topology><object type=\"PU\" os_index=\"0\"/><distances2 name=\"NVLinkBandwidth\"><indexes>1 2</indexes><u64values>0 1</u64values></distances2></topology>",
            "values for 2 objects",
        ),
    ];
    for (xml, expected) in cases {
        let error = Topology::from_hwloc_xml(xml, "case.xml").expect_err(xml);
        let message = error.to_string();
        assert!(message.contains(expected), "{xml:?}: {message}");
        assert!(message.starts_with("case.xml"), "{message}");
    }
    let truncated = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/machines/dgx-like.xml"),
    )
    .unwrap();
    for cut in (0..truncated.len()).step_by(997) {
        let _ = Topology::from_hwloc_xml(&truncated[..cut], "cut.xml");
    }
    assert!(matches!(
        Topology::from_hwloc_xml_file(std::path::Path::new("/nonexistent/machine.xml")),
        Err(TopologyError::Io { .. })
    ));
}

#[test]
fn discover_reads_this_machine() {
    let here = Topology::discover().expect("sysfs of this machine");
    assert!(!here.packages.is_empty());
    assert!(here.numa_nodes().count() >= 1);
    assert!(here.cpus().len() >= 2, "{here}");
    let bindings = bind_local_ranks(&here, 2, None).unwrap();
    assert_eq!(bindings.len(), 2);
}

#[test]
fn caches_come_with_the_machines() {
    let dgx = machine("dgx-like.xml");
    let l3: Vec<_> = dgx.caches.iter().filter(|c| c.level == 3).collect();
    assert_eq!(l3.len(), 4, "one L3 per NUMA node: {:?}", dgx.caches);
    assert!(l3
        .iter()
        .all(|c| c.size_bytes == 128 << 20 && c.cpus.len() == 16));
    assert!(
        dgx.render().contains("Caches: L3 128MB x1"),
        "{}",
        dgx.render()
    );
}
