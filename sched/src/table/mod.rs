//! The placement-group table: what every rank offers, what the groups
//! hold, the groups waiting for resources. One instance decides every
//! group of a job (Lumen keeps it in rank 0's head service, as Ray's GCS
//! schedules placement groups), so no resource is reserved twice over by
//! two submitters.
//!
//! The table is sans-IO: each step ([`PlacementTable::create`],
//! [`PlacementTable::wait`], [`PlacementTable::reserved`],
//! [`PlacementTable::remove`], [`PlacementTable::rank_died`]) changes its
//! state and returns the [`Action`]s its caller must carry out (reserve
//! bundles on hosts, release them, answer requests), which the caller
//! sends after releasing whatever lock guards the table. Tests step it
//! directly.
//!
//! # Invariants
//! - Reservation is atomic: a group's bundles are all placed, or none.
//! - A group is `Pending` (waiting for resources), `Reserving` (placed,
//!   some hosts yet to acknowledge), then `Created`; only then are its
//!   waiters answered with its ranks.
//! - A host's `available` is its capacity less the bundles of the groups
//!   placed on it; ending a group (removed, failed) gives them back and
//!   places pending groups, oldest first, that now fit (a large group
//!   waiting does not hold back a smaller one).
//! - A group that cannot fit even in an empty job is refused at creation
//!   with what it asked for and what the job offers; one that fits the job
//!   but not what other groups left free waits.
//!
//! # Failures
//! A host that dies while its bundles are being reserved fails the group
//! (the other hosts release theirs; its waiters learn why). A pending
//! group that can no longer fit is refused.
//!
//! A **created** group whose bundle host dies is *rescheduled*, as Ray's
//! GCS reschedules the bundles of a dead node: the bundles that were on
//! that rank are placed again on live hosts, the others stay where they
//! are, and the group's strategy still holds against them:
//! - `STRICT_SPREAD`: each moved bundle on a node that holds no other
//!   bundle of the group (and not two moved bundles on one node);
//! - `STRICT_PACK`: on the node of the group's other bundles (any single
//!   node when none is left);
//! - `PACK`: the node of the others when they fit there, else anywhere;
//! - `SPREAD`: nodes without a bundle of the group first, else anywhere.
//!
//! The new hosts are sent [`Action::Reserve`] for the moved bundles; once
//! they acknowledge, the group is `Created` again and waiters (held
//! meanwhile, as for a group being reserved) are answered with the new
//! ranks. A group whose moved bundles do not fit in what is free now waits,
//! *pending reschedule*, until a group ends and frees room (rescheduling
//! comes before pending groups, oldest first). Moved bundles that could
//! not fit even once every other group ended (no live rank left that could
//! hold them beside the group's other bundles under the strategy) stay on
//! their dead rank: the group is answered with it, and tasks and actors
//! sent to that bundle fail as on any dead rank. A new host that dies
//! before acknowledging is replaced the same way.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::strategy::{place, place_where};
use crate::{PlacementGroupId, PlacementStrategy, Rank, Resources};

/// What a created group holds, as the head tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupView {
    /// The bundles, as asked for.
    pub bundles: Vec<Resources>,
    /// The strategy it was created with.
    pub strategy: PlacementStrategy,
    /// Bundle `i`'s rank.
    pub ranks: Vec<Rank>,
}

/// One group as the head holds it, for tools (`lumen status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub id: PlacementGroupId,
    /// The strategy it was created with.
    pub strategy: PlacementStrategy,
    /// Its bundles, as asked for.
    pub bundles: Vec<Resources>,
    /// `pending` (waiting for resources), `reserving` (placed, hosts to
    /// acknowledge), `created`, or `rescheduling` (bundles lost with a
    /// rank are placed again).
    pub state: String,
    /// Bundle `i`'s rank, once placed (empty while pending).
    pub ranks: Vec<Rank>,
}

/// The head's answer about a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupAnswer {
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
pub struct Host {
    /// The rank's node (index in the job).
    pub node: u32,
    /// What the rank offers in all.
    pub capacity: Resources,
    /// Capacity less what groups hold.
    pub available: Resources,
    /// Takes tasks (in driver mode rank 0 only submits).
    pub serving: bool,
    /// Not known dead.
    pub alive: bool,
}

