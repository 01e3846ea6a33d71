//! Placement groups (Ray's `ray.util.placement_group`): bundles of
//! resources reserved together, atomically, on ranks chosen by a strategy,
//! into which tasks and actors are then scheduled.
//!
//! # Where the reservation lives
//! Ordinary tasks are placed by each submitter on its own (`scheduler`,
//! against the ranks' *total* resources) and wait for CPU slots in the
//! executing rank's executor, which is where a rank's free CPUs are
//! counted. A group must not be reserved twice over by two submitters, so
//! groups are decided in one place: **rank 0's head service** (as Ray's GCS
//! schedules placement groups), which keeps a [`PlacementTable`]: what every
//! rank offers, what the groups hold, the groups waiting for resources. The
//! table is pure (tested by stepping it below); its decisions come out as
//! [`Action`]s that `core` sends after the table's lock is released.
//!
//! # Life of a group
//! ```text
//!  creator          rank 0 (head)                      hosts
//!  PgCreate ───────► feasible at all? no ─► Infeasible (error, at once)
//!                   yes: Accepted; fits in what is free now?
//!                     no: Pending (queued until a group is removed)
//!                     yes: subtract from the ranks' availability,
//!                          BundleReserve ────────────────► executor pools
//!                   ◄──────────────────────── BundleReserved (each host)
//!                   all acknowledged: Created ─► waiters (ready, ranks)
//!  PgRemove ───────► give the resources back, BundleRelease ─► hosts:
//!                   place pending groups           fail queued tasks of the
//!                                                  group, kill its actors
//! ```
//! Reservation is atomic: the table places all bundles or none. A host
//! moves a bundle's CPUs from its free pool into a pool of the bundle
//! (`executor`); tasks of the group run only out of their bundle's pool,
//! other tasks only out of the free pool, so a task that needs reserved
//! CPUs waits in the queue until the group is removed. Tasks already
//! running on a rank when a bundle is reserved there finish in place (the
//! rank is briefly over-subscribed); no new task outside the group starts
//! until the free pool has room again. `ready` waits for every host's
//! acknowledgement, so a task submitted after it finds its bundle's pool.
//!
//! GPUs and custom resources are reserved in the head's table (two groups
//! never hold the same GPU), but executors count CPU slots only, as for
//! tasks outside groups. Actors in a bundle run on the bundle's rank on a
//! thread of their own, as other actors do (they take no CPU slots).
//!
//! # Strategies, over ranks and nodes
//! A bundle is placed on one serving rank (in driver mode rank 0 only
//! submits). `PACK` puts the bundles on as few nodes, then ranks, as fit
//! (all on one node when possible); `STRICT_PACK` requires one node;
//! `SPREAD` puts each bundle on another rank, other nodes first, and falls
//! back to packing when that does not fit; `STRICT_SPREAD` requires a
//! distinct node per bundle (a bipartite matching of bundles to nodes,
//! Kuhn's augmenting paths). A group that cannot fit even in an empty job
//! is refused at creation with what it asked for and what the job offers;
//! one that fits the job but not what other groups left free waits.
//!
//! # Failures
//! A host that dies while its bundles are being reserved fails the group
//! (the other hosts release theirs; `ready` returns the error). Bundles of
//! a created group are not moved when their rank dies: tasks and actors
//! sent to that bundle fail as on any dead rank (Ray reschedules such
//! bundles on other nodes).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lumen_transport::Rank;

use super::core::{current_inner, Inner};
use super::error::RuntimeError;
use super::ids::ActorId;
use super::options::{PlacementGroupScheduling, Resources};
use super::protocol::RtMsg;
use crate::error::{LumenError, Result};

/// How a group's bundles are laid out over ranks and nodes (Ray's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlacementStrategy {
    /// As few nodes (then ranks) as fit; best effort.
    Pack,
    /// Each bundle on another rank, other nodes first; best effort.
    Spread,
    /// Every bundle on one node, or the group is not created.
    StrictPack,
    /// Every bundle on a node of its own, or the group is not created.
    StrictSpread,
}

impl std::fmt::Display for PlacementStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlacementStrategy::Pack => "PACK",
            PlacementStrategy::Spread => "SPREAD",
            PlacementStrategy::StrictPack => "STRICT_PACK",
            PlacementStrategy::StrictSpread => "STRICT_SPREAD",
        })
    }
}

/// A placement group: the rank that created it and a number unique there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacementGroupId {
    /// The creating rank.
    pub creator: Rank,
    /// Unique at the creator.
    pub seq: u64,
}

impl std::fmt::Display for PlacementGroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "placement group {}:{}", self.creator, self.seq)
    }
}

/// A handle to a placement group (see [`crate::Runtime::placement_group`]).
/// Cheap to clone and serialisable: pass it to tasks, which may schedule
/// into the group too. Dropping it does not remove the group (as in Ray:
/// [`crate::Runtime::remove_placement_group`] does, or the end of the job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: Vec<Resources>,
    strategy: PlacementStrategy,
}

impl PlacementGroup {
    /// The group's id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// The bundles, as asked for (Ray's `bundle_specs`).
    pub fn bundles(&self) -> &[Resources] {
        &self.bundles
    }

    /// How many bundles (Ray's `bundle_count`).
    pub fn bundle_count(&self) -> usize {
        self.bundles.len()
    }

    /// The strategy it was created with.
    pub fn strategy(&self) -> PlacementStrategy {
        self.strategy
    }

