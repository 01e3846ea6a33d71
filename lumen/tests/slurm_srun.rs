//! Lumen jobs launched by a real Slurm (slurmctld + 3 slurmd, each "host" a
//! network namespace on a bridge; `scripts/slurm-cluster.sh start netns`,
//! which these tests call, idempotently). Needs root; skips with the reason
//! otherwise. Every srun runs under `timeout`, so a hang fails the test.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use lumen_testkit::{slurm_unavailable_reason, SlurmCluster, SlurmMode};

fn cluster() -> Option<SlurmCluster> {
    if let Some(reason) = slurm_unavailable_reason(SlurmMode::Netns) {
        eprintln!("SKIPPED: no Slurm test cluster here: {reason}");
        return None;
    }
    Some(SlurmCluster::ensure(SlurmMode::Netns).expect("starting the Slurm test cluster"))
}

/// `srun -N 3 --ntasks-per-node=2 [extra] PROGRAM ARGS`.
fn srun6(cluster: &SlurmCluster, extra: &[&str], program: &str, args: &[&str]) -> Command {
    let mut command = cluster.srun();
    command
        .args(["-N", "3", "--ntasks-per-node=2"])
        .args(extra)
        .arg(example(program))
        .args(args)
        .env("RUST_BACKTRACE", "0");
    command
}

fn assert_ok(output: &Output) -> String {
    let all = text(output);
    assert!(output.status.success(), "job failed:\n{all}");
    all
}

const THREE_HOSTS: &str = r#"6 ranks on 3 hosts ["h1", "h2", "h3"]"#;

#[test]
fn slurm_srun_six_ranks_on_three_hosts_exchange_messages() {
    let Some(cluster) = cluster() else { return };
    let all = assert_ok(&run_with_timeout(
        &mut srun6(&cluster, &[], "ping", &["--sizes", "0,8,65536,1048576"]),
        120,
    ));
    assert!(all.contains("6 ranks exchanged 4 sizes"), "{all}");
    assert!(all.contains("on 3 nodes"), "{all}");
    let all = assert_ok(&run_with_timeout(
        &mut srun6(&cluster, &[], "slurm_probe", &[]),
        120,
    ));
    assert!(all.contains(THREE_HOSTS), "{all}");
    assert!(
        all.contains("allreduce of 1 MiB over 6 ranks = 21 everywhere"),
        "{all}"
    );
    assert!(all.contains("via Slurm { pmi2: false }"), "{all}");
}

#[test]
fn slurm_srun_mpi_pmi2_bootstraps_through_pmi() {
    let Some(cluster) = cluster() else { return };
    let all = assert_ok(&run_with_timeout(
        &mut srun6(&cluster, &["--mpi=pmi2"], "slurm_probe", &["--verbose"]),
        120,
    ));
    assert!(all.contains(THREE_HOSTS), "{all}");
    assert!(all.contains("via Slurm { pmi2: true }"), "{all}");
    for rank in 0..6 {
        let host = format!("h{}", rank / 2 + 1);
        assert!(
            all.contains(&format!(
                "probe: rank {rank} of 6 on {host} node {}",
                rank / 2
            )),
            "rank {rank}:\n{all}"
        );
    }
    let all = assert_ok(&run_with_timeout(
        &mut srun6(&cluster, &["--mpi=pmi2"], "ping", &["--sizes", "0,65536"]),
        120,
    ));
    assert!(all.contains("6 ranks exchanged 2 sizes"), "{all}");
}

#[test]
fn slurm_two_concurrent_jobs_on_the_same_nodes_both_succeed() {
    let Some(cluster) = cluster() else { return };
    // Each job holds its ranks for 2 s after bootstrap, so the two overlap on
    // all three nodes; the plain ones derive their store ports on h1.
    let children: Vec<_> = [&[][..], &[][..], &["--mpi=pmi2"][..]]
        .iter()
        .map(|extra| {
            let mut command = Command::new("timeout");
            let srun = srun6(&cluster, extra, "slurm_probe", &["--hold", "2"]);
            command
                .args(["-k", "5", "120"])
                .arg(srun.get_program())
                .args(srun.get_args())
                .envs(srun.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            command.spawn().expect("starting srun")
        })
        .collect();
    let mut jobs = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("waiting for srun");
        let all = assert_ok(&output);
        assert!(all.contains(THREE_HOSTS), "{all}");
        let job = all
            .split(" job ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned);
        jobs.push(job);
    }
    jobs.sort();
    jobs.dedup();
    assert_eq!(jobs.len(), 3, "three distinct jobs: {jobs:?}");
}

#[test]
fn slurm_two_steps_of_one_allocation_run_side_by_side() {
    let Some(cluster) = cluster() else { return };
    let probe = example("slurm_probe");
    let script = format!(
        "srun --overlap -n 6 -N 3 --ntasks-per-node=2 {p} --hold 2 > $TMPDIR_STEPS/a 2>&1 & \
         srun --overlap -n 6 -N 3 --ntasks-per-node=2 {p} --hold 2 > $TMPDIR_STEPS/b 2>&1 & wait",
        p = probe.display()
    );
    let dir = std::env::temp_dir().join(format!("lumen-steps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = run_with_timeout(
        cluster
            .command("salloc")
            .args(["-N", "3", "--ntasks-per-node=4", "bash", "-c", &script])
            .env("TMPDIR_STEPS", &dir),
        120,
    );
    let a = std::fs::read_to_string(dir.join("a")).unwrap_or_default();
    let b = std::fs::read_to_string(dir.join("b")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "{}\n{a}\n{b}", text(&output));
    assert!(
        a.contains(THREE_HOSTS) && b.contains(THREE_HOSTS),
        "{a}\n{b}"
    );
    assert_ne!(a.split(" job ").nth(1), b.split(" job ").nth(1), "{a}\n{b}");
}

/// Processes running the probe for this Slurm job (by their environment).
fn processes_of_job(job: &str) -> Vec<u32> {
    let needle = format!("SLURM_JOB_ID={job}\0");
    let probe = example("slurm_probe");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            exe.as_deref() == Some(probe.as_path())
                && String::from_utf8_lossy(&environ).contains(&needle)
        })
        .collect()
}

