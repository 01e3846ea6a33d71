//! Collectives for Lumen: communicators and MPI-class algorithms over the
//! transport, and (feature `nccl`) NCCL communicators over GPU buffers.
//!
//! # What this crate owns
//!
//! - [`Communicator`]: a group of ranks with its own message space (world,
//!   `split`, `create`, `create_group`), the blocking collectives and their
//!   non-blocking [`Request`]s, point-to-point `send`/`recv` ([`comm`]);
//! - the schedules, as pure functions stepped by a simulator in the tests
//!   ([`schedule`]), and the choice among them ([`config`],
//!   [`CollectiveConfig`], `LUMEN_COLL_*`);
//! - the shared-memory algorithms inside a node ([`shm`]);
//! - element types and reductions ([`Element`], [`ReduceOp`]), errors
//!   ([`CollectiveError`]);
//! - NCCL communicators over device buffers (`nccl`, feature `nccl`).
//!
//! # What it must not depend on
//!
//! Among Lumen crates only `lumen-transport`: the
//! [`lumen_transport::Endpoint`] it sends through, and the transport's
//! platform layer for shared mappings and cross-process reads. It knows
//! nothing of the runtime, the object store, the scheduler or the
//! launcher: `lumen` builds communicators on top
//! (`lumen::world_communicator`, `lumen::placement_communicator`), never
//! the other way round. Inside the crate the dependencies go one way too:
//! `comm` uses `shm`, `schedule` and `config`; `shm` uses neither `comm`
//! nor `schedule` (the liveness period both need is in a small module
//! below both).
//!
//! ```text
//!   Communicator::world(endpoint)    split(color, key) / create(ranks) / create_group
//!            │                                       │
//!            ▼                                       ▼
//!   allreduce / bcast / reduce / allgather(v) / reduce_scatter / alltoall(v)
//!   gather / scatter / barrier / send / recv       (+ i* non-blocking)
//!            │  config.rs: algorithm by size, ranks, topology (LUMEN_COLL_*)
//!            ▼
//!   schedule.rs: pure schedules (ring, recursive doubling, Rabenseifner,
//!   binomial trees, pairwise exchange, dissemination), simulated in tests
//!            │  comm/: executes steps; tags 0xC | context | sequence | round
//!            ▼
//!   lumen_transport::Endpoint (shared memory on a node, TCP across nodes)
//!
//!   shm/: communicators inside one node skip the messages: one segment
//!   mapped by all members, flag handshakes, inline cache lines for tiny
//!   data, pipelined slots, single-copy reads (process_vm_readv) of peers'
//!   buffers for long ones
//! ```
//!
//! Inside one node (every member on this rank's node) `auto` selects the
//! shared-memory algorithms of [`shm`] for allreduce, reduce, bcast,
//! barrier, allgather(v), reduce_scatter and alltoall: a message through the
//! transport costs a ring record, a tag match and a receive buffer each,
//! where a collective through the segment costs one or two cache-line
//! handshakes (the approach of Open MPI's `coll/sm`/`xhc` and MPICH's
//! release/gather collectives). `LUMEN_COLL_SHM=off` returns to the
//! point-to-point schedules, which are what runs across nodes.
//!
//! A communicator that spans several nodes also holds a node communicator
//! and (at node leaders) a leaders communicator: the hierarchical allreduce
//! reduces over shared memory inside each node, allreduces among the leaders
//! across nodes and broadcasts back inside the node; bcast goes inside the
//! root's node, among the leaders, then inside the other nodes; allgather
//! gathers inside each node, exchanges whole nodes' blocks among the leaders
//! and broadcasts the result inside each node.
//!
//! ```no_run
//! # fn demo(endpoint: lumen_transport::Endpoint) -> lumen_collectives::Result<()> {
//! use lumen_collectives::{Communicator, ReduceOp};
//! let world = Communicator::world(endpoint)?;
//! let mut grad = vec![1.0f32; 1 << 20];
//! world.allreduce(&mut grad, ReduceOp::Sum)?;
//! assert_eq!(grad[0], world.size() as f32);
//! let pending = world.iallreduce(grad, ReduceOp::Max); // non-blocking
//! let grad = pending.wait()?;
//! let halves = world.split(Some(world.rank() % 2), 0)?; // MPI_Comm_split
//! # Ok(()) }
//! ```
//!
//! Element types: `f32 f64 f16 bf16 i8 u8 i32 u32 i64 u64` ([`Element`]);
//! reductions: sum, prod, min, max, and bitwise and/or/xor on integers
//! ([`ReduceOp`]).
//!
//! Non-blocking variants (a [`Request`] to wait on): `ibarrier`, `ibcast`,
//! `ireduce`, `iallreduce`, `iallgather`, `iallgatherv`, `ireduce_scatter`,
//! `ialltoall`, `ialltoallv`, `igather`, `iscatter`; they run in order on a
//! helper thread per communicator (see [`comm`]).
//!
//! [`Communicator::create_group`] builds a communicator collectively over
//! its members only (`MPI_Comm_create_group`), which is how the ranks of a
//! runtime placement group get theirs (`lumen::placement_communicator`).
//!
//! Not implemented (yet): Bruck's all-to-all (all-to-all is pairwise or
//! direct), gatherv/scatterv, two-level variants of alltoall,
//! reduce_scatter, allgatherv, reduce, gather/scatter and barrier (flat
//! across nodes), overlap between two operations of one communicator.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod comm;
pub mod config;
pub mod element;
pub mod error;
mod liveness;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod schedule;
pub mod shm;
pub mod trace;

pub use comm::{Communicator, Request};
pub use config::{AllreduceAlgorithm, BcastAlgorithm, CollectiveConfig};
pub use element::{Element, ElementKind, ReduceOp};
pub use error::{CollectiveError, Result};
pub use half::{bf16, f16};
