//! Which launcher started this process, and where the process sits in the job.
//!
//! [`detect`] looks at the environment (through a lookup function, so it is pure
//! and tested with a map) and returns a [`World`]: rank, size, local rank, node,
//! hosts and job id.
//!
//! # Detection order
//!
//! The innermost launcher wins. `mpirun` under Slurm starts its daemons with
//! `srun`, so an Open MPI or Hydra rank inherits a complete `SLURM_*` step
//! environment that describes the *daemon* (one task per node), not the rank;
//! reading Slurm first would give every rank on a node the same identity.
//!
//! 1. **Lumen** (`lumen run` and the embedded local cluster), when `LUMEN_RANK`
//!    is set: `LUMEN_RANK`, `LUMEN_SIZE`, `LUMEN_LOCAL_RANK`,
//!    `LUMEN_LOCAL_SIZE`, `LUMEN_NODE_INDEX`, `LUMEN_NUM_NODES`, `LUMEN_JOB_ID`
//!    (all required), `LUMEN_HOSTS` (optional comma list, one host per node)
//!    and `LUMEN_RENDEZVOUS` (optional `host:port`).
//! 2. **Open MPI** (`mpirun`/`prterun`), when `OMPI_COMM_WORLD_RANK` is set:
//!    `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`,
//!    `OMPI_COMM_WORLD_LOCAL_RANK`, `OMPI_COMM_WORLD_LOCAL_SIZE`; the job id
//!    from `OMPI_MCA_orte_ess_jobid`, `OMPI_MCA_ess_base_jobid` or
//!    `PMIX_NAMESPACE`. Open MPI does not export a node index
//!    (`OMPI_COMM_WORLD_NODE_RANK` is a rank *within* the node), so
//!    `num_nodes` is 0: unknown, learned at rendezvous.
//! 3. **MPICH Hydra** (`mpiexec.hydra`, Intel MPI), when `MPI_LOCALRANKID` is
//!    set: `PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`, `MPI_LOCALNRANKS`. The PMI
//!    connection itself (`PMI_FD`, or `PMI_PORT` and `PMI_ID`) is the PMI
//!    client's business. Node index unknown, as for Open MPI.
//! 4. **Slurm** `srun`, when [`SlurmStep::from_env`] finds a step (see
//!    [`lumen_slurm::env`](mod@lumen_slurm::env) for its variables); `pmi2` is true when `srun
//!    --mpi=pmi2` gave a `PMI_FD`.
//! 5. **Hydra** again when only `PMI_RANK` is set (a PMI launcher outside Slurm);
//!    then the Hydra variables above are required.
//! 6. **Singleton** otherwise: rank 0 of 1, job id `singleton-<pid>`.
//!
//! For every kind but Lumen, `LUMEN_RENDEZVOUS` (when set) still provides the
//! rendezvous address, so `LUMEN_RENDEZVOUS=head:7000 srun ./app` works.
//!
//! The job secret (`LUMEN_JOB_SECRET`, 64 hex digits, set by `lumen run`) is
//! read separately by [`job_secret_from_env`], so that it never sits in the
//! `Debug` output of a [`World`].
//!
//! # Invariants
//!
//! A returned [`World`] has `rank < size`, `local_rank < local_size <= size`,
//! and, when `num_nodes > 0`, `node_index < num_nodes`; `hosts` is empty or
//! has exactly `num_nodes` entries. Anything else is a [`DetectError`] naming
//! the variable and its value.

use lumen_slurm::{SlurmEnvError, SlurmStep};
use lumen_transport::auth::JobSecret;
use thiserror::Error;

/// Variable that holds the rendezvous address for every launch kind.
const RENDEZVOUS: &str = "LUMEN_RENDEZVOUS";

/// The launcher that started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaunchKind {
    /// `lumen run` or the embedded local cluster (`LUMEN_*` variables).
    Lumen,
    /// A task of a Slurm `srun` step.
    Slurm {
        /// Whether `srun --mpi=pmi2` gave a PMI-2 socket (`PMI_FD`).
        pmi2: bool,
    },
    /// Open MPI's `mpirun`/`prterun`.
    OpenMpi,
    /// MPICH's Hydra process manager (also Intel MPI).
    Hydra,
    /// No launcher: a lone process, rank 0 of 1.
    Singleton,
}

