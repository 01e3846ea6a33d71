//! Placement groups, the core worker's side: creating, viewing and
//! removing groups through the head (rank 0), the head's service over its
//! [`PlacementTable`] (pure, in `lumen-sched`), choosing a bundle for a
//! task or actor, and what a host does when bundles are reserved or
//! released or a rank dies (every rank drops its cached views of groups
//! with a bundle on the dead rank; the head places those bundles again). The protocol and its limits are described in
//! `runtime/placement.rs`, next to the [`PlacementGroup`] handle users hold.
//!
//! [`PlacementGroup`]: crate::runtime::PlacementGroup

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumen_sched::{Action, GroupAnswer, GroupView, Host, PlacementTable};
use lumen_transport::Rank;

use super::{runtime_error, Inner, Reply};
use crate::error::{LumenError, Result};
use crate::runtime::error::RuntimeError;
use crate::runtime::ids::ActorId;
use crate::runtime::options::{PlacementGroupScheduling, Resources};
use crate::runtime::placement::{PlacementGroup, PlacementGroupId, PlacementStrategy};
use crate::runtime::protocol::RtMsg;

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

/// How often a view of a group that names a dead rank is asked for again
/// before it is taken as it is, and the pause between tries (the head's
/// monitor notices a death within tens of milliseconds).
const STALE_VIEW_TRIES: u32 = 40;
const STALE_VIEW_PAUSE: Duration = Duration::from_millis(50);

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
    ///
    /// A view naming a rank this rank knows dead is asked for again a few
    /// times: the head may not have seen the death yet (it then places the
    /// bundle again and answers with the new rank once that rank reserved
    /// it). A bundle that could not be placed again stays on its dead rank,
    /// and the view says so after those tries.
    pub(crate) fn group_view(
        self: &Arc<Self>,
        id: PlacementGroupId,
        timeout: Option<Duration>,
    ) -> Result<GroupView> {
        if let Some(view) = lock(&self.groups.known).get(&id) {
            return Ok(view.clone());
        }
        let mut tries = 0;
        loop {
            let answer =
                self.ask_group(0, |request| RtMsg::PgWait { group: id, request }, timeout)?;
            let view = match answer {
                GroupAnswer::Created(view) => view,
                other => return Err(group_error(id, other)),
            };
            tries += 1;
            if tries < STALE_VIEW_TRIES && view.ranks.iter().any(|&r| self.is_dead(r)) {
                std::thread::sleep(STALE_VIEW_PAUSE);
                continue;
            }
            lock(&self.groups.known).insert(id, view.clone());
            return Ok(view);
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

    /// A task or actor scheduled into a placement group: fixes its bundle
    /// (one that fits, when none is named) and pins `rank` to the bundle's
    /// host, where the scheduler then sends it. No group: nothing to do.
    pub(super) fn pin_to_bundle(
        self: &Arc<Self>,
        what: &str,
        scheduling: &mut Option<PlacementGroupScheduling>,
        resources: &Resources,
        rank: &mut Option<Rank>,
        node: Option<u32>,
        load: impl Fn(Rank) -> u32,
    ) -> Result<()> {
        let Some(group) = *scheduling else {
            return Ok(());
        };
        let (index, host) = self.choose_bundle(what, group, resources, *rank, node, load)?;
        *scheduling = Some(PlacementGroupScheduling {
            bundle_index: Some(index),
            ..group
        });
        *rank = Some(host);
        Ok(())
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
                let devices = self.executor.reserve(group, &bundles);
                for (index, ids) in devices.iter().filter(|(_, ids)| !ids.is_empty()) {
                    tracing::debug!(
                        rank = self.rank,
                        "bundle {index} of {group} holds GPUs {ids:?}"
                    );
                }
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
                } => {
                    crate::runtime::timeline::placed(
                        &format!(
                            "{} bundles {:?}",
                            group,
                            bundles.iter().map(|b| b.0).collect::<Vec<_>>()
                        ),
                        host,
                    );
                    self.send_or_log(host, &RtMsg::BundleReserve { group, bundles })
                }
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

    /// A rank died: views of groups with a bundle there are dropped (the
    /// head places those bundles again: the next task or actor into the
    /// group asks it for the new ranks); the head reschedules them.
    pub(crate) fn group_rank_died(self: &Arc<Self>, rank: Rank) {
        lock(&self.groups.known).retain(|_, view| !view.ranks.contains(&rank));
        let actions = self.head_do(|t| t.rank_died(rank));
        self.run_group_actions(actions);
    }
}

impl Inner {
    /// Sends a placement-group request (`message` is given its request
    /// id) to `to`, the head, and waits for the answer.
    pub(crate) fn ask_group(
        self: &Arc<Self>,
        to: Rank,
        message: impl FnOnce(u64) -> RtMsg,
        timeout: Option<Duration>,
    ) -> Result<GroupAnswer> {
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(to));
        self.send(to, &message(request))?;
        match self.await_reply(request, timeout)? {
            Reply::Group(answer) => Ok(answer),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank: to,
                what: "asking the head about a placement group".into(),
            })),
        }
    }

    pub(crate) fn answer_group(&self, request: u64, answer: GroupAnswer) {
        self.answer(request, Reply::Group(answer));
    }
}
