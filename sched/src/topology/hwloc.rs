//! Discovery through the system's hwloc library (crate feature `hwloc`;
//! `hwlocality` over Debian's libhwloc 2.9): hwloc discovers the machine,
//! I/O devices included (PCI GPUs and NICs, their OS devices: `cuda0`,
//! `mlx5_0`, `eth0`), and exports it as XML, which [`super::xml`] reads —
//! one reader for discovered and synthetic machines alike, so the model
//! never depends on which path built it.

use hwlocality::topology::builder::TypeFilter;
use hwlocality::topology::export::xml::XMLExportFlags;

use super::{Topology, TopologyError};

fn failed(what: &str, e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Hwloc(format!("{what}: {e}"))
}

/// This machine, as hwloc sees it.
pub(super) fn discover() -> Result<Topology, TopologyError> {
    let topology = hwlocality::Topology::builder()
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(|e| failed("keeping I/O devices", e))?
        .build()
        .map_err(|e| failed("discovering the machine", e))?;
    let xml = topology
        .export_xml(XMLExportFlags::empty())
        .map_err(|e| failed("exporting XML", e))?;
    super::xml::parse(xml.as_str(), "hwloc (this machine)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwloc_sees_what_sysfs_sees() {
        let hwloc = discover().expect("hwloc discovers this machine");
        let sysfs = Topology::from_sysfs(std::path::Path::new("/sys")).expect("sysfs");
        let cpus = |t: &Topology| -> Vec<usize> {
            let mut all: Vec<usize> = t.cores().flat_map(|c| c.pus.iter().copied()).collect();
            all.sort_unstable();
            all
        };
        assert_eq!(cpus(&hwloc), cpus(&sysfs));
        assert_eq!(hwloc.packages.len(), sysfs.packages.len());
        assert!(!hwloc.caches.is_empty(), "hwloc reports caches");
    }
}
