//! The runtime's settings, read once from the environment into one typed
//! value (the transport's and launcher's settings are in
//! `lumen_launcher::config`).
//!
//! | variable | field | default |
//! |---|---|---|
//! | `LUMEN_NUM_WORKERS` | [`num_workers`](RuntimeConfig::num_workers) | cores of the machine |
//! | `LUMEN_NUM_CPUS` | CPU slots of each rank | 1 |
//! | `LUMEN_NUM_GPUS` | GPUs of each rank | 0 |
//! | `LUMEN_RESOURCES` | custom resources of each rank, `name=amount,...` | none |
//! | `LUMEN_INLINE_MAX` | [`inline_max`](RuntimeConfig::inline_max) | 102400 |
//! | `LUMEN_ARENA_BYTES` | [`arena_bytes`](RuntimeConfig::arena_bytes) (0: no arena) | half of /dev/shm's free space, at most 4 GiB |
//! | `LUMEN_SPILL_DIR` | [`spill_dir`](RuntimeConfig::spill_dir) | the temporary directory |
//! | `LUMEN_PULL_CHUNK_BYTES` | [`pull_chunk_bytes`](RuntimeConfig::pull_chunk_bytes) | 8 MiB |
//! | `LUMEN_BUILD_ID` | [`build_id`](RuntimeConfig::build_id) | hash of the executable |
//! | `LUMEN_RT_SPIN_US` | [`wait_spin`](RuntimeConfig::wait_spin) | 100 on a rank bound to cores of its own, else 0 |
//! | `LUMEN_BIND` | [`bind`](RuntimeConfig::bind): `auto`, `cores`, `none` | `auto` |
//! | `LUMEN_FABRIC` | [`fabric`](RuntimeConfig::fabric): `auto`, `ofi`, `tcp`, `verbs` | `auto` |
//! | `LUMEN_MAX_PENDING_TASKS` | [`max_pending`](RuntimeConfig::max_pending) (0: no limit) | 100000 |
//! | `LUMEN_SUBMIT_TIMEOUT_MS` | [`submit_timeout`](RuntimeConfig::submit_timeout) | none: wait |
//! | `LUMEN_MAX_OBJECT_BYTES` | [`max_object_bytes`](RuntimeConfig::max_object_bytes) (K, M, G) | none |

use std::path::PathBuf;
use std::time::Duration;

use super::options::Resources;

/// A setting that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is not {expected}; fix or unset it")]
pub struct RuntimeConfigError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// The spin of a waiting caller on a rank that owns its cores: a blocking
/// task round trip here takes 10-20 us, so a caller that spins this long
/// gets nearly every reply on its own thread, and a wait for a longer task
/// costs at most this much CPU before it sleeps.
pub const AUTO_WAIT_SPIN: Duration = Duration::from_micros(100);