/// What the head must send once its table has changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Reserve these bundles (index, resources) of `group` on `host`.
    Reserve {
        /// The rank that hosts the bundles.
        host: Rank,
        /// Their group.
        group: PlacementGroupId,
        /// Bundle index and resources, for each bundle placed on `host`.
        bundles: Vec<(u32, Resources)>,
    },
    /// Release every bundle of `group` on `host`.
    Release {
        /// The rank that hosts bundles of the group.
        host: Rank,
        /// The group that ended.
        group: PlacementGroupId,
    },
    /// Answer request `request` of rank `to`.
    Answer {
        /// The asking rank.
        to: Rank,
        /// The asker's request number.
        request: u64,
        /// What happened to the group.
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
    /// Created, but bundles lost with their rank are placed again.
    Rescheduling {
        /// Bundle `i`'s rank: the dead one while it is in `lost`.
        ranks: Vec<Rank>,
        /// Bundles waiting for room on a live host.
        lost: Vec<u32>,
        /// New hosts yet to acknowledge their bundles.
        unacked: Vec<Rank>,
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
pub struct PlacementTable {
    hosts: Vec<Host>,
    /// Each host's `available`, side by side, for [`place`] to read
    /// without a copy per group (kept equal to `hosts[i].available`).
    available: Vec<Resources>,
    /// Each host's `capacity`, side by side (never changes).
    capacity: Vec<Resources>,
    /// [`PlacementTable::feasible`]'s answers by request: they depend only
    /// on the capacities (fixed) and which hosts are alive, so they are
    /// forgotten when a rank dies.
    feasible: HashMap<FeasibleKey, std::result::Result<(), String>>,
    groups: HashMap<PlacementGroupId, Group>,
    /// Pending groups, oldest first.
    pending: VecDeque<PlacementGroupId>,
    /// Created groups with bundles waiting for a new host, oldest first.
    rescheduling: VecDeque<PlacementGroupId>,
    /// Groups that ended (removed or failed): the answer for late waiters.
    ended: HashMap<PlacementGroupId, GroupAnswer>,
}

impl PlacementTable {
    /// A table of `hosts` (indexed by rank) holding no group yet.
    pub fn new(hosts: Vec<Host>) -> Self {
        PlacementTable {
            available: hosts.iter().map(|h| h.available.clone()).collect(),
            capacity: hosts.iter().map(|h| h.capacity.clone()).collect(),
            feasible: HashMap::new(),
            hosts,
            groups: HashMap::new(),
            pending: VecDeque::new(),
            rescheduling: VecDeque::new(),
            ended: HashMap::new(),
        }
    }

    /// A new group from `from` (request `request`): refused when it can
    /// never fit, else accepted and placed as soon as resources allow.
    pub fn create(
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
        if let Err(why) = self.feasible_cached(&bundles, strategy) {
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
    pub fn wait(&mut self, id: PlacementGroupId, from: Rank, request: u64) -> Vec<Action> {
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
    pub fn reserved(&mut self, id: PlacementGroupId, host: Rank) -> Vec<Action> {
        let Some(group) = self.groups.get_mut(&id) else {
            return Vec::new();
        };
        match &mut group.state {
            GroupState::Reserving { unacked, .. } => unacked.retain(|&r| r != host),
            GroupState::Rescheduling { unacked, .. } => unacked.retain(|&r| r != host),
            _ => return Vec::new(),
        }
        Self::created_if_acknowledged(group)
    }

    /// A group whose hosts have all acknowledged (and, when rescheduled,
    /// whose lost bundles all have a host) is created: its waiters learn
    /// its ranks.
    fn created_if_acknowledged(group: &mut Group) -> Vec<Action> {
        let ranks = match &mut group.state {
            GroupState::Reserving { ranks, unacked } if unacked.is_empty() => std::mem::take(ranks),
            GroupState::Rescheduling {
                ranks,
                lost,
                unacked,
            } if lost.is_empty() && unacked.is_empty() => std::mem::take(ranks),
            _ => return Vec::new(),
        };
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

    /// Every group the head holds, by id.
    pub fn summaries(&self) -> Vec<GroupSummary> {
        let mut groups: Vec<GroupSummary> = self
            .groups
            .iter()
            .map(|(id, group)| {
                let (state, ranks) = match &group.state {
                    GroupState::Pending => ("pending", Vec::new()),
                    GroupState::Reserving { ranks, .. } => ("reserving", ranks.clone()),
                    GroupState::Created { ranks } => ("created", ranks.clone()),
                    GroupState::Rescheduling { ranks, .. } => ("rescheduling", ranks.clone()),
                };
                GroupSummary {
                    id: *id,
                    strategy: group.strategy,
                    bundles: group.bundles.clone(),
                    state: state.to_string(),
                    ranks,
                }
            })
            .collect();
        groups.sort_by_key(|group| group.id);
        groups
    }

    /// Removes `id`: its resources go back, its hosts release it, its
    /// waiters learn it, and pending groups may now fit. `false` when the
    /// group is unknown (or ended already).
    pub fn remove(&mut self, id: PlacementGroupId) -> (bool, Vec<Action>) {
        if !self.groups.contains_key(&id) {
            return (false, Vec::new());
        }
        let mut actions = self.end(id, GroupAnswer::Removed);
        actions.extend(self.schedule());
        (true, actions)
    }

    /// `rank` died: it hosts nothing new; a group still being reserved
    /// there fails; a created group's bundles there are placed again (see
    /// the module docs); pending groups that can no longer fit are refused.
    pub fn rank_died(&mut self, rank: Rank) -> Vec<Action> {
        let Some(host) = self.hosts.get_mut(rank as usize) else {
            return Vec::new();
        };
        if !host.alive {
            return Vec::new();
        }
        host.alive = false;
        self.feasible.clear();
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
                GroupState::Created { ranks } | GroupState::Rescheduling { ranks, .. }
                    if ranks.contains(&rank) =>
                {
                    self.lose_bundles(id, rank);
                }
                _ => {}
            }
        }
        actions.extend(self.schedule());
        actions
    }

    /// The bundles of created group `id` on `rank` (dead) wait for a new
    /// host; a new host that was still to acknowledge is forgotten.
    fn lose_bundles(&mut self, id: PlacementGroupId, rank: Rank) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        let state = std::mem::replace(&mut group.state, GroupState::Pending);
        let (ranks, mut lost, mut unacked) = match state {
            GroupState::Created { ranks } => (ranks, Vec::new(), Vec::new()),
            GroupState::Rescheduling {
                ranks,
                lost,
                unacked,
            } => (ranks, lost, unacked),
            other => {
                group.state = other;
                return;
            }
        };
        for (index, &r) in ranks.iter().enumerate() {
            if r == rank && !lost.contains(&(index as u32)) {
                lost.push(index as u32);
            }
        }
        lost.sort_unstable();
        unacked.retain(|&r| r != rank);
        group.state = GroupState::Rescheduling {
            ranks,
            lost,
            unacked,
        };
        if !self.rescheduling.contains(&id) {
            self.rescheduling.push_back(id);
        }
    }

    /// Where `bundles` (moved bundles of a group) go again under
    /// `strategy`, given the nodes holding the group's other bundles and
    /// what hosts have free (`available`): see the module docs.
    fn layout_again(
        &self,
        bundles: &[Resources],
        strategy: PlacementStrategy,
        others: &[u32],
        available: &[Resources],
    ) -> Option<Vec<Rank>> {
        let hosts = &self.hosts;
        let beside = |i: usize| others.contains(&hosts[i].node);
        let apart = |i: usize| !others.contains(&hosts[i].node);
        match strategy {
            PlacementStrategy::StrictSpread => {
                place_where(bundles, strategy, hosts, available, apart)
            }
            PlacementStrategy::StrictPack if others.is_empty() => {
                place(bundles, strategy, hosts, available)
            }
            PlacementStrategy::StrictPack => {
                place_where(bundles, strategy, hosts, available, beside)
            }
            PlacementStrategy::Pack => (!others.is_empty())
                .then(|| {
                    place_where(
                        bundles,
                        PlacementStrategy::StrictPack,
                        hosts,
                        available,
                        beside,
                    )
                })
                .flatten()
                .or_else(|| place(bundles, strategy, hosts, available)),
            PlacementStrategy::Spread => place_where(bundles, strategy, hosts, available, apart)
                .or_else(|| place(bundles, strategy, hosts, available)),
        }
    }

    /// Places the lost bundles of rescheduling group `id` on live hosts if
    /// they fit now; gives them up (they stay on their dead rank) when they
    /// never can, not even once every other group ended. `false` while the
    /// group waits for room.
    fn place_lost(&mut self, id: PlacementGroupId, actions: &mut Vec<Action>) -> bool {
        let Some(group) = self.groups.get(&id) else {
            return true;
        };
        let GroupState::Rescheduling { ranks, lost, .. } = &group.state else {
            return true;
        };
        let moved: Vec<Resources> = lost
            .iter()
            .filter_map(|&i| group.bundles.get(i as usize).cloned())
            .collect();
        let mut others: Vec<u32> = ranks
            .iter()
            .enumerate()
            .filter(|(i, _)| !lost.contains(&(*i as u32)))
            .filter_map(|(_, &r)| self.hosts.get(r as usize).map(|h| h.node))
            .collect();
        others.sort_unstable();
        others.dedup();
        let strategy = group.strategy;
        let placed = if moved.is_empty() {
            Some(Vec::new())
        } else {
            self.layout_again(&moved, strategy, &others, &self.available)
        };
        let Some(placed) = placed else {
            // Could they fit once every other group ended? (This group's
            // own bundles stay where they are.)
            let mut room = self.capacity.clone();
            for (i, &r) in ranks.iter().enumerate() {
                if !lost.contains(&(i as u32)) {
                    if let (Some(free), Some(bundle)) =
                        (room.get_mut(r as usize), group.bundles.get(i))
                    {
                        free.subtract(bundle);
                    }
                }
            }
            if self
                .layout_again(&moved, strategy, &others, &room)
                .is_some()
            {
                return false;
            }
            // Never: the bundles stay on their dead rank.
            let Some(group) = self.groups.get_mut(&id) else {
                return true;
            };
            if let GroupState::Rescheduling { lost, .. } = &mut group.state {
                lost.clear();
            }
            actions.extend(Self::created_if_acknowledged(group));
            return true;
        };
        let Some(group) = self.groups.get_mut(&id) else {
            return true;
        };
        let GroupState::Rescheduling {
            ranks,
            lost,
            unacked,
        } = &mut group.state
        else {
            return true;
        };
        let mut per_host: Vec<(Rank, Vec<(u32, Resources)>)> = Vec::new();
        for (&index, &rank) in lost.iter().zip(&placed) {
            let Some(bundle) = group.bundles.get(index as usize) else {
                continue;
            };
            self.hosts[rank as usize].available.subtract(bundle);
            self.available[rank as usize].subtract(bundle);
            ranks[index as usize] = rank;
            match per_host.iter_mut().find(|(r, _)| *r == rank) {
                Some((_, list)) => list.push((index, bundle.clone())),
                None => per_host.push((rank, vec![(index, bundle.clone())])),
            }
        }
        lost.clear();
        for (host, bundles) in per_host {
            if !unacked.contains(&host) {
                unacked.push(host);
            }
            actions.push(Action::Reserve {
                host,
                group: id,
                bundles,
            });
        }
        actions.extend(Self::created_if_acknowledged(group));
        true
    }

    /// Ends group `id` with `answer`: gives back what it holds, tells its
    /// live hosts to release it and its waiters why.
    fn end(&mut self, id: PlacementGroupId, answer: GroupAnswer) -> Vec<Action> {
        let Some(group) = self.groups.remove(&id) else {
            return Vec::new();
        };
        self.pending.retain(|&p| p != id);
        self.rescheduling.retain(|&p| p != id);
        let mut actions = Vec::new();
        let ranks = match &group.state {
            GroupState::Pending => Vec::new(),
            GroupState::Reserving { ranks, .. }
            | GroupState::Created { ranks }
            | GroupState::Rescheduling { ranks, .. } => ranks.clone(),
        };
        for (bundle, &rank) in group.bundles.iter().zip(&ranks) {
            if let Some(host) = self.hosts.get_mut(rank as usize) {
                host.available.add(bundle);
                self.available[rank as usize].add(bundle);
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

    /// Places the bundles of rescheduled groups, then the pending groups,
    /// that fit in what is free now, oldest first (a large group waiting
    /// does not hold back a smaller one).
    fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(id) = self.rescheduling.pop_front() {
            if !self.place_lost(id, &mut actions) {
                waiting.push_back(id);
            }
        }
        self.rescheduling = waiting;
        let mut still = VecDeque::new();
        while let Some(id) = self.pending.pop_front() {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let Some(ranks) = place(&group.bundles, group.strategy, &self.hosts, &self.available)
            else {
                still.push_back(id);
                continue;
            };
            let mut per_host: Vec<(Rank, Vec<(u32, Resources)>)> = Vec::new();
            for (index, (bundle, &rank)) in group.bundles.iter().zip(&ranks).enumerate() {
                self.hosts[rank as usize].available.subtract(bundle);
                self.available[rank as usize].subtract(bundle);
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

    /// [`PlacementTable::feasible`], remembered per request until a rank
    /// dies (a job creating many groups of one shape asks it once).
    fn feasible_cached(
        &mut self,
        bundles: &[Resources],
        strategy: PlacementStrategy,
    ) -> std::result::Result<(), String> {
        let key = feasible_key(bundles, strategy);
        if let Some(known) = self.feasible.get(&key) {
            return known.clone();
        }
        let answer = self.feasible(bundles, strategy);
        if self.feasible.len() >= 1024 {
            self.feasible.clear();
        }
        self.feasible.insert(key, answer.clone());
        answer
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
        if place(bundles, strategy, &self.hosts, &self.capacity).is_some() {
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

/// A request's bundles bit for bit, and its strategy.
type FeasibleKey = (PlacementStrategy, Vec<(u64, u64, Vec<(String, u64)>)>);

fn feasible_key(bundles: &[Resources], strategy: PlacementStrategy) -> FeasibleKey {
    let bundles = bundles
        .iter()
        .map(|b| {
            let custom = b
                .custom
                .iter()
                .map(|(name, amount)| (name.clone(), amount.to_bits()))
                .collect();
            (b.cpus.to_bits(), b.gpus.to_bits(), custom)
        })
        .collect();
    (strategy, bundles)
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

#[cfg(test)]
mod tests;
