//! Placement-group strategies over ranks and nodes: where each bundle of
//! a group goes, given what every rank has free. Pure functions; the
//! [`crate::PlacementTable`] calls [`place`] with what is free now (to
//! reserve) and with the ranks' whole capacity (to tell a group that must
//! wait from one that can never fit).
//!
//! A bundle is placed on one serving rank (in driver mode rank 0 only
//! submits). `PACK` puts the bundles on as few nodes, then ranks, as fit
//! (all on one node when possible); `STRICT_PACK` requires one node;
//! `SPREAD` puts each bundle on another rank, other nodes first, and falls
//! back to packing when that does not fit; `STRICT_SPREAD` requires a
//! distinct node per bundle (a bipartite matching of bundles to nodes,
//! Kuhn's augmenting paths: H. W. Kuhn, "The Hungarian method for the
//! assignment problem", 1955). Bundles are placed largest first (GPUs
//! weigh most), so first fit fails less often.
//!
//! # Cost
//! One call groups the eligible ranks by node once (`O(n log n)` with `n`
//! ranks, no copy of what they have free: bundles placed so far are kept
//! in a small overlay), so `PACK` and `STRICT_PACK` of a few bundles cost
//! one pass over the ranks. `SPREAD` of many bundles keeps the ranks in an
//! ordered set by its choice key (bundles on the node, on the rank, free
//! CPUs, rank) and re-keys only the chosen node's ranks per bundle, instead
//! of scanning every rank per bundle; on a cluster with few, very large
//! nodes it scans as before. Every choice is the one the plain scans make
//! (`tests/placement_table.rs` checks it against them).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashMap};

use crate::{Host, PlacementStrategy, Rank, Resources};

/// Lays `bundles` out on the live serving `hosts` given what each has
/// free (`available`, by rank): bundle `i`'s rank, or `None` when the
/// strategy cannot fit them (see the module docs).
pub fn place(
    bundles: &[Resources],
    strategy: PlacementStrategy,
    hosts: &[Host],
    available: &[Resources],
) -> Option<Vec<Rank>> {
    place_where(bundles, strategy, hosts, available, |_| true)
}

/// [`place`] on the live serving hosts for which `allowed` (of the rank)
/// holds: how the table places a group's bundles again on some nodes only.
pub(crate) fn place_where(
    bundles: &[Resources],
    strategy: PlacementStrategy,
    hosts: &[Host],
    available: &[Resources],
    allowed: impl Fn(usize) -> bool,
) -> Option<Vec<Rank>> {
    let eligible: Vec<usize> = (0..hosts.len().min(available.len()))
        .filter(|&i| hosts[i].alive && hosts[i].serving && allowed(i))
        .collect();
    if eligible.is_empty() || bundles.is_empty() {
        return None;
    }
    // Largest bundles first: first-fit then fails less often.
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by(|&a, &b| size_key(&bundles[b]).total_cmp(&size_key(&bundles[a])));
    let nodes = Nodes::new(hosts, available, &eligible);
    match strategy {
        PlacementStrategy::StrictPack => strict_pack(bundles, &order, available, &nodes),
        PlacementStrategy::Pack => strict_pack(bundles, &order, available, &nodes)
            .or_else(|| pack(bundles, &order, available, &nodes)),
        PlacementStrategy::Spread => spread(bundles, &order, hosts, available, &eligible, &nodes)
            .or_else(|| pack(bundles, &order, available, &nodes)),
        PlacementStrategy::StrictSpread => strict_spread(bundles, &order, available, &nodes),
    }
}

fn size_key(r: &Resources) -> f64 {
    // GPUs are the scarce ones: weigh them first.
    r.gpus * 1e6 + r.cpus + r.custom.values().sum::<f64>() * 1e-3
}

/// The eligible hosts grouped by node: the nodes most free CPUs first
/// (then lowest id), and each node's hosts most free CPUs first (then
/// lowest rank): packing onto the roomiest rank first fills few ranks.
/// One flat list, node after node (no list per node).
struct Nodes {
    /// Node `at`'s hosts are `hosts[starts[at]..starts[at + 1]]`.
    starts: Vec<usize>,
    hosts: Vec<usize>,
    /// Host `i`'s node, as its index in the order (eligible hosts only).
    index_of: Vec<usize>,
}

