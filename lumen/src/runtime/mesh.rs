//! Actor meshes: one actor per planned GPU of a [`ShardPlan`], with named
//! axes (`dp`, `pp`, `tp`, and `cp` when planned), calls to the whole mesh
//! or a slice of it, and a communicator per axis inside each actor — what
//! Monarch's meshes give, over Lumen's placement groups and collectives.
//!
//! ```no_run
//! # use lumen::prelude::*;
//! # struct Trainer;
//! # #[lumen::actor] impl Trainer { fn new() -> Self { Trainer } fn step(&mut self, n: u32) -> u32 { n } }
//! # fn main() -> lumen::Result<()> {
//! let rt = lumen::init()?;
//! let shape = rt.cluster_shape();
//! let plan = lumen::shard::plan(&lumen::shard::Parallelism::new(2, 1, 3), &shape, None)?;
//! let mesh = Trainer::mesh_options().num_gpus(1.0).new_mesh(&rt, &plan)?;
//! let all = mesh.call(|t| t.step(1))?; // one ref per actor, sent as a tree
//! let tp0 = mesh.slice("tp", 0)?.call(|t| t.step(2))?; // tp == 0 only
//! # Ok(()) }
//! ```
//!
//! # Placement
//! A mesh reserves one placement group (strategy PACK) of one bundle per
//! member, each the members' resources (default: one CPU), and needs the
//! bundles on distinct ranks: a member's communicators are rank
//! communicators, so two members on one rank could not tell their
//! messages apart. Lumen runs one rank per GPU (as `srun
//! --gpus-per-task=1` does), so `num_gpus(1)` on ranks of one GPU each
//! lands one member per rank; a mesh whose group puts two members on one
//! rank is removed and refused with what to change. Members are assigned to
//! bundles in node order, then rank order: plan rank `i` is the `i`-th
//! bundle so sorted, and every planned node must fall inside one job node
//! (TP groups stay on a node) or the mesh is refused. [`Runtime::cluster_shape`]
//! gives a plan the job's shape: one mesh slot per serving rank.
//!
//! # Calls
//! [`ActorMesh::call`] and [`MeshSlice::call`] take a closure that calls one
//! method on one member's handle; Lumen records that call instead of
//! sending it (the method and its encoded arguments), then sends it to
//! every member of the mesh or slice as a broadcast tree over their ranks
//! (see [`lumen_sched::mesh`]: fanout [`DEFAULT_FANOUT`], depth about
//! log₁₆ of the ranks): the caller sends at most 16 messages whatever the
//! mesh's size. Each member's result comes back to the caller as an
//! ordinary [`ObjectRef`], owned by the caller. Calls of one caller to one
//! mesh keep their order (each travels the same tree, over ordered
//! links); a broadcast and a direct call to one member through its
//! handle are not ordered with each other.
//!
//! # Failures
//! A member's rank that dies fails that member's calls (`ActorDied`), as
//! for any actor. A rank that dies while passing a broadcast on does not
//! lose the calls below it: the caller sends those to their ranks
//! directly, and a rank that already had the call from the tree drops the
//! second copy (each rank remembers the last 65,536 broadcast calls it
//! queued).
//!
//! # Communicators
//! Inside a member, [`mesh_communicator`]`("tp")` returns the
//! communicator of its TP group (and so for every axis, `ep` included),
//! built on first use — collectively, so every member of that group must
//! ask for it — and kept for the actor's life. Each member carries the
//! plan's shape and the ranks of all members (`O(members)` bytes per
//! member, 32 KiB at 8192 members).

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use lumen_collectives::Communicator;
use lumen_sched::mesh::MeshShape;
pub use lumen_sched::mesh::{MeshAxis, MeshError, DEFAULT_FANOUT};
use lumen_sched::shard::{plan_with_order, ClusterShape, Parallelism, RankOrder, ShardPlan};
use lumen_transport::Rank;

