//! Slurm from the `lumen` command line (and `lumen-bench`, which launches
//! its ranks the same way).
//!
//! - `lumen submit`: renders an sbatch script ([`lumen_slurm::sbatch`]) and
//!   hands it to `sbatch` on standard input; `--dry-run` prints it instead,
//!   `--wait` follows the job (`scontrol show job`, polled with a backoff up
//!   to 2 s; `sbatch --wait` polls every few seconds) and returns its exit
//!   code.
//! - `lumen run` inside an allocation (`SLURM_JOB_ID` set, as in an `salloc`
//!   shell or a batch script): the ranks are started by `srun`, so they land
//!   on the allocation's nodes; [`srun_in_allocation`] decides whether and
//!   how, and refuses a rank count the allocation cannot hold.

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};

use lumen_slurm::sbatch::{render, BatchSpec, SbatchError};
use thiserror::Error;

/// Why `lumen submit` or a launch inside an allocation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The request cannot become a batch script.
    #[error(transparent)]
    Script(#[from] SbatchError),
    /// `sbatch` or `srun` could not be started.
    #[error("could not run {program}: {source}; is Slurm's client installed and on PATH?")]
    Spawn {
        /// The program.
        program: String,
        /// What exec said.
        #[source]
        source: std::io::Error,
    },
    /// `sbatch` refused the script.
    #[error("sbatch refused the job (exit status {status}): {stderr}")]
    Refused {
        /// Its exit status.
        status: i32,
        /// What it printed.
        stderr: String,
    },
    /// The allocation has fewer tasks than asked for.
    #[error("`lumen run -n {ranks}` asks for more ranks than this Slurm allocation holds: {variable}={tasks} (job {job_id}); run with -n {tasks} or fewer, or allocate more (salloc -n {ranks} / sbatch --ntasks={ranks})")]
    AllocationTooSmall {
        /// Ranks asked for.
        ranks: u32,
        /// Tasks the allocation holds.
        tasks: u32,
        /// Where that number came from.
        variable: &'static str,
        /// The allocation.
        job_id: String,
    },
}

/// What `lumen submit` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// `--dry-run`: the script that would have been submitted.
    DryRun(String),
    /// Submitted, not waited for.
    Submitted {
        /// Slurm's job id.
        job_id: String,
    },
    /// Submitted and waited for.
    Finished {
        /// Slurm's job id.
        job_id: String,
        /// The job's exit code (128 + signal when a signal ended it).
        exit_code: i32,
    },
}

