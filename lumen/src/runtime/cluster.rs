//! Starting the runtime: joining a launched job, or starting the embedded
//! local cluster, and leaving in order.
//!
//! # How `init` finds its job
//! - Started by `lumen run`, `srun`, `mpirun` (any launcher that
//!   `lumen_launcher::env::detect` recognises): every rank joins with
//!   [`lumen_launcher::bootstrap::join`].
//! - Started bare (`./app`, `cargo run --example ...`): the process becomes
//!   rank 0 of an **embedded local cluster**. The launcher's spawner
//!   ([`lumen_launcher::spawn::LocalRanks`], the code behind `lumen run`)
//!   hosts the rendezvous store in this process and starts
//!   `LUMEN_NUM_WORKERS` (default: the number of cores) worker processes
//!   that re-execute the same binary (`/proc/self/exe`) with the `LUMEN_*`
//!   variables `lumen run` would set, plus `LUMEN_EMBEDDED_WORKER=serve`;
//!   this process then joins with rank 0's variables, as its workers do.
//!   What stays here is the runtime's part: membership, the hello and
//!   welcome, and the worker entry.
//!
//! # The worker entry runs before `main`
//! A worker must serve tasks, not run the program's `main` (a test binary
//! would run its whole harness again). This module puts a function pointer
//! into the ELF `.init_array` (what the `ctor` crate does; done by hand so
//! that `init` can reference it and no linker can drop it): the C runtime
//! calls it before `main`, and when `LUMEN_EMBEDDED_WORKER=serve` it joins
//! the job, serves until the driver shuts down, and exits the process.
//!
//! # Leaving
//! Dropping the last [`Runtime`](super::Runtime) handle returned by `init`
//! (or [`Runtime::shutdown`](super::Runtime::shutdown)) leaves in order:
//! driver mode tells the serving ranks to stop, then every rank meets in a
//! barrier and closes. The embedded cluster then waits for its workers (5 s,
//! then SIGKILL) and removes the job's `/dev/shm` files. When the driver
//! panics, unwinding drops the runtime the same way; when it is killed, its
//! workers die with it (`PR_SET_PDEATHSIG(SIGKILL)`, set by the launcher
//! for the thread that spawned them, which lives as long as they do), and the
//! transport's node segment is already unlinked once every rank mapped it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lumen_launcher::bootstrap::{self, Job};
use lumen_launcher::env::{detect, LaunchKind};
use lumen_launcher::spawn::{shm_segment_prefix, LocalRanks, LocalRanksSpec};
use lumen_transport::{Endpoint, Source};

use super::config::RuntimeConfig;
use super::core::{set_current, Inner, Mode};
use super::error::RuntimeError;
use super::protocol::{decode, encode, RankInfo, Welcome, HELLO_TAG};
use super::registry;
use super::store::Arena;
use crate::error::{LumenError, Result};

/// Variable that makes a re-executed binary serve as an embedded worker.
pub const EMBEDDED_WORKER_VAR: &str = "LUMEN_EMBEDDED_WORKER";
/// Number of worker processes of the embedded cluster.
pub const NUM_WORKERS_VAR: &str = "LUMEN_NUM_WORKERS";
/// How long the embedded cluster waits for its workers to exit.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// How to start the runtime (see [`crate::init`] for the defaults).
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    spmd: bool,
    num_workers: Option<u32>,
    config: Option<RuntimeConfig>,
}

impl InitOptions {
    /// Driver mode, worker count from `LUMEN_NUM_WORKERS` or the cores.
    pub fn new() -> Self {
        InitOptions::default()
    }

    /// SPMD mode: every rank runs `main` and `init` returns on every rank
    /// (started bare, the workers run `main` too).
    pub fn spmd(mut self) -> Self {
        self.spmd = true;
        self
    }

    /// Worker processes of the embedded cluster (ignored when launched).
    pub fn num_workers(mut self, workers: u32) -> Self {
        self.num_workers = Some(workers);
        self
    }

    /// Settings to use instead of reading them from the environment.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Starts the runtime; see [`crate::init`].
    pub fn init(self) -> Result<super::Runtime> {
        // Keep the worker entry in the link (see the module docs).
        std::hint::black_box(&WORKER_ENTRY);
        log_from_env();
        let mode = if self.spmd { Mode::Spmd } else { Mode::Driver };
        let world = detect(|name| std::env::var(name).ok())
            .map_err(|e| LumenError::Bootstrap(e.to_string()))?;
        let config = match self.config {
            Some(config) => config,
            None => RuntimeConfig::from_env(|name| std::env::var(name).ok())
                .map_err(|e| LumenError::Bootstrap(e.to_string()))?,
        };
        let workers = self.num_workers.or(config.num_workers).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
        if world.kind != LaunchKind::Singleton || workers == 0 {
            let job = bootstrap::join()?;
            let node = job.world.node_index;
            let local_rank = job.world.local_rank;
            let job_id = job.world.job_id.clone();
            return start(
                job.endpoint.clone(),
                mode,
                (node, local_rank),
                job_id,
                Membership::Job(Box::new(job)),
                config,
            );
        }
        let (endpoint, cluster) = EmbeddedCluster::start(workers, mode)?;
        let job_id = cluster.job.world.job_id.clone();
        start(
            endpoint,
            mode,
            (0, 0),
            job_id,
            Membership::Embedded(Box::new(cluster)),
            config,
        )
    }
}