use super::actor::{ActorClass, ActorHandle};
use super::core::{current_inner, owned_ref};
use super::error::RuntimeError;
use super::object_ref::{ObjectRef, Pinned};
use super::options::{ActorOptions, Resources};
use super::placement::{PlacementGroup, PlacementStrategy};
use super::Runtime;
use crate::error::{LumenError, Result};

/// A member's place in its mesh, carried in its creation message.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshMember {
    /// The mesh (unique in the job).
    pub mesh: u64,
    /// This member's index (its plan rank).
    pub member: u32,
    /// The plan, enough to rebuild its layout on the member's side.
    pub parallelism: Parallelism,
    pub cluster: ClusterShape,
    pub order: RankOrder,
    /// Each member's rank, by member index.
    pub ranks: Vec<Rank>,
}

impl MeshMember {
    fn shape(&self) -> Result<MeshShape> {
        let plan = plan_with_order(&self.parallelism, &self.cluster, self.order, None)
            .map_err(|e| mesh_error(format!("rebuilding the mesh's plan: {e}")))?;
        Ok(MeshShape::new(&plan))
    }
}

fn mesh_error(detail: String) -> LumenError {
    LumenError::Runtime(RuntimeError::Mesh { detail })
}

impl From<lumen_sched::shard::PlanError> for LumenError {
    fn from(e: lumen_sched::shard::PlanError) -> Self {
        mesh_error(format!("no shard plan: {e}"))
    }
}

impl From<MeshError> for LumenError {
    fn from(e: MeshError) -> Self {
        mesh_error(e.to_string())
    }
}

/// The member context of the actor running on this thread, and the
/// communicators it built.
struct MemberContext {
    member: MeshMember,
    shape: Option<MeshShape>,
    communicators: HashMap<String, Communicator>,
}

thread_local! {
    static MEMBER: RefCell<Option<MemberContext>> = const { RefCell::new(None) };
    /// Set while `ActorMesh::call` records its closure's call.
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// A recorded method call (see [`ActorMesh::call`]).
pub(crate) struct Capture {
    pub(crate) method: u64,
    pub(crate) name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) pinned: Pinned,
    pub(crate) calls: u32,
}

/// (actor thread) This thread serves a mesh member (or no longer does).
pub(crate) fn set_member(member: Option<MeshMember>) {
    MEMBER.with(|m| {
        *m.borrow_mut() = member.map(|member| MemberContext {
            member,
            shape: None,
            communicators: HashMap::new(),
        })
    });
}

/// Whether a method call on this thread is being recorded for a mesh call;
/// if so, records it (`RawActorHandle::__call`) and says so.
pub(crate) fn record(
    method: u64,
    name: &str,
    encode: impl FnOnce() -> Result<(Vec<u8>, Pinned)>,
) -> Option<Result<()>> {
    let capturing = CAPTURE.with(|c| c.borrow().is_some());
    if !capturing {
        return None;
    }
    let encoded = encode();
    Some(CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let capture = c.as_mut().expect("set above");
        capture.calls += 1;
        let (args, pinned) = encoded?;
        if capture.calls == 1 {
            capture.method = method;
            capture.name = name.to_string();
            capture.args = args;
            capture.pinned = pinned;
        }
        Ok(())
    }))
}

/// Where this actor sits in its mesh: its member index and its coordinate
/// on each axis (`[("dp", 1), ("pp", 0), ("tp", 1)]`). Fails outside a
/// mesh member.
pub fn mesh_member() -> Result<(usize, Vec<(String, usize)>)> {
    with_context(|ctx| {
        let member = ctx.member.member as usize;
        let shape = context_shape(ctx)?;
        let mut coords = Vec::new();
        for axis in &shape.axes {
            coords.push((axis.name.clone(), shape.coord(member, &axis.name)?));
        }
        Ok((member, coords))
    })
}

