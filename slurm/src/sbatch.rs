//! Batch scripts for `sbatch`, rendered from a typed [`BatchSpec`].
//!
//! The script asks for the allocation with `#SBATCH` directives, exports the
//! requested environment, and starts the ranks with one `srun` (which reads
//! the allocation's geometry, so the program sees `SLURM_*` and bootstraps
//! by itself). Every value is validated (no newline can smuggle in a
//! directive or a command) and every word of the command line is quoted for
//! the shell.

use std::fmt::Write;

use thiserror::Error;

/// What `lumen submit` asks Slurm for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchSpec {
    /// `--job-name`.
    pub job_name: Option<String>,
    /// `--nodes`.
    pub nodes: u32,
    /// `--ntasks-per-node`.
    pub ntasks_per_node: u32,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<u32>,
    /// `--gpus-per-node`.
    pub gpus_per_node: Option<u32>,
    /// `--time` (`minutes`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
    pub time: Option<String>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// `--output` (Slurm's `%j` etc. allowed).
    pub output: Option<String>,
    /// `--error`.
    pub error: Option<String>,
    /// `--chdir`.
    pub chdir: Option<String>,
    /// Variables exported before `srun`.
    pub env: Vec<(String, String)>,
    /// `srun --mpi=...` (e.g. `pmi2`).
    pub mpi: Option<String>,
    /// `--no-kill` for the job and its step, `--kill-on-bad-exit=0`, and
    /// every rank but 0 under [`KEEP_GOING_SHELL`]: the job outlives a
    /// failed rank or node and its status is rank 0's (`--keep-going`).
    pub keep_going: bool,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// Why a spec cannot become a script.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SbatchError {
    /// A count that must be at least 1 is 0.
    #[error("--{option} must be at least 1")]
    Zero {
        /// The option.
        option: &'static str,
    },
    /// A value holds a newline or NUL, or is empty.
    #[error("--{option} {value:?} is empty or holds a newline or NUL")]
    BadText {
        /// The option.
        option: &'static str,
        /// The value.
        value: String,
    },
    /// `--time` is not in one of Slurm's formats.
    #[error("--time {value:?} is not a Slurm time limit: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")]
    BadTime {
        /// The value.
        value: String,
    },
    /// An environment variable name is not a shell identifier.
    #[error(
        "--env {name:?}: a variable name is letters, digits and `_`, not starting with a digit"
    )]
    BadEnvName {
        /// The name.
        name: String,
    },
    /// No program given.
    #[error("no program to run: give it after `--`")]
    NoCommand,
}

/// The shell each rank of a `--keep-going` step runs under, as `sh -c
/// KEEP_GOING_SHELL lumen-rank PROGRAM ARGS`: rank 0's status is the
/// program's; another rank's failure is reported and becomes 0, so that the
/// step's status (Slurm's: the highest of its tasks') is rank 0's. Ranks lost
/// with a node cannot report: the step then ends with Slurm's error.
pub const KEEP_GOING_SHELL: &str = r#""$@"; code=$?
if [ "$code" -ne 0 ] && [ "${SLURM_PROCID:-0}" != 0 ]; then
  echo "lumen run: rank $SLURM_PROCID exited with status $code; the job goes on without it (--keep-going)" >&2
  exit 0
fi
exit $code"#;

/// Whether `value` is one of Slurm's `--time` formats.
pub fn is_valid_time(value: &str) -> bool {
    let numbers = |text: &str, max_parts: usize| {
        let parts: Vec<&str> = text.split(':').collect();
        parts.len() <= max_parts
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if value.eq_ignore_ascii_case("infinite") || value.eq_ignore_ascii_case("unlimited") {
        return true;
    }
    match value.split_once('-') {
        Some((days, rest)) => numbers(days, 1) && numbers(rest, 3),
        None => numbers(value, 3),
    }
}

/// `word` quoted for a POSIX shell (single quotes; a `'` becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+%@".contains(&b))
    {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn text<'a>(
    option: &'static str,
    value: &'a Option<String>,
) -> Result<Option<&'a str>, SbatchError> {
    match value.as_deref() {
        None => Ok(None),
        Some(v) if v.is_empty() || v.contains(['\n', '\r', '\0']) => Err(SbatchError::BadText {
            option,
            value: v.to_owned(),
        }),
        Some(v) => Ok(Some(v)),
    }
}