/// The runtime's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Worker processes of the embedded local cluster (`None`: one per core).
    pub num_workers: Option<u32>,
    /// What each rank offers to tasks and actors.
    pub resources: Resources,
    /// Encoded values up to this size travel inline with replies.
    pub inline_max: usize,
    /// Size of the node arena; `None`: automatic; `Some(0)`: no arena.
    pub arena_bytes: Option<u64>,
    /// Where full arenas spill objects.
    pub spill_dir: PathBuf,
    /// Bytes per chunk when pulling an object from another node.
    pub pull_chunk_bytes: u64,
    /// Overrides the build id (hashed); `None`: hash of the executable.
    pub build_id: Option<String>,
    /// How long a waiting caller (and an idle executor thread) drives
    /// progress itself before it sleeps. `None`: [`AUTO_WAIT_SPIN`] when
    /// the rank is bound to cores no other rank shares, else zero (see
    /// `core::Spin`: spinning beside another rank's threads on a shared
    /// core made round trips 5x slower).
    pub wait_spin: Option<Duration>,
    /// The rank's GPUs, as CUDA ordinals of its process: devices
    /// `0..n` with `LUMEN_NUM_GPUS=n` (an override), else the GPUs the
    /// Slurm allocation gives the rank (`SLURM_STEP_GPUS`, gres), else none.
    /// Tasks and actors with `num_gpus` get ids out of these.
    pub gpu_ids: Option<Vec<u32>>,
    /// Whether each rank binds itself to cores chosen from the machine's
    /// topology (see `runtime::binding`).
    pub bind: BindPolicy,
    /// Which fabric moves object pulls between nodes (`LUMEN_FABRIC`, see
    /// `runtime::fabric`).
    pub fabric: lumen_transport::fabric::FabricChoice,
    /// Tasks and actor calls a rank may have submitted and not seen
    /// finish; a submission beyond waits for one to finish (backpressure,
    /// instead of an unbounded table). 0: no limit.
    pub max_pending: usize,
    /// How long a submission waits for room under `max_pending` before it
    /// fails with `TooManyPending`; `None`: as long as it takes.
    pub submit_timeout: Option<Duration>,
    /// The largest value a `put` or a task's result may encode to;
    /// `None`: no limit but the stores'.
    pub max_object_bytes: Option<u64>,
}

/// How a rank binds itself to cores (`LUMEN_BIND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindPolicy {
    /// Bind when every local rank gets cores of its own and nothing else
    /// (Slurm's `--cpus-per-task`) bound the rank already.
    #[default]
    Auto,
    /// Always bind (ranks share cores when there are more ranks than cores).
    Cores,
    /// Never bind: the OS places the threads.
    None,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            num_workers: None,
            resources: Resources {
                cpus: 1.0,
                ..Resources::default()
            },
            inline_max: 100 * 1024,
            arena_bytes: None,
            spill_dir: std::env::temp_dir(),
            pull_chunk_bytes: 8 << 20,
            build_id: None,
            wait_spin: None,
            gpu_ids: None,
            bind: BindPolicy::Auto,
            fabric: lumen_transport::fabric::FabricChoice::Auto,
            max_pending: 100_000,
            submit_timeout: None,
            max_object_bytes: None,
        }
    }
}

impl RuntimeConfig {
    /// Takes the GPUs an allocation gives this rank (their CUDA ordinals),
    /// unless `LUMEN_NUM_GPUS` already said how many it has.
    pub fn with_allocated_gpus(mut self, ordinals: &[u32]) -> Self {
        if self.gpu_ids.is_none() && !ordinals.is_empty() {
            self.resources.gpus = ordinals.len() as f64;
            self.gpu_ids = Some(ordinals.to_vec());
        }
        self
    }

    /// The rank's GPU ids (see [`RuntimeConfig::gpu_ids`]).
    pub(crate) fn rank_gpu_ids(&self) -> Vec<u32> {
        self.gpu_ids
            .clone()
            .unwrap_or_else(|| (0..self.resources.gpus.max(0.0).ceil() as u32).collect())
    }
}