impl Nodes {
    fn new(hosts: &[Host], available: &[Resources], eligible: &[usize]) -> Self {
        // (node, free CPUs summed in rank order, hosts), in order of appearance.
        let mut room: Vec<(u32, f64, usize)> = Vec::new();
        let mut slot: HashMap<u32, usize> = HashMap::new();
        let mut slot_of: Vec<usize> = Vec::with_capacity(eligible.len());
        let mut last: Option<(u32, usize)> = None;
        for &i in eligible {
            let node = hosts[i].node;
            let at = match last {
                Some((n, at)) if n == node => Some(at),
                _ => slot.get(&node).copied(),
            };
            let at = match at {
                Some(at) => {
                    room[at].1 += available[i].cpus;
                    room[at].2 += 1;
                    at
                }
                None => {
                    room.push((node, available[i].cpus, 1));
                    slot.insert(node, room.len() - 1);
                    room.len() - 1
                }
            };
            slot_of.push(at);
            last = Some((node, at));
        }
        let mut by_room: Vec<usize> = (0..room.len()).collect();
        by_room.sort_unstable_by(|&a, &b| {
            room[b]
                .1
                .total_cmp(&room[a].1)
                .then(room[a].0.cmp(&room[b].0))
        });
        let mut position = vec![0; room.len()];
        let mut starts = Vec::with_capacity(room.len() + 1);
        starts.push(0);
        for (at, &s) in by_room.iter().enumerate() {
            position[s] = at;
            starts.push(starts[at] + room[s].2);
        }
        let mut fill = starts.clone();
        let mut list = vec![0; eligible.len()];
        let mut index_of = vec![usize::MAX; hosts.len()];
        for (&i, &s) in eligible.iter().zip(&slot_of) {
            let at = position[s];
            list[fill[at]] = i;
            fill[at] += 1;
            index_of[i] = at;
        }
        for at in 0..by_room.len() {
            list[starts[at]..starts[at + 1]].sort_unstable_by(|&a, &b| {
                available[b]
                    .cpus
                    .total_cmp(&available[a].cpus)
                    .then(a.cmp(&b))
            });
        }
        Nodes {
            starts,
            hosts: list,
            index_of,
        }
    }

    /// How many nodes.
    fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// The hosts of the node at `at` in the order, roomiest first.
    fn hosts_of(&self, at: usize) -> &[usize] {
        &self.hosts[self.starts[at]..self.starts[at + 1]]
    }
}

/// What the hosts have free while bundles are laid out: `available`, less
/// the bundles placed so far (kept only for the hosts they touched).
struct Free<'a> {
    available: &'a [Resources],
    taken: HashMap<usize, Resources>,
}

impl<'a> Free<'a> {
    fn new(available: &'a [Resources]) -> Self {
        Free {
            available,
            taken: HashMap::new(),
        }
    }

    fn of(&self, host: usize) -> &Resources {
        self.taken.get(&host).unwrap_or(&self.available[host])
    }

    fn subtract(&mut self, host: usize, bundle: &Resources) {
        let available = self.available;
        self.taken
            .entry(host)
            .or_insert_with(|| available[host].clone())
            .subtract(bundle);
    }
}

/// First fit of the bundles (in `order`) onto `candidates` (in order).
fn first_fit<'c>(
    bundles: &[Resources],
    order: &[usize],
    available: &[Resources],
    candidates: impl Iterator<Item = &'c usize> + Clone,
) -> Option<Vec<Rank>> {
    let mut free = Free::new(available);
    let mut ranks = vec![0 as Rank; bundles.len()];
    for &b in order {
        let &host = candidates
            .clone()
            .find(|&&h| free.of(h).fits(&bundles[b]))?;
        free.subtract(host, &bundles[b]);
        ranks[b] = host as Rank;
    }
    Some(ranks)
}

fn strict_pack(
    bundles: &[Resources],
    order: &[usize],
    available: &[Resources],
    nodes: &Nodes,
) -> Option<Vec<Rank>> {
    (0..nodes.len()).find_map(|at| first_fit(bundles, order, available, nodes.hosts_of(at).iter()))
}

fn pack(
    bundles: &[Resources],
    order: &[usize],
    available: &[Resources],
    nodes: &Nodes,
) -> Option<Vec<Rank>> {
    // Node after node, roomiest first: the flat list as it is.
    first_fit(bundles, order, available, nodes.hosts.iter())
}

/// An `f64` ordered by [`f64::total_cmp`].
#[derive(Debug, Clone, Copy)]
struct Total(f64);

