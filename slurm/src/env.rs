//! The environment `srun` gives each task, typed and cross-checked.
//!
//! [`SlurmStep::from_env`] reads (through a lookup function, never the process
//! environment directly):
//!
//! | Field | Variables, first one set wins |
//! |---|---|
//! | present at all | `SLURM_PROCID` and (`SLURM_STEP_ID` or `SLURM_STEPID`) |
//! | [`job_id`](SlurmStep::job_id) | `SLURM_JOB_ID`, `SLURM_JOBID` |
//! | [`step_id`](SlurmStep::step_id) | `SLURM_STEP_ID`, `SLURM_STEPID` |
//! | [`procid`](SlurmStep::procid) | `SLURM_PROCID` |
//! | [`ntasks`](SlurmStep::ntasks) | `SLURM_STEP_NUM_TASKS`, `SLURM_NTASKS`, `SLURM_NPROCS` |
//! | [`localid`](SlurmStep::localid) | `SLURM_LOCALID` |
//! | [`nodeid`](SlurmStep::nodeid) | `SLURM_NODEID` |
//! | [`nodes`](SlurmStep::nodes) | `SLURM_STEP_NODELIST`, `SLURM_NODELIST`, `SLURM_JOB_NODELIST` |
//! | [`tasks_per_node`](SlurmStep::tasks_per_node) | `SLURM_STEP_TASKS_PER_NODE`, `SLURM_TASKS_PER_NODE` |
//! | (check only) | `SLURM_STEP_NUM_NODES` |
//! | [`cpus_per_task`](SlurmStep::cpus_per_task) | `SLURM_CPUS_PER_TASK` (optional) |
//! | [`gpus`](SlurmStep::gpus) | `SLURM_STEP_GPUS`, `SLURM_JOB_GPUS` (optional) |
//! | [`srun_comm_host`](SlurmStep::srun_comm_host) | `SLURM_SRUN_COMM_HOST` (optional) |
//! | [`node_name`](SlurmStep::node_name) | `SLURMD_NODENAME` (optional) |
//! | [`distribution`](SlurmStep::distribution) | `SLURM_DISTRIBUTION` (optional) |
//! | [`pmi2`](SlurmStep::pmi2) | `PMI_FD`, `PMI_RANK`, `PMI_SIZE`, `PMI_JOBID` (`srun --mpi=pmi2`) |
//!
//! `SLURM_NODELIST` is preferred to `SLURM_JOB_NODELIST` because `srun` rewrites
//! it to the step's nodes, while the job's list may be larger than the step's.
//!
//! # Invariants
//!
//! A returned [`SlurmStep`] satisfies `procid < ntasks`, `nodeid < nodes.len()`,
//! `tasks_per_node.len() == nodes.len()`, `sum(tasks_per_node) == ntasks`,
//! `localid < tasks_per_node[nodeid]`, and, when PMI-2 is present,
//! `PMI_RANK == procid` and `PMI_SIZE == ntasks`. Any violation is an error that
//! names the variable, because a rank that guesses its peers wrong hangs the
//! whole job at bootstrap instead of failing fast.

use thiserror::Error;

use crate::hostlist::{self, HostlistError};
use crate::tasks_per_node::{self, TasksPerNodeError};