fn parse<T: std::str::FromStr>(
    variable: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, RuntimeConfigError> {
    value.trim().parse().map_err(|_| RuntimeConfigError {
        variable,
        value: value.to_string(),
        expected,
    })
}

fn amount(variable: &'static str, value: &str) -> Result<f64, RuntimeConfigError> {
    let parsed: f64 = parse(variable, value, "a non-negative number")?;
    if parsed.is_finite() && parsed >= 0.0 {
        Ok(parsed)
    } else {
        Err(RuntimeConfigError {
            variable,
            value: value.to_string(),
            expected: "a non-negative number",
        })
    }
}

impl RuntimeConfig {
    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, RuntimeConfigError> {
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut config = RuntimeConfig::default();
        if let Some(v) = set("LUMEN_NUM_WORKERS") {
            config.num_workers = Some(parse("LUMEN_NUM_WORKERS", &v, "a number of processes")?);
        }
        if let Some(v) = set("LUMEN_NUM_CPUS") {
            config.resources.cpus = amount("LUMEN_NUM_CPUS", &v)?;
        }
        if let Some(v) = set("LUMEN_NUM_GPUS") {
            config.resources.gpus = amount("LUMEN_NUM_GPUS", &v)?;
            config.gpu_ids = Some((0..config.resources.gpus.ceil() as u32).collect());
        }
        if let Some(v) = set("LUMEN_RESOURCES") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, value) = item
                    .split_once('=')
                    .filter(|(name, _)| !name.trim().is_empty())
                    .ok_or_else(|| RuntimeConfigError {
                        variable: "LUMEN_RESOURCES",
                        value: v.clone(),
                        expected: "a list of name=amount",
                    })?;
                config
                    .resources
                    .custom
                    .insert(name.trim().to_string(), amount("LUMEN_RESOURCES", value)?);
            }
        }
        if let Some(v) = set("LUMEN_INLINE_MAX") {
            config.inline_max = parse("LUMEN_INLINE_MAX", &v, "a number of bytes")?;
        }
        if let Some(v) = set("LUMEN_ARENA_BYTES") {
            config.arena_bytes = Some(parse("LUMEN_ARENA_BYTES", &v, "a number of bytes")?);
        }
        if let Some(v) = set("LUMEN_SPILL_DIR") {
            config.spill_dir = PathBuf::from(v);
        }
        if let Some(v) = set("LUMEN_PULL_CHUNK_BYTES") {
            let bytes: u64 = parse("LUMEN_PULL_CHUNK_BYTES", &v, "a positive number of bytes")?;
            if bytes == 0 {
                return Err(RuntimeConfigError {
                    variable: "LUMEN_PULL_CHUNK_BYTES",
                    value: v,
                    expected: "a positive number of bytes",
                });
            }
            config.pull_chunk_bytes = bytes;
        }
        config.build_id = set("LUMEN_BUILD_ID");
        if let Some(v) = set("LUMEN_BIND") {
            config.bind = match v.trim() {
                "auto" => BindPolicy::Auto,
                "cores" | "core" => BindPolicy::Cores,
                "none" | "off" => BindPolicy::None,
                _ => {
                    return Err(RuntimeConfigError {
                        variable: "LUMEN_BIND",
                        value: v,
                        expected: "auto, cores or none",
                    })
                }
            };
        }
        if let Some(v) = set("LUMEN_FABRIC") {
            config.fabric =
                lumen_transport::fabric::FabricChoice::parse(Some(&v)).map_err(|_| {
                    RuntimeConfigError {
                        variable: "LUMEN_FABRIC",
                        value: v,
                        expected: "verbs, ofi, tcp or auto",
                    }
                })?;
        }
        if let Some(v) = set("LUMEN_MAX_PENDING_TASKS") {
            config.max_pending = parse("LUMEN_MAX_PENDING_TASKS", &v, "a number of tasks")?;
        }
        if let Some(v) = set("LUMEN_SUBMIT_TIMEOUT_MS") {
            let ms: u64 = parse("LUMEN_SUBMIT_TIMEOUT_MS", &v, "a number of milliseconds")?;
            config.submit_timeout = Some(Duration::from_millis(ms));
        }
        if let Some(v) = set("LUMEN_MAX_OBJECT_BYTES") {
            config.max_object_bytes = Some(
                lumen_transport::fabric::parse_size(&v)
                    .map(|b| b as u64)
                    .ok_or_else(|| RuntimeConfigError {
                        variable: "LUMEN_MAX_OBJECT_BYTES",
                        value: v.clone(),
                        expected: "a number of bytes (K, M or G)",
                    })?,
            );
        }
        if let Some(v) = set("LUMEN_RT_SPIN_US") {
            let us: u64 = parse("LUMEN_RT_SPIN_US", &v, "a number of microseconds")?;
            config.wait_spin = Some(Duration::from_micros(us));
        }
        Ok(config)
    }

    /// Arena size to use: the setting, or half of what /dev/shm has free,
    /// at most 4 GiB (the segment is sparse: pages are used as objects
    /// need them). 0: no arena.
    pub fn arena_capacity(&self) -> u64 {
        self.arena_bytes.unwrap_or_else(|| {
            let free = rustix::fs::statvfs("/dev/shm")
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                .unwrap_or(0);
            (free / 2).min(4 << 30)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<RuntimeConfig, RuntimeConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RuntimeConfig::from_env(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_and_settings() {
        assert_eq!(read(&[]), Ok(RuntimeConfig::default()));
        let config = read(&[
            ("LUMEN_NUM_WORKERS", "3"),
            ("LUMEN_NUM_CPUS", "2.5"),
            ("LUMEN_NUM_GPUS", "1"),
            ("LUMEN_RESOURCES", "ssd=1, fpga=2"),
            ("LUMEN_INLINE_MAX", "4096"),
            ("LUMEN_ARENA_BYTES", "0"),
            ("LUMEN_SPILL_DIR", "/var/tmp"),
            ("LUMEN_PULL_CHUNK_BYTES", "1048576"),
            ("LUMEN_BUILD_ID", "v1"),
            ("LUMEN_RT_SPIN_US", "20"),
            ("LUMEN_MAX_PENDING_TASKS", "64"),
            ("LUMEN_SUBMIT_TIMEOUT_MS", "1500"),
            ("LUMEN_MAX_OBJECT_BYTES", "2G"),
        ])
        .expect("valid");
        assert_eq!(config.max_pending, 64);
        assert_eq!(config.submit_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config.max_object_bytes, Some(2 << 30));
        assert_eq!(config.num_workers, Some(3));
        assert_eq!(config.resources.cpus, 2.5);
        assert_eq!(config.resources.gpus, 1.0);
        assert_eq!(config.resources.custom.get("fpga"), Some(&2.0));
        assert_eq!(config.inline_max, 4096);
        assert_eq!(config.arena_capacity(), 0);
        assert_eq!(config.spill_dir, PathBuf::from("/var/tmp"));
        assert_eq!(config.pull_chunk_bytes, 1 << 20);
        assert_eq!(config.build_id.as_deref(), Some("v1"));
        assert_eq!(config.wait_spin, Some(Duration::from_micros(20)));
    }

    #[test]
    fn bad_values_say_which_variable() {
        for (name, value) in [
            ("LUMEN_NUM_WORKERS", "many"),
            ("LUMEN_NUM_CPUS", "-1"),
            ("LUMEN_NUM_GPUS", "NaN"),
            ("LUMEN_RESOURCES", "ssd"),
            ("LUMEN_RESOURCES", "=1"),
            ("LUMEN_INLINE_MAX", "1k"),
            ("LUMEN_PULL_CHUNK_BYTES", "0"),
            ("LUMEN_RT_SPIN_US", "-5"),
        ] {
            let error = read(&[(name, value)]).expect_err(name);
            assert_eq!(error.variable, name);
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn gpus_come_from_lumen_num_gpus_else_the_allocation() {
        let set = RuntimeConfig::from_env(|n| (n == "LUMEN_NUM_GPUS").then(|| "2".to_string()))
            .expect("valid");
        assert_eq!(set.gpu_ids, Some(vec![0, 1]));
        // The override wins over what Slurm gives.
        assert_eq!(
            set.clone().with_allocated_gpus(&[5]).rank_gpu_ids(),
            vec![0, 1]
        );
        let unset = RuntimeConfig::from_env(|_| None).expect("valid");
        assert!(unset.rank_gpu_ids().is_empty());
        let slurm = unset.with_allocated_gpus(&[0, 1, 2]);
        assert_eq!(slurm.resources.gpus, 3.0);
        assert_eq!(slurm.rank_gpu_ids(), vec![0, 1, 2]);
    }
}
