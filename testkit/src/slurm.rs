//! [`SlurmCluster`]: a real Slurm (slurmctld + slurmd from Debian's packages)
//! brought up by `scripts/slurm-cluster.sh` for tests.
//!
//! The script is the single source of truth for how the cluster is built; this
//! module only calls `start` (idempotent, serialised by a lock file, so tests
//! running in parallel share one cluster), reads the `env` file the script
//! writes, and builds [`Command`]s that run *on* the cluster: in `netns` mode
//! client commands must run inside the controller's network namespace, which
//! the script's `login` wrapper does.
//!
//! Tests never stop the cluster (another test may be using it):
//! `scripts/test.sh` stops it after the suite, and so does
//! `scripts/slurm-cluster.sh stop` by hand.
//!
//! Where a cluster cannot exist (not root, no network namespaces), tests call
//! [`slurm_unavailable_reason`] and skip, printing the reason. Where it could
//! exist but the script fails, [`SlurmCluster::ensure`] returns the error and
//! the test fails: a broken cluster is a bug, not a reason to skip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the script keeps its state unless `LUMEN_SLURM_RUN` says otherwise.
pub const DEFAULT_RUN_DIR: &str = "/tmp/lumen-slurm";

/// How the simulated cluster is laid out (see `scripts/slurm-cluster.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmMode {
    /// Every slurmd in this network namespace, on 127.0.0.1 (nodes `n1..`).
    Local,
    /// Controller and hosts `h1..h3` in network namespaces on a bridge.
    Netns,
}

impl SlurmMode {
    fn as_str(self) -> &'static str {
        match self {
            SlurmMode::Local => "local",
            SlurmMode::Netns => "netns",
        }
    }
}

/// Why the test cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SlurmClusterError {
    /// The start script could not be run at all.
    #[error("could not run {script}: {source}")]
    Spawn {
        /// The script's path.
        script: PathBuf,
        /// What exec said.
        #[source]
        source: std::io::Error,
    },
    /// The start script failed.
    #[error("`{script} start {mode}` failed ({status}):\n{output}")]
    Start {
        /// The script's path.
        script: PathBuf,
        /// The mode asked for.
        mode: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed.
        output: String,
    },
    /// The script succeeded but its `env` file is missing or incomplete.
    #[error("{path}: {reason}; the cluster script and this harness disagree")]
    Env {
        /// The env file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A running test cluster.
#[derive(Debug, Clone)]
pub struct SlurmCluster {
    mode: SlurmMode,
    run_dir: PathBuf,
    conf: PathBuf,
    login: PathBuf,
    nodes: Vec<String>,
}

/// `scripts/slurm-cluster.sh` of this workspace.
pub fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("slurm-cluster.sh")
}

/// Why a Slurm test cluster cannot exist here (not root, or network
/// namespaces unavailable); `None` when [`SlurmCluster::ensure`] should work.
pub fn slurm_unavailable_reason(mode: SlurmMode) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "the Slurm test cluster needs root (daemons, munge), running as euid {euid}"
        ));
    }
    if mode == SlurmMode::Netns {
        if let Some(reason) = crate::netns_unavailable_reason() {
            return Some(format!("netns mode needs network namespaces: {reason}"));
        }
    }
    None
}

impl SlurmCluster {
    /// Starts the cluster in `mode` unless it already runs that way, and
    /// returns a handle to it. Installs slurm-wlm and munge with apt-get when
    /// missing (the script does).
    pub fn ensure(mode: SlurmMode) -> Result<SlurmCluster, SlurmClusterError> {
        let script = cluster_script();
        let output = Command::new("bash")
            .arg(&script)
            .args(["start", mode.as_str()])
            .output()
            .map_err(|source| SlurmClusterError::Spawn {
                script: script.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(SlurmClusterError::Start {
                script,
                mode: mode.as_str(),
                status: output.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let run_dir = std::env::var_os("LUMEN_SLURM_RUN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
        Self::from_env_file(mode, run_dir)
    }

    fn from_env_file(mode: SlurmMode, run_dir: PathBuf) -> Result<SlurmCluster, SlurmClusterError> {
        let path = run_dir.join("env");
        let env_error = |reason: String| SlurmClusterError::Env {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| env_error(e.to_string()))?;
        let vars: HashMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.to_string())
                .ok_or_else(|| env_error(format!("{name} is missing")))
        };
        let running = get("LUMEN_SLURM_MODE")?;
        if running != mode.as_str() {
            return Err(env_error(format!(
                "the cluster runs in {running} mode, {} was asked for (another test switched it?)",
                mode.as_str()
            )));
        }
        Ok(SlurmCluster {
            mode,
            conf: PathBuf::from(get("SLURM_CONF")?),
            login: PathBuf::from(get("LUMEN_SLURM_LOGIN")?),
            nodes: get("LUMEN_SLURM_NODES")?
                .split(',')
                .map(str::to_owned)
                .collect(),
            run_dir,
        })
    }

    /// The layout.
    pub fn mode(&self) -> SlurmMode {
        self.mode
    }

    /// Slurm's node names (`h1,h2,h3` or `n1,n2`).
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The `slurm.conf` in use.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The script's state directory (logs under `logs/`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// A command that runs `program` where Slurm clients work (inside the
    /// controller's namespace in netns mode), with `SLURM_CONF` set.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(&self.login);
        command.arg(program).env("SLURM_CONF", &self.conf);
        command
    }

    /// `srun` on the cluster; add its arguments.
    pub fn srun(&self) -> Command {
        self.command("srun")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir_with(env: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lumen-testkit-slurm-{}-{}",
            std::process::id(),
            env.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("env"), env).unwrap();
        dir
    }

    #[test]
    fn reads_the_env_file_the_script_writes() {
        let dir = run_dir_with(
            "SLURM_CONF=/x/slurm.conf\nLUMEN_SLURM_MODE=netns\nLUMEN_SLURM_LOGIN=/x/bin/login\nLUMEN_SLURM_NODES=h1,h2,h3\nLUMEN_SLURM_CPUS=8\n",
        );
        let cluster = SlurmCluster::from_env_file(SlurmMode::Netns, dir.clone()).unwrap();
        assert_eq!(cluster.nodes(), ["h1", "h2", "h3"]);
        assert_eq!(cluster.conf(), Path::new("/x/slurm.conf"));
        assert_eq!(cluster.srun().get_program(), "/x/bin/login");
        let error = SlurmCluster::from_env_file(SlurmMode::Local, dir.clone()).unwrap_err();
        assert!(error.to_string().contains("runs in netns mode"), "{error}");
        let _ = std::fs::remove_dir_all(dir);

        let dir = run_dir_with("LUMEN_SLURM_MODE=local\n");
        let error = SlurmCluster::from_env_file(SlurmMode::Local, dir.clone()).unwrap_err();
        assert!(error.to_string().contains("is missing"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_script_is_where_the_harness_looks() {
        assert!(cluster_script().exists(), "{}", cluster_script().display());
    }
}