fn with_context<R>(f: impl FnOnce(&mut MemberContext) -> Result<R>) -> Result<R> {
    MEMBER.with(|m| {
        let mut m = m.borrow_mut();
        let ctx = m.as_mut().ok_or_else(|| {
            mesh_error(
                "this is not an actor of a mesh (mesh_communicator and mesh_member work in the methods of actors created by new_mesh)".to_string(),
            )
        })?;
        f(ctx)
    })
}

fn context_shape(ctx: &mut MemberContext) -> Result<&MeshShape> {
    if ctx.shape.is_none() {
        ctx.shape = Some(ctx.member.shape()?);
    }
    Ok(ctx.shape.as_ref().expect("set above"))
}

/// The communicator of this member's group along `axis` (`"tp"`, `"dp"`,
/// `"pp"`, `"cp"` or `"ep"`), in the axis' order: built on first use,
/// collectively with the other members of that group (each must ask for
/// it), then kept for the actor's life. Fails outside a mesh member.
pub fn mesh_communicator(axis: &str) -> Result<Communicator> {
    enum Found {
        Cached(Communicator),
        Build(Vec<Rank>, u16),
    }
    let found = with_context(|ctx| {
        if let Some(comm) = ctx.communicators.get(axis) {
            return Ok(Found::Cached(comm.clone()));
        }
        let member = ctx.member.member as usize;
        let mesh = ctx.member.mesh;
        let members = ctx.member.ranks.clone();
        let shape = context_shape(ctx)?;
        let (_, group) = shape.group_of(member, axis)?;
        let ranks: Vec<Rank> = group
            .iter()
            .map(|&m| members.get(m).copied())
            .collect::<Option<_>>()
            .ok_or_else(|| {
                mesh_error(format!(
                    "member {member}'s {axis} group names a member the mesh does not have"
                ))
            })?;
        Ok(Found::Build(ranks, axis_tag(mesh, axis)))
    })?;
    match found {
        Found::Cached(comm) => Ok(comm),
        Found::Build(ranks, tag) => {
            let rt = super::current()?;
            let parent = Communicator::world_handle(rt.endpoint().clone())?;
            let comm = parent.create_group(&ranks, tag)?;
            with_context(|ctx| {
                ctx.communicators.insert(axis.to_string(), comm.clone());
                Ok(())
            })?;
            Ok(comm)
        }
    }
}

/// A distinct `create_group` tag per (mesh, axis): groups of one axis are
/// disjoint, so one tag per axis is enough; other axes and other meshes
/// sharing ranks get other tags.
fn axis_tag(mesh: u64, axis: &str) -> u16 {
    let index = ["dp", "pp", "tp", "cp", "ep"]
        .iter()
        .position(|a| *a == axis)
        .unwrap_or(7) as u16;
    let base = (mesh.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u16;
    (base & 0xFFF8) | index
}

/// The error `RawActorHandle::__call` returns for a recorded call (never
/// seen by users: `ActorMesh::call` takes the recording instead).
pub(crate) fn recorded() -> LumenError {
    mesh_error("call recorded for a mesh broadcast".to_string())
}

/// Runs `f` on one member's methods with recording on: the one call it
/// makes, as (method, name, encoded arguments, pinned argument refs).
fn record_call<A: ActorClass, T>(
    handle: &ActorHandle<A>,
    f: impl FnOnce(&A::Methods) -> Result<ObjectRef<T>>,
) -> Result<Capture> {
    CAPTURE.with(|c| {
        *c.borrow_mut() = Some(Capture {
            method: 0,
            name: String::new(),
            args: Vec::new(),
            pinned: Pinned::default(),
            calls: 0,
        })
    });
    let result = f(handle);
    let capture = CAPTURE.with(|c| c.borrow_mut().take()).expect("set above");
    match capture.calls {
        1 => Ok(capture),
        0 => Err(match result {
            Err(e) => e,
            Ok(_) => mesh_error(
                "the closure given to call made no method call: call one method on the handle it is given, e.g. |t| t.step(1)".to_string(),
            ),
        }),
        n => Err(mesh_error(format!(
            "the closure given to call made {n} method calls; make exactly one"
        ))),
    }
}

/// An actor class that can be built from a plain argument tuple (what
/// `#[lumen::actor]` implements: `Args` is the constructor's argument
/// types as a tuple, `(u32, String)`, `(x,)` for one, `()` for none).
pub trait ActorNew: ActorClass {
    /// The constructor's arguments.
    type Args;
    /// The encoded form the creation message carries.
    #[doc(hidden)]
    type Wrapped: Serialize;
    /// Wraps plain arguments.
    #[doc(hidden)]
    fn wrap(args: Self::Args) -> Self::Wrapped;
}

/// One actor per planned GPU of a shard plan, with named axes (see the
/// module docs). Dropping the mesh drops its handles (the actors stop once
/// no handle is left, as any actor); [`ActorMesh::kill`] stops them and
/// removes the placement group now.
pub struct ActorMesh<A: ActorClass> {
    id: u64,
    shape: MeshShape,
    actors: Vec<ActorHandle<A>>,
    group: PlacementGroup,
    fanout: usize,
    _class: PhantomData<fn() -> A>,
}

/// Some members of a mesh (see [`ActorMesh::slice`]).
pub struct MeshSlice<'m, A: ActorClass> {
    mesh: &'m ActorMesh<A>,
    members: Vec<usize>,
}

