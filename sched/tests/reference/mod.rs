//! The reference implementations `tests/placement_table.rs` compares the
//! crate's against: `place` and `PlacementTable` as they were before they
//! stopped copying every host's resources per group (their code, verbatim
//! but for the crate's private helpers), the table extended with the
//! rescheduling of bundles whose rank died written plainly.

use lumen_sched::Resources;

/// `Resources::subtract`, which is private to the crate.
pub(crate) fn subtract(from: &mut Resources, used: &Resources) {
    from.cpus -= used.cpus;
    from.gpus -= used.gpus;
    for (name, amount) in &used.custom {
        *from.custom.entry(name.clone()).or_insert(0.0) -= amount;
    }
}

/// `Resources::add`, which is private to the crate.
pub(crate) fn add(to: &mut Resources, freed: &Resources) {
    to.cpus += freed.cpus;
    to.gpus += freed.gpus;
    for (name, amount) in &freed.custom {
        *to.custom.entry(name.clone()).or_insert(0.0) += amount;
    }
}

/// `Resources::is_invalid`, which is private to the crate.
pub(crate) fn is_invalid(r: &Resources) -> bool {
    let bad = |a: f64| a.is_nan() || a < 0.0;
    bad(r.cpus) || bad(r.gpus) || r.custom.values().any(|&a| bad(a))
}

/// `place` as it was.
#[allow(clippy::all)]
pub(crate) mod strategy {
    use std::collections::HashMap;

    use lumen_sched::{Host, PlacementStrategy, Rank, Resources};

    use super::subtract;

    /// Lays `bundles` out on the live serving `hosts` given what each has
    /// free (`available`, by rank): bundle `i`'s rank, or `None` when the
    /// strategy cannot fit them (see the module docs).
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
            PlacementStrategy::StrictPack => {
                strict_pack(bundles, &order, hosts, available, &eligible)
            }
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
            subtract(&mut free[host], &bundles[b]);
            ranks[b] = host as Rank;
        }
        Some(ranks)
    }

    /// Hosts of `node`, most free CPUs first (then lowest rank): packing onto
    /// the roomiest rank first fills few ranks.
    fn hosts_of(
        node: u32,
        hosts: &[Host],
        available: &[Resources],
        eligible: &[usize],
    ) -> Vec<usize> {
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
            subtract(&mut free[host], &bundles[b]);
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
}

/// `PlacementTable` as it was.
#[allow(clippy::all)]
pub(crate) mod table {
    use std::collections::{HashMap, VecDeque};

    use lumen_sched::{
        Action, GroupAnswer, GroupView, Host, PlacementGroupId, PlacementStrategy, Rank, Resources,
    };