/// Why the `SLURM_*` environment of an `srun` task could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SlurmEnvError {
    /// A variable that `srun` always sets is missing.
    #[error("{variable} is not set although SLURM_PROCID and SLURM_STEP_ID are; start the program with `srun`, or unset SLURM_PROCID if it is not running under srun")]
    Missing {
        /// The variable (and its accepted alternatives).
        variable: &'static str,
    },
    /// A variable holds something other than a non-negative decimal integer.
    #[error("{variable}={value:?} is not a non-negative integer; fix or unset it")]
    InvalidNumber {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// A node list variable is not a valid hostlist.
    #[error("{variable}: {source}")]
    InvalidNodeList {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        source: HostlistError,
    },
    /// A tasks-per-node variable cannot be decoded.
    #[error("{variable}: {source}")]
    InvalidTasksPerNode {
        /// The variable.
        variable: &'static str,
        /// What is wrong with it.
        source: TasksPerNodeError,
    },
    /// A GPU list is not a comma-separated list of GPU indices.
    #[error("{variable}={value:?} is not a comma-separated list of GPU indices like `0,1,3`; fix or unset it")]
    InvalidGpuList {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The global rank is not below the number of tasks.
    #[error("SLURM_PROCID={procid} is not below the step's task count {ntasks} ({ntasks_variable}); the environment is inconsistent, was it copied from another step?")]
    ProcIdOutOfRange {
        /// Value of `SLURM_PROCID`.
        procid: u32,
        /// The step's task count.
        ntasks: u32,
        /// The variable the task count came from.
        ntasks_variable: &'static str,
    },
    /// The node index is not below the number of nodes in the node list.
    #[error("SLURM_NODEID={nodeid} is not below the {nodes} nodes of {nodelist_variable}; the environment is inconsistent, was it copied from another step?")]
    NodeIdOutOfRange {
        /// Value of `SLURM_NODEID`.
        nodeid: u32,
        /// Number of nodes in the node list.
        nodes: usize,
        /// The variable the node list came from.
        nodelist_variable: &'static str,
    },
    /// The local rank is not below the number of tasks on this node.
    #[error("SLURM_LOCALID={localid} is not below the {local_size} tasks that {tasks_per_node_variable} gives node {nodeid}; the environment is inconsistent")]
    LocalIdOutOfRange {
        /// Value of `SLURM_LOCALID`.
        localid: u32,
        /// Tasks on this node according to the tasks-per-node variable.
        local_size: u32,
        /// This node's index.
        nodeid: u32,
        /// The variable the tasks per node came from.
        tasks_per_node_variable: &'static str,
    },
    /// The tasks per node do not add up to the number of tasks.
    #[error("{tasks_per_node_variable} adds up to {sum} tasks but {ntasks_variable}={ntasks}; the environment is inconsistent")]
    TaskCountMismatch {
        /// The variable the tasks per node came from.
        tasks_per_node_variable: &'static str,
        /// Their sum.
        sum: u64,
        /// The variable the task count came from.
        ntasks_variable: &'static str,
        /// The task count.
        ntasks: u32,
    },
    /// A node count disagrees with the length of the node list.
    #[error("{variable} describes {count} nodes but {nodelist_variable} lists {nodes}; the environment is inconsistent")]
    NodeCountMismatch {
        /// The variable that disagrees with the node list.
        variable: &'static str,
        /// The node count it gives.
        count: usize,
        /// The variable the node list came from.
        nodelist_variable: &'static str,
        /// Number of nodes in the node list.
        nodes: usize,
    },
    /// A PMI-2 variable disagrees with the Slurm one; the PMI variables probably
    /// come from another launcher nested inside or around `srun`.
    #[error("{variable}={value} disagrees with {slurm_variable}={expected}; the PMI variables come from another launcher, unset them or start the program with `srun --mpi=pmi2` only")]
    PmiMismatch {
        /// The PMI variable.
        variable: &'static str,
        /// Its value.
        value: u32,
        /// The Slurm variable it should equal.
        slurm_variable: &'static str,
        /// The Slurm value.
        expected: u32,
    },
}

/// What `srun --mpi=pmi2` adds to a task's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pmi2Env {
    /// `PMI_FD`: the already connected socket to the PMI-2 server in slurmstepd.
    pub fd: i32,
    /// `PMI_JOBID`, when set.
    pub jobid: Option<String>,
}

