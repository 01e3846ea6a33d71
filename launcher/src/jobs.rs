//! The `lumen run` jobs running on this host, for tools that attach to
//! them (`lumen status`).
//!
//! `lumen run` writes `~/.lumen/jobs/<job id>` while its job runs and
//! removes it when the job ends: the job id, the rendezvous address, the
//! job secret, the pid of `lumen run`, the rank count and the command, one
//! `name=value` per line. The directory is mode 0700 and the file 0600:
//! the secret is as private as `~/.lumen/job-key`, from which every Slurm
//! job's secret is derived (the same trust: whoever can read this user's
//! `~/.lumen` can attach to this user's jobs, and nobody else can). A
//! file whose `lumen run` is gone (killed with SIGKILL) is skipped by
//! [`running`] and removed by the next [`register`].
//!
//! Design choice: the address and secret live in a file, not in the
//! output of `lumen run`, so that a job's output stays the program's own
//! and `lumen status` with no argument finds the one job running.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// One running `lumen run` job, as its file says.
#[derive(Clone, PartialEq, Eq)]
pub struct JobFile {
    /// The job id (`LUMEN_JOB_ID` of its ranks).
    pub job_id: String,
    /// The rendezvous store's `host:port` (`LUMEN_RENDEZVOUS`).
    pub rendezvous: String,
    /// The job secret in hex (`LUMEN_JOB_SECRET`).
    pub secret_hex: String,
    /// The `lumen run` process.
    pub pid: u32,
    /// Ranks in the job.
    pub ranks: u32,
    /// The program and its arguments.
    pub command: String,
    /// When it started (seconds since the epoch).
    pub started_unix: u64,
}

impl std::fmt::Debug for JobFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFile")
            .field("job_id", &self.job_id)
            .field("rendezvous", &self.rendezvous)
            .field("pid", &self.pid)
            .field("ranks", &self.ranks)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl JobFile {
    /// The file's text.
    pub fn encode(&self) -> String {
        let command = self.command.replace('\n', " ");
        format!(
            "job_id={}\nrendezvous={}\nsecret={}\npid={}\nranks={}\nstarted={}\ncommand={command}\n",
            self.job_id, self.rendezvous, self.secret_hex, self.pid, self.ranks, self.started_unix
        )
    }

    /// Reads a file's text; `None` when a field is missing or malformed.
    pub fn decode(text: &str) -> Option<JobFile> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(JobFile {
            job_id: field("job_id")?,
            rendezvous: field("rendezvous")?,
            secret_hex: field("secret")?,
            pid: field("pid")?.parse().ok()?,
            ranks: field("ranks")?.parse().ok()?,
            started_unix: field("started")?.parse().ok()?,
            command: field("command").unwrap_or_default(),
        })
    }
}

/// `~/.lumen/jobs` (`None` without `HOME`).
pub fn jobs_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".lumen").join("jobs"))
}

/// Whether process `pid` exists on this host.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A registered job's file, removed when this is dropped.
#[derive(Debug)]
pub struct Registration {
    path: PathBuf,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `job`'s file (and removes files of jobs whose `lumen run` is
/// gone). A failure only means `lumen status` cannot find the job by id
/// here; the caller logs it and runs the job anyway.
pub fn register(job: &JobFile) -> std::io::Result<Registration> {
    let dir = jobs_dir().ok_or_else(|| std::io::Error::other("HOME is not set"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    for stale in read_dir(&dir).into_iter().filter(|(_, j)| !alive(j.pid)) {
        let _ = std::fs::remove_file(stale.0);
    }
    let path = dir.join(&job.job_id);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(job.encode().as_bytes())?;
    Ok(Registration { path })
}

fn read_dir(dir: &Path) -> Vec<(PathBuf, JobFile)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let text = std::fs::read_to_string(entry.path()).ok()?;
            Some((entry.path(), JobFile::decode(&text)?))
        })
        .collect()
}

/// The jobs of this user running on this host, oldest first.
pub fn running() -> Vec<JobFile> {
    let Some(dir) = jobs_dir() else {
        return Vec::new();
    };
    let mut jobs: Vec<JobFile> = read_dir(&dir)
        .into_iter()
        .map(|(_, job)| job)
        .filter(|job| alive(job.pid))
        .collect();
    jobs.sort_by_key(|job| (job.started_unix, job.job_id.clone()));
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_file_reads_back_and_never_debug_prints_its_secret() {
        let job = JobFile {
            job_id: "l12x34".into(),
            rendezvous: "127.0.0.1:4000".into(),
            secret_hex: "ab".repeat(32),
            pid: 12,
            ranks: 4,
            command: "./app --x\ny".into(),
            started_unix: 99,
        };
        let back = JobFile::decode(&job.encode()).unwrap();
        assert_eq!(back.command, "./app --x y");
        assert_eq!(
            (back.job_id, back.secret_hex),
            (job.job_id.clone(), job.secret_hex.clone())
        );
        assert!(!format!("{job:?}").contains("abab"));
        assert!(JobFile::decode("job_id=x\npid=nope\n").is_none());
    }
}