    /// Waits until every bundle is reserved (Ray's `ray.get(pg.ready())`).
    /// Fails when the group was removed or its reservation failed.
    pub fn ready(&self) -> Result<()> {
        self.view(None).map(|_| ())
    }

    /// Waits up to `timeout` for the group to be created: `true` when it
    /// is (Ray's `pg.wait(timeout_seconds)`).
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        match self.view(Some(timeout)) {
            Ok(_) => Ok(true),
            Err(LumenError::Runtime(RuntimeError::Timeout { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The job ranks hosting the bundles, in bundle order (entry `i` is
    /// bundle `i`'s rank; a rank may host several bundles), once the group
    /// is created (waits for it like [`PlacementGroup::ready`]). A
    /// communicator over a group's ranks is built from this list, e.g.
    /// with its distinct ranks in bundle order.
    pub fn ranks(&self) -> Result<Vec<Rank>> {
        self.view(None).map(|view| view.ranks)
    }

    /// The nodes of the bundles' ranks, in bundle order.
    pub fn nodes(&self) -> Result<Vec<u32>> {
        let inner = runtime()?;
        let ranks = self.ranks()?;
        Ok(ranks
            .iter()
            .map(|&r| inner.ranks.get(r as usize).map_or(u32::MAX, |i| i.node))
            .collect())
    }

    /// This group as a task or actor option: bundle `bundle_index`, or any
    /// bundle its resources fit in.
    pub fn bundle(&self, bundle_index: Option<u32>) -> PlacementGroupScheduling {
        PlacementGroupScheduling {
            group: self.id,
            bundle_index,
        }
    }

    fn view(&self, timeout: Option<Duration>) -> Result<GroupView> {
        runtime()?.group_view(self.id, timeout)
    }
}

fn runtime() -> Result<Arc<Inner>> {
    current_inner().ok_or(LumenError::Runtime(RuntimeError::NoRuntime))
}

/// What a created group holds, as the head tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupView {
    pub bundles: Vec<Resources>,
    pub strategy: PlacementStrategy,
    /// Bundle `i`'s rank.
    pub ranks: Vec<Rank>,
}

/// The head's answer about a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum GroupAnswer {
    /// Creation accepted: created or waiting for resources.
    Accepted,
    /// Every bundle is reserved.
    Created(GroupView),
    /// It can never fit in this job: why.
    Infeasible(String),
    /// Removed.
    Removed,
    /// Its reservation failed (a host died): why.
    Failed(String),
    /// The head never heard of it.
    Unknown,
}

/// What a rank offers, as the head's table sees it.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    pub node: u32,
    pub capacity: Resources,
    /// Capacity less what groups hold.
    pub available: Resources,
    /// Takes tasks (in driver mode rank 0 only submits).
    pub serving: bool,
    pub alive: bool,
}

/// What the head must send once its table has changed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Reserve these bundles (index, resources) of `group` on `host`.
    Reserve {
        host: Rank,
        group: PlacementGroupId,
        bundles: Vec<(u32, Resources)>,
    },
    /// Release every bundle of `group` on `host`.
    Release { host: Rank, group: PlacementGroupId },
    /// Answer request `request` of rank `to`.
    Answer {
        to: Rank,
        request: u64,
        answer: GroupAnswer,
    },
}

#[derive(Debug)]
enum GroupState {
    /// Waiting for resources.
    Pending,
    /// Placed; hosts still to acknowledge.
    Reserving {
        ranks: Vec<Rank>,
        unacked: Vec<Rank>,
    },
    Created {
        ranks: Vec<Rank>,
    },
}

#[derive(Debug)]
struct Group {
    bundles: Vec<Resources>,
    strategy: PlacementStrategy,
    state: GroupState,
    /// Requests to answer once created (or failed, or removed).
    waiters: Vec<(Rank, u64)>,
}

/// The head's record of every rank's resources and every group (pure).
#[derive(Debug)]
pub(crate) struct PlacementTable {
    hosts: Vec<Host>,
    groups: HashMap<PlacementGroupId, Group>,
    /// Pending groups, oldest first.
    pending: VecDeque<PlacementGroupId>,
    /// Groups that ended (removed or failed): the answer for late waiters.
    ended: HashMap<PlacementGroupId, GroupAnswer>,
}

impl PlacementTable {
    pub(crate) fn new(hosts: Vec<Host>) -> Self {
        PlacementTable {
            hosts,
            groups: HashMap::new(),
            pending: VecDeque::new(),
            ended: HashMap::new(),
        }
    }

    /// A new group from `from` (request `request`): refused when it can
    /// never fit, else accepted and placed as soon as resources allow.
    pub(crate) fn create(
        &mut self,
        id: PlacementGroupId,
        bundles: Vec<Resources>,
        strategy: PlacementStrategy,
        from: Rank,
        request: u64,
    ) -> Vec<Action> {
        let answer = |answer| Action::Answer {
            to: from,
            request,
            answer,
        };
        if self.groups.contains_key(&id) || self.ended.contains_key(&id) {
            return vec![answer(GroupAnswer::Infeasible(format!(
                "{id} exists already"
            )))];
        }
        if let Err(why) = self.feasible(&bundles, strategy) {
            return vec![answer(GroupAnswer::Infeasible(why))];
        }
        self.groups.insert(
            id,
            Group {
                bundles,
                strategy,
                state: GroupState::Pending,
                waiters: Vec::new(),
            },
        );
        self.pending.push_back(id);
        let mut actions = vec![answer(GroupAnswer::Accepted)];
        actions.extend(self.schedule());
        actions
    }