/// Renders `spec`, and unless `dry_run`, submits it with `sbatch`; with
/// `wait`, follows the job until it ends. `on_submitted` hears the job id
/// as soon as Slurm gives it (before the wait), e.g. to print it;
/// `on_state` hears the job's state at each poll of the wait (`PENDING`,
/// `RUNNING`, `COMPLETING`, then the final one), e.g. for a progress line.
pub fn submit(
    spec: &BatchSpec,
    dry_run: bool,
    wait: bool,
    on_submitted: impl FnOnce(&str),
    mut on_state: impl FnMut(&str),
) -> Result<SubmitOutcome, SubmitError> {
    let script = render(spec)?;
    if dry_run {
        return Ok(SubmitOutcome::DryRun(script));
    }
    let mut command = Command::new("sbatch");
    command.arg("--parsable");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SubmitError::Spawn {
            program: "sbatch".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| SubmitError::Spawn {
                program: "sbatch (writing the script)".into(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| SubmitError::Spawn {
            program: "sbatch".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let job_id = stdout
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.split(';').next().unwrap_or(line).to_owned());
    let status = output.status.code().unwrap_or(1);
    match job_id {
        Some(job_id) if output.status.success() => {
            on_submitted(&job_id);
            if !wait {
                return Ok(SubmitOutcome::Submitted { job_id });
            }
            let exit_code = wait_for_job(&job_id, &mut on_state)?;
            Ok(SubmitOutcome::Finished { job_id, exit_code })
        }
        _ => Err(SubmitError::Refused {
            status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    }
}

/// Where a job stands, from one line of `scontrol show job -o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobProgress {
    /// Pending, running, completing...: not over yet.
    Active(String),
    /// Over, with this exit code (128 + signal when killed by one).
    Done {
        /// `JobState`, e.g. `COMPLETED`, `FAILED`, `CANCELLED`.
        state: String,
        /// The batch script's exit code.
        exit_code: i32,
    },
}

/// Reads `JobState` and `ExitCode=code:signal` from `scontrol show job -o`.
///
/// ```
/// use lumen_launcher::submit::{job_progress, JobProgress};
/// assert_eq!(
///     job_progress("JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0"),
///     Some(JobProgress::Done { state: "FAILED".into(), exit_code: 3 })
/// );
/// ```
pub fn job_progress(line: &str) -> Option<JobProgress> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
    };
    let state = field("JobState")?.to_owned();
    const TERMINAL: [&str; 9] = [
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    ];
    if !TERMINAL.contains(&state.as_str()) {
        return Some(JobProgress::Active(state));
    }
    let (code, signal) = field("ExitCode")?.split_once(':')?;
    let (code, signal): (i32, i32) = (code.parse().ok()?, signal.parse().ok()?);
    let exit_code = match (code, signal, state.as_str()) {
        (0, 0, "COMPLETED") => 0,
        (0, 0, _) => 1,
        (0, signal, _) => 128 + signal,
        (code, _, _) => code,
    };
    Some(JobProgress::Done { state, exit_code })
}

/// Polls `scontrol show job` until the job is over; its exit code.
fn wait_for_job(job_id: &str, on_state: &mut dyn FnMut(&str)) -> Result<i32, SubmitError> {
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let output = Command::new("scontrol")
            .args(["show", "job", "-o", job_id])
            .output()
            .map_err(|source| SubmitError::Spawn {
                program: "scontrol".into(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        match text.lines().find_map(job_progress) {
            Some(JobProgress::Done { exit_code, state }) => {
                on_state(&state);
                return Ok(exit_code);
            }
            Some(JobProgress::Active(state)) => on_state(&state),
            None => {
                return Err(SubmitError::Refused {
                    status: output.status.code().unwrap_or(1),
                    stderr: format!(
                        "cannot follow job {job_id}: scontrol said {:?}{}",
                        text.trim(),
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                })
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_secs(2));
    }
}

/// The `srun` command line that `lumen run -n ranks PROGRAM ARGS` becomes
/// inside an allocation, or `None` outside one (no `SLURM_JOB_ID`) or inside
/// a rank of a running job (`SLURM_STEP_ID` or `LUMEN_RANK` set: nesting a
/// launch inside a step is not what `lumen run` means there).
///
/// ```
/// use lumen_launcher::submit::srun_in_allocation;
/// let env = |name: &str| match name {
///     "SLURM_JOB_ID" => Some("42".to_string()),
///     "SLURM_NTASKS" => Some("8".to_string()),
///     _ => None,
/// };
/// let argv = srun_in_allocation(env, 4, false, false, "./app".into(), vec!["-x".into()])?.unwrap();
/// assert_eq!(argv, ["srun", "--ntasks=4", "--kill-on-bad-exit=1", "./app", "-x"]);
/// assert!(srun_in_allocation(env, 16, false, false, "./app".into(), vec![]).is_err());
/// // --keep-going: the step outlives a rank's failure and a node's loss.
/// let argv = srun_in_allocation(env, 4, false, true, "./app".into(), vec![])?.unwrap();
/// assert_eq!(&argv[..4], ["srun", "--ntasks=4", "--kill-on-bad-exit=0", "--no-kill"]);
/// # Ok::<(), lumen_launcher::submit::SubmitError>(())
/// ```
pub fn srun_in_allocation(
    get: impl Fn(&str) -> Option<String>,
    ranks: u32,
    label: bool,
    keep_going: bool,
    program: OsString,
    args: Vec<OsString>,
) -> Result<Option<Vec<OsString>>, SubmitError> {
    let Some(job_id) = get("SLURM_JOB_ID").or_else(|| get("SLURM_JOBID")) else {
        return Ok(None);
    };
    if get("SLURM_STEP_ID").is_some() || get("LUMEN_RANK").is_some() {
        return Ok(None);
    }
    let number = |name: &str| get(name).and_then(|v| v.trim().parse::<u32>().ok());
    let capacity = [
        ("SLURM_NTASKS", number("SLURM_NTASKS")),
        ("SLURM_NPROCS", number("SLURM_NPROCS")),
    ]
    .into_iter()
    .find_map(|(variable, tasks)| tasks.map(|t| (variable, t)));
    if let Some((variable, tasks)) = capacity {
        if ranks > tasks {
            return Err(SubmitError::AllocationTooSmall {
                ranks,
                tasks,
                variable,
                job_id,
            });
        }
    }
    let mut argv: Vec<OsString> = vec!["srun".into(), format!("--ntasks={ranks}").into()];
    if keep_going {
        // The step outlives a rank that fails (`--kill-on-bad-exit=0`) and
        // a node that fails (`--no-kill`); each rank other than 0 runs
        // under a shell that reports its failure and exits 0, so that the
        // step's status (Slurm's: the highest of its tasks') is rank 0's,
        // as under `lumen run --keep-going` outside Slurm. Ranks lost with
        // a node cannot report: the step then ends with Slurm's error.
        argv.extend(["--kill-on-bad-exit=0".into(), "--no-kill".into()]);
        if label {
            argv.push("--label".into());
        }
        argv.extend([
            "sh".into(),
            "-c".into(),
            lumen_slurm::sbatch::KEEP_GOING_SHELL.into(),
            "lumen-rank".into(),
        ]);
    } else {
        // One rank that fails to start or crashes ends the step, instead of
        // leaving the others waiting for it.
        argv.push("--kill-on-bad-exit=1".into());
        if label {
            argv.push("--label".into());
        }
    }
    argv.push(program);
    argv.extend(args);
    Ok(Some(argv))
}

/// Why [`run_job_or_srun`] failed.
#[derive(Debug, Error)]
pub enum RunError {
    /// The allocation cannot hold the job, or `srun` could not be started.
    #[error(transparent)]
    Allocation(#[from] SubmitError),
    /// The launcher's spawner failed.
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
}

/// Runs a job as `lumen run` does and returns the exit code for the
/// calling process: inside a Slurm allocation, when neither hosts nor a
/// launch agent are given, its ranks are started by `srun` (see
/// [`srun_in_allocation`]); otherwise by [`run_job`](crate::spawn::run_job).
/// Exit codes that do not fit in a byte become 1.
pub fn run_job_or_srun(spec: &crate::spawn::JobSpec) -> Result<u8, RunError> {
    if spec.hosts.is_none() && spec.launch_agent.is_none() {
        let in_allocation = srun_in_allocation(
            |name| std::env::var(name).ok(),
            spec.ranks,
            spec.label_output,
            spec.keep_going,
            spec.program.clone(),
            spec.args.clone(),
        )?;
        if let Some(argv) = in_allocation {
            let status = Command::new(&argv[0])
                .args(&argv[1..])
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .status()
                .map_err(|source| SubmitError::Spawn {
                    program: "srun".to_string(),
                    source,
                })?;
            return Ok(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1));
        }
    }
    let outcome = crate::spawn::run_job(spec)?;
    Ok(u8::try_from(outcome.exit_code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn outside_an_allocation_or_inside_a_step_nothing_changes() {
        assert_eq!(
            srun_in_allocation(lookup(&[]), 4, false, false, "a".into(), vec![]).unwrap(),
            None
        );
        let in_step = lookup(&[("SLURM_JOB_ID", "1"), ("SLURM_STEP_ID", "0")]);
        assert_eq!(
            srun_in_allocation(in_step, 4, false, false, "a".into(), vec![]).unwrap(),
            None
        );
    }

    #[test]
    fn too_many_ranks_is_a_clear_error() {
        let env = lookup(&[("SLURM_JOB_ID", "77"), ("SLURM_NTASKS", "4")]);
        let error = srun_in_allocation(env, 8, false, false, "a".into(), vec![]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("SLURM_NTASKS=4"), "{message}");
        assert!(message.contains("job 77"), "{message}");
        assert!(message.contains("-n 4"), "{message}");
    }

    #[test]
    fn label_and_unknown_capacity() {
        let env = lookup(&[("SLURM_JOB_ID", "77")]);
        let argv = srun_in_allocation(env, 3, true, false, "a".into(), vec!["b".into()])
            .unwrap()
            .unwrap();
        assert_eq!(
            argv,
            [
                "srun",
                "--ntasks=3",
                "--kill-on-bad-exit=1",
                "--label",
                "a",
                "b"
            ]
        );
    }

    #[test]
    fn job_progress_reads_scontrol() {
        assert_eq!(
            job_progress("JobId=5 JobName=x JobState=RUNNING Reason=None ExitCode=0:0"),
            Some(JobProgress::Active("RUNNING".into()))
        );
        let done = |line| match job_progress(line) {
            Some(JobProgress::Done { exit_code, .. }) => exit_code,
            other => panic!("{other:?}"),
        };
        assert_eq!(done("JobState=COMPLETED ExitCode=0:0"), 0);
        assert_eq!(done("JobState=CANCELLED ExitCode=0:15"), 143);
        assert_eq!(done("JobState=TIMEOUT ExitCode=0:0"), 1);
        assert_eq!(done("JobState=FAILED ExitCode=2:0"), 2);
        assert_eq!(job_progress("slurm_load_jobs error: Invalid job id"), None);
        assert_eq!(job_progress("JobState=FAILED ExitCode=x"), None);
    }

    #[test]
    fn dry_run_returns_the_script() {
        let spec = BatchSpec {
            nodes: 1,
            ntasks_per_node: 2,
            command: vec!["./app".into()],
            ..BatchSpec::default()
        };
        match submit(&spec, true, false, |_| {}, |_| {}).unwrap() {
            SubmitOutcome::DryRun(script) => assert!(script.ends_with("srun ./app\n")),
            other => panic!("{other:?}"),
        }
        let bad = BatchSpec::default();
        assert!(matches!(
            submit(&bad, true, false, |_| {}, |_| {}),
            Err(SubmitError::Script(_))
        ));
    }
}