#[test]
fn slurm_scancel_mid_job_leaves_no_processes_or_segments() {
    let Some(cluster) = cluster() else { return };
    let srun = srun6(&cluster, &[], "slurm_probe", &["--hold", "120"]);
    let mut child = Command::new("timeout")
        .args(["-k", "5", "150"])
        .arg(srun.get_program())
        .args(srun.get_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting srun");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut job_step = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match received.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.contains("probe: ok") => {
                job_step = line.split(" job ").nth(1).map(str::to_owned);
            }
            Ok(line) if line.contains("probe: ready") => break,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let job_step = job_step.expect("the job never reported ready");
    let job = job_step.split('.').next().unwrap_or_default().to_owned();
    assert_eq!(
        processes_of_job(&job).len(),
        6,
        "all ranks should be running"
    );
    let status = cluster.command("scancel").arg(&job).status().unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(124), "srun did not end after scancel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_of_job(&job).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        processes_of_job(&job),
        Vec::<u32>::new(),
        "ranks left after scancel"
    );
    assert_eq!(leftover_segments(&job_step), Vec::<String>::new());
}

#[test]
fn slurm_a_rank_that_never_starts_fails_the_job_naming_it() {
    let Some(cluster) = cluster() else { return };
    let probe = example("slurm_probe");
    // Task 4 exits before it ever runs the Lumen program.
    let started = Instant::now();
    let output = run_with_timeout(
        cluster
            .srun()
            .args(["-N", "3", "--ntasks-per-node=2", "bash", "-c"])
            .arg(r#"if [ "$SLURM_PROCID" = 4 ]; then exit 7; fi; exec "$0""#)
            .arg(&probe)
            .env("LUMEN_RENDEZVOUS_TIMEOUT_MS", "4000")
            .env("RUST_BACKTRACE", "0"),
        90,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("never arrived"), "{all}");
    assert!(
        all.contains("rank 4 never arrived (of 6)"),
        "the missing rank is named:\n{all}"
    );
    // Every one of the five started ranks names it, not only the first to time out.
    assert_eq!(
        all.matches("rank 4 never arrived").count(),
        5,
        "each started rank names the missing one:\n{all}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );

    // Under PMI-2 the fence times out; the server cannot say who is missing,
    // so the error says what to look for.
    let output = run_with_timeout(
        cluster
            .srun()
            .args(["--mpi=pmi2", "-N", "3", "--ntasks-per-node=2", "bash", "-c"])
            .arg(r#"if [ "$SLURM_PROCID" = 4 ]; then exit 7; fi; exec "$0""#)
            .arg(&probe)
            .env("LUMEN_RENDEZVOUS_TIMEOUT_MS", "4000")
            .env("RUST_BACKTRACE", "0"),
        90,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("kvs-fence-response"), "{all}");
    assert!(all.contains("task 4: Exited with exit code 7"), "{all}");
}

#[test]
fn slurm_a_missing_binary_or_node_fails_fast() {
    let Some(cluster) = cluster() else { return };
    let started = Instant::now();
    let output = run_with_timeout(
        cluster
            .srun()
            .args(["-N", "3", "--ntasks-per-node=2", "/nonexistent/lumen-app"]),
        60,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("/nonexistent/lumen-app"), "{all}");
    assert!(started.elapsed() < Duration::from_secs(30));

    // A node that does not exist: refused at once, naming it.
    let output = run_with_timeout(
        cluster
            .srun()
            .args(["-w", "h9", "-n", "1"])
            .arg(example("slurm_probe")),
        60,
    );
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("Invalid node name"), "{all}");
}

#[test]
fn slurm_cpus_per_task_binds_each_rank_and_gpus_are_split() {
    let Some(cluster) = cluster() else { return };
    let output = run_with_timeout(
        cluster
            .srun()
            .args(["-N", "1", "-n", "2", "-c", "1"])
            .arg(example("slurm_probe"))
            .arg("--verbose")
            .env("CUDA_VISIBLE_DEVICES", "0,1,2,3")
            .env("RUST_BACKTRACE", "0"),
        60,
    );
    let all = assert_ok(&output);
    // Each local rank takes half of the visible GPUs, in order.
    assert!(all.contains(r#"gpus [GpuAssignment { ordinal: 0, device: "0" }, GpuAssignment { ordinal: 1, device: "1" }]"#), "{all}");
    assert!(all.contains(r#"gpus [GpuAssignment { ordinal: 2, device: "2" }, GpuAssignment { ordinal: 3, device: "3" }]"#), "{all}");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus < 2 {
        eprintln!("NOT CHECKED: CPU binding needs 2 CPUs here, this machine offers {cpus}");
        return;
    }
    // With -c 1 and 2 ranks, rank 0 runs on the first allowed CPU and rank
    // 1 on the second, as the kernel reports it.
    let first_two: Vec<usize> = {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        list.split(',')
            .flat_map(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
            })
            .take(2)
            .collect()
    };
    for (rank, cpu) in first_two.iter().enumerate() {
        assert!(
            all.contains(&format!("local {rank}/2 cpus Some([{cpu}]) allowed {cpu} ")),
            "rank {rank} should be bound to CPU {cpu}:\n{all}"
        );
    }
}

#[test]
fn slurm_remote_tasks_run_on_every_host() {
    let Some(cluster) = cluster() else { return };
    for extra in [&[][..], &["--mpi=pmi2"][..]] {
        let all = assert_ok(&run_with_timeout(
            &mut srun6(&cluster, extra, "slurm_tasks", &[]),
            120,
        ));
        assert!(
            all.contains(r#"tasks: 12 tasks on 3 nodes ran on hosts ["h1", "h2", "h3"]"#),
            "{extra:?}:\n{all}"
        );
    }
}

/// `lumen status JOBID` of a running 6-rank Slurm job (plain `srun`, the
/// `long_job` example): found through `squeue`, its store on the first
/// node at the derived port, authenticated with the step's secret derived
/// from `~/.lumen/job-key`; every rank alive, on the host Slurm put it.
#[test]
fn slurm_lumen_status_sees_a_running_job_by_its_id() {
    let Some(cluster) = cluster() else { return };
    let stop = std::env::temp_dir().join(format!("lumen-slurm-status-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let srun = srun6(
        &cluster,
        &[],
        "long_job",
        &["--seconds", "150", "--stop-file", stop.to_str().unwrap()],
    );
    let mut child = Command::new("timeout")
        .args(["-k", "5", "180"])
        .arg(srun.get_program())
        .args(srun.get_args())
        .envs(srun.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting srun");
    // Ends the job (stop file, then scancel) even when an assertion fails.
    struct Stop<'a>(&'a std::path::Path, &'a SlurmCluster, Option<String>);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, b"stop");
            if std::thread::panicking() {
                if let Some(job) = &self.2 {
                    let _ = self.1.command("scancel").arg(job).status();
                }
            }
        }
    }
    let mut guard = Stop(&stop, &cluster, None);
    let lines = stdout_lines(&mut child);
    guard.2 = wait_for_line(&lines, "long_job: ready", Duration::from_secs(90))
        .and_then(|line| line.split(", job ").nth(1).map(str::to_owned));
    let job = guard.2.clone().expect("the job never reported ready");
    let status = |args: &[&str]| {
        let mut command = cluster.command(lumen());
        command.arg("status").args(args).arg(&job);
        run_with_timeout(&mut command, 60)
    };
    let view = assert_ok(&status(&[]));
    println!("{view}");
    assert!(
        view.contains(&format!(
            "job {job} (driver mode): 6 of 6 ranks alive on 3 nodes"
        )),
        "{view}"
    );
    assert!(view.contains(&format!("via Slurm step {job}.")), "{view}");
    let json = assert_ok(&status(&["--json"]));
    let line = json
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let seen: lumen::runtime::status::JobStatus = serde_json::from_str(line).unwrap();
    let hosts: Vec<(u32, String)> = seen
        .ranks
        .iter()
        .map(|r| (r.rank, r.host.clone()))
        .collect();
    assert_eq!(
        hosts,
        [
            (0, "h1"),
            (1, "h1"),
            (2, "h2"),
            (3, "h2"),
            (4, "h3"),
            (5, "h3")
        ]
        .map(|(r, h)| (r, h.to_string()))
        .to_vec()
    );
    assert!(seen
        .ranks
        .iter()
        .all(|r| r.state == "alive" && r.stats.is_some()));
    assert_eq!(seen.named_actors, vec!["progress".to_string()]);
    drop(guard);
    let exit = child.wait().unwrap();
    assert!(exit.success(), "the job failed: {exit:?}");
    let _ = std::fs::remove_file(&stop);
}