    /// Answers `from` (request `request`) once `id` is created, at once
    /// when it is, has ended or is unknown.
    pub(crate) fn wait(&mut self, id: PlacementGroupId, from: Rank, request: u64) -> Vec<Action> {
        let answer = match self.groups.get_mut(&id) {
            Some(group) => match &group.state {
                GroupState::Created { ranks } => GroupAnswer::Created(GroupView {
                    bundles: group.bundles.clone(),
                    strategy: group.strategy,
                    ranks: ranks.clone(),
                }),
                _ => {
                    group.waiters.push((from, request));
                    return Vec::new();
                }
            },
            None => self.ended.get(&id).cloned().unwrap_or(GroupAnswer::Unknown),
        };
        vec![Action::Answer {
            to: from,
            request,
            answer,
        }]
    }

    /// `host` reserved its bundles of `id`.
    pub(crate) fn reserved(&mut self, id: PlacementGroupId, host: Rank) -> Vec<Action> {
        let Some(group) = self.groups.get_mut(&id) else {
            return Vec::new();
        };
        let GroupState::Reserving { ranks, unacked } = &mut group.state else {
            return Vec::new();
        };
        unacked.retain(|&r| r != host);
        if !unacked.is_empty() {
            return Vec::new();
        }
        let ranks = std::mem::take(ranks);
        let view = GroupView {
            bundles: group.bundles.clone(),
            strategy: group.strategy,
            ranks: ranks.clone(),
        };
        group.state = GroupState::Created { ranks };
        group
            .waiters
            .drain(..)
            .map(|(to, request)| Action::Answer {
                to,
                request,
                answer: GroupAnswer::Created(view.clone()),
            })
            .collect()
    }

    /// Removes `id`: its resources go back, its hosts release it, its
    /// waiters learn it, and pending groups may now fit. `false` when the
    /// group is unknown (or ended already).
    pub(crate) fn remove(&mut self, id: PlacementGroupId) -> (bool, Vec<Action>) {
        if !self.groups.contains_key(&id) {
            return (false, Vec::new());
        }
        let mut actions = self.end(id, GroupAnswer::Removed);
        actions.extend(self.schedule());
        (true, actions)
    }

    /// `rank` died: it hosts nothing new; a group still being reserved
    /// there fails; pending groups that can no longer fit are refused.
    pub(crate) fn rank_died(&mut self, rank: Rank) -> Vec<Action> {
        let Some(host) = self.hosts.get_mut(rank as usize) else {
            return Vec::new();
        };
        if !host.alive {
            return Vec::new();
        }
        host.alive = false;
        let mut actions = Vec::new();
        let mut ids: Vec<PlacementGroupId> = self.groups.keys().copied().collect();
        ids.sort();
        for id in ids {
            let Some(group) = self.groups.get(&id) else {
                continue;
            };
            match &group.state {
                GroupState::Reserving { ranks, .. } if ranks.contains(&rank) => {
                    let why = format!(
                        "rank {rank} died while the bundles of {id} were being reserved; \
                         create the group again"
                    );
                    actions.extend(self.end(id, GroupAnswer::Failed(why)));
                }
                GroupState::Pending => {
                    if let Err(why) = self.feasible(&group.bundles, group.strategy) {
                        let why = format!("after rank {rank} died: {why}");
                        actions.extend(self.end(id, GroupAnswer::Infeasible(why)));
                    }
                }
                _ => {}
            }
        }
        actions.extend(self.schedule());
        actions
    }

    /// Ends group `id` with `answer`: gives back what it holds, tells its
    /// live hosts to release it and its waiters why.
    fn end(&mut self, id: PlacementGroupId, answer: GroupAnswer) -> Vec<Action> {
        let Some(group) = self.groups.remove(&id) else {
            return Vec::new();
        };
        self.pending.retain(|&p| p != id);
        let mut actions = Vec::new();
        let ranks = match &group.state {
            GroupState::Pending => Vec::new(),
            GroupState::Reserving { ranks, .. } | GroupState::Created { ranks } => ranks.clone(),
        };
        for (bundle, &rank) in group.bundles.iter().zip(&ranks) {
            if let Some(host) = self.hosts.get_mut(rank as usize) {
                host.available.add(bundle);
            }
        }
        let mut hosts = ranks;
        hosts.sort_unstable();
        hosts.dedup();
        for host in hosts {
            if self.hosts.get(host as usize).is_some_and(|h| h.alive) {
                actions.push(Action::Release { host, group: id });
            }
        }
        for (to, request) in group.waiters {
            actions.push(Action::Answer {
                to,
                request,
                answer: answer.clone(),
            });
        }
        self.ended.insert(id, answer);
        actions
    }

