//! Starting rank processes and cleaning up after them, shared by
//! [`run_job`](super::run_job) and [`LocalRanks`](super::LocalRanks): the
//! command line (direct, or through a launch agent), `PR_SET_PDEATHSIG`
//! so that ranks die with the thread that spawned them, line-by-line
//! output forwarding, and removal of a job's `/dev/shm` files.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use rustix::process::Signal;

use super::{shm_segment_prefix, JobSpec};
use crate::config;

/// The command for a rank of [`run_job`](super::run_job): direct, or as
/// `AGENT... env K=V... PROGRAM ARGS...` through the launch agent, with its
/// output piped (to be forwarded by line) and in its own process group (to
/// be signalled as a whole).
pub(super) fn build_command(
    spec: &JobSpec,
    agent: Option<&[String]>,
    variables: &[(String, String)],
) -> Command {
    let mut command = match agent.and_then(<[String]>::split_first) {
        None => {
            let mut command = Command::new(&spec.program);
            command.args(&spec.args);
            command.envs(variables.iter().map(|(k, v)| (k, v)));
            command.envs(spec.env.iter().map(|(k, v)| (k, v)));
            command
        }
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest);
            command.arg("env");
            // Tuning knobs travel with the rank, so every rank runs with the
            // configuration `lumen run` validated.
            for name in config::VARIABLES {
                if let Ok(value) = std::env::var(name) {
                    command.arg(format!("{name}={value}"));
                }
            }
            for (name, value) in variables.iter().chain(&spec.env) {
                command.arg(format!("{name}={value}"));
            }
            command.arg(&spec.program);
            command.args(&spec.args);
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(&mut command);
    command
}

/// The command for a rank on this machine that shares the spawner's
/// terminal: `program args` with `variables` set and `remove` unset, stdin
/// closed, stdout and stderr inherited, in the spawner's process group.
pub(super) fn local_command(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    variables: &[(String, String)],
    remove: &[String],
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(variables.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    for name in remove {
        command.env_remove(name);
    }
    die_with_parent(&mut command);
    command
}

/// Makes the rank get SIGKILL when the *thread* that spawns it ends
/// (`PR_SET_PDEATHSIG`), and refuse to start when its parent is already gone.
fn die_with_parent(command: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two raw system calls through rustix (prctl, getppid), which allocate
    // nothing and take no locks, so it is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl took effect.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Forwards whole lines from `from` to our stdout or stderr; returns the
/// number of threads started (0 or 1). Each finished thread sends on `done`.
pub(super) fn forward_lines(
    from: impl Read + Send + 'static,
    label: Option<String>,
    to_stderr: bool,
    done: mpsc::Sender<()>,
) -> usize {
    let spawned = std::thread::Builder::new()
        .name("lumen-run-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let written = if to_stderr {
                    write_line(&mut io::stderr().lock(), label.as_deref(), &line)
                } else {
                    write_line(&mut io::stdout().lock(), label.as_deref(), &line)
                };
                if written.is_err() {
                    // Our own output is gone (closed pipe); keep draining so
                    // the rank does not block on a full pipe.
                    continue;
                }
            }
            let _ = done.send(());
        });
    usize::from(spawned.is_ok())
}

pub(super) fn write_line(out: &mut impl Write, label: Option<&str>, line: &[u8]) -> io::Result<()> {
    if let Some(label) = label {
        out.write_all(label.as_bytes())?;
    }
    out.write_all(line)?;
    out.flush()
}

/// Removes `/dev/shm/lumen-{job_id}-*` on this machine.
pub(super) fn remove_shm_segments(job_id: &str) {
    let prefix = shm_segment_prefix(job_id);
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::debug!(path = %entry.path().display(), "removed a leftover shared-memory file")
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %entry.path().display(), %error, "could not remove a shared-memory file")
                }
            }
        }
    }
}
