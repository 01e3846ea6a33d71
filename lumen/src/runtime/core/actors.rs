//! Actors: creation (placement, names, the creator's restart record),
//! calls (ordered per caller, tracked in the task table), locating an actor
//! after its host died, restarts (`max_restarts`), kill, and the garbage
//! collection of unnamed actors when their last handle goes. The host side
//! (the actor's thread and mailbox) is `runtime/actor.rs`.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use lumen_transport::Rank;

use super::{
    check_gpu_request, encode_args, infeasible, owned_ref, runtime_error, CreatedActor, Inner,
    Reply, MONITOR_PERIOD,
};
use crate::error::Result;
use crate::runtime::actor::RawActorHandle;
use crate::runtime::error::RuntimeError;
use crate::runtime::ids::{ActorId, ObjectId};
use crate::runtime::mesh::MeshMember;
use crate::runtime::object_ref::Pinned;
use crate::runtime::options::ActorOptions;
use crate::runtime::placement::PlacementGroupId;
use crate::runtime::protocol::{ActorAddress, RtMsg};
use crate::runtime::refs::ObjectState;
use crate::runtime::scheduler::{Preferences, Request};
use crate::runtime::task_table::{ActorCall, CallRetry};

impl Inner {
    /// (host) Creates an actor here.
    pub(super) fn on_actor_create(
        self: &Arc<Self>,
        address: ActorAddress,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        placement: Option<(PlacementGroupId, Option<u32>)>,
        gpus: f64,
        mesh: Option<Box<MeshMember>>,
    ) {
        let placement_group = placement.map(|(group, _)| group);
        let bundle = placement.and_then(|(group, index)| Some((group, index?)));
        self.hold_all(&refs);
        let id = address.id;
        self.actors
            .create(self, address, args, refs, (gpus, bundle), mesh);
        if let Some(group) = placement_group {
            self.actor_in_group(group, id);
        }
    }

    /// (host) Queues a call to an actor hosted here.
    pub(super) fn on_actor_call(
        self: &Arc<Self>,
        actor: ActorId,
        method: u64,
        name: String,
        object: ObjectId,
        call: crate::runtime::actor::CallArgs,
    ) {
        self.hold_all(&call.1);
        self.actors.call(self, actor, method, name, object, call);
    }

    /// (host, creator) `actor` is killed: never restarted, stopped here.
    pub(super) fn on_actor_kill(self: &Arc<Self>, actor: ActorId) {
        // Dropped after the lock: the record's pins unpin (lock again).
        let _record = {
            let mut s = self.lock();
            s.dead_actors.insert(actor, "killed".to_string());
            s.created_actors.remove(&actor)
        };
        self.forget_placement(actor);
        self.actors.kill(self, actor);
    }

    /// (creator) Where `actor` lives now, for a caller whose host died.
    pub(super) fn on_actor_locate(self: &Arc<Self>, src: Rank, actor: ActorId, request: u64) {
        let host = self
            .lock()
            .created_actors
            .get(&actor)
            .map(|a| a.address.host);
        self.send_or_log(src, &RtMsg::ActorLocation { request, host });
    }

    /// (rank 0) Registers an actor's name, unless it is taken.
    pub(super) fn on_name_register(
        self: &Arc<Self>,
        src: Rank,
        name: String,
        address: ActorAddress,
        request: u64,
    ) {
        let error = {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            match names.entry(name) {
                Entry::Occupied(taken) => {
                    Some(format!("an actor named {:?} already exists", taken.key()))
                }
                Entry::Vacant(free) => {
                    free.insert(address);
                    None
                }
            }
        };
        self.send_or_log(src, &RtMsg::Ack { request, error });
    }

