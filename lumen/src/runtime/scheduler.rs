//! Placement policy: which rank runs a task or hosts an actor. The policy
//! is pure and lives in `lumen_sched` ([`lumen_sched::Scheduler`], with its
//! tests); each submitting rank keeps its own instance in `core`, behind a
//! mutex, and turns its [`lumen_sched::Infeasible`] into
//! `RuntimeError::Infeasible` naming the function or actor class.
//!
//! This module only keeps the runtime's old paths (`super::scheduler::...`)
//! valid.

pub(crate) use lumen_sched::{Preferences, RankSlot, Request, Scheduler};