    /// Places the pending groups that fit in what is free now, oldest
    /// first (a large group waiting does not hold back a smaller one).
    fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut still = VecDeque::new();
        while let Some(id) = self.pending.pop_front() {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let available: Vec<Resources> =
                self.hosts.iter().map(|h| h.available.clone()).collect();
            let Some(ranks) = place(&group.bundles, group.strategy, &self.hosts, &available) else {
                still.push_back(id);
                continue;
            };
            let mut per_host: Vec<(Rank, Vec<(u32, Resources)>)> = Vec::new();
            for (index, (bundle, &rank)) in group.bundles.iter().zip(&ranks).enumerate() {
                self.hosts[rank as usize].available.subtract(bundle);
                match per_host.iter_mut().find(|(r, _)| *r == rank) {
                    Some((_, list)) => list.push((index as u32, bundle.clone())),
                    None => per_host.push((rank, vec![(index as u32, bundle.clone())])),
                }
            }
            group.state = GroupState::Reserving {
                ranks,
                unacked: per_host.iter().map(|(r, _)| *r).collect(),
            };
            for (host, bundles) in per_host {
                actions.push(Action::Reserve {
                    host,
                    group: id,
                    bundles,
                });
            }
        }
        self.pending = still;
        actions
    }

    /// Could the group fit if no other group held anything?
    fn feasible(
        &self,
        bundles: &[Resources],
        strategy: PlacementStrategy,
    ) -> std::result::Result<(), String> {
        let asked = describe_request(bundles, strategy);
        if bundles.is_empty() {
            return Err(format!("{asked}: a group needs at least one bundle"));
        }
        if let Some(i) = bundles.iter().position(Resources::is_invalid) {
            return Err(format!(
                "{asked}: bundle {i} asks for a negative amount or not a number"
            ));
        }
        if let Some(i) = bundles.iter().position(Resources::is_empty) {
            return Err(format!(
                "{asked}: bundle {i} asks for no resources (give it CPUs, GPUs or a custom resource)"
            ));
        }
        let capacity: Vec<Resources> = self.hosts.iter().map(|h| h.capacity.clone()).collect();
        if place(bundles, strategy, &self.hosts, &capacity).is_some() {
            return Ok(());
        }
        let offered = describe_hosts(&self.hosts);
        let eligible = |h: &Host| h.alive && h.serving;
        if let Some((i, bundle)) = bundles
            .iter()
            .enumerate()
            .find(|(_, b)| !self.hosts.iter().any(|h| eligible(h) && h.capacity.fits(b)))
        {
            return Err(format!(
                "{asked}: bundle {i} {bundle} fits on no serving rank; the job offers {offered}"
            ));
        }
        let mut nodes: Vec<u32> = self
            .hosts
            .iter()
            .filter(|h| eligible(h))
            .map(|h| h.node)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        let why = match strategy {
            PlacementStrategy::StrictSpread if bundles.len() > nodes.len() => format!(
                "STRICT_SPREAD needs {} distinct nodes, the job has {} node(s) with serving ranks",
                bundles.len(),
                nodes.len()
            ),
            PlacementStrategy::StrictSpread => {
                "no distinct node for every bundle has the resources of its bundle".to_string()
            }
            PlacementStrategy::StrictPack => "no single node holds all the bundles".to_string(),
            _ => "the bundles do not fit on the job's ranks together".to_string(),
        };
        Err(format!("{asked}: {why}; the job offers {offered}"))
    }
}

/// `STRICT_SPREAD group of 2 bundles [{cpus: 1}, {cpus: 1}]`.
fn describe_request(bundles: &[Resources], strategy: PlacementStrategy) -> String {
    let list: Vec<String> = bundles.iter().map(ToString::to_string).collect();
    format!(
        "{strategy} group of {} bundle(s) [{}]",
        bundles.len(),
        list.join(", ")
    )
}