impl<A: ActorClass> std::fmt::Debug for ActorMesh<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let axes: Vec<String> = self
            .shape
            .axes
            .iter()
            .map(|a| format!("{}={}", a.name, a.size))
            .collect();
        write!(
            f,
            "ActorMesh<{}>({} members, {}, {})",
            A::CLASS_NAME,
            self.actors.len(),
            axes.join(" "),
            self.group.id()
        )
    }
}

impl<A: ActorClass> std::fmt::Debug for MeshSlice<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MeshSlice(members {:?} of {:?})",
            self.members, self.mesh
        )
    }
}

impl<A: ActorClass> ActorMesh<A> {
    /// The axes, slowest first (`dp`, `pp`, `tp`, then `cp` if planned).
    pub fn axes(&self) -> &[MeshAxis] {
        &self.shape.axes
    }

    /// The mesh's shape: axes, coordinates, groups.
    pub fn shape(&self) -> &MeshShape {
        &self.shape
    }

    /// Every member's handle, by member index (the plan's rank).
    pub fn actors(&self) -> &[ActorHandle<A>] {
        &self.actors
    }

    /// The rank hosting each member, by member index.
    pub fn ranks(&self) -> Vec<Rank> {
        self.actors.iter().map(|a| a.raw().rank()).collect()
    }

    /// The placement group holding the members' resources.
    pub fn placement_group(&self) -> &PlacementGroup {
        &self.group
    }

