//! Mesh broadcasts, the core worker's side: the caller's
//! [`Inner::mesh_call`] (one return object per member, the tree's first
//! hop), a host's [`Inner::on_mesh_call`] (queue its own members' calls,
//! pass the rest on) and [`Inner::repair_mesh_calls`] (a rank on the way
//! died: send the calls below it directly). The tree's shape is
//! `lumen_sched::mesh`'s; the user-facing half is `runtime::mesh`.

use std::sync::Arc;

use lumen_sched::mesh::{path, split, split_all};
use lumen_transport::Rank;

use super::Inner;
use crate::error::Result;
use crate::runtime::ids::{ActorId, ObjectId};
use crate::runtime::mesh::Capture;
use crate::runtime::protocol::{ActorAddress, RtMsg};
use crate::runtime::refs::ObjectState;
use crate::runtime::task_table::{actor_died, ActorCall, MeshPayload, Relay};

/// (host, actor, return object) of one member's call.
type Target = (Rank, ActorId, ObjectId);

impl Inner {
    /// Sends one recorded method call to every actor of `targets` down a
    /// broadcast tree of `fanout`; returns each call's return object, in
    /// `targets` order.
    pub(crate) fn mesh_call(
        self: &Arc<Self>,
        targets: &[(ActorAddress, Option<ObjectId>)],
        capture: Capture,
        fanout: usize,
    ) -> Result<Vec<ObjectId>> {
        let refs = capture.pinned.ids();
        let mut calls: Vec<Target> = Vec::with_capacity(targets.len());
        let mut counted: Vec<Option<ObjectId>> = Vec::with_capacity(targets.len());
        let mut gone: Vec<(ObjectId, ActorId, Rank, String)> = Vec::new();
        for (address, handles) in targets {
            let (host, dead_actor) = {
                let s = self.lock();
                let host = s
                    .actor_hosts
                    .get(&address.id)
                    .copied()
                    .unwrap_or(address.host);
                (host, s.dead_actors.get(&address.id).cloned())
            };
            // One registration per call: each host releases the arguments
            // once per call it runs.
            if dead_actor.is_none() {
                self.register(&refs, host)?;
            }
            let object = self.new_object();
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            if let Some(reason) = dead_actor {
                gone.push((object, address.id, host, reason));
                continue;
            }
            if let Some(handles) = handles {
                s.refs.handle_added(*handles);
            }
            drop(s);
            calls.push((host, address.id, object));
            counted.push(*handles);
        }
        let order: Vec<ObjectId> = {
            // Return objects in `targets` order: dead actors' too.
            let mut all: Vec<ObjectId> = calls.iter().map(|c| c.2).collect();
            all.extend(gone.iter().map(|g| g.0));
            all.sort_by_key(|id| id.seq);
            all
        };
        for (object, actor, host, reason) in gone {
            let outcome = actor_died(capture.name.clone(), actor, host, &reason);
            self.on_done(object, outcome, Vec::new());
        }
        let payload = Arc::new(MeshPayload {
            method: capture.method,
            name: capture.name,
            args: capture.args,
            refs,
        });
        let mut entries: Vec<(Target, Option<ObjectId>)> = calls.into_iter().zip(counted).collect();
        entries.sort_by_key(|(c, _)| (c.0, c.2.seq));
        let calls: Vec<Target> = entries.iter().map(|(c, _)| *c).collect();
        let mut hosts: Vec<Rank> = calls.iter().map(|c| c.0).collect();
        hosts.dedup();
        {
            let mut s = self.lock();
            for (call, handles) in entries {
                let at = hosts.partition_point(|&h| h < call.0);
                s.tasks.call_sent(ActorCall {
                    object: call.2,
                    host: call.0,
                    actor: call.1,
                    name: payload.name.clone(),
                    handles,
                    retry: None,
                    sent: std::time::Instant::now(),
                    relay: Some(Box::new(Relay {
                        via: path(&hosts, fanout, at),
                        payload: payload.clone(),
                    })),
                });
            }
        }
        for chunk in split_all(&hosts, fanout) {
            self.send_mesh_hop(chunk, &calls, &payload, fanout);
        }
        // Ranks that died before the calls were in the table: their own
        // calls fail, the calls below them go directly.
        let dead: Vec<Rank> = {
            let s = self.lock();
            hosts
                .iter()
                .copied()
                .filter(|h| s.dead.contains(h))
                .collect()
        };
        for rank in dead {
            self.fail_actor_calls(rank, &format!("its rank {rank} died"));
            self.repair_mesh_calls(rank);
        }
        Ok(order)
    }