/// `node 0: ranks 1-3 {cpus: 1} each; node 1: rank 4 {cpus: 2}`, serving
/// live ranks only.
fn describe_hosts(hosts: &[Host]) -> String {
    let mut nodes: Vec<u32> = hosts.iter().map(|h| h.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut parts = Vec::new();
    for node in nodes {
        // Runs of consecutive ranks with the same resources.
        let mut runs: Vec<(usize, usize, &Resources)> = Vec::new();
        for (rank, host) in hosts.iter().enumerate() {
            if host.node != node || !host.alive || !host.serving {
                continue;
            }
            match runs.last_mut() {
                Some((_, last, res)) if *last + 1 == rank && **res == host.capacity => {
                    *last = rank;
                }
                _ => runs.push((rank, rank, &host.capacity)),
            }
        }
        if runs.is_empty() {
            continue;
        }
        let text: Vec<String> = runs
            .iter()
            .map(|(first, last, res)| {
                if first == last {
                    format!("rank {first} {res}")
                } else {
                    format!("ranks {first}-{last} {res} each")
                }
            })
            .collect();
        parts.push(format!("node {node}: {}", text.join(", ")));
    }
    if parts.is_empty() {
        "no live serving rank".to_string()
    } else {
        parts.join("; ")
    }
}

/// Lays `bundles` out on the live serving `hosts` given what each has
/// free (`available`, by rank): bundle `i`'s rank, or `None` when the
/// strategy cannot fit them (pure; see the module docs).
pub(crate) fn place(
    bundles: &[Resources],
    strategy: PlacementStrategy,
    hosts: &[Host],
    available: &[Resources],
) -> Option<Vec<Rank>> {
    let eligible: Vec<usize> = (0..hosts.len().min(available.len()))
        .filter(|&i| hosts[i].alive && hosts[i].serving)
        .collect();
    if eligible.is_empty() || bundles.is_empty() {
        return None;
    }
    // Largest bundles first: first-fit then fails less often.
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by(|&a, &b| size_key(&bundles[b]).total_cmp(&size_key(&bundles[a])));
    match strategy {
        PlacementStrategy::StrictPack => strict_pack(bundles, &order, hosts, available, &eligible),
        PlacementStrategy::Pack => strict_pack(bundles, &order, hosts, available, &eligible)
            .or_else(|| pack(bundles, &order, hosts, available, &eligible)),
        PlacementStrategy::Spread => spread(bundles, &order, hosts, available, &eligible)
            .or_else(|| pack(bundles, &order, hosts, available, &eligible)),
        PlacementStrategy::StrictSpread => {
            strict_spread(bundles, &order, hosts, available, &eligible)
        }
    }
}

fn size_key(r: &Resources) -> f64 {
    // GPUs are the scarce ones: weigh them first.
    r.gpus * 1e6 + r.cpus + r.custom.values().sum::<f64>() * 1e-3
}

/// Nodes of `eligible` hosts, most free CPUs first (then lowest id).
fn nodes_by_room(hosts: &[Host], available: &[Resources], eligible: &[usize]) -> Vec<u32> {
    let mut room: Vec<(u32, f64)> = Vec::new();
    for &i in eligible {
        match room.iter_mut().find(|(n, _)| *n == hosts[i].node) {
            Some((_, cpus)) => *cpus += available[i].cpus,
            None => room.push((hosts[i].node, available[i].cpus)),
        }
    }
    room.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    room.into_iter().map(|(n, _)| n).collect()
}

/// First fit of the bundles (in `order`) onto `candidates` (in order).
fn first_fit(
    bundles: &[Resources],
    order: &[usize],
    available: &[Resources],
    candidates: &[usize],
) -> Option<Vec<Rank>> {
    let mut free: Vec<Resources> = available.to_vec();
    let mut ranks = vec![0 as Rank; bundles.len()];
    for &b in order {
        let &host = candidates.iter().find(|&&h| free[h].fits(&bundles[b]))?;
        free[host].subtract(&bundles[b]);
        ranks[b] = host as Rank;
    }
    Some(ranks)
}

/// Hosts of `node`, most free CPUs first (then lowest rank): packing onto
/// the roomiest rank first fills few ranks.
fn hosts_of(node: u32, hosts: &[Host], available: &[Resources], eligible: &[usize]) -> Vec<usize> {
    let mut list: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&i| hosts[i].node == node)
        .collect();
    list.sort_by(|&a, &b| {
        available[b]
            .cpus
            .total_cmp(&available[a].cpus)
            .then(a.cmp(&b))
    });
    list
}

fn strict_pack(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
) -> Option<Vec<Rank>> {
    nodes_by_room(hosts, available, eligible)
        .into_iter()
        .find_map(|node| {
            let candidates = hosts_of(node, hosts, available, eligible);
            first_fit(bundles, order, available, &candidates)
        })
}

fn pack(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
) -> Option<Vec<Rank>> {
    let candidates: Vec<usize> = nodes_by_room(hosts, available, eligible)
        .into_iter()
        .flat_map(|node| hosts_of(node, hosts, available, eligible))
        .collect();
    first_fit(bundles, order, available, &candidates)
}

fn spread(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
) -> Option<Vec<Rank>> {
    let mut free: Vec<Resources> = available.to_vec();
    let mut on_rank = vec![0u32; hosts.len()];
    let mut on_node: HashMap<u32, u32> = HashMap::new();
    let mut ranks = vec![0 as Rank; bundles.len()];
    for &b in order {
        let &host = eligible
            .iter()
            .filter(|&&h| free[h].fits(&bundles[b]))
            .min_by(|&&x, &&y| {
                let key = |h: usize| {
                    (
                        on_node.get(&hosts[h].node).copied().unwrap_or(0),
                        on_rank[h],
                    )
                };
                key(x)
                    .cmp(&key(y))
                    .then(free[y].cpus.total_cmp(&free[x].cpus))
                    .then(x.cmp(&y))
            })?;
        free[host].subtract(&bundles[b]);
        on_rank[host] += 1;
        *on_node.entry(hosts[host].node).or_insert(0) += 1;
        ranks[b] = host as Rank;
    }
    Some(ranks)
}