    /// The members whose coordinate on `axis` is `index`
    /// (`mesh.slice("tp", 0)`); slice a slice to fix more axes.
    pub fn slice(&self, axis: &str, index: usize) -> Result<MeshSlice<'_, A>> {
        Ok(MeshSlice {
            mesh: self,
            members: self.shape.slice(axis, index)?,
        })
    }

    /// Calls one method on every member (the closure's one call, e.g.
    /// `|t| t.step(1)`), sent as a broadcast tree; one ref per member, in
    /// member order.
    pub fn call<T>(
        &self,
        f: impl FnOnce(&A::Methods) -> Result<ObjectRef<T>>,
    ) -> Result<Vec<ObjectRef<T>>> {
        let all: Vec<usize> = (0..self.actors.len()).collect();
        self.broadcast(&all, f)
    }

    fn broadcast<T>(
        &self,
        members: &[usize],
        f: impl FnOnce(&A::Methods) -> Result<ObjectRef<T>>,
    ) -> Result<Vec<ObjectRef<T>>> {
        let Some(&first) = members.first() else {
            return Ok(Vec::new());
        };
        let capture = record_call(&self.actors[first], f)?;
        let inner = current_inner().ok_or(LumenError::Runtime(RuntimeError::NoRuntime))?;
        let targets: Vec<(super::protocol::ActorAddress, Option<super::ids::ObjectId>)> = members
            .iter()
            .map(|&m| {
                let raw = self.actors[m].raw();
                (raw.address().clone(), raw.handles_id())
            })
            .collect();
        let objects = inner.mesh_call(&targets, capture, self.fanout)?;
        Ok(objects
            .into_iter()
            .map(|object| owned_ref(&inner, object))
            .collect())
    }

    /// Stops every member now and removes the mesh's placement group.
    pub fn kill(&self) -> Result<()> {
        let rt = super::current()?;
        rt.remove_placement_group(&self.group)
    }

    /// Sets how many messages each hop of a broadcast sends at most
    /// (default [`DEFAULT_FANOUT`]; 1 makes a chain, a large one sends
    /// from the caller to every rank directly).
    pub fn set_fanout(&mut self, fanout: usize) {
        self.fanout = fanout.max(1);
    }

    /// The mesh's id (unique in the job; names its communicators).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<A: ActorClass> MeshSlice<'_, A> {
    /// The members in the slice, ascending.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// Their handles.
    pub fn actors(&self) -> Vec<&ActorHandle<A>> {
        self.members.iter().map(|&m| &self.mesh.actors[m]).collect()
    }

    /// Fixes one more axis.
    pub fn slice(&self, axis: &str, index: usize) -> Result<Self> {
        let more = self.mesh.shape.slice(axis, index)?;
        Ok(MeshSlice {
            mesh: self.mesh,
            members: self
                .members
                .iter()
                .copied()
                .filter(|m| more.contains(m))
                .collect(),
        })
    }

    /// Calls one method on every member of the slice, as
    /// [`ActorMesh::call`] does; one ref per member, in member order.
    pub fn call<T>(
        &self,
        f: impl FnOnce(&A::Methods) -> Result<ObjectRef<T>>,
    ) -> Result<Vec<ObjectRef<T>>> {
        self.mesh.broadcast(&self.members, f)
    }
}

impl Runtime {
    /// The job's shape for [`lumen_sched::shard::plan`] when planning an
    /// actor mesh: the nodes that have serving ranks, and one mesh slot
    /// ("GPU") per serving rank, as many per node as the smallest such
    /// node has; NVLink islands and NICs per node from this node's
    /// topology (`LUMEN_TOPOLOGY_XML` or discovery) when its GPUs match the
    /// slots, else one island of all slots and one NIC (see
    /// [`ClusterShape::from_machine`]). Nodes are taken to be alike.
    pub fn cluster_shape(&self) -> ClusterShape {
        let mut per_node: std::collections::BTreeMap<u32, usize> = Default::default();
        for info in self.inner.ranks.iter() {
            if self.inner.serves(info.rank) {
                *per_node.entry(info.node).or_default() += 1;
            }
        }
        let slots = per_node.values().copied().min().unwrap_or(1).max(1);
        let nodes = per_node.len().max(1);
        match super::binding::machine() {
            Ok(machine) => ClusterShape::from_machine(&machine, nodes, slots),
            Err(_) => ClusterShape {
                nodes,
                gpus_per_node: slots,
                nvlink_island: slots,
                nics_per_node: 1,
            },
        }
    }

    /// Starts one actor of class `A` per planned GPU of `plan` with the
    /// constructor arguments `args` (a tuple), through one placement group,
    /// and returns the mesh (see [`crate::runtime::mesh`]).
    pub fn actor_mesh<A: ActorNew>(&self, plan: &ShardPlan, args: A::Args) -> Result<ActorMesh<A>> {
        self.actor_mesh_with::<A>(plan, args, ActorOptions::default())
    }