/// Where this process sits in the job, as its launcher describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Global rank of this process, `0..size`.
    pub rank: u32,
    /// Number of ranks in the job.
    pub size: u32,
    /// Rank among the job's processes on this node, `0..local_size`.
    pub local_rank: u32,
    /// Number of the job's processes on this node.
    pub local_size: u32,
    /// Index of this node among the job's nodes; meaningful only when
    /// `num_nodes > 0`.
    pub node_index: u32,
    /// Number of nodes in the job; 0 when the launcher does not say (Open MPI,
    /// Hydra): it is then learned at rendezvous.
    pub num_nodes: u32,
    /// Host name of each node, in node-index order; empty when unknown.
    pub hosts: Vec<String>,
    /// The launcher's job id; empty when the launcher does not export one.
    pub job_id: String,
    /// The Slurm step id, under `srun`.
    pub step_id: Option<String>,
    /// Which launcher started the process.
    pub kind: LaunchKind,
    /// `host:port` of the rendezvous store, when the launcher gave one.
    pub rendezvous: Option<String>,
}

/// Why the launch environment could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DetectError {
    /// A variable the detected launcher always sets is missing.
    #[error("{variable} is not set, but {trigger} is, so this looks like a {launcher} launch; set {variable} or unset {trigger}")]
    Missing {
        /// The launcher the environment looked like.
        launcher: &'static str,
        /// The variable that made it look so.
        trigger: &'static str,
        /// The missing variable.
        variable: &'static str,
    },
    /// A variable holds something other than a non-negative decimal integer.
    #[error("{variable}={value:?} is not a non-negative integer; fix the launcher that set it, or unset it")]
    InvalidNumber {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// An index is not below the count it indexes (`rank >= size`).
    #[error("{variable}={value} is not below {bound_variable}={bound}; the launch environment is inconsistent")]
    NotBelow {
        /// The index variable.
        variable: &'static str,
        /// Its value.
        value: u32,
        /// The count variable.
        bound_variable: &'static str,
        /// Its value.
        bound: u32,
    },
    /// More processes on this node than in the whole job.
    #[error("{variable}={value} exceeds the job size {bound_variable}={bound}; the launch environment is inconsistent")]
    LocalSizeExceedsSize {
        /// The local size variable.
        variable: &'static str,
        /// Its value.
        value: u32,
        /// The job size variable.
        bound_variable: &'static str,
        /// Its value.
        bound: u32,
    },
    /// `LUMEN_HOSTS` does not list one host per node.
    #[error("LUMEN_HOSTS lists {hosts} hosts but LUMEN_NUM_NODES={num_nodes}; list one host per node or unset LUMEN_HOSTS")]
    HostCountMismatch {
        /// Hosts in `LUMEN_HOSTS`.
        hosts: usize,
        /// Value of `LUMEN_NUM_NODES`.
        num_nodes: u32,
    },
    /// The rendezvous address is not `host:port`.
    #[error(
        "{variable}={value:?} is not `host:port` (IPv6 as `[addr]:port`) with a port in 1..=65535"
    )]
    InvalidRendezvous {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The process runs under `srun` but its `SLURM_*` environment is unusable.
    #[error(transparent)]
    Slurm(#[from] SlurmEnvError),
    /// The job secret is not 64 hex digits (its value is not repeated here).
    #[error("{variable} must be 64 hexadecimal digits (32 bytes) but has {len} characters; the launcher that set it is broken, or unset it")]
    InvalidSecret {
        /// The variable.
        variable: &'static str,
        /// Length of its value.
        len: usize,
    },
}

/// Reads variables for one launcher, remembering which one triggered it.
struct Reader<'a, F> {
    get: &'a F,
    launcher: &'static str,
    trigger: &'static str,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn number(&self, variable: &'static str) -> Result<u32, DetectError> {
        let value = (self.get)(variable).ok_or(DetectError::Missing {
            launcher: self.launcher,
            trigger: self.trigger,
            variable,
        })?;
        parse_u32(variable, value)
    }

    fn text(&self, variable: &'static str) -> Result<String, DetectError> {
        (self.get)(variable).ok_or(DetectError::Missing {
            launcher: self.launcher,
            trigger: self.trigger,
            variable,
        })
    }
}

