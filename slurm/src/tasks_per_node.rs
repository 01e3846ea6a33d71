//! `SLURM_TASKS_PER_NODE` and `SLURM_STEP_TASKS_PER_NODE`: `2(x3),1`.
//!
//! A comma-separated list of entries, one per run of nodes: `n` is one node
//! running `n` tasks, `n(xm)` is `m` consecutive nodes running `n` tasks each.
//! `2(x3),1` therefore decodes to `[2, 2, 2, 1]`, one count per node of the
//! node list, in node-list order.

use thiserror::Error;

/// Most nodes one tasks-per-node string may describe (a guard against corrupt
/// values like `1(x4000000000)`).
pub const MAX_NODES: usize = 1 << 20;

/// Why a tasks-per-node string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TasksPerNodeError {
    /// The string is empty.
    #[error("tasks-per-node value is empty; expected entries like `2(x3),1`")]
    Empty,
    /// An entry is neither `n` nor `n(xm)` with decimal numbers.
    #[error("tasks-per-node value {value:?}: entry {entry:?} is not `n` or `n(xm)`; expected entries like `2(x3),1`")]
    InvalidEntry {
        /// The whole value.
        value: String,
        /// The offending entry.
        entry: String,
    },
    /// An entry repeats zero times (`2(x0)`).
    #[error("tasks-per-node value {value:?}: entry {entry:?} repeats zero times; a repeat count must be at least 1")]
    ZeroRepeat {
        /// The whole value.
        value: String,
        /// The offending entry.
        entry: String,
    },
    /// The value describes more than [`MAX_NODES`] nodes.
    #[error(
        "tasks-per-node value {value:?} describes more than {limit} nodes; it is probably corrupt"
    )]
    TooManyNodes {
        /// The whole value.
        value: String,
        /// The limit, [`MAX_NODES`].
        limit: usize,
    },
}

/// Decodes `2(x3),1` into one task count per node: `[2, 2, 2, 1]`.
///
/// ```
/// # use lumen_slurm::tasks_per_node::decode;
/// assert_eq!(decode("2(x3),1")?, [2, 2, 2, 1]);
/// assert!(decode("2(3)").is_err());
/// # Ok::<(), lumen_slurm::TasksPerNodeError>(())
/// ```
pub fn decode(value: &str) -> Result<Vec<u32>, TasksPerNodeError> {
    if value.is_empty() {
        return Err(TasksPerNodeError::Empty);
    }
    let mut counts = Vec::new();
    for entry in value.split(',') {
        let invalid = || TasksPerNodeError::InvalidEntry {
            value: value.to_owned(),
            entry: entry.to_owned(),
        };
        let (tasks, repeat) = match entry.split_once("(x") {
            Some((tasks, rest)) => {
                let repeat = rest.strip_suffix(')').ok_or_else(invalid)?;
                (tasks, parse_u32(repeat).ok_or_else(invalid)?)
            }
            None => (entry, 1),
        };
        let tasks = parse_u32(tasks).ok_or_else(invalid)?;
        if repeat == 0 {
            return Err(TasksPerNodeError::ZeroRepeat {
                value: value.to_owned(),
                entry: entry.to_owned(),
            });
        }
        let repeat = repeat as usize;
        if counts.len().saturating_add(repeat) > MAX_NODES {
            return Err(TasksPerNodeError::TooManyNodes {
                value: value.to_owned(),
                limit: MAX_NODES,
            });
        }
        counts.resize(counts.len() + repeat, tasks);
    }
    Ok(counts)
}

/// Encodes task counts per node into Slurm's compact form: `[2, 2, 2, 1]` gives
/// `2(x3),1`. An empty slice gives an empty string.
///
/// ```
/// # use lumen_slurm::tasks_per_node::encode;
/// assert_eq!(encode(&[2, 2, 2, 1]), "2(x3),1");
/// ```
pub fn encode(counts: &[u32]) -> String {
    let mut out = String::new();
    for run in counts.chunk_by(|a, b| a == b) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&run[0].to_string());
        if run.len() > 1 {
            out.push_str(&format!("(x{})", run.len()));
        }
    }
    out
}

fn parse_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_slurm_forms() {
        assert_eq!(decode("1"), Ok(vec![1]));
        assert_eq!(decode("2(x3),1"), Ok(vec![2, 2, 2, 1]));
        assert_eq!(decode("4(x2),3,8(x1)"), Ok(vec![4, 4, 3, 8]));
        assert_eq!(decode("0,1"), Ok(vec![0, 1]));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(decode(""), Err(TasksPerNodeError::Empty));
        for bad in [
            "x",
            "2(3)",
            "2(x3",
            "2(x)",
            "(x2)",
            "2,",
            ",2",
            "-1",
            "+1",
            "2(x3)4",
            "1 ",
            "99999999999",
        ] {
            assert!(
                matches!(decode(bad), Err(TasksPerNodeError::InvalidEntry { .. })),
                "{bad:?} gave {:?}",
                decode(bad)
            );
        }
        assert!(matches!(
            decode("2(x0)"),
            Err(TasksPerNodeError::ZeroRepeat { .. })
        ));
        assert!(matches!(
            decode("1(x4000000000)"),
            Err(TasksPerNodeError::TooManyNodes { .. })
        ));
        assert!(matches!(
            decode("1(x5000000000)"),
            Err(TasksPerNodeError::InvalidEntry { .. })
        ));
        assert!(matches!(
            decode("1(x1048576),1"),
            Err(TasksPerNodeError::TooManyNodes { .. })
        ));
    }

    #[test]
    fn encodes_and_round_trips() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[2, 2, 2, 1]), "2(x3),1");
        assert_eq!(encode(&[1, 2, 1]), "1,2,1");
        for value in ["1", "2(x3),1", "4(x2),3", "1,2(x2),1(x5)"] {
            assert_eq!(
                decode(value).map(|counts| encode(&counts)),
                Ok(value.to_owned())
            );
        }
        let counts = [3, 3, 0, 7, 7, 7, 1];
        assert_eq!(decode(&encode(&counts)), Ok(counts.to_vec()));
    }
}