/// The batch script for `spec`.
///
/// ```
/// use lumen_slurm::sbatch::{render, BatchSpec};
/// let script = render(&BatchSpec {
///     nodes: 2,
///     ntasks_per_node: 4,
///     time: Some("00:10:00".into()),
///     command: vec!["./app".into(), "--size".into(), "1 MiB".into()],
///     ..BatchSpec::default()
/// })?;
/// assert!(script.contains("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=4\n"));
/// assert!(script.ends_with("srun ./app --size '1 MiB'\n"));
/// # Ok::<(), lumen_slurm::sbatch::SbatchError>(())
/// ```
pub fn render(spec: &BatchSpec) -> Result<String, SbatchError> {
    if spec.nodes == 0 {
        return Err(SbatchError::Zero { option: "nodes" });
    }
    if spec.ntasks_per_node == 0 {
        return Err(SbatchError::Zero {
            option: "ntasks-per-node",
        });
    }
    if spec.cpus_per_task == Some(0) {
        return Err(SbatchError::Zero {
            option: "cpus-per-task",
        });
    }
    if spec.command.is_empty() {
        return Err(SbatchError::NoCommand);
    }
    let mut out = String::from("#!/bin/bash\n");
    let mut directive = |option: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "#SBATCH --{option}={value}");
    };
    if let Some(name) = text("job-name", &spec.job_name)? {
        directive("job-name", &name);
    }
    directive("nodes", &spec.nodes);
    directive("ntasks-per-node", &spec.ntasks_per_node);
    if let Some(cpus) = spec.cpus_per_task {
        directive("cpus-per-task", &cpus);
    }
    if let Some(gpus) = spec.gpus_per_node.filter(|&g| g > 0) {
        directive("gpus-per-node", &gpus);
    }
    if let Some(time) = text("time", &spec.time)? {
        if !is_valid_time(time) {
            return Err(SbatchError::BadTime {
                value: time.to_owned(),
            });
        }
        directive("time", &time);
    }
    for (option, value) in [
        ("partition", &spec.partition),
        ("account", &spec.account),
        ("output", &spec.output),
        ("error", &spec.error),
        ("chdir", &spec.chdir),
    ] {
        if let Some(value) = text(option, value)? {
            directive(option, &value);
        }
    }
    if spec.keep_going {
        out.push_str("#SBATCH --no-kill\n");
    }
    out.push_str("# generated by `lumen submit`: one srun starts every rank; Lumen bootstraps from SLURM_*\n");
    out.push_str("set -eu\n");
    for (name, value) in &spec.env {
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(SbatchError::BadEnvName { name: name.clone() });
        }
        if value.contains('\0') {
            return Err(SbatchError::BadText {
                option: "env",
                value: value.clone(),
            });
        }
        let _ = writeln!(out, "export {name}={}", shell_quote(value));
    }
    out.push_str("srun");
    if let Some(mpi) = text("mpi", &spec.mpi)? {
        let _ = write!(out, " --mpi={}", shell_quote(mpi));
    }
    if spec.keep_going {
        let _ = write!(
            out,
            " --no-kill --kill-on-bad-exit=0 sh -c {} lumen-rank",
            shell_quote(KEEP_GOING_SHELL)
        );
    }
    for word in &spec.command {
        if word.contains('\0') {
            return Err(SbatchError::BadText {
                option: "command",
                value: word.clone(),
            });
        }
        out.push(' ');
        out.push_str(&shell_quote(word));
    }
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_going_asks_slurm_not_to_kill_the_job() {
        let script = render(&BatchSpec {
            nodes: 2,
            ntasks_per_node: 1,
            keep_going: true,
            command: vec!["./app".into()],
            ..BatchSpec::default()
        })
        .expect("valid");
        assert!(script.contains("#SBATCH --no-kill\n"), "{script}");
        // The shell's script spans lines, inside its quotes.
        assert!(
            script.contains("\nsrun --no-kill --kill-on-bad-exit=0 sh -c '\"$@\"; code=$?\n"),
            "{script}"
        );
        assert!(
            script.ends_with("exit $code' lumen-rank ./app\n"),
            "{script}"
        );
    }

    fn full() -> BatchSpec {
        BatchSpec {
            job_name: Some("train".into()),
            nodes: 3,
            ntasks_per_node: 2,
            cpus_per_task: Some(4),
            gpus_per_node: Some(8),
            time: Some("1-02:00:00".into()),
            partition: Some("gpu".into()),
            account: Some("proj42".into()),
            output: Some("out-%j.txt".into()),
            error: Some("err-%j.txt".into()),
            chdir: None,
            env: vec![
                ("LUMEN_LOG".into(), "info".into()),
                ("MSG".into(), "it's here".into()),
            ],
            mpi: Some("pmi2".into()),
            keep_going: false,
            command: vec!["/opt/app".into(), "--steps".into(), "10".into()],
        }
    }

    #[test]
    fn renders_every_directive_in_order() {
        let script = render(&full()).unwrap();
        let expected = "#!/bin/bash
#SBATCH --job-name=train
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --gpus-per-node=8
#SBATCH --time=1-02:00:00
#SBATCH --partition=gpu
#SBATCH --account=proj42
#SBATCH --output=out-%j.txt
#SBATCH --error=err-%j.txt
# generated by `lumen submit`: one srun starts every rank; Lumen bootstraps from SLURM_*
set -eu
export LUMEN_LOG=info
export MSG='it'\\''s here'
srun --mpi=pmi2 /opt/app --steps 10
";
        assert_eq!(script, expected);
    }

    #[test]
    fn refuses_bad_input() {
        let mut spec = full();
        spec.nodes = 0;
        assert_eq!(render(&spec), Err(SbatchError::Zero { option: "nodes" }));
        let mut spec = full();
        spec.partition = Some("gpu\n#SBATCH --qos=high".into());
        assert!(matches!(
            render(&spec),
            Err(SbatchError::BadText {
                option: "partition",
                ..
            })
        ));
        let mut spec = full();
        spec.env.push(("1X".into(), "v".into()));
        assert!(matches!(render(&spec), Err(SbatchError::BadEnvName { .. })));
        let mut spec = full();
        spec.command.clear();
        assert_eq!(render(&spec), Err(SbatchError::NoCommand));
        for bad in ["10m", "1:2:3:4", "-1", "a-01", "", "1-"] {
            let mut spec = full();
            spec.time = Some(bad.into());
            assert!(render(&spec).is_err(), "{bad:?}");
        }
        for good in [
            "10",
            "10:00",
            "01:10:00",
            "2-00",
            "2-00:30",
            "2-00:30:00",
            "UNLIMITED",
        ] {
            assert!(is_valid_time(good), "{good:?}");
        }
    }

    #[test]
    fn quoting_survives_the_shell() {
        for word in [
            "plain",
            "two words",
            "it's",
            "$HOME",
            "a\"b",
            "",
            "new\nline",
            "*",
        ] {
            let quoted = shell_quote(word);
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {quoted}"))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&output.stdout), word, "{quoted}");
        }
    }
}
