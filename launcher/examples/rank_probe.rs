//! A tiny rank for testing the spawner: it reads its place in the job from the
//! environment, meets the others at the rendezvous, checks the allgathered
//! table, and then misbehaves when told to.
//!
//! ```text
//! rank_probe [exit RANK CODE] [selfkill RANK] [skip RANK] [hang] [sleep MS] [shm] [pids DIR]
//! ```
//!
//! - `exit RANK CODE`: rank RANK exits with CODE after the allgather, without
//!   finalizing.
//! - `selfkill RANK`: rank RANK kills itself with SIGKILL after the allgather.
//! - `skip RANK`: rank RANK never connects to the rendezvous; it sleeps.
//! - `hang`: after the allgather, ranks without another action sleep forever.
//! - `sleep MS`: sleep this long before the final barrier.
//! - `shm`: local rank 0 creates `/dev/shm/lumen-{job}-n{node}` first.
//! - `pids DIR`: each rank writes its pid to `DIR/rank{r}.pid` first.
//!
//! Exit codes: 0 success, 1 rendezvous error, 2 wrong table, 4 setup error.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use lumen_launcher::config::Config;
use lumen_launcher::env::{detect, job_secret_from_env};
use lumen_launcher::rendezvous::RendezvousClient;
use lumen_launcher::spawn::shm_segment_prefix;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("rank_probe: {message}");
            ExitCode::from(code)
        }
    }
}

fn arg_after(args: &[String], word: &str) -> Option<(String, Option<String>)> {
    let at = args.iter().position(|arg| arg == word)?;
    Some((args.get(at + 1)?.clone(), args.get(at + 2).cloned()))
}

fn is_rank(args: &[String], word: &str, rank: u32) -> bool {
    arg_after(args, word).is_some_and(|(value, _)| value == rank.to_string())
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn run() -> Result<ExitCode, (u8, String)> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |name: &str| std::env::var(name).ok();
    let world = detect(env).map_err(|e| (4, e.to_string()))?;
    let config = Config::from_env(env).map_err(|e| (4, e.to_string()))?;
    let secret = job_secret_from_env(env)
        .map_err(|e| (4, e.to_string()))?
        .ok_or((4, "LUMEN_JOB_SECRET is not set".to_string()))?;
    let rank = world.rank;

    if let Some((dir, _)) = arg_after(&args, "pids") {
        std::fs::write(
            format!("{dir}/rank{rank}.pid"),
            std::process::id().to_string(),
        )
        .map_err(|e| (4, format!("pid file: {e}")))?;
    }
    if args.iter().any(|arg| arg == "shm") && world.local_rank == 0 {
        let path = format!(
            "/dev/shm/{}n{}",
            shm_segment_prefix(&world.job_id),
            world.node_index
        );
        std::fs::write(&path, b"probe").map_err(|e| (4, format!("{path}: {e}")))?;
    }
    if is_rank(&args, "skip", rank) {
        sleep_forever();
    }

    let address = world
        .rendezvous
        .ok_or((4, "LUMEN_RENDEZVOUS is not set".to_string()))?;
    let addr: SocketAddr = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or((4, format!("cannot resolve {address}")))?;
    let timeout = config.rendezvous_timeout;
    let mut client = RendezvousClient::connect(addr, &world.job_id, rank, &secret, timeout)
        .map_err(|e| (1, e.to_string()))?;
    if client.size() != world.size {
        return Err((
            2,
            format!("server says {} ranks, env {}", client.size(), world.size),
        ));
    }
    let table = client
        .allgather("probe", &rank.to_le_bytes(), timeout)
        .map_err(|e| (1, e.to_string()))?;
    for (index, entry) in table.iter().enumerate() {
        if entry.as_slice() != (index as u32).to_le_bytes() {
            return Err((2, format!("table entry {index} is {entry:?}")));
        }
    }

    if let Some((who, code)) = arg_after(&args, "exit") {
        if who == rank.to_string() {
            let code = code.and_then(|c| c.parse::<u8>().ok()).unwrap_or(1);
            return Ok(ExitCode::from(code));
        }
    }
    if is_rank(&args, "selfkill", rank) {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        sleep_forever();
    }
    if args.iter().any(|arg| arg == "hang") {
        sleep_forever();
    }
    if let Some((ms, _)) = arg_after(&args, "sleep") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }
    if args.iter().any(|arg| arg == "nobarrier") {
        // Survivors of a lost rank (`--keep-going`): no final barrier.
        println!("rank {rank} of {} ok", world.size);
        return Ok(ExitCode::SUCCESS);
    }
    client.barrier(timeout).map_err(|e| (1, e.to_string()))?;
    client.finalize().map_err(|e| (1, e.to_string()))?;
    println!("rank {rank} of {} ok", world.size);
    Ok(ExitCode::SUCCESS)
}