    /// (rank 0) Forgets an actor's name.
    pub(super) fn on_name_remove(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// (rank 0) Answers who has a name.
    pub(super) fn on_name_lookup(self: &Arc<Self>, src: Rank, name: &str, request: u64) {
        let address = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        self.send_or_log(src, &RtMsg::NameReply { request, address });
    }

    /// (host) Kills an actor hosted here because its placement group was
    /// removed; its creator learns it too (no restart).
    pub(crate) fn kill_hosted_actor(self: &Arc<Self>, actor: ActorId) {
        self.send_or_log(self.rank, &RtMsg::ActorKill { actor });
        if actor.creator != self.rank && !self.is_dead(actor.creator) {
            self.send_or_log(actor.creator, &RtMsg::ActorKill { actor });
        }
    }

    /// (Creator) no handle of `actor` is left and none of its calls is in
    /// flight: it will never be restarted, and its host stops it once the
    /// calls queued there have run.
    pub(super) fn retire_actor(self: &Arc<Self>, actor: ActorId) {
        // The record (constructor arguments, pinned) is dropped after the lock.
        let (host, _record) = {
            let mut s = self.lock();
            let record = s.created_actors.remove(&actor);
            let moved = s.actor_hosts.remove(&actor);
            let host = s.placed_actors.get(&actor).copied().or(moved);
            let stopped = s.dead_actors.contains_key(&actor);
            let host = host.filter(|h| !stopped && !s.dead.contains(h));
            (host, record)
        };
        self.forget_placement(actor);
        if let Some(host) = host {
            tracing::debug!(
                rank = self.rank,
                "{actor} on rank {host} has no handles left"
            );
            self.send_or_log(host, &RtMsg::ActorRelease { actor });
        }
    }

    /// (Creator) `actor` no longer counts in this rank's placement of actors.
    pub(super) fn forget_placement(&self, actor: ActorId) {
        let placed = self.lock().placed_actors.remove(&actor);
        if let Some(rank) = placed {
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .actor_gone(rank);
        }
    }

    /// Creates an actor (see `#[lumen::actor]`).
    pub(crate) fn create_actor(
        self: &Arc<Self>,
        class_id: u64,
        class_name: &str,
        args: &impl Serialize,
        mut options: ActorOptions,
    ) -> Result<RawActorHandle> {
        check_gpu_request(class_name, options.resources.gpus)?;
        let (args, pinned) = encode_args(&format_args!("{class_name}::new"), args)?;
        self.pin_to_bundle(
            class_name,
            &mut options.placement_group,
            &options.resources,
            &mut options.rank,
            options.node,
            |r| self.load_on(r).1,
        )?;
        let host = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place_actor_with(
                &Request {
                    resources: Some(&options.resources),
                    node: options.node,
                    rank: options.rank,
                    data_at: None,
                },
                &Preferences {
                    strategy: options.scheduling,
                    ..Preferences::default()
                },
            )
            .map_err(infeasible(class_name))?;
        let address = ActorAddress {
            id: ActorId {
                creator: self.rank,
                seq: self.new_object().seq,
            },
            host,
            class_id,
            class_name: class_name.to_string(),
            max_task_retries: if options.max_restarts > 0 {
                options.max_task_retries
            } else {
                0
            },
        };
        self.lock().placed_actors.insert(address.id, host);
        crate::runtime::timeline::placed(&format!("actor {class_name}"), host);
        let id = address.id;
        self.launch_actor(address, args, pinned, options)
            .inspect_err(|_| self.forget_placement(id))
    }

    /// Registers the name of a placed actor, sends its creation message and
    /// returns its first handle (counted, for an unnamed actor).
    pub(super) fn launch_actor(
        self: &Arc<Self>,
        address: ActorAddress,
        args: Vec<u8>,
        pinned: Pinned,
        options: ActorOptions,
    ) -> Result<RawActorHandle> {
        let host = address.host;
        let refs = pinned.ids();
        if let Some(name) = &options.name {
            let request = self.new_request();
            self.lock().replies.insert(request, Reply::Waiting(0));
            self.send(
                0,
                &RtMsg::NameRegister {
                    name: name.clone(),
                    address: address.clone(),
                    request,
                },
            )?;
            match self.await_reply(request, None)? {
                Reply::Ack(None) => {}
                Reply::Ack(Some(_)) => {
                    return Err(runtime_error(RuntimeError::NameTaken {
                        name: name.clone(),
                    }))
                }
                _ => {
                    return Err(runtime_error(RuntimeError::RankDied {
                        rank: 0,
                        what: format!("registering actor name {name:?}"),
                    }))
                }
            }
        }
        self.register(&refs, host)?;
        let message = RtMsg::ActorCreate {
            address: address.clone(),
            args: args.clone(),
            refs,
            placement_group: options.placement_group.map(|p| p.group),
            bundle_index: options.placement_group.and_then(|p| p.bundle_index),
            gpus: options.resources.gpus,
            mesh: options.mesh.clone().map(Box::new),
        };
        if options.max_restarts > 0 {
            self.lock().created_actors.insert(
                address.id,
                CreatedActor {
                    address: address.clone(),
                    args,
                    pinned,
                    options: options.clone(),
                    restarts_left: options.max_restarts,
                },
            );
        }
        self.send(host, &message)?;
        let handles = match options.name {
            Some(_) => None,
            None => {
                let id = self.lock().refs.create_actor_handles(address.id);
                Some(owned_ref(self, id))
            }
        };
        Ok(RawActorHandle::new(address, options.name, handles))
    }

    /// (Creator) restarts the actors that lived on `rank`, while they have
    /// restarts left; the others are dead for good.
    pub(super) fn restart_actors(self: &Arc<Self>, rank: Rank) {
        let lost: Vec<ActorId> = self
            .lock()
            .created_actors
            .iter()
            .filter(|(_, a)| a.address.host == rank)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let placed = {
                let s = self.lock();
                let Some(record) = s.created_actors.get(&id) else {
                    continue;
                };
                if record.restarts_left == 0 {
                    None
                } else {
                    let options = record.options.clone();
                    drop(s);
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .place_actor_with(
                            &Request {
                                resources: Some(&options.resources),
                                node: options.node,
                                // A pinned rank that died cannot host it again.
                                rank: None,
                                data_at: None,
                            },
                            &Preferences {
                                strategy: options.scheduling,
                                ..Preferences::default()
                            },
                        )
                        .ok()
                }
            };
            let Some(host) = placed else {
                let _record = {
                    let mut s = self.lock();
                    s.dead_actors.insert(
                        id,
                        format!("its rank {rank} died and it has no restarts left"),
                    );
                    s.created_actors.remove(&id)
                };
                continue;
            };
            let message = {
                let mut s = self.lock();
                let Some(record) = s.created_actors.get_mut(&id) else {
                    // Stopped meanwhile (killed, or no handle left).
                    drop(s);
                    self.scheduler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .actor_gone(host);
                    continue;
                };
                record.restarts_left -= 1;
                self.actors_restarted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                record.address.host = host;
                let refs = record.pinned.ids();
                // Restarted outside its placement group (its bundle's
                // rank is the one that died).
                let message = RtMsg::ActorCreate {
                    address: record.address.clone(),
                    args: record.args.clone(),
                    refs: refs.clone(),
                    placement_group: None,
                    bundle_index: None,
                    gpus: record.options.resources.gpus,
                    // A mesh member keeps its coordinates; the other
                    // members' rank lists still name the dead rank.
                    mesh: record.options.mesh.clone().map(Box::new),
                };
                s.actor_hosts.insert(id, host);
                s.placed_actors.insert(id, host);
                (message, refs)
            };
            tracing::info!("restarting {id} on rank {host} (its rank {rank} died)");
            if self.register(&message.1, host).is_ok() {
                self.send_or_log(host, &message.0);
            }
        }
    }