/// How this rank belongs to its job, for leaving it.
#[derive(Debug)]
pub(crate) enum Membership {
    Job(Box<Job>),
    Embedded(Box<EmbeddedCluster>),
}

impl Membership {
    /// Barrier (skipped when a rank is known dead: it would fail), close,
    /// and (embedded) wait for the workers.
    pub(crate) fn finish(self, all_alive: bool) -> Result<()> {
        match self {
            Membership::Job(job) => Ok((*job).finish()?),
            Membership::Embedded(cluster) => (*cluster).finish(all_alive),
        }
    }
}

/// `LUMEN_LOG=info` (a tracing filter, e.g. `lumen=debug`) prints the
/// runtime's log to stderr, unless the program installed a subscriber of its
/// own (which then decides).
fn log_from_env() {
    let Ok(filter) = std::env::var("LUMEN_LOG") else {
        return;
    };
    let Ok(filter) = tracing_subscriber::EnvFilter::try_new(filter.trim()) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Starts the runtime on a connected endpoint. In driver mode on a rank
/// other than 0 this serves until the driver shuts down and exits the process.
fn start(
    endpoint: Endpoint,
    mode: Mode,
    (node, local_rank): (u32, u32),
    job_id: String,
    membership: Membership,
    config: RuntimeConfig,
) -> Result<super::Runtime> {
    // Under Slurm the allocation's GPUs are the rank's (LUMEN_NUM_GPUS wins).
    let config = match &membership {
        Membership::Job(job) => {
            let ordinals: Vec<u32> = job.resources.gpus.iter().map(|g| g.ordinal).collect();
            config.with_allocated_gpus(&ordinals)
        }
        Membership::Embedded(_) => config,
    };
    // The node's first rank creates the object arena, the others map it;
    // after the hello exchange (a barrier) all have, and its name goes.
    let capacity = config.arena_capacity();
    let arena = if capacity == 0 {
        None
    } else {
        let name = format!("{}arena{node}", shm_segment_prefix(&job_id));
        let timeout = Duration::from_secs(30);
        let creator = local_rank == 0;
        match Arena::attach(
            &endpoint,
            &name,
            capacity,
            creator,
            &config.spill_dir,
            timeout,
        ) {
            Ok(arena) => Some(arena),
            Err(e) => {
                tracing::warn!("no node arena ({e}); large objects stay in process memory");
                None
            }
        }
    };
    // Bound before the executor's threads start (they inherit it), and
    // before the hello, which tells every rank the GPUs the binding gives.
    let (local_size, slurm_cpus) = match &membership {
        Membership::Job(job) => (job.world.local_size, job.resources.cpus.clone()),
        Membership::Embedded(cluster) => (cluster.job.world.local_size, None),
    };
    let binding = super::binding::bind_rank(
        config.bind,
        endpoint.rank(),
        local_rank as usize,
        local_size.max(1) as usize,
        slurm_cpus.as_deref(),
    );
    let config = match (&binding, config.gpu_ids.is_none()) {
        (Some(binding), true) => {
            match super::binding::narrow_visible_gpus(endpoint.rank(), binding) {
                Some(ordinals) => config.with_allocated_gpus(&ordinals),
                None => config,
            }
        }
        _ => config,
    };
    // The one-sided fabric: opened before the hello, which carries its
    // address and arena key to every rank.
    let fabric = super::fabric::open(
        config.fabric,
        &endpoint,
        arena.as_ref().map(Arena::node_arena),
        &job_id,
    )?;
    let nic_local = binding.as_ref().is_some_and(|b| b.nic_local);
    let ranks = hello(&endpoint, node, &config, fabric.as_ref(), nic_local)?;
    if let Some(fabric) = &fabric {
        fabric.connect(&endpoint, &ranks);
    }
    if let Some(arena) = &arena {
        arena.forget_name();
    }
    let inner = Inner::start(endpoint, mode, ranks, job_id, arena, &config, binding)?;
    if let Some(fabric) = fabric {
        inner.store.attach_fabric(fabric);
    }
    let mut membership = membership;
    if inner.rank == 0 {
        serve_status(&inner, &mut membership);
    }
    if mode == Mode::Driver && inner.rank != 0 {
        serve_until_shutdown(inner, membership);
    }
    Ok(super::Runtime::with_session(inner, membership))
}

/// Rank 0 serves `lumen status` (see `runtime::status`) and puts the
/// address into the job's store; `LUMEN_STATUS=0` turns it off. A failure
/// is logged: the job runs without it.
fn serve_status(inner: &Arc<Inner>, membership: &mut Membership) {
    let env = |name: &str| std::env::var(name).ok();
    if env("LUMEN_STATUS").is_some_and(|v| v.trim() == "0") {
        return;
    }
    let job = match membership {
        Membership::Job(job) => &mut **job,
        Membership::Embedded(cluster) => &mut cluster.job,
    };
    let ip = match super::core::status::bind_ip(env, inner.endpoint.tcp_address().ip()) {
        Ok(ip) => ip,
        Err(e) => {
            tracing::warn!("no lumen status service: {e}");
            return;
        }
    };
    let served =
        super::core::status::serve(inner, ip, job.secret().clone(), job.world.hosts.clone());
    let address = match served {
        Ok(address) => address,
        Err(e) => {
            tracing::warn!("no lumen status service on {ip}: {e}");
            return;
        }
    };
    let value = serde_json::to_vec(&address).unwrap_or_default();
    match job.publish(super::status::STORE_KEY, &value) {
        Ok(true) => {}
        Ok(false) => tracing::debug!("no rendezvous store: lumen status cannot find this job"),
        Err(e) => tracing::warn!("lumen status address not published: {e}"),
    }
}

/// Serves tasks until the driver says stop (or dies), leaves, exits.
fn serve_until_shutdown(inner: Arc<Inner>, membership: Membership) -> ! {
    {
        let (flag, cv) = &inner.shutdown_requested;
        let mut stop = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*stop {
            stop = cv.wait(stop).unwrap_or_else(|p| p.into_inner());
        }
    }
    let driver_died = inner.is_dead(0);
    inner.stopping.store(true, Ordering::Release);
    inner.executor.stop();
    inner.actors.stop_all();
    super::timeline::write_if_on(inner.rank, inner.node());
    let left = if driver_died || inner.any_dead() {
        // The closing barrier would fail on the dead rank.
        Ok(())
    } else {
        membership.finish(true)
    };
    inner.store.unlink();
    let _ = set_current(None);
    let code = match (driver_died, left) {
        (true, _) => {
            eprintln!(
                "lumen: rank {}: the driver (rank 0) died; leaving",
                inner.rank
            );
            1
        }
        (false, Ok(())) => 0,
        (false, Err(e)) => {
            eprintln!("lumen: rank {}: leaving the job failed: {e}", inner.rank);
            1
        }
    };
    std::process::exit(code)
}

/// This binary's build id: a hash of the executable's bytes and of the
/// registered function ids; `LUMEN_BUILD_ID` overrides it (tests, and
/// deployments that stamp their own).
fn build_id(config: &RuntimeConfig) -> u64 {
    if let Some(text) = &config.build_id {
        return registry::stable_id(text);
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |word: u64| {
        hash = (hash ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    };
    // Streamed in 1 MiB blocks: test binaries are tens of MiB.
    match std::fs::File::open("/proc/self/exe") {
        Ok(mut file) => {
            let mut block = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let mut filled = 0;
                while filled < block.len() {
                    match std::io::Read::read(&mut file, &mut block[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!("reading /proc/self/exe for the build id: {e}");
                            break;
                        }
                    }
                }
                let mut words = block[..filled].chunks_exact(8);
                for chunk in &mut words {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    mix(u64::from_le_bytes(word));
                }
                for &b in words.remainder() {
                    mix(u64::from(b));
                }
                total += filled as u64;
                if filled < block.len() {
                    break;
                }
            }
            mix(total);
        }
        Err(e) => tracing::warn!("cannot open /proc/self/exe for the build id: {e}"),
    }
    for id in registry::registered_ids() {
        mix(id);
    }
    hash
}

/// Exchanges build ids and resources through rank 0, which refuses a job
/// whose ranks run different builds.
fn hello(
    endpoint: &Endpoint,
    node: u32,
    config: &RuntimeConfig,
    fabric: Option<&super::fabric::Fabric>,
    nic_local: bool,
) -> Result<Vec<RankInfo>> {
    let rank = endpoint.rank();
    let size = endpoint.size();
    let mine = RankInfo {
        rank,
        node,
        build_id: build_id(config),
        resources: config.resources.clone(),
        fabric: fabric.and_then(super::fabric::Fabric::hello),
        nic_local,
    };
    let welcome = if rank == 0 {
        let mut infos = vec![mine.clone()];
        let mut verdict = None;
        for peer in 1..size {
            let message = endpoint.recv(Source::Rank(peer), HELLO_TAG)?;
            let info: RankInfo = decode(&message.data)
                .map_err(|e| LumenError::Bootstrap(format!("bad hello from rank {peer}: {e}")))?;
            if info.build_id != mine.build_id && verdict.is_none() {
                verdict = Some(Welcome::Mismatch {
                    rank: peer,
                    ours: mine.build_id,
                    theirs: info.build_id,
                });
            }
            infos.push(info);
        }
        let welcome = verdict.unwrap_or(Welcome::Ok(infos));
        let bytes = encode(&welcome);
        for peer in 1..size {
            endpoint.send(peer, HELLO_TAG, &bytes)?;
        }
        welcome
    } else {
        endpoint.send(0, HELLO_TAG, &encode(&mine))?;
        let message = endpoint.recv(Source::Rank(0), HELLO_TAG)?;
        decode(&message.data)
            .map_err(|e| LumenError::Bootstrap(format!("bad welcome from rank 0: {e}")))?
    };
    match welcome {
        Welcome::Ok(infos) if infos.len() == size as usize => Ok(infos),
        Welcome::Ok(infos) => Err(LumenError::Bootstrap(format!(
            "rank 0 sent facts about {} ranks in a job of {size}",
            infos.len()
        ))),
        Welcome::Mismatch { rank, ours, theirs } => {
            Err(LumenError::Runtime(RuntimeError::BuildMismatch {
                rank,
                ours,
                theirs,
            }))
        }
    }
}

/// The embedded local cluster (driver side): this rank's membership of the
/// job, and the worker processes the launcher started for it.
#[derive(Debug)]
pub(crate) struct EmbeddedCluster {
    job: Job,
    workers: LocalRanks,
}

fn cluster_error(what: impl std::fmt::Display) -> LumenError {
    LumenError::Runtime(RuntimeError::Cluster(what.to_string()))
}

impl EmbeddedCluster {
    /// Starts `workers` worker processes (the launcher's spawner, as `lumen
    /// run` uses) and joins them as rank 0, with the variables they got.
    fn start(workers: u32, mode: Mode) -> Result<(Endpoint, EmbeddedCluster)> {
        let mut spec = LocalRanksSpec::new(workers + 1, "/proc/self/exe");
        spec.args = std::env::args_os().skip(1).collect();
        match mode {
            Mode::Driver => spec.env.push((EMBEDDED_WORKER_VAR.into(), "serve".into())),
            Mode::Spmd => spec.env_remove.push(EMBEDDED_WORKER_VAR.into()),
        }
        let workers = LocalRanks::start(&spec).map_err(cluster_error)?;
        let joined = {
            let mine = workers.caller_env();
            bootstrap::join_with(|name| {
                mine.iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.clone())
                    .or_else(|| std::env::var(name).ok())
            })
        };
        match joined {
            Ok(job) => Ok((job.endpoint.clone(), EmbeddedCluster { job, workers })),
            Err(e) => {
                workers.kill();
                Err(e.into())
            }
        }
    }

    /// Leaves in order and waits for the workers (they finalize with the
    /// store before they exit: it stays up until they are gone).
    fn finish(self, barrier: bool) -> Result<()> {
        let left = if barrier {
            self.job.finish()
        } else {
            self.job.finish_without_barrier()
        };
        self.workers.stop(WORKER_EXIT_GRACE);
        tracing::debug!("embedded cluster stopped");
        Ok(left?)
    }
}

/// The worker entry (see the module docs). Runs before `main`.
extern "C" fn worker_entry() {
    if std::env::var_os(EMBEDDED_WORKER_VAR).is_none_or(|v| v != "serve") {
        return;
    }
    // Programs this worker's tasks start must not become workers too.
    // Before `main` the process has one thread, so changing the environment
    // cannot race a reader.
    std::env::remove_var(EMBEDDED_WORKER_VAR);
    let error = match InitOptions::new().init() {
        // A serving rank never returns from init in driver mode.
        Ok(_) => "init returned on a serving rank".to_string(),
        Err(e) => e.to_string(),
    };
    let rank = std::env::var("LUMEN_RANK").unwrap_or_default();
    eprintln!("lumen: worker rank {rank}: {error}");
    std::process::exit(1);
}

/// Registers [`worker_entry`] as a process constructor.
#[used]
#[link_section = ".init_array"]
static WORKER_ENTRY: extern "C" fn() = worker_entry;