impl PartialEq for Total {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Total {}

impl PartialOrd for Total {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Total {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// SPREAD's choice key, smallest first: bundles on the host's node, on
/// the host, most free CPUs, lowest rank.
type SpreadKey = (u32, u32, Reverse<Total>, usize);

fn spread(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
    nodes: &Nodes,
) -> Option<Vec<Rank>> {
    let widest = (0..nodes.len())
        .map(|at| nodes.hosts_of(at).len())
        .max()
        .unwrap_or(0);
    // Re-keying a node costs its ranks × log n; scanning costs all ranks.
    if bundles.len() < 4 || widest * 16 > eligible.len() {
        return spread_by_scan(bundles, order, hosts, available, eligible);
    }
    let mut free = Free::new(available);
    let mut on_rank = vec![0u32; hosts.len()];
    let mut on_node = vec![0u32; nodes.len()];
    let key = |h: usize, free: &Free<'_>, on_rank: &[u32], on_node: &[u32]| -> SpreadKey {
        (
            on_node[nodes.index_of[h]],
            on_rank[h],
            Reverse(Total(free.of(h).cpus)),
            h,
        )
    };
    let mut by_key: BTreeSet<SpreadKey> = eligible
        .iter()
        .map(|&h| key(h, &free, &on_rank, &on_node))
        .collect();
    let mut ranks = vec![0 as Rank; bundles.len()];
    for &b in order {
        let host = by_key
            .iter()
            .map(|k| k.3)
            .find(|&h| free.of(h).fits(&bundles[b]))?;
        let node = nodes.index_of[host];
        for &h in nodes.hosts_of(node) {
            by_key.remove(&key(h, &free, &on_rank, &on_node));
        }
        free.subtract(host, &bundles[b]);
        on_rank[host] += 1;
        on_node[node] += 1;
        for &h in nodes.hosts_of(node) {
            by_key.insert(key(h, &free, &on_rank, &on_node));
        }
        ranks[b] = host as Rank;
    }
    Some(ranks)
}

/// SPREAD as a scan of every eligible host per bundle (few bundles, or
/// nodes so large that re-keying one costs more than a scan).
fn spread_by_scan(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
) -> Option<Vec<Rank>> {
    let mut free = Free::new(available);
    let mut on_rank = vec![0u32; hosts.len()];
    let mut on_node: HashMap<u32, u32> = HashMap::new();
    let mut ranks = vec![0 as Rank; bundles.len()];
    for &b in order {
        let &host = eligible
            .iter()
            .filter(|&&h| free.of(h).fits(&bundles[b]))
            .min_by(|&&x, &&y| {
                let key = |h: usize| {
                    (
                        on_node.get(&hosts[h].node).copied().unwrap_or(0),
                        on_rank[h],
                    )
                };
                key(x)
                    .cmp(&key(y))
                    .then(free.of(y).cpus.total_cmp(&free.of(x).cpus))
                    .then(x.cmp(&y))
            })?;
        free.subtract(host, &bundles[b]);
        on_rank[host] += 1;
        *on_node.entry(hosts[host].node).or_insert(0) += 1;
        ranks[b] = host as Rank;
    }
    Some(ranks)
}

fn strict_spread(
    bundles: &[Resources],
    order: &[usize],
    available: &[Resources],
    nodes: &Nodes,
) -> Option<Vec<Rank>> {
    if bundles.len() > nodes.len() {
        return None;
    }
    // The roomiest rank of node `n` (its index) that fits bundle `b`.
    let host_for = |n: usize, b: usize| {
        nodes
            .hosts_of(n)
            .iter()
            .copied()
            .find(|&h| available[h].fits(&bundles[b]))
    };
    let fits: Vec<Vec<usize>> = (0..bundles.len())
        .map(|b| {
            (0..nodes.len())
                .filter(|&n| host_for(n, b).is_some())
                .collect()
        })
        .collect();
    // Kuhn's augmenting paths: match each bundle to a node of its own.
    let mut node_of_bundle: Vec<Option<usize>> = vec![None; bundles.len()];
    let mut bundle_of_node: Vec<Option<usize>> = vec![None; nodes.len()];
    fn augment(
        b: usize,
        fits: &[Vec<usize>],
        seen: &mut [bool],
        node_of_bundle: &mut [Option<usize>],
        bundle_of_node: &mut [Option<usize>],
    ) -> bool {
        for &n in &fits[b] {
            if seen[n] {
                continue;
            }
            seen[n] = true;
            let free = match bundle_of_node[n] {
                None => true,
                Some(other) => augment(other, fits, seen, node_of_bundle, bundle_of_node),
            };
            if free {
                bundle_of_node[n] = Some(b);
                node_of_bundle[b] = Some(n);
                return true;
            }
        }
        false
    }
    for &b in order {
        let mut seen = vec![false; nodes.len()];
        if !augment(
            b,
            &fits,
            &mut seen,
            &mut node_of_bundle,
            &mut bundle_of_node,
        ) {
            return None;
        }
    }
    node_of_bundle
        .iter()
        .enumerate()
        .map(|(b, n)| n.and_then(|n| host_for(n, b)).map(|h| h as Rank))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::PlacementGroupId;

    pub(crate) fn hosts(per_node: &[u32], cpus: f64, driver: bool) -> Vec<Host> {
        let mut list = Vec::new();
        for (node, &n) in per_node.iter().enumerate() {
            for _ in 0..n {
                list.push(Host {
                    node: node as u32,
                    capacity: Resources::cpus(cpus),
                    available: Resources::cpus(cpus),
                    serving: true,
                    alive: true,
                });
            }
        }
        if driver {
            list[0].serving = false;
        }
        list
    }

    pub(crate) fn avail(h: &[Host]) -> Vec<Resources> {
        h.iter().map(|h| h.available.clone()).collect()
    }

    pub(crate) fn cpus(n: usize, each: f64) -> Vec<Resources> {
        vec![Resources::cpus(each); n]
    }

    pub(crate) fn id(seq: u64) -> PlacementGroupId {
        PlacementGroupId { creator: 0, seq }
    }

    #[test]
    fn pack_fills_few_ranks_and_nodes() {
        let h = hosts(&[3, 3], 2.0, true);
        // 4 x 1 CPU: node 1 has 6 free CPUs, node 0 has 4: all on node 1,
        // two ranks.
        let ranks = place(&cpus(4, 1.0), PlacementStrategy::Pack, &h, &avail(&h)).unwrap();
        let mut distinct = ranks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "{ranks:?}");
        assert!(ranks.iter().all(|&r| h[r as usize].node == 1), "{ranks:?}");
        // 8 x 1 CPU do not fit on one node: PACK still fits, over both.
        let ranks = place(&cpus(8, 1.0), PlacementStrategy::Pack, &h, &avail(&h)).unwrap();
        assert!(!ranks.contains(&0), "the driver serves nothing: {ranks:?}");
        assert!(place(&cpus(8, 1.0), PlacementStrategy::StrictPack, &h, &avail(&h)).is_none());
    }

