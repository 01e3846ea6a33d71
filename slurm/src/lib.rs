//! Slurm without libslurm: hostlists, tasks-per-node and the `SLURM_*` environment.
//!
//! Everything here is pure: nothing reads the process environment, files or the
//! network. Callers hand in an environment lookup (`impl Fn(&str) -> Option<String>`)
//! so that the same code is tested with a `HashMap` and used with `std::env::var`.
//!
//! The bottom of the house: it depends on no other Lumen crate (only
//! `thiserror`), and must not. The launcher (bootstrap under `srun`) and the
//! `lumen submit` command use it.
//!
//! - [`hostlist`]: expand and compress Slurm hostlist expressions
//!   (`nid[001-004,010],gpu-a[01-02]`).
//! - [`tasks_per_node`]: decode and encode `SLURM_TASKS_PER_NODE` (`2(x3),1`).
//! - [`binding`]: which CPUs and GPUs each local rank owns.
//! - [`sbatch`]: batch scripts for `lumen submit`.
//! - [`env`](mod@env): [`SlurmStep`], the typed and cross-checked view of the variables
//!   that `srun` gives each task.
//!
//! ```
//! use lumen_slurm::{hostlist, tasks_per_node};
//!
//! let hosts = hostlist::expand("nid[001-003],gpu01")?;
//! assert_eq!(hosts, ["nid001", "nid002", "nid003", "gpu01"]);
//! assert_eq!(hostlist::compress(&hosts), "nid[001-003],gpu01");
//! assert_eq!(tasks_per_node::decode("2(x3),1")?, [2, 2, 2, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod binding;
pub mod env;
pub mod hostlist;
pub mod sbatch;
pub mod tasks_per_node;

#[cfg(test)]
mod fuzz_tests;

pub use env::{Pmi2Env, SlurmEnvError, SlurmStep};
pub use hostlist::HostlistError;
pub use tasks_per_node::TasksPerNodeError;