    /// [`Runtime::actor_mesh`] with the members' options (resources,
    /// restarts); their placement options are the mesh's own.
    pub fn actor_mesh_with<A: ActorNew>(
        &self,
        plan: &ShardPlan,
        args: A::Args,
        options: ActorOptions,
    ) -> Result<ActorMesh<A>> {
        let wrapped = A::wrap(args);
        self.__create_actor_mesh::<A, _>(plan, &wrapped, options)
    }

    /// Builds a mesh (used by `new_mesh` of `#[lumen::actor]` types).
    #[doc(hidden)]
    pub fn __create_actor_mesh<A: ActorClass, Args: Serialize>(
        &self,
        plan: &ShardPlan,
        args: &Args,
        options: ActorOptions,
    ) -> Result<ActorMesh<A>> {
        if options.node.is_some() || options.rank.is_some() || options.placement_group.is_some() {
            return Err(mesh_error(
                "a mesh places its members itself: leave node, rank and placement_group unset"
                    .to_string(),
            ));
        }
        let shape = MeshShape::new(plan);
        let n = shape.len();
        let bundle = if options.resources.is_empty() {
            Resources::cpus(1.0)
        } else {
            options.resources.clone()
        };
        let group = self.placement_group(vec![bundle; n], PlacementStrategy::Pack)?;
        let placed = group.ranks().and_then(|ranks| {
            let order = member_order(self, plan, &ranks)?;
            Ok((ranks, order))
        });
        let (ranks, order) = match placed {
            Ok(placed) => placed,
            Err(e) => {
                let _ = self.remove_placement_group(&group);
                return Err(e);
            }
        };
        let id = self.inner.new_mesh_id();
        let member_ranks: Vec<Rank> = order.iter().map(|&b| ranks[b]).collect();
        let mut actors = Vec::with_capacity(n);
        for (member, &bundle) in order.iter().enumerate() {
            let mut member_options = options.clone();
            member_options.placement_group = Some(group.bundle(Some(bundle as u32)));
            member_options.mesh = Some(MeshMember {
                mesh: id,
                member: member as u32,
                parallelism: plan.parallelism,
                cluster: plan.cluster,
                order: plan.order,
                ranks: member_ranks.clone(),
            });
            match self.__create_actor::<A, _>(args, member_options) {
                Ok(actor) => actors.push(actor),
                Err(e) => {
                    let _ = self.remove_placement_group(&group);
                    return Err(e);
                }
            }
        }
        Ok(ActorMesh {
            id,
            shape,
            actors,
            group,
            fanout: DEFAULT_FANOUT,
            _class: PhantomData,
        })
    }
}

/// Which bundle each member takes: bundles sorted by (node, rank), member
/// `i` the `i`-th; refused unless every bundle has a rank of its own and
/// each planned node falls on one job node.
fn member_order(rt: &Runtime, plan: &ShardPlan, ranks: &[Rank]) -> Result<Vec<usize>> {
    let node = |r: Rank| rt.node_of(r).unwrap_or(u32::MAX);
    let mut order: Vec<usize> = (0..ranks.len()).collect();
    order.sort_by_key(|&b| (node(ranks[b]), ranks[b]));
    for pair in order.windows(2) {
        if ranks[pair[0]] == ranks[pair[1]] {
            return Err(mesh_error(format!(
                "the placement group put two members on rank {}: a mesh needs one rank per member; give the members resources that fit once per rank (num_gpus(1.0) on ranks of one GPU each, as one rank per GPU runs; or num_cpus equal to a rank's CPUs)",
                ranks[pair[0]]
            )));
        }
    }
    let per_node = plan.cluster.gpus_per_node.max(1);
    for (planned, chunk) in order.chunks(per_node).enumerate() {
        let nodes: std::collections::BTreeSet<u32> =
            chunk.iter().map(|&b| node(ranks[b])).collect();
        if nodes.len() > 1 {
            return Err(mesh_error(format!(
                "planned node {planned} ({per_node} members) landed on job nodes {nodes:?}: plan with the job's shape (Runtime::cluster_shape) so that each planned node is one job node"
            )));
        }
    }
    Ok(order)
}
