//! Starting the runtime: joining a launched job, or starting the embedded
//! local cluster, and leaving in order.
//!
//! # How `init` finds its job
//! - Started by `lumen run`, `srun`, `mpirun` (any launcher that
//!   `lumen_launcher::env::detect` recognises): every rank joins with
//!   [`crate::bootstrap::join`].
//! - Started bare (`./app`, `cargo run --example ...`): the process becomes
//!   rank 0 of an **embedded local cluster**. It hosts the rendezvous store
//!   itself and starts `LUMEN_NUM_WORKERS` (default: the number of cores)
//!   worker processes that re-execute the same binary (`/proc/self/exe`)
//!   with the `LUMEN_*` variables `lumen run` would set, plus
//!   `LUMEN_EMBEDDED_WORKER=serve`.
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
//! workers die with it (`PR_SET_PDEATHSIG(SIGKILL)`, set for the thread
//! that spawned them, which lives as long as the process), and the
//! transport's node segment is already unlinked once every rank mapped it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lumen_launcher::config::{Config, TcpBackendChoice};
use lumen_launcher::env::{detect, LaunchKind, JOB_SECRET_VAR};
use lumen_launcher::rendezvous::{RendezvousClient, RendezvousServer};
use lumen_launcher::spawn::{new_job_id, shm_segment_prefix};
use lumen_transport::{
    Endpoint, EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, Source, TcpBackend,
    TransportConfig,
};