    use super::strategy::place;
    use super::{add, is_invalid, subtract};

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
        Rescheduling {
            ranks: Vec<Rank>,
            lost: Vec<u32>,
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
    pub(crate) struct ReferenceTable {
        hosts: Vec<Host>,
        groups: HashMap<PlacementGroupId, Group>,
        /// Pending groups, oldest first.
        pending: VecDeque<PlacementGroupId>,
        /// Created groups with bundles to place again, oldest first.
        rescheduling: VecDeque<PlacementGroupId>,
        /// Groups that ended (removed or failed): the answer for late waiters.
        ended: HashMap<PlacementGroupId, GroupAnswer>,
    }

    impl ReferenceTable {
        /// A table of `hosts` (indexed by rank) holding no group yet.
        pub(crate) fn new(hosts: Vec<Host>) -> Self {
            ReferenceTable {
                hosts,
                groups: HashMap::new(),
                pending: VecDeque::new(),
                rescheduling: VecDeque::new(),
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
        pub(crate) fn wait(
            &mut self,
            id: PlacementGroupId,
            from: Rank,
            request: u64,
        ) -> Vec<Action> {
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
            match &mut group.state {
                GroupState::Reserving { unacked, .. }
                | GroupState::Rescheduling { unacked, .. } => unacked.retain(|&r| r != host),
                _ => return Vec::new(),
            }
            Self::done(group)
        }

        /// `reserved`'s end, for both ways a group gets created.
        fn answer_created(group: &mut Group, ranks: Vec<Rank>) -> Vec<Action> {
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

        /// Created once nothing is left to acknowledge or to place.
        fn done(group: &mut Group) -> Vec<Action> {
            let ready = match &group.state {
                GroupState::Reserving { unacked, .. } => unacked.is_empty(),
                GroupState::Rescheduling { lost, unacked, .. } => {
                    lost.is_empty() && unacked.is_empty()
                }
                _ => false,
            };
            if !ready {
                return Vec::new();
            }
            let ranks = match &group.state {
                GroupState::Reserving { ranks, .. } | GroupState::Rescheduling { ranks, .. } => {
                    ranks.clone()
                }
                _ => Vec::new(),
            };
            Self::answer_created(group, ranks)
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
                    GroupState::Created { ranks } | GroupState::Rescheduling { ranks, .. }
                        if ranks.contains(&rank) =>
                    {
                        let group = self.groups.get_mut(&id).unwrap();
                        let (ranks, mut lost, mut unacked) = match &group.state {
                            GroupState::Created { ranks } => (ranks.clone(), vec![], vec![]),
                            GroupState::Rescheduling {
                                ranks,
                                lost,
                                unacked,
                            } => (ranks.clone(), lost.clone(), unacked.clone()),
                            _ => unreachable!(),
                        };
                        for i in 0..ranks.len() {
                            if ranks[i] == rank && !lost.contains(&(i as u32)) {
                                lost.push(i as u32);
                            }
                        }
                        lost.sort();
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
                    _ => {}
                }
            }
            actions.extend(self.schedule());
            actions
        }

        /// `hosts` with those off `keep` marked not serving.
        fn only(&self, keep: impl Fn(&Host) -> bool) -> Vec<Host> {
            self.hosts
                .iter()
                .map(|h| {
                    let mut h = h.clone();
                    h.serving = h.serving && keep(&h);
                    h
                })
                .collect()
        }

        fn layout_again(
            &self,
            bundles: &[Resources],
            strategy: PlacementStrategy,
            others: &[u32],
            available: &[Resources],
        ) -> Option<Vec<Rank>> {
            let apart = self.only(|h| !others.contains(&h.node));
            let beside = self.only(|h| others.contains(&h.node));
            match strategy {
                PlacementStrategy::StrictSpread => place(bundles, strategy, &apart, available),
                PlacementStrategy::StrictPack => {
                    if others.is_empty() {
                        place(bundles, strategy, &self.hosts, available)
                    } else {
                        place(bundles, strategy, &beside, available)
                    }
                }
                PlacementStrategy::Pack => {
                    let there = if others.is_empty() {
                        None
                    } else {
                        place(bundles, PlacementStrategy::StrictPack, &beside, available)
                    };
                    there.or_else(|| place(bundles, strategy, &self.hosts, available))
                }
                PlacementStrategy::Spread => place(bundles, strategy, &apart, available)
                    .or_else(|| place(bundles, strategy, &self.hosts, available)),
            }
        }

        /// Places a rescheduling group's lost bundles; `false`: waits.
        fn place_lost(&mut self, id: PlacementGroupId, actions: &mut Vec<Action>) -> bool {
            let Some(group) = self.groups.get(&id) else {
                return true;
            };
            let GroupState::Rescheduling { ranks, lost, .. } = &group.state else {
                return true;
            };
            let (ranks, lost) = (ranks.clone(), lost.clone());
            let moved: Vec<Resources> = lost
                .iter()
                .map(|&i| group.bundles[i as usize].clone())
                .collect();
            let mut others: Vec<u32> = (0..ranks.len())
                .filter(|i| !lost.contains(&(*i as u32)))
                .map(|i| self.hosts[ranks[i] as usize].node)
                .collect();
            others.sort();
            others.dedup();
            let strategy = group.strategy;
            let available: Vec<Resources> =
                self.hosts.iter().map(|h| h.available.clone()).collect();
            let placed = if moved.is_empty() {
                Some(vec![])
            } else {
                self.layout_again(&moved, strategy, &others, &available)
            };
            let group = self.groups.get(&id).unwrap();
            match placed {
                None => {
                    let mut room: Vec<Resources> =
                        self.hosts.iter().map(|h| h.capacity.clone()).collect();
                    for i in 0..ranks.len() {
                        if !lost.contains(&(i as u32)) {
                            subtract(&mut room[ranks[i] as usize], &group.bundles[i]);
                        }
                    }
                    if self
                        .layout_again(&moved, strategy, &others, &room)
                        .is_some()
                    {
                        return false;
                    }
                    let group = self.groups.get_mut(&id).unwrap();
                    if let GroupState::Rescheduling { lost, .. } = &mut group.state {
                        lost.clear();
                    }
                    actions.extend(Self::done(group));
                    true
                }
                Some(placed) => {
                    let bundles = group.bundles.clone();
                    let mut per_host: Vec<(Rank, Vec<(u32, Resources)>)> = Vec::new();
                    for (&index, &rank) in lost.iter().zip(&placed) {
                        subtract(
                            &mut self.hosts[rank as usize].available,
                            &bundles[index as usize],
                        );
                        match per_host.iter_mut().find(|(r, _)| *r == rank) {
                            Some((_, list)) => list.push((index, bundles[index as usize].clone())),
                            None => per_host
                                .push((rank, vec![(index, bundles[index as usize].clone())])),
                        }
                    }
                    let group = self.groups.get_mut(&id).unwrap();
                    if let GroupState::Rescheduling {
                        ranks,
                        lost,
                        unacked,
                    } = &mut group.state
                    {
                        for (&index, &rank) in lost.iter().zip(&placed) {
                            ranks[index as usize] = rank;
                        }
                        lost.clear();
                        for (host, _) in &per_host {
                            if !unacked.contains(host) {
                                unacked.push(*host);
                            }
                        }
                    }
                    for (host, bundles) in per_host {
                        actions.push(Action::Reserve {
                            host,
                            group: id,
                            bundles,
                        });
                    }
                    actions.extend(Self::done(group));
                    true
                }
            }
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
                    add(&mut host.available, bundle);
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
                let available: Vec<Resources> =
                    self.hosts.iter().map(|h| h.available.clone()).collect();
                let Some(ranks) = place(&group.bundles, group.strategy, &self.hosts, &available)
                else {
                    still.push_back(id);
                    continue;
                };
                let mut per_host: Vec<(Rank, Vec<(u32, Resources)>)> = Vec::new();
                for (index, (bundle, &rank)) in group.bundles.iter().zip(&ranks).enumerate() {
                    subtract(&mut self.hosts[rank as usize].available, bundle);
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
            if let Some(i) = bundles.iter().position(is_invalid) {
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
}