    /// Where actor `address` lives now: its handle's host, or, when that
    /// rank died, wherever its creator restarted it.
    pub(super) fn actor_host(self: &Arc<Self>, address: &ActorAddress) -> Result<Rank> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (host, dead_host) = {
                let s = self.lock();
                let host = s
                    .actor_hosts
                    .get(&address.id)
                    .copied()
                    .unwrap_or(address.host);
                (host, s.dead.contains(&host))
            };
            if !dead_host {
                return Ok(host);
            }
            let creator = address.id.creator;
            let dead = || {
                runtime_error(RuntimeError::ActorDied {
                    actor: address.id,
                    reason: format!("its rank {host} died"),
                })
            };
            let located = if creator == self.rank {
                self.lock()
                    .created_actors
                    .get(&address.id)
                    .map(|a| a.address.host)
            } else if self.is_dead(creator) {
                None
            } else {
                let request = self.new_request();
                self.lock().replies.insert(request, Reply::Waiting(creator));
                self.send(
                    creator,
                    &RtMsg::ActorLocate {
                        actor: address.id,
                        request,
                    },
                )?;
                match self.await_reply(request, None)? {
                    Reply::Located(host) => host,
                    _ => None,
                }
            };
            match located {
                None => {
                    let error = dead();
                    self.lock()
                        .dead_actors
                        .insert(address.id, format!("its rank {host} died"));
                    return Err(error);
                }
                Some(new) if new != host && !self.is_dead(new) => {
                    self.lock().actor_hosts.insert(address.id, new);
                    return Ok(new);
                }
                // The creator has not noticed the death yet.
                Some(_) if Instant::now() < deadline => {
                    std::thread::sleep(MONITOR_PERIOD);
                }
                Some(_) => return Err(dead()),
            }
        }
    }

    /// Submits a method call to an actor.
    pub(crate) fn call_actor(
        self: &Arc<Self>,
        address: &ActorAddress,
        handles: Option<ObjectId>,
        method: u64,
        name: &str,
        args: &impl Serialize,
    ) -> Result<ObjectId> {
        self.wait_for_room(name)?;
        // One lock for the common case: the actor is alive on a live rank.
        let known_host = {
            let s = self.lock();
            if let Some(reason) = s.dead_actors.get(&address.id) {
                return Err(runtime_error(RuntimeError::ActorDied {
                    actor: address.id,
                    reason: reason.clone(),
                }));
            }
            let host = s
                .actor_hosts
                .get(&address.id)
                .copied()
                .unwrap_or(address.host);
            (!s.dead.contains(&host)).then_some(host)
        };
        let (encoded, device_args) =
            crate::runtime::device::collect_device_args(|| encode_args(&name, args));
        let (args, pinned) = encoded?;
        let refs = pinned.ids();
        let host = match known_host {
            Some(host) => host,
            None => self.actor_host(address)?,
        };
        self.register(&refs, host)?;
        let object = self.new_object();
        let retry = (address.max_task_retries > 0).then(|| {
            Box::new(CallRetry {
                address: address.clone(),
                method,
                args: args.clone(),
                device_args: device_args.clone(),
                pinned,
                retries_left: address.max_task_retries,
            })
        });
        {
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            if let Some(handles) = handles {
                s.refs.handle_added(handles);
            }
            s.tasks.call_sent(ActorCall {
                object,
                host,
                actor: address.id,
                name: name.to_string(),
                handles,
                retry,
                relay: None,
                sent: std::time::Instant::now(),
            });
            if s.dead.contains(&host) {
                drop(s);
                self.fail_actor_calls(host, "its rank died");
                return Ok(object);
            }
        }
        crate::runtime::timeline::instant("submit", name, object, Some(host));
        if let Err(e) = self.send(
            host,
            &RtMsg::ActorCall {
                actor: address.id,
                method,
                name: name.to_string(),
                object,
                args,
                refs,
                device_args,
            },
        ) {
            tracing::debug!("actor call {name} not sent: {e}");
        }
        Ok(object)
    }

    pub(crate) fn kill_actor(
        self: &Arc<Self>,
        address: &ActorAddress,
        name: Option<&str>,
    ) -> Result<()> {
        let host = self.actor_host(address).unwrap_or(address.host);
        let _record = {
            let mut s = self.lock();
            s.dead_actors.insert(address.id, "killed".to_string());
            s.created_actors.remove(&address.id)
        };
        let creator = address.id.creator;
        if creator == self.rank {
            self.forget_placement(address.id);
        }
        if creator != self.rank && creator != host {
            self.send_or_log(creator, &RtMsg::ActorKill { actor: address.id });
        }
        if let Some(name) = name {
            self.send_or_log(
                0,
                &RtMsg::NameRemove {
                    name: name.to_string(),
                },
            );
        }
        self.send(host, &RtMsg::ActorKill { actor: address.id })?;
        Ok(())
    }

    pub(crate) fn lookup_actor(self: &Arc<Self>, name: &str) -> Result<Option<ActorAddress>> {
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(0));
        self.send(
            0,
            &RtMsg::NameLookup {
                name: name.to_string(),
                request,
            },
        )?;
        match self.await_reply(request, None)? {
            Reply::Name(address) => Ok(address),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank: 0,
                what: format!("looking up actor {name:?}"),
            })),
        }
    }
}