/// One task of an `srun` job step, as its environment describes it.
///
/// See the [module documentation](self) for where each field comes from and
/// which invariants hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmStep {
    /// The job id (`SLURM_JOB_ID`), kept as text: it is an identifier.
    pub job_id: String,
    /// The step id within the job (`SLURM_STEP_ID`).
    pub step_id: u32,
    /// This task's global rank in the step (`SLURM_PROCID`).
    pub procid: u32,
    /// Number of tasks in the step.
    pub ntasks: u32,
    /// This task's rank among the step's tasks on its node (`SLURM_LOCALID`).
    pub localid: u32,
    /// This node's index in [`nodes`](Self::nodes) (`SLURM_NODEID`).
    pub nodeid: u32,
    /// The step's nodes, expanded from the node list.
    pub nodes: Vec<String>,
    /// Tasks on each node, parallel to [`nodes`](Self::nodes).
    pub tasks_per_node: Vec<u32>,
    /// `SLURM_CPUS_PER_TASK`, set when the job asked for `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// GPU indices given to the step (`SLURM_STEP_GPUS`, else `SLURM_JOB_GPUS`).
    pub gpus: Option<Vec<u32>>,
    /// `SLURM_SRUN_COMM_HOST`: the address of the host `srun` runs on.
    pub srun_comm_host: Option<String>,
    /// `SLURMD_NODENAME`: Slurm's name for this node.
    pub node_name: Option<String>,
    /// `SLURM_DISTRIBUTION` (`block`, `cyclic`, …), when set.
    pub distribution: Option<String>,
    /// Present when the step was started with `--mpi=pmi2`.
    pub pmi2: Option<Pmi2Env>,
}

/// A value and the variable it was read from.
type Found = (&'static str, String);

fn first_set(get: &impl Fn(&str) -> Option<String>, variables: &[&'static str]) -> Option<Found> {
    variables
        .iter()
        .find_map(|&variable| get(variable).map(|value| (variable, value)))
}

fn parse_u32((variable, value): &Found) -> Result<u32, SlurmEnvError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(number) = value.parse() {
            return Ok(number);
        }
    }
    Err(SlurmEnvError::InvalidNumber {
        variable,
        value: value.clone(),
    })
}

fn required(
    get: &impl Fn(&str) -> Option<String>,
    variables: &[&'static str],
    description: &'static str,
) -> Result<Found, SlurmEnvError> {
    first_set(get, variables).ok_or(SlurmEnvError::Missing {
        variable: description,
    })
}

fn parse_gpus((variable, value): Found) -> Result<Vec<u32>, SlurmEnvError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|gpu| {
            let gpu = gpu.trim();
            gpu.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| gpu.parse().ok())
                .flatten()
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or(SlurmEnvError::InvalidGpuList { variable, value })
}