fn parse_u32(variable: &'static str, value: String) -> Result<u32, DetectError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(number) = value.parse() {
            return Ok(number);
        }
    }
    Err(DetectError::InvalidNumber { variable, value })
}

fn check_below(
    variable: &'static str,
    value: u32,
    bound_variable: &'static str,
    bound: u32,
) -> Result<(), DetectError> {
    if value < bound {
        Ok(())
    } else {
        Err(DetectError::NotBelow {
            variable,
            value,
            bound_variable,
            bound,
        })
    }
}

/// Checks `rank < size`, `local_rank < local_size <= size`.
fn check_ranks(
    names: [&'static str; 4],
    [rank, size, local_rank, local_size]: [u32; 4],
) -> Result<(), DetectError> {
    let [rank_var, size_var, local_rank_var, local_size_var] = names;
    check_below(rank_var, rank, size_var, size)?;
    check_below(local_rank_var, local_rank, local_size_var, local_size)?;
    if local_size > size {
        return Err(DetectError::LocalSizeExceedsSize {
            variable: local_size_var,
            value: local_size,
            bound_variable: size_var,
            bound: size,
        });
    }
    Ok(())
}

/// Validates a `host:port` address; IPv6 hosts must be bracketed.
fn parse_rendezvous(variable: &'static str, value: String) -> Result<String, DetectError> {
    let valid = value.rsplit_once(':').is_some_and(|(host, port)| {
        let host_ok = match host.strip_prefix('[') {
            Some(bracketed) => bracketed
                .strip_suffix(']')
                .is_some_and(|inner| !inner.is_empty() && !inner.contains(['[', ']'])),
            None => !host.is_empty() && !host.contains([':', '[', ']']),
        };
        let port_ok = port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|port| port > 0);
        host_ok && port_ok && !host.contains(char::is_whitespace)
    });
    if valid {
        Ok(value)
    } else {
        Err(DetectError::InvalidRendezvous { variable, value })
    }
}

