//! `lumen status` against a running 4-rank `lumen run` job (the
//! `long_job` example): found by its job file, by job id and by its
//! rendezvous address; JSON and text views; `--watch`; callers without the
//! job's secret refused by the store and by rank 0's service. (The Slurm
//! job is in `slurm_srun.rs`.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lumen::runtime::status::{fetch, JobStatus, StatusError};
use lumen_transport::auth::JobSecret;

/// A running `lumen run -n 4 -- long_job`, stopped (stop file, then kill)
/// when dropped, so a failing test leaves no job behind.
struct RunningJob {
    child: Child,
    home: PathBuf,
    stop: PathBuf,
    job_id: String,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"stop");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn start_job() -> RunningJob {
    let home = std::env::temp_dir().join(format!("lumen-status-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    let stop = home.join("stop");
    let mut child = Command::new("timeout")
        .args(["-k", "5", "180"])
        .arg(lumen())
        .args(["run", "-n", "4", "--"])
        .arg(example("long_job"))
        .args(["--seconds", "150", "--task-ms", "20", "--stop-file"])
        .arg(&stop)
        .env("HOME", &home)
        // A rank stopped below must not be declared dead meanwhile.
        .env("LUMEN_FAILURE_TIMEOUT_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting lumen run");
    let lines = stdout_lines(&mut child);
    let mut job = RunningJob {
        child,
        home,
        stop,
        job_id: String::new(),
    };
    let ready = wait_for_line(&lines, "long_job: ready", Duration::from_secs(90));
    job.job_id = ready
        .and_then(|line| line.split(", job ").nth(1).map(str::to_string))
        .expect("the job never reported ready");
    job
}

/// `lumen status ARGS` as the job's user (its HOME).
fn status(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("timeout");
    command
        .args(["-k", "5", "60"])
        .arg(lumen())
        .arg("status")
        .args(args)
        .env("HOME", home)
        .env_remove("LUMEN_JOB_SECRET")
        .env_remove("LUMEN_JOB_ID")
        .env_remove("SLURM_JOB_ID");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running lumen status")
}

fn ok(output: &Output) -> String {
    let all = text(output);
    assert!(output.status.success(), "lumen status failed:\n{all}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn job_file_field(home: &Path, job: &str, field: &str) -> String {
    let text = std::fs::read_to_string(home.join(".lumen/jobs").join(job)).expect("job file");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in the job file"))
        .to_string()
}

#[test]
fn lumen_status_sees_a_running_four_rank_lumen_run_job() {
    let job = start_job();
    let home = job.home.clone();

    // By job id, as JSON: the counters of every rank (asked again until
    // every rank has finished a few tasks).
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let json = ok(&status(&home, &["--json", &job.job_id], &[]));
        let seen: JobStatus = serde_json::from_str(json.trim()).expect("lumen status --json");
        let finished =
            |r: &lumen::runtime::status::RankStatus| r.stats.map_or(0, |s| s.tasks_finished);
        if seen.ranks.iter().all(|r| finished(r) >= 3) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((seen.job_id.as_str(), seen.size), (job.job_id.as_str(), 4));
    assert_eq!(seen.nodes.len(), 1);
    assert_eq!(seen.nodes[0].ranks, vec![0, 1, 2, 3]);
    assert!(seen.nodes[0].arena_capacity > 0, "{:?}", seen.nodes);
    assert_eq!(seen.named_actors, vec!["progress".to_string()]);
    assert_eq!(seen.placement_groups.len(), 1);
    assert_eq!(seen.placement_groups[0].state, "created");
    // No argument: the one job this user runs here. The text view.
    let view = ok(&status(&home, &[], &[]));
    println!("{view}");
    assert!(
        view.contains(&format!(
            "job {} (driver mode): 4 of 4 ranks alive on 1 node",
            job.job_id
        )),
        "{view}"
    );
    for rank in 0..4 {
        let row = view
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&rank.to_string()))
            .unwrap_or_else(|| panic!("no row for rank {rank}:\n{view}"));
        assert!(row.contains(" alive "), "{row}");
    }
    assert!(view.contains("Spread 2 bundles created on ranks"), "{view}");
    assert!(view.contains("named: progress"), "{view}");
    assert!(view.contains("slowest ranks (mean task time):"), "{view}");

    let mut pids = Vec::new();
    for rank in &seen.ranks {
        assert_eq!(rank.state, "alive", "{rank:?}");
        let stats = rank.stats.expect("an alive rank's counters");
        assert!(stats.pid > 0);
        pids.push(stats.pid);
        // Every rank runs tasks (the driver's waves go to every rank).
        assert!(
            stats.tasks_finished >= 3,
            "rank {} ran few tasks: {stats:?}",
            rank.rank
        );
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four processes");
    // The last rank's tasks sleep twice as long (40 ms against 20): it
    // is the slowest; a task never sleeps less than asked.
    let mean = |r: usize| seen.ranks[r].mean_task_us().unwrap();
    assert!(mean(3) >= 40_000.0, "{}", mean(3));
    assert!(
        (0..3).all(|r| mean(r) < mean(3)),
        "{:?}",
        (0..4).map(mean).collect::<Vec<_>>()
    );

    // By the rendezvous address, with the secret as the ranks have it.
    let rendezvous = job_file_field(&home, &job.job_id, "rendezvous");
    let secret = job_file_field(&home, &job.job_id, "secret");
    let env = [
        ("LUMEN_JOB_SECRET", secret.as_str()),
        ("LUMEN_JOB_ID", job.job_id.as_str()),
    ];
    let view = ok(&status(&home, &["--rendezvous", &rendezvous], &env));
    assert!(view.contains("4 of 4 ranks alive"), "{view}");
    let served: std::net::SocketAddr = view
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no status address on the first line:\n{view}"));

    // Without the secret: the store refuses the caller...
    let wrong = JobSecret::random().to_hex();
    let env = [
        ("LUMEN_JOB_SECRET", wrong.as_str()),
        ("LUMEN_JOB_ID", job.job_id.as_str()),
    ];
    let refused = status(&home, &["--rendezvous", &rendezvous], &env);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("refused this caller"), "{said}");
    assert!(said.contains("not job"), "{said}");
    // ... and so does rank 0's service, asked directly.
    let wrong = JobSecret::from_hex(&wrong).unwrap();
    match fetch(served, &job.job_id, &wrong, Duration::from_secs(10)) {
        Err(StatusError::Refused { .. }) => {}
        other => panic!("rank 0 answered a caller without the secret: {other:?}"),
    }
    // With it, the same service answers.
    let right = JobSecret::from_hex(&secret).unwrap();
    let direct = fetch(served, &job.job_id, &right, Duration::from_secs(10)).expect("fetch");
    assert_eq!(direct.size, 4);
    // Another user's HOME holds no job file: a clear error, not a hang.
    let elsewhere = std::env::temp_dir().join(format!("lumen-status-empty-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let none = status(&elsewhere, &[], &[]);
    let _ = std::fs::remove_dir_all(&elsewhere);
    assert!(!none.status.success());
    assert!(text(&none).contains("no Lumen job"), "{}", text(&none));

    // --watch refreshes: three views, then it stops (--count).
    let views = ok(&status(&home, &["--watch", "0.2", "--count", "3"], &[]));
    assert_eq!(views.matches("ranks alive").count(), 3, "{views}");

    // A rank that stops answering (SIGSTOP) is named as such within the
    // bound, the others still alive; it comes back with SIGCONT.
    let stopped = seen.ranks[2].stats.unwrap().pid as i32;
    // SAFETY: kill(2) on a pid this test's job started; no memory involved.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGSTOP) }, 0);
    let began = Instant::now();
    let json = status(&home, &["--json"], &[]);
    let waited = began.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(stopped, libc::SIGCONT) };
    let stuck: JobStatus = serde_json::from_str(ok(&json).trim()).unwrap();
    let states: Vec<&str> = stuck.ranks.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["alive", "alive", "not answering", "alive"]);
    assert!(stuck.ranks[2]
        .detail
        .as_deref()
        .unwrap_or("")
        .contains("within 2 s"));
    println!("a stopped rank was reported in {waited:?}");

    // The job ends cleanly and its file goes with it.
    let mut job = job;
    std::fs::write(&job.stop, b"stop").unwrap();
    let exit = job.child.wait().unwrap();
    assert!(exit.success(), "the job failed: {exit:?}");
    assert!(
        !home.join(".lumen/jobs").join(&job.job_id).exists(),
        "the job file outlived the job"
    );
    // Asking for it now says it is not found.
    let gone = status(&home, &[&job.job_id], &[]);
    assert!(!gone.status.success());
}
