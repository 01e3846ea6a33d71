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
//! (the other hosts release theirs; its waiters learn why). Bundles of a
//! created group are not moved when their rank dies: tasks and actors sent
//! to that bundle fail as on any dead rank (Ray reschedules such bundles on
//! other nodes). A pending group that can no longer fit is refused.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::strategy::place;
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
    pub fn remove(&mut self, id: PlacementGroupId) -> (bool, Vec<Action>) {
        if !self.groups.contains_key(&id) {
            return (false, Vec::new());
        }
        let mut actions = self.end(id, GroupAnswer::Removed);
        actions.extend(self.schedule());
        (true, actions)
    }

    /// `rank` died: it hosts nothing new; a group still being reserved
    /// there fails; pending groups that can no longer fit are refused.
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

    /// Places the pending groups that fit in what is free now, oldest
    /// first (a large group waiting does not hold back a smaller one).
    fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
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
mod tests {
    use super::*;
    use crate::strategy::tests::{cpus, hosts, id};

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