fn rendezvous(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, DetectError> {
    get(RENDEZVOUS)
        .map(|value| parse_rendezvous(RENDEZVOUS, value))
        .transpose()
}

/// Detects the launcher and this process's place in the job.
///
/// `get` looks up an environment variable, e.g. `|name| std::env::var(name).ok()`.
/// See the [module documentation](self) for the variables read and the order.
///
/// ```
/// use lumen_launcher::env::{detect, LaunchKind};
/// let world = detect(|name| match name {
///     "OMPI_COMM_WORLD_RANK" => Some("3".into()),
///     "OMPI_COMM_WORLD_SIZE" => Some("8".into()),
///     "OMPI_COMM_WORLD_LOCAL_RANK" => Some("1".into()),
///     "OMPI_COMM_WORLD_LOCAL_SIZE" => Some("2".into()),
///     _ => None,
/// })?;
/// assert_eq!((world.rank, world.size, world.kind), (3, 8, LaunchKind::OpenMpi));
/// # Ok::<(), lumen_launcher::env::DetectError>(())
/// ```
pub fn detect(get: impl Fn(&str) -> Option<String>) -> Result<World, DetectError> {
    if get("LUMEN_RANK").is_some() {
        return detect_lumen(&get);
    }
    if get("OMPI_COMM_WORLD_RANK").is_some() {
        return detect_open_mpi(&get);
    }
    if get("MPI_LOCALRANKID").is_some() {
        return detect_hydra(&get, "MPI_LOCALRANKID");
    }
    if let Some(step) = SlurmStep::from_env(&get)? {
        return Ok(World {
            rank: step.procid,
            size: step.ntasks,
            local_rank: step.localid,
            local_size: step.local_size(),
            node_index: step.nodeid,
            // from_env checked nodes.len() == tasks_per_node.len(), which
            // decoding bounds far below u32::MAX.
            num_nodes: u32::try_from(step.nodes.len()).unwrap_or(u32::MAX),
            kind: LaunchKind::Slurm {
                pmi2: step.pmi2.is_some(),
            },
            step_id: Some(step.step_id.to_string()),
            job_id: step.job_id,
            hosts: step.nodes,
            rendezvous: rendezvous(&get)?,
        });
    }
    if get("PMI_RANK").is_some() {
        return detect_hydra(&get, "PMI_RANK");
    }
    Ok(World {
        rank: 0,
        size: 1,
        local_rank: 0,
        local_size: 1,
        node_index: 0,
        num_nodes: 1,
        hosts: Vec::new(),
        job_id: format!("singleton-{}", std::process::id()),
        step_id: None,
        kind: LaunchKind::Singleton,
        rendezvous: rendezvous(&get)?,
    })
}

/// Variable through which `lumen run` passes the job secret to its ranks.
pub const JOB_SECRET_VAR: &str = "LUMEN_JOB_SECRET";

/// Reads the job secret from `LUMEN_JOB_SECRET`; `None` when it is not set.
///
/// ```
/// use lumen_launcher::env::job_secret_from_env;
/// let hex = "ab".repeat(32);
/// let secret = job_secret_from_env(|name| (name == "LUMEN_JOB_SECRET").then(|| hex.clone()))?;
/// assert_eq!(secret.map(|s| s.to_hex()), Some(hex.clone()));
/// assert!(job_secret_from_env(|_| Some("12".into())).is_err());
/// # Ok::<(), lumen_launcher::env::DetectError>(())
/// ```
pub fn job_secret_from_env(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<JobSecret>, DetectError> {
    get(JOB_SECRET_VAR)
        .map(|value| {
            JobSecret::from_hex(&value).map_err(|_| DetectError::InvalidSecret {
                variable: JOB_SECRET_VAR,
                len: value.trim().len(),
            })
        })
        .transpose()
}

fn detect_lumen<F: Fn(&str) -> Option<String>>(get: &F) -> Result<World, DetectError> {
    let read = Reader {
        get,
        launcher: "Lumen",
        trigger: "LUMEN_RANK",
    };
    let names = [
        "LUMEN_RANK",
        "LUMEN_SIZE",
        "LUMEN_LOCAL_RANK",
        "LUMEN_LOCAL_SIZE",
    ];
    let [rank, size, local_rank, local_size] = [
        read.number(names[0])?,
        read.number(names[1])?,
        read.number(names[2])?,
        read.number(names[3])?,
    ];
    let node_index = read.number("LUMEN_NODE_INDEX")?;
    let num_nodes = read.number("LUMEN_NUM_NODES")?;
    let job_id = read.text("LUMEN_JOB_ID")?;
    check_ranks(names, [rank, size, local_rank, local_size])?;
    check_below("LUMEN_NODE_INDEX", node_index, "LUMEN_NUM_NODES", num_nodes)?;
    let hosts: Vec<String> = get("LUMEN_HOSTS")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|host| !host.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if !hosts.is_empty() && hosts.len() != num_nodes as usize {
        return Err(DetectError::HostCountMismatch {
            hosts: hosts.len(),
            num_nodes,
        });
    }
    Ok(World {
        rank,
        size,
        local_rank,
        local_size,
        node_index,
        num_nodes,
        hosts,
        job_id,
        step_id: None,
        kind: LaunchKind::Lumen,
        rendezvous: rendezvous(get)?,
    })
}

fn detect_open_mpi<F: Fn(&str) -> Option<String>>(get: &F) -> Result<World, DetectError> {
    let read = Reader {
        get,
        launcher: "Open MPI",
        trigger: "OMPI_COMM_WORLD_RANK",
    };
    let names = [
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ];
    let [rank, size, local_rank, local_size] = [
        read.number(names[0])?,
        read.number(names[1])?,
        read.number(names[2])?,
        read.number(names[3])?,
    ];
    check_ranks(names, [rank, size, local_rank, local_size])?;
    let job_id = [
        "OMPI_MCA_orte_ess_jobid",
        "OMPI_MCA_ess_base_jobid",
        "PMIX_NAMESPACE",
    ]
    .into_iter()
    .find_map(get)
    .unwrap_or_default();
    Ok(World {
        rank,
        size,
        local_rank,
        local_size,
        node_index: 0,
        num_nodes: 0,
        hosts: Vec::new(),
        job_id,
        step_id: None,
        kind: LaunchKind::OpenMpi,
        rendezvous: rendezvous(get)?,
    })
}

fn detect_hydra<F: Fn(&str) -> Option<String>>(
    get: &F,
    trigger: &'static str,
) -> Result<World, DetectError> {
    let read = Reader {
        get,
        launcher: "MPICH Hydra",
        trigger,
    };
    let names = ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"];
    let [rank, size, local_rank, local_size] = [
        read.number(names[0])?,
        read.number(names[1])?,
        read.number(names[2])?,
        read.number(names[3])?,
    ];
    check_ranks(names, [rank, size, local_rank, local_size])?;
    Ok(World {
        rank,
        size,
        local_rank,
        local_size,
        node_index: 0,
        num_nodes: 0,
        hosts: Vec::new(),
        job_id: get("PMI_JOBID").unwrap_or_default(),
        step_id: None,
        kind: LaunchKind::Hydra,
        rendezvous: rendezvous(get)?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect()
    }

    fn run(env: &HashMap<&'static str, String>) -> Result<World, DetectError> {
        detect(|name| env.get(name).cloned())
    }

    fn detected(env: &HashMap<&'static str, String>) -> World {
        match run(env) {
            Ok(world) => world,
            Err(error) => panic!("{error}"),
        }
    }

    fn failure(env: &HashMap<&'static str, String>) -> DetectError {
        match run(env) {
            Ok(world) => panic!("expected an error, got {world:?}"),
            Err(error) => error,
        }
    }

    const LUMEN: &[(&str, &str)] = &[
        ("LUMEN_RANK", "5"),
        ("LUMEN_SIZE", "8"),
        ("LUMEN_LOCAL_RANK", "1"),
        ("LUMEN_LOCAL_SIZE", "4"),
        ("LUMEN_NODE_INDEX", "1"),
        ("LUMEN_NUM_NODES", "2"),
        ("LUMEN_JOB_ID", "job-7"),
        ("LUMEN_RENDEZVOUS", "10.0.0.1:7000"),
        ("LUMEN_HOSTS", "a,b"),
    ];

    const SLURM: &[(&str, &str)] = &[
        ("SLURM_JOB_ID", "99"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODEID", "1"),
        ("SLURM_STEP_NODELIST", "n[1-2]"),
        ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
    ];

    const OMPI: &[(&str, &str)] = &[
        ("OMPI_COMM_WORLD_RANK", "2"),
        ("OMPI_COMM_WORLD_SIZE", "4"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ("OMPI_COMM_WORLD_NODE_RANK", "0"),
        ("PMIX_NAMESPACE", "prterun-host-123@1"),
    ];

    const HYDRA: &[(&str, &str)] = &[
        ("PMI_RANK", "3"),
        ("PMI_SIZE", "6"),
        ("MPI_LOCALRANKID", "0"),
        ("MPI_LOCALNRANKS", "3"),
        ("PMI_FD", "5"),
    ];

    #[test]
    fn lumen_variables() {
        assert_eq!(
            detected(&env(LUMEN)),
            World {
                rank: 5,
                size: 8,
                local_rank: 1,
                local_size: 4,
                node_index: 1,
                num_nodes: 2,
                hosts: vec!["a".into(), "b".into()],
                job_id: "job-7".into(),
                step_id: None,
                kind: LaunchKind::Lumen,
                rendezvous: Some("10.0.0.1:7000".into()),
            }
        );
        let mut minimal = env(LUMEN);
        minimal.remove("LUMEN_HOSTS");
        minimal.remove("LUMEN_RENDEZVOUS");
        let world = detected(&minimal);
        assert!(world.hosts.is_empty());
        assert_eq!(world.rendezvous, None);
    }

    #[test]
    fn lumen_wins_over_everything() {
        let all = env(&[LUMEN, SLURM, OMPI, HYDRA].concat());
        assert_eq!(detected(&all).kind, LaunchKind::Lumen);
    }

    #[test]
    fn lumen_errors_name_the_variable() {
        let mut missing = env(LUMEN);
        missing.remove("LUMEN_JOB_ID");
        let error = failure(&missing);
        assert!(matches!(
            error,
            DetectError::Missing {
                variable: "LUMEN_JOB_ID",
                ..
            }
        ));
        assert!(error.to_string().contains("LUMEN_JOB_ID"), "{error}");

        let mut bad = env(LUMEN);
        bad.insert("LUMEN_SIZE", "eight".into());
        let error = failure(&bad);
        assert_eq!(
            error,
            DetectError::InvalidNumber {
                variable: "LUMEN_SIZE",
                value: "eight".into()
            }
        );
        assert!(
            error.to_string().contains("LUMEN_SIZE=\"eight\""),
            "{error}"
        );

        let cases: &[(&str, &str, &str)] = &[
            ("LUMEN_RANK", "8", "LUMEN_RANK"),
            ("LUMEN_LOCAL_RANK", "4", "LUMEN_LOCAL_RANK"),
            ("LUMEN_NODE_INDEX", "2", "LUMEN_NODE_INDEX"),
        ];
        for &(variable, value, named) in cases {
            let mut env = env(LUMEN);
            env.insert(variable, value.into());
            assert!(
                matches!(failure(&env), DetectError::NotBelow { variable, .. } if variable == named),
                "{variable}={value}"
            );
        }

        let mut local_too_big = env(LUMEN);
        local_too_big.insert("LUMEN_LOCAL_SIZE", "9".into());
        assert!(matches!(
            failure(&local_too_big),
            DetectError::LocalSizeExceedsSize { .. }
        ));

        let mut hosts = env(LUMEN);
        hosts.insert("LUMEN_HOSTS", "a,b,c".into());
        assert_eq!(
            failure(&hosts),
            DetectError::HostCountMismatch {
                hosts: 3,
                num_nodes: 2
            }
        );
    }

    #[test]
    fn rendezvous_must_be_host_and_port() {
        for good in [
            "h:1",
            "10.0.0.1:7000",
            "[::1]:7000",
            "node-01.cluster:65535",
        ] {
            let mut env = env(LUMEN);
            env.insert("LUMEN_RENDEZVOUS", good.into());
            assert_eq!(detected(&env).rendezvous.as_deref(), Some(good));
        }
        for bad in [
            "",
            "host",
            "host:",
            ":7000",
            "host:0",
            "host:65536",
            "host:x",
            "::1:7000",
            "[::1:7000",
            "a b:1",
            "h:+1",
        ] {
            let mut env = env(LUMEN);
            env.insert("LUMEN_RENDEZVOUS", bad.into());
            assert_eq!(
                failure(&env),
                DetectError::InvalidRendezvous {
                    variable: "LUMEN_RENDEZVOUS",
                    value: bad.into()
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn slurm_step() {
        let world = detected(&env(SLURM));
        assert_eq!(
            world,
            World {
                rank: 3,
                size: 4,
                local_rank: 1,
                local_size: 2,
                node_index: 1,
                num_nodes: 2,
                hosts: vec!["n1".into(), "n2".into()],
                job_id: "99".into(),
                step_id: Some("0".into()),
                kind: LaunchKind::Slurm { pmi2: false },
                rendezvous: None,
            }
        );
        let pmi2 = env(&[
            SLURM,
            &[("PMI_FD", "4"), ("PMI_RANK", "3"), ("PMI_SIZE", "4")],
        ]
        .concat());
        assert_eq!(detected(&pmi2).kind, LaunchKind::Slurm { pmi2: true });
        let with_rendezvous = env(&[SLURM, &[("LUMEN_RENDEZVOUS", "n1:7000")]].concat());
        assert_eq!(
            detected(&with_rendezvous).rendezvous.as_deref(),
            Some("n1:7000")
        );
    }

    #[test]
    fn slurm_errors_pass_through() {
        let broken = env(&[SLURM, &[("SLURM_NTASKS", "5")]].concat());
        assert!(matches!(
            failure(&broken),
            DetectError::Slurm(SlurmEnvError::TaskCountMismatch { .. })
        ));
    }

    #[test]
    fn open_mpi() {
        assert_eq!(
            detected(&env(OMPI)),
            World {
                rank: 2,
                size: 4,
                local_rank: 0,
                local_size: 2,
                node_index: 0,
                num_nodes: 0,
                hosts: vec![],
                job_id: "prterun-host-123@1".into(),
                step_id: None,
                kind: LaunchKind::OpenMpi,
                rendezvous: None,
            }
        );
        let old = env(&[OMPI, &[("OMPI_MCA_ess_base_jobid", "3735879681")]].concat());
        assert_eq!(detected(&old).job_id, "3735879681");
        let mut missing = env(OMPI);
        missing.remove("OMPI_COMM_WORLD_LOCAL_SIZE");
        assert!(matches!(
            failure(&missing),
            DetectError::Missing {
                launcher: "Open MPI",
                variable: "OMPI_COMM_WORLD_LOCAL_SIZE",
                ..
            }
        ));
    }

    #[test]
    fn mpirun_under_slurm_is_open_mpi_not_the_daemon_step() {
        // orted was started by `srun` as task 1 of 2 (one per node); the rank
        // inherits that step's variables.
        let daemon_step = [
            ("SLURM_JOB_ID", "99"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "1"),
            ("SLURM_STEP_NODELIST", "n[1-2]"),
            ("SLURM_STEP_TASKS_PER_NODE", "1(x2)"),
        ];
        let world = detected(&env(&[&daemon_step[..], OMPI].concat()));
        assert_eq!(
            (world.kind, world.rank, world.size),
            (LaunchKind::OpenMpi, 2, 4)
        );
        let world = detected(&env(&[&daemon_step[..], HYDRA].concat()));
        assert_eq!(
            (world.kind, world.rank, world.size),
            (LaunchKind::Hydra, 3, 6)
        );
    }

    #[test]
    fn hydra() {
        assert_eq!(
            detected(&env(HYDRA)),
            World {
                rank: 3,
                size: 6,
                local_rank: 0,
                local_size: 3,
                node_index: 0,
                num_nodes: 0,
                hosts: vec![],
                job_id: String::new(),
                step_id: None,
                kind: LaunchKind::Hydra,
                rendezvous: None,
            }
        );
        let mut pmi_only = env(HYDRA);
        pmi_only.remove("MPI_LOCALRANKID");
        assert!(matches!(
            failure(&pmi_only),
            DetectError::Missing {
                trigger: "PMI_RANK",
                variable: "MPI_LOCALRANKID",
                ..
            }
        ));
        let mut bad = env(HYDRA);
        bad.insert("PMI_SIZE", "-6".into());
        assert_eq!(
            failure(&bad),
            DetectError::InvalidNumber {
                variable: "PMI_SIZE",
                value: "-6".into()
            }
        );
    }

    #[test]
    fn singleton() {
        let world = detected(&HashMap::new());
        assert_eq!(world.kind, LaunchKind::Singleton);
        assert_eq!(
            (world.rank, world.size, world.local_rank, world.local_size),
            (0, 1, 0, 1)
        );
        assert_eq!((world.node_index, world.num_nodes), (0, 1));
        assert!(world.job_id.starts_with("singleton-"));
        // An sbatch script or salloc shell is not an srun step.
        let batch = env(&[("SLURM_JOB_ID", "99"), ("SLURM_NODELIST", "n[1-4]")]);
        assert_eq!(detected(&batch).kind, LaunchKind::Singleton);
    }

    #[test]
    fn job_secret_is_read_and_never_echoed() {
        let hex = "0f".repeat(32);
        let secret = job_secret_from_env(|name| (name == JOB_SECRET_VAR).then(|| hex.clone()));
        assert_eq!(secret.map(|s| s.map(|s| s.to_hex())), Ok(Some(hex)));
        assert_eq!(job_secret_from_env(|_| None).map(|s| s.is_none()), Ok(true));
        let bad = "not-a-secret-but-private";
        let error = match job_secret_from_env(|_| Some(bad.into())) {
            Err(error) => error,
            Ok(_) => panic!("{bad:?} accepted as a secret"),
        };
        assert_eq!(
            error,
            DetectError::InvalidSecret {
                variable: JOB_SECRET_VAR,
                len: bad.len()
            }
        );
        assert!(!error.to_string().contains(bad), "{error}");
    }
}