use super::config::RuntimeConfig;
use super::core::{set_current, Inner, Mode};
use super::error::RuntimeError;
use super::protocol::{decode, encode, RankInfo, Welcome, HELLO_TAG};
use super::registry;
use super::store::Arena;
use crate::bootstrap::{self, Job};
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
        let job_id = cluster.job_id.clone();
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
            Membership::Job(job) => (*job).finish(),
            Membership::Embedded(cluster) => (*cluster).finish(all_alive),
        }
    }
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
    let ranks = hello(&endpoint, node, &config)?;
    if let Some(arena) = &arena {
        arena.forget_name();
    }
    let inner = Inner::start(endpoint, mode, ranks, job_id, arena, &config)?;
    if mode == Mode::Driver && inner.rank != 0 {
        serve_until_shutdown(inner, membership);
    }
    Ok(super::Runtime::with_session(inner, membership))
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
fn hello(endpoint: &Endpoint, node: u32, config: &RuntimeConfig) -> Result<Vec<RankInfo>> {
    let rank = endpoint.rank();
    let size = endpoint.size();
    let mine = RankInfo {
        rank,
        node,
        build_id: build_id(config),
        resources: config.resources.clone(),
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

/// The embedded local cluster (driver side): the rendezvous store, the
/// thread that spawned the workers, and how to stop them.
#[derive(Debug)]
pub(crate) struct EmbeddedCluster {
    endpoint: Endpoint,
    job_id: String,
    client: Option<RendezvousClient>,
    server: Option<RendezvousServer>,
    stop: mpsc::Sender<Duration>,
    stopped: mpsc::Receiver<()>,
}

fn transport_config(config: &Config) -> TransportConfig {
    TransportConfig {
        eager_limit: config.eager_limit,
        ring_bytes: config.shm_ring_bytes,
        spin: config.spin,
        tcp_backend: match config.tcp_backend {
            TcpBackendChoice::Auto => TcpBackend::Auto,
            TcpBackendChoice::Uring => TcpBackend::Uring,
            TcpBackendChoice::Epoll => TcpBackend::Epoll,
        },
        tcp_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        connect_timeout: config.rendezvous_timeout,
        tcp_conns: config.tcp_conns_per_peer as usize,
        ..TransportConfig::default()
    }
}

fn cluster_error(what: impl std::fmt::Display) -> LumenError {
    LumenError::Runtime(RuntimeError::Cluster(what.to_string()))
}

impl EmbeddedCluster {
    /// Starts `workers` worker processes and joins them as rank 0.
    fn start(workers: u32, mode: Mode) -> Result<(Endpoint, EmbeddedCluster)> {
        let config = Config::from_env(|name| std::env::var(name).ok())
            .map_err(|e| LumenError::Bootstrap(e.to_string()))?;
        let timeout = config.rendezvous_timeout;
        let size = workers + 1;
        let job_id = new_job_id();
        let secret = JobSecret::random();
        let server = RendezvousServer::bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            &job_id,
            size,
            secret.clone(),
        )?;
        let rendezvous = server.local_addr();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let common: Vec<(String, String)> = vec![
            ("LUMEN_SIZE".into(), size.to_string()),
            ("LUMEN_LOCAL_SIZE".into(), size.to_string()),
            ("LUMEN_NODE_INDEX".into(), "0".into()),
            ("LUMEN_NUM_NODES".into(), "1".into()),
            ("LUMEN_HOSTS".into(), host),
            ("LUMEN_JOB_ID".into(), job_id.clone()),
            ("LUMEN_RENDEZVOUS".into(), rendezvous.to_string()),
            (JOB_SECRET_VAR.into(), secret.to_hex()),
        ];
        let role = match mode {
            Mode::Driver => Some("serve"),
            Mode::Spmd => None,
        };
        let (stop, stop_rx) = mpsc::channel::<Duration>();
        let (stopped_tx, stopped) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel::<std::result::Result<(), String>>();
        let shm_prefix = shm_segment_prefix(&job_id);
        // PR_SET_PDEATHSIG fires when the spawning *thread* ends: this one
        // lives until the workers are gone (or the process dies).
        std::thread::Builder::new()
            .name("lumen-cluster".into())
            .spawn(move || {
                let mut children: Vec<Child> = Vec::new();
                for rank in 1..size {
                    let mut command = Command::new("/proc/self/exe");
                    command
                        .args(std::env::args_os().skip(1))
                        .envs(common.iter().map(|(k, v)| (k, v)))
                        .env("LUMEN_RANK", rank.to_string())
                        .env("LUMEN_LOCAL_RANK", rank.to_string())
                        .stdin(Stdio::null());
                    match role {
                        Some(role) => command.env(EMBEDDED_WORKER_VAR, role),
                        None => command.env_remove(EMBEDDED_WORKER_VAR),
                    };
                    let parent = rustix::process::getpid();
                    // SAFETY: the closure runs in the forked child before
                    // exec and makes only two raw system calls (prctl,
                    // getppid) that allocate nothing and take no locks.
                    unsafe {
                        command.pre_exec(move || {
                            rustix::process::set_parent_process_death_signal(Some(
                                rustix::process::Signal::KILL,
                            ))?;
                            if rustix::process::getppid() != Some(parent) {
                                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                            }
                            Ok(())
                        });
                    }
                    match command.spawn() {
                        Ok(child) => children.push(child),
                        Err(e) => {
                            for child in &mut children {
                                let _ = child.kill();
                                let _ = child.wait();
                            }
                            let _ = ready_tx.send(Err(format!("spawning worker {rank}: {e}")));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                // Until told to stop (or the driver side is dropped), reap
                // nothing: the workers are needed.
                let grace = stop_rx.recv().unwrap_or(Duration::ZERO);
                let deadline = Instant::now() + grace;
                loop {
                    let mut running = 0;
                    for child in &mut children {
                        if matches!(child.try_wait(), Ok(None)) {
                            running += 1;
                        }
                    }
                    if running == 0 {
                        break;
                    }
                    if Instant::now() >= deadline {
                        for child in &mut children {
                            let _ = child.kill();
                        }
                        for child in &mut children {
                            let _ = child.wait();
                        }
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                remove_shm(&shm_prefix);
                let _ = stopped_tx.send(());
            })
            .map_err(|e| cluster_error(format!("no thread to spawn workers: {e}")))?;
        ready
            .recv()
            .map_err(|_| cluster_error("the spawning thread died"))?
            .map_err(cluster_error)?;

        let options = EndpointOptions {
            rank: 0,
            size,
            node: 0,
            local_rank: 0,
            local_size: size,
            job_id: job_id.clone(),
            secret: secret.clone(),
            config: transport_config(&config),
        };
        let joined = (|| -> Result<(Endpoint, RendezvousClient)> {
            let builder = EndpointBuilder::new(options)?;
            let mut client = RendezvousClient::connect(rendezvous, &job_id, 0, &secret, timeout)?;
            let table = client.allgather("endpoint", &builder.address().encode(), timeout)?;
            let peers = table
                .iter()
                .map(|bytes| PeerAddress::decode(bytes))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let endpoint = builder.connect(&peers, || client.barrier(timeout))?;
            Ok((endpoint, client))
        })();
        match joined {
            Ok((endpoint, client)) => Ok((
                endpoint.clone(),
                EmbeddedCluster {
                    endpoint,
                    job_id,
                    client: Some(client),
                    server: Some(server),
                    stop,
                    stopped,
                },
            )),
            Err(e) => {
                let _ = stop.send(Duration::ZERO);
                let _ = stopped.recv_timeout(WORKER_EXIT_GRACE);
                Err(e)
            }
        }
    }

    /// Leaves in order and waits for the workers.
    fn finish(mut self, barrier: bool) -> Result<()> {
        let left = if barrier {
            self.endpoint.barrier()
        } else {
            Ok(())
        };
        self.endpoint.close();
        // The workers finalize with the store before they exit: keep it up
        // until they are gone.
        let _ = self.stop.send(WORKER_EXIT_GRACE);
        let _ = self
            .stopped
            .recv_timeout(WORKER_EXIT_GRACE + Duration::from_secs(2));
        let finalized = match self.client.take() {
            Some(client) => client.finalize().map_err(LumenError::from),
            None => Ok(()),
        };
        if let Some(mut server) = self.server.take() {
            server.shutdown();
        }
        tracing::debug!(job = %self.job_id, "embedded cluster stopped");
        left?;
        finalized
    }
}

fn remove_shm(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
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