impl SlurmStep {
    /// Reads the step from an environment lookup such as
    /// `|name| std::env::var(name).ok()`.
    ///
    /// Returns `Ok(None)` when the process is not a task of an `srun` step
    /// (`SLURM_PROCID` or the step id is unset, as in an `sbatch` script or an
    /// `salloc` shell), and an error when it is but the variables are missing,
    /// malformed or inconsistent.
    ///
    /// ```
    /// # use lumen_slurm::SlurmStep;
    /// use std::collections::HashMap;
    /// let env: HashMap<&str, &str> = [
    ///     ("SLURM_JOB_ID", "42"), ("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "3"),
    ///     ("SLURM_NTASKS", "4"), ("SLURM_LOCALID", "1"), ("SLURM_NODEID", "1"),
    ///     ("SLURM_STEP_NODELIST", "n[1-2]"), ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
    /// ].into();
    /// let step = SlurmStep::from_env(|k| env.get(k).map(|v| v.to_string()))?.unwrap();
    /// assert_eq!(step.nodes, ["n1", "n2"]);
    /// assert_eq!(step.rank_nodes(), [0, 0, 1, 1]);
    /// # Ok::<(), lumen_slurm::SlurmEnvError>(())
    /// ```
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<SlurmStep>, SlurmEnvError> {
        let Some(procid) = first_set(&get, &["SLURM_PROCID"]) else {
            return Ok(None);
        };
        let Some(step_id) = first_set(&get, &["SLURM_STEP_ID", "SLURM_STEPID"]) else {
            return Ok(None);
        };
        let procid = parse_u32(&procid)?;
        let step_id = parse_u32(&step_id)?;
        let (_, job_id) = required(
            &get,
            &["SLURM_JOB_ID", "SLURM_JOBID"],
            "SLURM_JOB_ID (or SLURM_JOBID)",
        )?;
        let ntasks_found = required(
            &get,
            &["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"],
            "SLURM_STEP_NUM_TASKS (or SLURM_NTASKS, SLURM_NPROCS)",
        )?;
        let ntasks_variable = ntasks_found.0;
        let ntasks = parse_u32(&ntasks_found)?;
        let localid = parse_u32(&required(&get, &["SLURM_LOCALID"], "SLURM_LOCALID")?)?;
        let nodeid = parse_u32(&required(&get, &["SLURM_NODEID"], "SLURM_NODEID")?)?;

        let (nodelist_variable, nodelist) = required(
            &get,
            &[
                "SLURM_STEP_NODELIST",
                "SLURM_NODELIST",
                "SLURM_JOB_NODELIST",
            ],
            "SLURM_STEP_NODELIST (or SLURM_NODELIST, SLURM_JOB_NODELIST)",
        )?;
        let nodes =
            hostlist::expand(&nodelist).map_err(|source| SlurmEnvError::InvalidNodeList {
                variable: nodelist_variable,
                source,
            })?;
        let (tasks_per_node_variable, tasks_per_node) = required(
            &get,
            &["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"],
            "SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE)",
        )?;
        let tasks_per_node = tasks_per_node::decode(&tasks_per_node).map_err(|source| {
            SlurmEnvError::InvalidTasksPerNode {
                variable: tasks_per_node_variable,
                source,
            }
        })?;

        let cpus_per_task = first_set(&get, &["SLURM_CPUS_PER_TASK"])
            .map(|found| parse_u32(&found))
            .transpose()?;
        let gpus = first_set(&get, &["SLURM_STEP_GPUS", "SLURM_JOB_GPUS"])
            .map(parse_gpus)
            .transpose()?;
        let pmi2 = match get("PMI_FD") {
            None => None,
            Some(fd) => {
                let fd = parse_u32(&("PMI_FD", fd))?;
                for (variable, slurm_variable, expected) in [
                    ("PMI_RANK", "SLURM_PROCID", procid),
                    ("PMI_SIZE", ntasks_variable, ntasks),
                ] {
                    if let Some(value) = get(variable) {
                        let value = parse_u32(&(variable, value))?;
                        if value != expected {
                            return Err(SlurmEnvError::PmiMismatch {
                                variable,
                                value,
                                slurm_variable,
                                expected,
                            });
                        }
                    }
                }
                Some(Pmi2Env {
                    fd: i32::try_from(fd).map_err(|_| SlurmEnvError::InvalidNumber {
                        variable: "PMI_FD",
                        value: fd.to_string(),
                    })?,
                    jobid: get("PMI_JOBID"),
                })
            }
        };

        let step = SlurmStep {
            job_id,
            step_id,
            procid,
            ntasks,
            localid,
            nodeid,
            nodes,
            tasks_per_node,
            cpus_per_task,
            gpus,
            srun_comm_host: get("SLURM_SRUN_COMM_HOST"),
            node_name: get("SLURMD_NODENAME"),
            distribution: get("SLURM_DISTRIBUTION"),
            pmi2,
        };
        let num_nodes = first_set(&get, &["SLURM_STEP_NUM_NODES"])
            .map(|found| parse_u32(&found))
            .transpose()?;
        step.check(
            nodelist_variable,
            tasks_per_node_variable,
            ntasks_variable,
            num_nodes,
        )?;
        Ok(Some(step))
    }