    /// Sends the calls of `chunk`'s hosts to `chunk[0]`, which passes them on.
    fn send_mesh_hop(
        self: &Arc<Self>,
        chunk: &[Rank],
        calls: &[Target],
        payload: &MeshPayload,
        fanout: usize,
    ) {
        let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) else {
            return;
        };
        // `calls` is sorted by host and `chunk` is a contiguous run of the
        // sorted hosts: its calls are the range between its ends.
        let start = calls.partition_point(|c| c.0 < first);
        let end = calls.partition_point(|c| c.0 <= last);
        let message = RtMsg::MeshCall {
            hosts: chunk.to_vec(),
            targets: calls[start..end].to_vec(),
            method: payload.method,
            name: payload.name.clone(),
            args: payload.args.clone(),
            refs: payload.refs.clone(),
            fanout: fanout.clamp(1, usize::from(u16::MAX)) as u16,
        };
        if let Err(e) = self.send(first, &message) {
            // Its death repairs the calls below it (see repair_mesh_calls).
            tracing::debug!(
                rank = self.rank,
                "mesh call {} not passed to rank {first}: {e}",
                payload.name
            );
        }
    }

    /// (host) A broadcast hop: passes the rest of `hosts` on, then queues
    /// the calls of the actors hosted here (each once).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_mesh_call(
        self: &Arc<Self>,
        hosts: Vec<Rank>,
        mut targets: Vec<Target>,
        method: u64,
        name: String,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        fanout: u16,
    ) {
        if hosts.first() != Some(&self.rank) {
            tracing::warn!(
                rank = self.rank,
                "malformed mesh call {name}: its host list starts with {:?}, not this rank; queuing only the calls addressed here",
                hosts.first()
            );
        } else {
            targets.sort_by_key(|c| (c.0, c.2.seq));
            let payload = MeshPayload {
                method,
                name: name.clone(),
                args: args.clone(),
                refs: refs.clone(),
            };
            let fanout = usize::from(fanout.max(1));
            for chunk in split(&hosts, fanout) {
                self.send_mesh_hop(chunk, &targets, &payload, fanout);
            }
        }
        for (host, actor, object) in targets {
            if host == self.rank && self.actors.first_delivery(object) {
                self.on_actor_call(
                    actor,
                    method,
                    name.clone(),
                    object,
                    (args.clone(), refs.clone(), Vec::new()),
                );
            }
        }
    }

    /// (caller) `dead` died: the mesh calls whose tree passed through it
    /// go to their hosts directly (a host that had one already drops it).
    pub(super) fn repair_mesh_calls(self: &Arc<Self>, dead: Rank) {
        let lost = self.lock().tasks.relayed_through(dead);
        if lost.is_empty() {
            return;
        }
        tracing::info!(
            rank = self.rank,
            "rank {dead} died while passing on {} mesh call(s): sending them directly",
            lost.len()
        );
        for (object, host, actor, payload) in lost {
            let message = RtMsg::MeshCall {
                hosts: vec![host],
                targets: vec![(host, actor, object)],
                method: payload.method,
                name: payload.name.clone(),
                args: payload.args.clone(),
                refs: payload.refs.clone(),
                fanout: 1,
            };
            self.send_or_log(host, &message);
        }
    }
}
