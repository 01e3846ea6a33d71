//! Lumen's scheduling core: what ranks offer, where tasks and actors run,
//! and how placement groups reserve resources. Everything here is sans-IO:
//! no threads, sockets, clocks or processes. The `lumen` runtime drives
//! these types from its submitters, its executors and rank 0's head
//! service, and re-exports the ones users name (`lumen::Resources`,
//! `lumen::PlacementStrategy`, `lumen::runtime::PlacementGroupId`, ...).
//!
//! **Rule:** this crate depends on no other Lumen crate (only `serde`,
//! `thiserror` and `std`). The runtime, the launcher and the benchmarks
//! build on it; a policy that needs a transport or a process to be tested
//! is in the wrong crate. Ranks are plain [`Rank`] numbers (`u32`, the
//! same integers as the transport's ranks).
//!
//! # What lives here
//! - [`Resources`]: amounts of CPUs, GPUs and custom resources (Ray's
//!   `num_cpus`, `num_gpus`, `resources`).
//! - [`Scheduler`] (module `policy`): the placement policy of one
//!   submitting rank, over [`RankSlot`]s: exact rank, node affinity (hard,
//!   or soft), feasibility against total resources ([`Infeasible`]
//!   otherwise), SPREAD, data locality by argument bytes per node with
//!   load-aware spillback (queue lengths the ranks report), GPU avoidance
//!   and NIC locality, least load, a warm rank for chains of dependent
//!   tasks ([`Request`], [`Preferences`], [`SchedulingStrategy`]).
//! - Placement groups: their names ([`PlacementGroupId`],
//!   [`PlacementStrategy`], [`PlacementGroupScheduling`]), the strategies
//!   PACK / SPREAD / STRICT_PACK / STRICT_SPREAD ([`place`]) and the
//!   job-wide [`PlacementTable`], stepped by its callers and answering in
//!   [`Action`]s (reserve, release, answer).
//! - [`ResourceSlots`]: a rank's resources as its executor counts them
//!   (CPU slots, custom resources, GPU devices), the free pool and one
//!   pool per bundle reserved there.
//! - [`GpuSlots`]: which specific GPUs a task or actor with `num_gpus`
//!   gets on its rank (whole devices exclusive, fractions sharing one),
//!   and which devices each bundle holds.
//!
//! # What comes next, and where
//! Machine topology is [`topology`]: packages, NUMA nodes, cores, PUs,
//! GPUs and NICs with their NUMA affinity, read from hwloc XML (synthetic
//! machines in `tests/machines/`) or sysfs, and rendered like `lstopo`;
//! [`topology::bind_local_ranks`] gives each local rank cores, GPUs and a
//! NIC on one NUMA node (pinning threads and placing memory is the
//! runtime's job); the model-shard planner is [`shard`]
//! (TP/CP/PP/DP/EP onto NVLink islands, nodes and NICs: rank layout,
//! communicators, predicted cross-node bytes beside Megatron's order
//! and the naive one); the policy's NIC locality is fed from that
//! binding ([`Scheduler::with_nic_local`]). They stay pure like the rest,
//! fed with discovered facts by the layer above.
//!
//! # Example
//! A placement group of two one-CPU bundles spread over a two-node job,
//! stepped as rank 0's head service steps it, then a task placed by a
//! submitter's policy:
//!
//! ```
//! use lumen_sched::{
//!     Action, GroupAnswer, Host, PlacementGroupId, PlacementStrategy, PlacementTable,
//!     RankSlot, Request, Resources, Scheduler,
//! };
//!
//! // Four ranks, two per node, two CPUs each.
//! let hosts: Vec<Host> = (0..4)
//!     .map(|rank| Host {
//!         node: rank / 2,
//!         capacity: Resources::cpus(2.0),
//!         available: Resources::cpus(2.0),
//!         serving: true,
//!         alive: true,
//!     })
//!     .collect();
//! let mut table = PlacementTable::new(hosts);
//! let group = PlacementGroupId { creator: 0, seq: 1 };
//! let bundles = vec![Resources::cpus(1.0); 2];
//! let actions = table.create(group, bundles, PlacementStrategy::StrictSpread, 0, 7);
//! assert!(matches!(actions[0], Action::Answer { answer: GroupAnswer::Accepted, .. }));
//!
//! // The caller sends the reservations; each host acknowledges.
//! for action in &actions {
//!     if let Action::Reserve { host, .. } = action {
//!         table.reserved(group, *host);
//!     }
//! }
//! let created = table.wait(group, 0, 8);
//! let Some(Action::Answer { answer: GroupAnswer::Created(view), .. }) = created.first() else {
//!     panic!("not created: {created:?}");
//! };
//! // STRICT_SPREAD: one bundle per node.
//! assert_ne!(view.ranks[0] / 2, view.ranks[1] / 2);
//!
//! // A submitter's policy: a task with its data on rank 3 runs there.
//! let slots: Vec<RankSlot> = (0..4)
//!     .map(|rank| RankSlot {
//!         node: rank / 2,
//!         capacity: Resources::cpus(2.0),
//!         serving: true,
//!         alive: true,
//!         outstanding: 0,
//!         actors: 0,
//!     })
//!     .collect();
//! let mut scheduler = Scheduler::new(slots, 1);
//! let need = Resources::cpus(1.0);
//! let request = Request { resources: Some(&need), data_at: Some(3), ..Request::default() };
//! assert_eq!(scheduler.place_task(&request), Ok(3));
//! ```

mod gpus;
mod group;
pub mod mesh;
mod policy;
mod resources;
pub mod shard;
mod slots;
mod strategy;
mod table;
pub mod topology;

pub use gpus::{GpuGrant, GpuRequestError, GpuSlots};
pub use group::{Bundle, PlacementGroupId, PlacementGroupScheduling, PlacementStrategy};
pub use policy::{Infeasible, Preferences, RankSlot, Request, Scheduler, SchedulingStrategy};
pub use resources::Resources;
pub use slots::{Held, ResourceSlots};
pub use strategy::place;
pub use table::{Action, GroupAnswer, GroupSummary, GroupView, Host, PlacementTable};

/// A rank of the job: `0..size`, the same numbers as the transport's ranks.
pub type Rank = u32;