    fn check(
        &self,
        nodelist_variable: &'static str,
        tasks_per_node_variable: &'static str,
        ntasks_variable: &'static str,
        num_nodes: Option<u32>,
    ) -> Result<(), SlurmEnvError> {
        if self.procid >= self.ntasks {
            return Err(SlurmEnvError::ProcIdOutOfRange {
                procid: self.procid,
                ntasks: self.ntasks,
                ntasks_variable,
            });
        }
        if let Some(count) = num_nodes.filter(|&count| count as usize != self.nodes.len()) {
            return Err(SlurmEnvError::NodeCountMismatch {
                variable: "SLURM_STEP_NUM_NODES",
                count: count as usize,
                nodelist_variable,
                nodes: self.nodes.len(),
            });
        }
        if self.tasks_per_node.len() != self.nodes.len() {
            return Err(SlurmEnvError::NodeCountMismatch {
                variable: tasks_per_node_variable,
                count: self.tasks_per_node.len(),
                nodelist_variable,
                nodes: self.nodes.len(),
            });
        }
        let sum: u64 = self.tasks_per_node.iter().map(|&n| u64::from(n)).sum();
        if sum != u64::from(self.ntasks) {
            return Err(SlurmEnvError::TaskCountMismatch {
                tasks_per_node_variable,
                sum,
                ntasks_variable,
                ntasks: self.ntasks,
            });
        }
        let Some(&local_size) = self.tasks_per_node.get(self.nodeid as usize) else {
            return Err(SlurmEnvError::NodeIdOutOfRange {
                nodeid: self.nodeid,
                nodes: self.nodes.len(),
                nodelist_variable,
            });
        };
        if self.localid >= local_size {
            return Err(SlurmEnvError::LocalIdOutOfRange {
                localid: self.localid,
                local_size,
                nodeid: self.nodeid,
                tasks_per_node_variable,
            });
        }
        Ok(())
    }