    #[test]
    fn spread_uses_other_nodes_then_ranks_then_packs() {
        let h = hosts(&[2, 2], 2.0, false);
        let ranks = place(&cpus(2, 1.0), PlacementStrategy::Spread, &h, &avail(&h)).unwrap();
        assert_ne!(h[ranks[0] as usize].node, h[ranks[1] as usize].node);
        let ranks = place(&cpus(4, 1.0), PlacementStrategy::Spread, &h, &avail(&h)).unwrap();
        let mut sorted = ranks.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        // 8 bundles on 4 ranks of 2 CPUs: best effort, two per rank.
        let ranks = place(&cpus(8, 1.0), PlacementStrategy::Spread, &h, &avail(&h)).unwrap();
        for r in 0..4 {
            assert_eq!(ranks.iter().filter(|&&x| x == r).count(), 2);
        }
    }

    #[test]
    fn strict_spread_needs_distinct_nodes() {
        let h = hosts(&[3], 1.0, true);
        assert!(place(
            &cpus(2, 1.0),
            PlacementStrategy::StrictSpread,
            &h,
            &avail(&h)
        )
        .is_none());
        let h = hosts(&[2, 2, 1], 1.0, true);
        let ranks = place(
            &cpus(3, 1.0),
            PlacementStrategy::StrictSpread,
            &h,
            &avail(&h),
        )
        .unwrap();
        let mut nodes: Vec<u32> = ranks.iter().map(|&r| h[r as usize].node).collect();
        nodes.sort_unstable();
        assert_eq!(nodes, vec![0, 1, 2]);
        assert!(ranks.contains(&1), "node 0's only serving rank: {ranks:?}");
    }

    #[test]
    fn strict_spread_matches_a_big_bundle_to_the_only_node_that_holds_it() {
        // Node 0 has small ranks, node 1 one big rank: a greedy choice that
        // gives the small bundle node 1 would fail; the matching does not.
        let mut h = hosts(&[1, 1], 1.0, false);
        h[1].capacity = Resources::cpus(4.0);
        h[1].available = Resources::cpus(4.0);
        let bundles = vec![Resources::cpus(1.0), Resources::cpus(3.0)];
        let ranks = place(&bundles, PlacementStrategy::StrictSpread, &h, &avail(&h)).unwrap();
        assert_eq!(ranks, vec![0, 1]);
    }
}