fn strict_spread(
    bundles: &[Resources],
    order: &[usize],
    hosts: &[Host],
    available: &[Resources],
    eligible: &[usize],
) -> Option<Vec<Rank>> {
    let nodes = nodes_by_room(hosts, available, eligible);
    if bundles.len() > nodes.len() {
        return None;
    }
    // The roomiest rank of `node` that fits bundle `b`.
    let host_for = |node: u32, b: usize| {
        hosts_of(node, hosts, available, eligible)
            .into_iter()
            .find(|&h| available[h].fits(&bundles[b]))
    };
    let fits: Vec<Vec<usize>> = (0..bundles.len())
        .map(|b| {
            (0..nodes.len())
                .filter(|&n| host_for(nodes[n], b).is_some())
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
        .map(|(b, n)| n.and_then(|n| host_for(nodes[n], b)).map(|h| h as Rank))
        .collect()
}

/// A rank's share of the placement-group machinery (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct GroupRuntime {
    /// The head's table (rank 0 only).
    pub(crate) head: Option<Mutex<PlacementTable>>,
    /// Created groups this rank has learnt of (for submissions into them).
    known: Mutex<HashMap<PlacementGroupId, GroupView>>,
    /// (host) actors hosted here in a group: killed when it is removed.
    hosted_actors: Mutex<HashMap<PlacementGroupId, Vec<ActorId>>>,
    next: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GroupRuntime {
    /// Rank 0 keeps the table of `hosts`; other ranks keep none.
    pub(crate) fn new(rank: Rank, hosts: Vec<Host>) -> Self {
        GroupRuntime {
            head: (rank == 0).then(|| Mutex::new(PlacementTable::new(hosts))),
            ..GroupRuntime::default()
        }
    }

    fn next_seq(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn group_error(id: PlacementGroupId, answer: GroupAnswer) -> LumenError {
    LumenError::Runtime(match answer {
        GroupAnswer::Infeasible(detail) => RuntimeError::Infeasible {
            what: id.to_string(),
            detail,
        },
        GroupAnswer::Failed(reason) => RuntimeError::PlacementGroupFailed { group: id, reason },
        GroupAnswer::Removed => RuntimeError::PlacementGroupRemoved { group: id },
        GroupAnswer::Unknown => RuntimeError::PlacementGroupFailed {
            group: id,
            reason: "rank 0 does not know it (it was never created in this job)".to_string(),
        },
        GroupAnswer::Accepted | GroupAnswer::Created(_) => RuntimeError::PlacementGroupFailed {
            group: id,
            reason: "rank 0 answered out of turn".to_string(),
        },
    })
}

impl Inner {
    /// Asks the head to create a group (see `Runtime::placement_group`).
    pub(crate) fn create_group(
        self: &Arc<Self>,
        bundles: Vec<Resources>,
        strategy: PlacementStrategy,
    ) -> Result<PlacementGroup> {
        let id = PlacementGroupId {
            creator: self.rank,
            seq: self.groups.next_seq(),
        };
        let answer = self.ask_group(
            0,
            |request| RtMsg::PgCreate {
                group: id,
                bundles: bundles.clone(),
                strategy,
                request,
            },
            None,
        )?;
        match answer {
            GroupAnswer::Accepted => Ok(PlacementGroup {
                id,
                bundles,
                strategy,
            }),
            other => Err(group_error(id, other)),
        }
    }

    /// The created group `id` (waits for its creation up to `timeout`).
    pub(crate) fn group_view(
        self: &Arc<Self>,
        id: PlacementGroupId,
        timeout: Option<Duration>,
    ) -> Result<GroupView> {
        if let Some(view) = lock(&self.groups.known).get(&id) {
            return Ok(view.clone());
        }
        let answer = self.ask_group(0, |request| RtMsg::PgWait { group: id, request }, timeout)?;
        match answer {
            GroupAnswer::Created(view) => {
                lock(&self.groups.known).insert(id, view.clone());
                Ok(view)
            }
            other => Err(group_error(id, other)),
        }
    }

    /// Removes group `id` (see `Runtime::remove_placement_group`).
    pub(crate) fn remove_group(self: &Arc<Self>, id: PlacementGroupId) -> Result<()> {
        lock(&self.groups.known).remove(&id);
        let answer = self.ask_group(0, |request| RtMsg::PgRemove { group: id, request }, None)?;
        match answer {
            GroupAnswer::Removed => Ok(()),
            other => Err(group_error(id, other)),
        }
    }

    /// The bundle a task or actor asked into runs it: its index (the
    /// asked one, or the least loaded one that fits when any will do) and
    /// rank. `rank` and `node`, when given too, must agree with it.
    pub(crate) fn choose_bundle(
        self: &Arc<Self>,
        what: &str,
        scheduling: PlacementGroupScheduling,
        need: &Resources,
        rank: Option<Rank>,
        node: Option<u32>,
        load: impl Fn(Rank) -> u32,
    ) -> Result<(u32, Rank)> {
        let id = scheduling.group;
        let view = self.group_view(id, None)?;
        let infeasible = |detail: String| {
            LumenError::Runtime(RuntimeError::Infeasible {
                what: what.to_string(),
                detail,
            })
        };
        let agrees = |r: Rank| {
            rank.is_none_or(|want| want == r)
                && node.is_none_or(|n| self.ranks.get(r as usize).is_some_and(|i| i.node == n))
        };
        let bundle_at = |i: usize| view.bundles.get(i).zip(view.ranks.get(i).copied());
        match scheduling.bundle_index {
            Some(index) => {
                let (bundle, host) = bundle_at(index as usize).ok_or_else(|| {
                    infeasible(format!(
                        "{id} has {} bundle(s); there is no bundle {index}",
                        view.bundles.len()
                    ))
                })?;
                if !bundle.fits(need) {
                    return Err(infeasible(format!(
                        "it needs {need}, bundle {index} of {id} holds {bundle}"
                    )));
                }
                if !agrees(host) {
                    return Err(infeasible(format!(
                        "bundle {index} of {id} is on rank {host}, not on the rank or node asked for"
                    )));
                }
                Ok((index, host))
            }
            None => (0..view.bundles.len())
                .filter_map(|i| bundle_at(i).map(|(b, r)| (i, b, r)))
                .filter(|(_, bundle, host)| bundle.fits(need) && agrees(*host))
                .min_by_key(|(i, _, host)| (load(*host), *i))
                .map(|(i, _, host)| (i as u32, host))
                .ok_or_else(|| {
                    let list: Vec<String> = view.bundles.iter().map(ToString::to_string).collect();
                    infeasible(format!(
                        "it needs {need}; no bundle of {id} [{}] holds that (on the rank or node asked for)",
                        list.join(", ")
                    ))
                }),
        }
    }

    /// Serves a placement-group message (on the progress thread: never
    /// blocks; sends after the table's lock is released).
    pub(crate) fn on_group_message(self: &Arc<Self>, src: Rank, message: RtMsg) {
        match message {
            RtMsg::PgCreate {
                group,
                bundles,
                strategy,
                request,
            } => {
                let actions = self.head_do(|t| t.create(group, bundles, strategy, src, request));
                self.group_actions(src, request, actions);
            }
            RtMsg::PgWait { group, request } => {
                let actions = self.head_do(|t| t.wait(group, src, request));
                self.group_actions(src, request, actions);
            }
            RtMsg::PgRemove { group, request } => {
                let actions = self.head_do(|t| {
                    let (known, mut actions) = t.remove(group);
                    let answer = if known {
                        GroupAnswer::Removed
                    } else {
                        t.wait(group, src, request)
                            .into_iter()
                            .find_map(|a| match a {
                                Action::Answer { answer, .. } => Some(answer),
                                _ => None,
                            })
                            .unwrap_or(GroupAnswer::Unknown)
                    };
                    actions.push(Action::Answer {
                        to: src,
                        request,
                        answer,
                    });
                    actions
                });
                self.group_actions(src, request, actions);
            }
            RtMsg::BundleReserved { group } => {
                let actions = self.head_do(|t| t.reserved(group, src));
                self.run_group_actions(actions);
            }
            RtMsg::BundleReserve { group, bundles } => {
                let cpus: Vec<(u32, f64)> = bundles.iter().map(|(i, r)| (*i, r.cpus)).collect();
                self.executor.reserve(group, &cpus);
                self.send_or_log(src, &RtMsg::BundleReserved { group });
            }
            RtMsg::BundleRelease { group } => self.release_group_here(group),
            RtMsg::PgAnswer { request, answer } => self.answer_group(request, answer),
            _ => {}
        }
    }

    /// Runs `f` on the head's table; `None` on other ranks.
    fn head_do(&self, f: impl FnOnce(&mut PlacementTable) -> Vec<Action>) -> Option<Vec<Action>> {
        self.groups.head.as_ref().map(|table| f(&mut lock(table)))
    }

    /// Sends the head's actions, or, when this rank is not the head,
    /// fails the request that was misdirected here.
    fn group_actions(self: &Arc<Self>, src: Rank, request: u64, actions: Option<Vec<Action>>) {
        match actions {
            Some(actions) => self.run_group_actions(Some(actions)),
            None => {
                tracing::error!(
                    rank = self.rank,
                    from = src,
                    "placement-group request sent to a rank that is not the head (rank 0)"
                );
                self.send_or_log(
                    src,
                    &RtMsg::PgAnswer {
                        request,
                        answer: GroupAnswer::Failed(format!(
                            "rank {} is not the head (rank 0)",
                            self.rank
                        )),
                    },
                );
            }
        }
    }

    fn run_group_actions(self: &Arc<Self>, actions: Option<Vec<Action>>) {
        for action in actions.into_iter().flatten() {
            match action {
                Action::Reserve {
                    host,
                    group,
                    bundles,
                } => self.send_or_log(host, &RtMsg::BundleReserve { group, bundles }),
                Action::Release { host, group } => {
                    self.send_or_log(host, &RtMsg::BundleRelease { group })
                }
                Action::Answer {
                    to,
                    request,
                    answer,
                } => self.send_or_log(to, &RtMsg::PgAnswer { request, answer }),
            }
        }
    }

    /// (host) `group` is removed: its queued tasks fail, its actors are
    /// killed, its CPUs go back to the free pool.
    fn release_group_here(self: &Arc<Self>, group: PlacementGroupId) {
        lock(&self.groups.known).remove(&group);
        for spec in self.executor.release(group) {
            self.fail_removed(spec);
        }
        // After the executor marked the group released (see `actor_in_group`).
        let actors = lock(&self.groups.hosted_actors)
            .remove(&group)
            .unwrap_or_default();
        for actor in actors {
            self.kill_hosted_actor(actor);
        }
    }

    /// (host) An actor of `group` was created here: it is killed with the
    /// group, or at once when the group is gone already (its creator
    /// learnt of the group before it was removed).
    pub(crate) fn actor_in_group(self: &Arc<Self>, group: PlacementGroupId, actor: ActorId) {
        let gone = {
            let mut hosted = lock(&self.groups.hosted_actors);
            let gone = self.executor.is_released(group);
            if !gone {
                hosted.entry(group).or_default().push(actor);
            }
            gone
        };
        if gone {
            self.kill_hosted_actor(actor);
        }
    }

    /// (head) a rank died.
    pub(crate) fn group_rank_died(self: &Arc<Self>, rank: Rank) {
        let actions = self.head_do(|t| t.rank_died(rank));
        self.run_group_actions(actions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(per_node: &[u32], cpus: f64, driver: bool) -> Vec<Host> {
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

    fn avail(h: &[Host]) -> Vec<Resources> {
        h.iter().map(|h| h.available.clone()).collect()
    }

    fn cpus(n: usize, each: f64) -> Vec<Resources> {
        vec![Resources::cpus(each); n]
    }

    fn id(seq: u64) -> PlacementGroupId {
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

    #[test]
    fn infeasible_groups_say_what_was_asked_and_what_exists() {
        let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
        let actions = t.create(id(1), cpus(2, 1.0), PlacementStrategy::StrictSpread, 0, 7);
        let [Action::Answer {
            answer: GroupAnswer::Infeasible(why),
            request: 7,
            ..
        }] = &actions[..]
        else {
            panic!("{actions:?}");
        };
        assert!(why.contains("STRICT_SPREAD group of 2 bundle(s) [{cpus: 1}, {cpus: 1}]"));
        assert!(why.contains("needs 2 distinct nodes, the job has 1 node(s)"));
        assert!(why.contains("node 0: ranks 1-3 {cpus: 1} each"), "{why}");
        let actions = t.create(id(2), cpus(1, 2.0), PlacementStrategy::Pack, 0, 8);
        assert!(
            matches!(&actions[..], [Action::Answer { answer: GroupAnswer::Infeasible(w), .. }]
                if w.contains("bundle 0 {cpus: 2} fits on no serving rank")),
            "{actions:?}"
        );
        let actions = t.create(
            id(3),
            vec![Resources::default()],
            PlacementStrategy::Pack,
            0,
            9,
        );
        assert!(matches!(
            &actions[..],
            [Action::Answer {
                answer: GroupAnswer::Infeasible(_),
                ..
            }]
        ));
    }

    fn created(t: &mut PlacementTable, actions: &[Action], group: PlacementGroupId) {
        for a in actions {
            if let Action::Reserve { host, group: g, .. } = a {
                if *g == group {
                    t.reserved(group, *host);
                }
            }
        }
    }

    fn ranks_of(t: &mut PlacementTable, group: PlacementGroupId) -> Option<Vec<Rank>> {
        t.wait(group, 5, 99).into_iter().find_map(|a| match a {
            Action::Answer {
                answer: GroupAnswer::Created(view),
                ..
            } => Some(view.ranks),
            _ => None,
        })
    }

    #[test]
    fn reservation_is_atomic_and_released_on_removal() {
        let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
        let a = t.create(id(1), cpus(2, 1.0), PlacementStrategy::Pack, 0, 1);
        assert_eq!(
            a[0],
            Action::Answer {
                to: 0,
                request: 1,
                answer: GroupAnswer::Accepted
            }
        );
        let reserves = a
            .iter()
            .filter(|x| matches!(x, Action::Reserve { .. }))
            .count();
        assert_eq!(reserves, 2);
        // Not created before every host acknowledged; a waiter is answered then.
        assert!(t.wait(id(1), 3, 2).is_empty());
        created(&mut t, &a, id(1));
        let ranks = ranks_of(&mut t, id(1)).expect("created");
        assert_eq!(ranks.len(), 2);
        // Two bundles need two CPUs; one is left: nothing of this group is
        // reserved (all or none), it waits.
        let b = t.create(id(2), cpus(2, 1.0), PlacementStrategy::Pack, 0, 3);
        assert_eq!(b.len(), 1, "{b:?}");
        assert!(ranks_of(&mut t, id(2)).is_none());
        let c = t.create(id(3), cpus(1, 1.0), PlacementStrategy::Pack, 0, 4);
        created(&mut t, &c, id(3));
        assert!(
            ranks_of(&mut t, id(3)).is_some(),
            "a smaller group is not held back"
        );
        let (known, removed) = t.remove(id(3));
        assert!(known);
        assert!(removed
            .iter()
            .any(|x| matches!(x, Action::Release { group, .. } if *group == id(3))));
        // Still only 1 CPU free after removing group 3: group 2 waits.
        assert!(!removed
            .iter()
            .any(|x| matches!(x, Action::Reserve { group, .. } if *group == id(2))));
        let (_, removed) = t.remove(id(1));
        assert!(removed
            .iter()
            .any(|x| matches!(x, Action::Reserve { group, .. } if *group == id(2))));
        created(&mut t, &removed, id(2));
        assert!(ranks_of(&mut t, id(2)).is_some());
        assert_eq!(
            t.wait(id(1), 2, 5),
            vec![Action::Answer {
                to: 2,
                request: 5,
                answer: GroupAnswer::Removed
            }]
        );
        assert!(!t.remove(id(1)).0);
    }

    #[test]
    fn a_host_dying_during_reservation_fails_the_group() {
        let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
        let a = t.create(id(1), cpus(3, 1.0), PlacementStrategy::Spread, 0, 1);
        assert!(t.wait(id(1), 0, 2).is_empty());
        t.reserved(id(1), 1);
        let died = t.rank_died(2);
        assert!(died.iter().any(|x| matches!(x,
            Action::Answer { request: 2, answer: GroupAnswer::Failed(w), .. } if w.contains("rank 2 died"))));
        let released: Vec<Rank> = died
            .iter()
            .filter_map(|x| match x {
                Action::Release { host, .. } => Some(*host),
                _ => None,
            })
            .collect();
        assert_eq!(released, vec![1, 3], "{a:?} {died:?}");
        // What is left (2 ranks) cannot hold 3 bundles any more.
        let b = t.create(id(2), cpus(3, 1.0), PlacementStrategy::Pack, 0, 3);
        assert!(matches!(
            &b[..],
            [Action::Answer {
                answer: GroupAnswer::Infeasible(_),
                ..
            }]
        ));
    }
}