    /// Number of tasks of the step on this task's node.
    pub fn local_size(&self) -> u32 {
        // `from_env` checked that `nodeid` indexes `tasks_per_node`.
        self.tasks_per_node
            .get(self.nodeid as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Number of nodes in the step.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// For every global rank, the index of its node, assuming Slurm's default
    /// block distribution: ranks fill the nodes in node-list order, each node
    /// taking as many consecutive ranks as `tasks_per_node` gives it.
    ///
    /// With `--distribution=cyclic` or a custom task layout this is not where
    /// the ranks run; [`block_distribution_matches`](Self::block_distribution_matches)
    /// tells whether this task's own placement agrees.
    pub fn rank_nodes(&self) -> Vec<u32> {
        self.tasks_per_node
            .iter()
            .zip(0u32..)
            .flat_map(|(&tasks, node)| std::iter::repeat_n(node, tasks as usize))
            .collect()
    }

    /// Whether this task's `SLURM_NODEID` and `SLURM_LOCALID` are those that the
    /// block distribution of [`rank_nodes`](Self::rank_nodes) predicts.
    pub fn block_distribution_matches(&self) -> bool {
        let Some(earlier_nodes) = self.tasks_per_node.get(..self.nodeid as usize) else {
            return false;
        };
        let first_rank_on_node: u64 = earlier_nodes.iter().map(|&n| u64::from(n)).sum();
        let procid = u64::from(self.procid);
        procid >= first_rank_on_node
            && procid - first_rank_on_node == u64::from(self.localid)
            && self.localid < self.local_size()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Environment of rank 5 of `srun -N 3 -n 7 --mpi=pmi2` (3, 3, 1 tasks).
    fn srun_env() -> HashMap<&'static str, String> {
        [
            ("SLURM_JOB_ID", "1234"),
            ("SLURM_JOBID", "1234"),
            ("SLURM_STEP_ID", "2"),
            ("SLURM_STEPID", "2"),
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "7"),
            ("SLURM_NTASKS", "7"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NODEID", "1"),
            ("SLURM_STEP_NODELIST", "nid[001-002],gpu01"),
            ("SLURM_JOB_NODELIST", "nid[001-004],gpu01"),
            ("SLURM_STEP_NUM_NODES", "3"),
            ("SLURM_STEP_TASKS_PER_NODE", "3(x2),1"),
            ("SLURM_TASKS_PER_NODE", "4(x5)"),
            ("SLURM_CPUS_PER_TASK", "4"),
            ("SLURM_STEP_GPUS", "0,1"),
            ("SLURM_JOB_GPUS", "0,1,2,3"),
            ("SLURM_SRUN_COMM_HOST", "10.0.0.1"),
            ("SLURMD_NODENAME", "nid002"),
            ("SLURM_DISTRIBUTION", "block"),
            ("PMI_FD", "7"),
            ("PMI_RANK", "5"),
            ("PMI_SIZE", "7"),
            ("PMI_JOBID", "1234.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect()
    }

    fn read(env: &HashMap<&'static str, String>) -> Result<Option<SlurmStep>, SlurmEnvError> {
        SlurmStep::from_env(|name| env.get(name).cloned())
    }

    fn step(env: &HashMap<&'static str, String>) -> SlurmStep {
        match read(env) {
            Ok(Some(step)) => step,
            other => panic!("expected a step, got {other:?}"),
        }
    }

    fn error(env: &HashMap<&'static str, String>) -> SlurmEnvError {
        match read(env) {
            Err(error) => error,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn reads_a_full_srun_environment() {
        let step = step(&srun_env());
        assert_eq!(
            step,
            SlurmStep {
                job_id: "1234".into(),
                step_id: 2,
                procid: 5,
                ntasks: 7,
                localid: 2,
                nodeid: 1,
                nodes: vec!["nid001".into(), "nid002".into(), "gpu01".into()],
                tasks_per_node: vec![3, 3, 1],
                cpus_per_task: Some(4),
                gpus: Some(vec![0, 1]),
                srun_comm_host: Some("10.0.0.1".into()),
                node_name: Some("nid002".into()),
                distribution: Some("block".into()),
                pmi2: Some(Pmi2Env {
                    fd: 7,
                    jobid: Some("1234.2".into()),
                }),
            }
        );
        assert_eq!(step.local_size(), 3);
        assert_eq!(step.num_nodes(), 3);
        assert_eq!(step.rank_nodes(), [0, 0, 0, 1, 1, 1, 2]);
        assert!(step.block_distribution_matches());
    }

    #[test]
    fn not_under_srun_is_none() {
        assert_eq!(read(&HashMap::new()), Ok(None));
        let mut env = srun_env();
        env.remove("SLURM_PROCID");
        assert_eq!(read(&env), Ok(None));
        let mut env = srun_env();
        env.remove("SLURM_STEP_ID");
        env.remove("SLURM_STEPID");
        assert_eq!(read(&env), Ok(None));
    }

    #[test]
    fn falls_back_to_older_and_job_level_variables() {
        let mut env = srun_env();
        for variable in [
            "SLURM_JOB_ID",
            "SLURM_STEP_ID",
            "SLURM_STEP_NUM_TASKS",
            "SLURM_STEP_NODELIST",
            "SLURM_STEP_TASKS_PER_NODE",
            "SLURM_STEP_GPUS",
            "SLURM_STEP_NUM_NODES",
            "SLURM_CPUS_PER_TASK",
            "PMI_FD",
        ] {
            env.remove(variable);
        }
        env.insert("SLURM_JOB_NODELIST", "nid[001-002]".into());
        env.insert("SLURM_TASKS_PER_NODE", "4,3".into());
        let step = step(&env);
        assert_eq!(step.job_id, "1234");
        assert_eq!(step.step_id, 2);
        assert_eq!(step.nodes, ["nid001", "nid002"]);
        assert_eq!(step.tasks_per_node, [4, 3]);
        assert_eq!(step.gpus, Some(vec![0, 1, 2, 3]));
        assert_eq!(step.cpus_per_task, None);
        assert_eq!(step.pmi2, None);
        assert_eq!(step.rank_nodes(), [0, 0, 0, 0, 1, 1, 1]);
        // Rank 5 is the second rank on node 1 under block distribution, not the third.
        assert!(!step.block_distribution_matches());

        env.insert("SLURM_NODELIST", "a,b".into());
        assert_eq!(self::step(&env).nodes, ["a", "b"]);
    }

    #[test]
    fn missing_required_variables_are_named() {
        for (variable, named) in [
            ("SLURM_JOB_ID", "SLURM_JOB_ID"),
            ("SLURM_LOCALID", "SLURM_LOCALID"),
            ("SLURM_NODEID", "SLURM_NODEID"),
            ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_NUM_TASKS"),
        ] {
            let mut env = srun_env();
            env.remove(variable);
            env.remove("SLURM_JOBID");
            env.remove("SLURM_NTASKS");
            let error = error(&env);
            assert!(matches!(error, SlurmEnvError::Missing { .. }), "{error:?}");
            assert!(error.to_string().contains(named), "{error}");
        }
    }

    #[test]
    fn malformed_values_are_named_with_their_value() {
        for variable in [
            "SLURM_PROCID",
            "SLURM_STEP_ID",
            "SLURM_LOCALID",
            "SLURM_CPUS_PER_TASK",
            "PMI_FD",
            "PMI_RANK",
        ] {
            for bad in ["", "-1", "x", "4294967296", " 1"] {
                let mut env = srun_env();
                env.insert(variable, bad.into());
                assert_eq!(
                    error(&env),
                    SlurmEnvError::InvalidNumber {
                        variable,
                        value: bad.into()
                    }
                );
            }
        }
        let mut env = srun_env();
        env.insert("SLURM_STEP_NODELIST", "nid[1-".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::InvalidNodeList {
                variable: "SLURM_STEP_NODELIST",
                ..
            }
        ));
        let mut env = srun_env();
        env.insert("SLURM_STEP_TASKS_PER_NODE", "3(2)".into());
        let error = self::error(&env);
        assert!(matches!(
            error,
            SlurmEnvError::InvalidTasksPerNode {
                variable: "SLURM_STEP_TASKS_PER_NODE",
                ..
            }
        ));
        assert!(error.to_string().contains("3(2)"), "{error}");
        let mut env = srun_env();
        env.insert("SLURM_STEP_GPUS", "0,gpu1".into());
        assert!(matches!(
            self::error(&env),
            SlurmEnvError::InvalidGpuList {
                variable: "SLURM_STEP_GPUS",
                ..
            }
        ));
    }

    #[test]
    fn inconsistencies_are_errors() {
        let mut env = srun_env();
        env.insert("SLURM_PROCID", "7".into());
        env.insert("PMI_RANK", "7".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::ProcIdOutOfRange {
                procid: 7,
                ntasks: 7,
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("SLURM_NODEID", "3".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::NodeIdOutOfRange {
                nodeid: 3,
                nodes: 3,
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("SLURM_NODEID", "2".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::LocalIdOutOfRange {
                localid: 2,
                local_size: 1,
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("SLURM_STEP_TASKS_PER_NODE", "3(x3)".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::TaskCountMismatch {
                sum: 9,
                ntasks: 7,
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("SLURM_STEP_TASKS_PER_NODE", "3,4".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::NodeCountMismatch {
                variable: "SLURM_STEP_TASKS_PER_NODE",
                count: 2,
                nodes: 3,
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("SLURM_STEP_NUM_NODES", "4".into());
        assert!(matches!(
            error(&env),
            SlurmEnvError::NodeCountMismatch {
                variable: "SLURM_STEP_NUM_NODES",
                ..
            }
        ));

        let mut env = srun_env();
        env.insert("PMI_RANK", "0".into());
        let error = self::error(&env);
        assert_eq!(
            error,
            SlurmEnvError::PmiMismatch {
                variable: "PMI_RANK",
                value: 0,
                slurm_variable: "SLURM_PROCID",
                expected: 5
            }
        );
        assert!(error.to_string().contains("PMI_RANK=0"), "{error}");
    }

    #[test]
    fn empty_gpu_list_is_no_gpus() {
        let mut env = srun_env();
        env.insert("SLURM_STEP_GPUS", String::new());
        assert_eq!(step(&env).gpus, Some(vec![]));
    }
}
