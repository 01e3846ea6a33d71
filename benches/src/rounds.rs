//! Benchmarks you can steer by (issue 16): Lumen and its baseline measured
//! in alternating rounds of one invocation (A B A B ...), each round's
//! ratio kept, the median ratio and its spread reported; the machine's load
//! checked before and after every round (a round that ran beside another
//! busy process is redone once, then kept and flagged); and each report
//! written as JSON with the commit, date, machine and command, from which
//! `lumen-bench markdown` renders the tables of BENCHMARKS.md (so prose
//! never disagrees with data).
//!
//! The load check reads `/proc/stat` over a short window while nothing of
//! the benchmark runs: the share of all CPUs busy is what other processes
//! took. On these 2-core machines a build or a helper shows as 0.5-1.0; an
//! idle machine as under 0.05. Above [`NOISY`] a round is noisy.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Share of the machine's CPUs busy with other work above which a round is
/// noisy.
pub const NOISY: f64 = 0.15;

/// How long the load check looks.
const WINDOW: Duration = Duration::from_millis(250);

/// The aggregate `cpu` line of `/proc/stat`: (busy, total) jiffies.
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if fields.len() < 5 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields[4];
    Some((total.saturating_sub(idle), total))
}

/// The share of all CPUs busy over [`WINDOW`] (0.0 when `/proc/stat`
/// cannot be read).
pub fn machine_busy() -> f64 {
    let Some((b0, t0)) = cpu_jiffies() else {
        return 0.0;
    };
    std::thread::sleep(WINDOW);
    let Some((b1, t1)) = cpu_jiffies() else {
        return 0.0;
    };
    let total = t1.saturating_sub(t0);
    if total == 0 {
        return 0.0;
    }
    b1.saturating_sub(b0) as f64 / total as f64
}

/// Waits up to `patience` for the machine to be quiet; the last load seen.
pub fn wait_quiet(patience: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let busy = machine_busy();
        if busy <= NOISY || start.elapsed() >= patience {
            return busy;
        }
    }
}

/// What one side measured in one round: a value per key (`latency/8`).
pub type Measured = Vec<(String, f64)>;

/// One key's rounds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// What was measured (`latency/8`, `bandwidth/4194304`).
    pub key: String,
    /// Lumen's value in each round.
    pub lumen: Vec<f64>,
    /// The baseline's value in each round (absent where it did not run).
    pub baseline: Vec<f64>,
    /// Each round's ratio, Lumen / baseline.
    pub ratios: Vec<f64>,
}

impl Series {
    /// Median of Lumen's values.
    pub fn lumen_median(&self) -> f64 {
        median(&self.lumen)
    }

    /// Median of the baseline's values.
    pub fn baseline_median(&self) -> Option<f64> {
        (!self.baseline.is_empty()).then(|| median(&self.baseline))
    }

    /// Median of the per-round ratios.
    pub fn ratio_median(&self) -> Option<f64> {
        (!self.ratios.is_empty()).then(|| median(&self.ratios))
    }

    /// The smallest and largest per-round ratio.
    pub fn ratio_range(&self) -> Option<(f64, f64)> {
        range(&self.ratios)
    }
}

/// The smallest and largest of `values` (`None` when there are none).
pub fn range(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (!values.is_empty()).then_some((min, max))
}

/// Load seen around one round.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoundLoad {
    /// Before the round (after waiting up to 2 s for quiet).
    pub before: f64,
    /// Right after it.
    pub after: f64,
    /// Redone because it was noisy.
    pub redone: bool,
}

impl RoundLoad {
    /// Above [`NOISY`] before or after.
    pub fn noisy(&self) -> bool {
        self.before > NOISY || self.after > NOISY
    }
}

/// The median (the mean of the middle two for an even count; NaN for
/// none), NaNs left out.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `rounds` rounds of `lumen` then `baseline` (A B A B ...), with the
/// load check around each round; a noisy round is redone once. `baseline`
/// may be `None` (no baseline on this machine). Keys are matched by name;
/// a key the baseline lacks gets no ratio.
pub fn alternate(
    rounds: usize,
    lumen: impl FnMut() -> anyhow::Result<Measured>,
    baseline: Option<&mut dyn FnMut() -> anyhow::Result<Measured>>,
) -> anyhow::Result<(Vec<Series>, Vec<RoundLoad>)> {
    alternate_with(
        rounds,
        lumen,
        baseline,
        || wait_quiet(Duration::from_secs(2)),
        machine_busy,
    )
}

/// The rounds' progress bar on stderr: rounds done, time taken and left.
/// indicatif draws nothing when stderr is not a terminal (CI, pipes,
/// files), so logs stay as they were.
pub fn round_bar(rounds: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(rounds as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "lumen bench: round {pos}/{len} {wide_bar} {elapsed} (about {eta} left) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `round` `rounds` times with the load check around each run: a
/// noisy run is redone once, then kept and flagged. Returns each kept
/// run's result and load, in order.
pub fn with_load_checks<T>(
    rounds: usize,
    mut round: impl FnMut() -> anyhow::Result<T>,
    mut load_before: impl FnMut() -> f64,
    mut load_after: impl FnMut() -> f64,
) -> anyhow::Result<(Vec<T>, Vec<RoundLoad>)> {
    let mut kept = Vec::new();
    let mut loads = Vec::new();
    let bar = round_bar(rounds.max(1));
    for index in 0..rounds.max(1) {
        let mut redone = false;
        let (result, load) = loop {
            bar.set_message(if redone { "redoing a noisy round" } else { "" });
            let before = load_before();
            let result = round()?;
            let after = load_after();
            let load = RoundLoad {
                before,
                after,
                redone,
            };
            if load.noisy() && !redone {
                bar.suspend(|| {
                    eprintln!(
                        "lumen bench: round {} ran beside other load ({:.0}% before, {:.0}% after): once more",
                        index + 1,
                        before * 100.0,
                        after * 100.0
                    )
                });
                redone = true;
                continue;
            }
            break (result, load);
        };
        if load.noisy() {
            bar.suspend(|| {
                eprintln!(
                    "lumen bench: round {} kept but noisy ({:.0}% / {:.0}% of the CPUs busy with other work)",
                    index + 1,
                    load.before * 100.0,
                    load.after * 100.0
                )
            });
        }
        kept.push(result);
        loads.push(load);
        bar.inc(1);
    }
    Ok((kept, loads))
}

/// [`alternate`] with its load checks given (`before` may wait for quiet).
pub fn alternate_with(
    rounds: usize,
    mut lumen: impl FnMut() -> anyhow::Result<Measured>,
    mut baseline: Option<&mut dyn FnMut() -> anyhow::Result<Measured>>,
    mut load_before: impl FnMut() -> f64,
    mut load_after: impl FnMut() -> f64,
) -> anyhow::Result<(Vec<Series>, Vec<RoundLoad>)> {
    let (measured, loads) = with_load_checks(
        rounds,
        || {
            let a = lumen()?;
            let b = match baseline.as_mut() {
                Some(run) => run()?,
                None => Vec::new(),
            };
            Ok((a, b))
        },
        &mut load_before,
        &mut load_after,
    )?;
    let mut series: Vec<Series> = Vec::new();
    for (a, b) in measured {
        for (key, value) in a {
            let other = b.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            let entry = match series.iter_mut().position(|s| s.key == key) {
                Some(i) => &mut series[i],
                None => {
                    series.push(Series {
                        key: key.clone(),
                        lumen: Vec::new(),
                        baseline: Vec::new(),
                        ratios: Vec::new(),
                    });
                    series.last_mut().expect("just pushed")
                }
            };
            entry.lumen.push(value);
            if let Some(other) = other {
                entry.baseline.push(other);
                entry.ratios.push(value / other);
            }
        }
    }
    Ok((series, loads))
}

/// Facts about a run that the tables print beside the figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The suite (`transport`).
    pub suite: String,
    /// The command line, as typed.
    pub command: String,
    /// `git rev-parse --short HEAD` of the working directory, or
    /// `LUMEN_COMMIT`, or "unknown".
    pub commit: String,
    /// UTC date and time.
    pub date: String,
    /// Host name, CPU model and count.
    pub machine: String,
    /// How the processes of both sides were pinned and counted.
    pub placement: String,
    /// Build profile of this executable.
    pub profile: String,
}

impl RunInfo {
    /// This run's facts.
    pub fn now(suite: &str, placement: &str) -> Self {
        let command = std::env::args()
            .map(|a| lumen_slurm::sbatch::shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ");
        let commit = std::env::var("LUMEN_COMMIT").ok().unwrap_or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        });
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        RunInfo {
            suite: suite.to_string(),
            command,
            commit,
            date,
            machine: format!("{host}: {cores} x {cpu}"),
            placement: placement.to_string(),
            profile: if cfg!(debug_assertions) {
                "dev (debug assertions on: figures not comparable)".into()
            } else {
                "release".into()
            },
        }
    }

    /// The header lines printed before a table.
    pub fn print(&self) {
        println!("# {} — commit {}, {}", self.suite, self.commit, self.date);
        println!("# machine: {}; build: {}", self.machine, self.profile);
        println!("# placement: {}", self.placement);
    }
}

/// Renders a `--json` report ([`crate::Report`]) as a Markdown section:
/// the run's facts, the load, and a table of every row's fields, between
/// markers that [`update_section`] finds again.
pub fn markdown(report: &serde_json::Value, source: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    let info: RunInfo = serde_json::from_value(report["info"].clone())
        .map_err(|e| anyhow::anyhow!("{source}: no run facts (`info`): {e}"))?;
    let rows = report["rows"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("{source}: no `rows`"))?;
    let mut out = String::new();
    let _ = writeln!(out, "<!-- BEGIN generated: {} -->", info.suite);
    let _ = writeln!(
        out,
        "<!-- generated by `lumen-bench markdown` from {source}; regenerate, do not edit -->"
    );
    let _ = writeln!(
        out,
        "### {} — commit {}, {}\n",
        info.suite, info.commit, info.date
    );
    let _ = writeln!(out, "- command: `{}`", info.command);
    let _ = writeln!(out, "- machine: {}; build: {}", info.machine, info.profile);
    let _ = writeln!(out, "- placement: {}", info.placement);
    if let Some(parts) = report["loads"].as_array() {
        for part in parts {
            let name = part[0].as_str().unwrap_or_default();
            let loads: Vec<RoundLoad> = serde_json::from_value(part[1].clone()).unwrap_or_default();
            let worst = loads
                .iter()
                .map(|l| l.before.max(l.after))
                .fold(0.0f64, f64::max);
            let noisy = loads.iter().filter(|l| l.noisy()).count();
            let redone = loads.iter().filter(|l| l.redone).count();
            let _ = writeln!(
                out,
                "- {name}: {} rounds, other load at most {:.0}% of the CPUs, {redone} redone, {noisy} noisy",
                loads.len(),
                worst * 100.0
            );
        }
    }
    out.push('\n');
    // The usual columns first, in this order (JSON objects come back with
    // their keys sorted), then any others.
    const FIRST: &[&str] = &[
        "layout",
        "transport",
        "backend",
        "test",
        "unit",
        "ranks",
        "size",
        "lumen",
        "baseline_name",
        "baseline",
        "ratio",
        "ratio_range",
        "rounds",
    ];
    let mut columns: Vec<String> = match rows.first().and_then(|r| r.as_object()) {
        Some(first) => first.keys().cloned().collect(),
        None => Vec::new(),
    };
    columns.sort_by_key(|c| FIRST.iter().position(|f| f == c).unwrap_or(FIRST.len()));
    let _ = writeln!(out, "| {} |", columns.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        columns.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match (&row[c], c.ends_with("_rounds")) {
                // Each round's value, in order (not a range).
                (serde_json::Value::Array(items), true) => {
                    items.iter().map(cell).collect::<Vec<_>>().join(" / ")
                }
                (value, _) => cell(value),
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(out, "<!-- END generated: {} -->", info.suite);
    Ok(out)
}

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "–".into(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => {
                if x.abs() >= 100.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            }
            _ => n.to_string(),
        },
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) if items.len() == 2 => {
            format!("{}–{}", cell(&items[0]), cell(&items[1]))
        }
        other => other.to_string(),
    }
}

/// Several invocations of one suite as one section: each run's facts,
/// then a row per figure with each invocation's median ratio and the
/// spread of those ratios ((max - min) / 2 / median), which is what "each
/// ratio within +-15% over three invocations" is read from.
pub fn markdown_invocations(reports: &[(serde_json::Value, String)]) -> anyhow::Result<String> {
    use std::fmt::Write;
    let Some((first, _)) = reports.first() else {
        anyhow::bail!("no reports");
    };
    let suite = first["info"]["suite"]
        .as_str()
        .unwrap_or("suite")
        .to_string();
    let name = format!("{suite} x{}", reports.len());
    let mut out = String::new();
    let _ = writeln!(out, "<!-- BEGIN generated: {name} -->");
    let sources: Vec<&str> = reports.iter().map(|(_, s)| s.as_str()).collect();
    let _ = writeln!(
        out,
        "<!-- generated by `lumen-bench markdown` from {}; regenerate, do not edit -->",
        sources.join(", ")
    );
    let _ = writeln!(out, "### {suite}: {} invocations\n", reports.len());
    for (i, (report, source)) in reports.iter().enumerate() {
        let info: RunInfo = serde_json::from_value(report["info"].clone())
            .map_err(|e| anyhow::anyhow!("{source}: no run facts (`info`): {e}"))?;
        if i == 0 {
            let _ = writeln!(out, "- machine: {}; build: {}", info.machine, info.profile);
            let _ = writeln!(out, "- placement: {}", info.placement);
        }
        let _ = writeln!(
            out,
            "- invocation {}: commit {}, {}: `{}`",
            i + 1,
            info.commit,
            info.date,
            info.command
        );
    }
    out.push('\n');
    let key_columns = [
        "layout",
        "transport",
        "backend",
        "test",
        "ranks",
        "size",
        "baseline_name",
    ];
    let key_of = |row: &serde_json::Value| -> Vec<String> {
        key_columns
            .iter()
            .filter(|c| !row[**c].is_null())
            .map(|c| cell(&row[*c]))
            .collect()
    };
    let Some(rows) = first["rows"].as_array() else {
        anyhow::bail!("{}: no `rows`", reports[0].1);
    };
    let present: Vec<&str> = key_columns
        .iter()
        .copied()
        .filter(|c| rows.first().is_some_and(|r| !r[*c].is_null()))
        .collect();
    let mut header: Vec<String> = present.iter().map(|c| c.to_string()).collect();
    header.push("Lumen (first)".into());
    header.push("baseline (first)".into());
    for i in 0..reports.len() {
        header.push(format!("ratio {}", i + 1));
    }
    header.push("spread".into());
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let key = key_of(row);
        let mut cells = key.clone();
        cells.push(cell(&row["lumen"]));
        cells.push(cell(&row["baseline"]));
        let mut ratios = Vec::new();
        for (report, _) in reports {
            let found = report["rows"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| key_of(r) == key))
                .and_then(|r| r["ratio"].as_f64());
            cells.push(found.map_or("–".into(), |x| format!("{x:.2}")));
            ratios.extend(found);
        }
        let spread = if ratios.len() > 1 {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("±{:.0}%", (hi - lo) / 2.0 / median(&ratios) * 100.0)
        } else {
            "–".into()
        };
        cells.push(spread);
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(out, "<!-- END generated: {name} -->");
    Ok(out)
}

/// `document` with the section of `section`'s suite replaced (between its
/// markers), or inserted after the first heading when it has none.
pub fn update_section(document: &str, section: &str) -> String {
    let suite = section
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("<!-- BEGIN generated: "))
        .and_then(|l| l.strip_suffix(" -->"))
        .unwrap_or_default();
    let begin = format!("<!-- BEGIN generated: {suite} -->");
    let end = format!("<!-- END generated: {suite} -->");
    if let (Some(b), Some(e)) = (document.find(&begin), document.find(&end)) {
        if b < e {
            let after = e + end.len();
            let rest = document[after..]
                .strip_prefix('\n')
                .unwrap_or(&document[after..]);
            return format!("{}{section}{rest}", &document[..b]);
        }
    }
    match document.find('\n') {
        Some(first) => format!("{}\n\n{section}{}", &document[..first], &document[first..]),
        None => format!("{document}\n\n{section}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_and_ratios_are_per_round() {
        let calls = std::cell::RefCell::new(String::new());
        let mut a_values = vec![2.0, 4.0, 3.0].into_iter();
        let mut b_values = vec![1.0, 1.0, 2.0].into_iter();
        let mut base = || {
            calls.borrow_mut().push('B');
            Ok(vec![("x".to_string(), b_values.next().unwrap_or(1.0))])
        };
        let mut loads = vec![0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0].into_iter();
        let (series, seen) = alternate_with(
            3,
            || {
                calls.borrow_mut().push('A');
                Ok(vec![
                    ("x".to_string(), a_values.next().unwrap_or(1.0)),
                    ("only-lumen".to_string(), 5.0),
                ])
            },
            Some(&mut base),
            || 0.0,
            || loads.next().unwrap_or(0.0),
        )
        .expect("runs");
        // The second round was noisy after it ran: redone once.
        assert_eq!(calls.borrow().as_str(), "ABABABAB");
        assert_eq!(seen.len(), 3);
        assert!(seen[1].redone && !seen[0].redone);
        let x = &series[0];
        assert_eq!(x.key, "x");
        // Round 2's first try (4.0 / 1.0) was thrown away.
        assert_eq!(x.ratios, vec![2.0, 1.5, 1.0]);
        assert_eq!(x.ratio_median(), Some(1.5));
        assert_eq!(x.ratio_range(), Some((1.0, 2.0)));
        assert_eq!(series[1].ratio_median(), None, "no baseline for it");
    }

    #[test]
    fn a_report_becomes_a_section_that_replaces_itself() {
        let report = serde_json::json!({
            "info": {
                "suite": "transport", "command": "lumen bench transport", "commit": "abc1234",
                "date": "2026-12-07 02:00 UTC", "machine": "m: 2 x cpu", "placement": "pinned",
                "profile": "release"
            },
            "loads": [["shm", [{"before": 0.01, "after": 0.02, "redone": false}]]],
            "rows": [{"test": "latency", "size": 8, "lumen": 0.25, "ratio": 1.04, "ratio_range": [0.98, 1.2]}]
        });
        let section = markdown(&report, "t.json").expect("renders");
        assert!(
            section.contains("| test | size | lumen | ratio | ratio_range |"),
            "{section}"
        );
        assert!(
            section.contains("| latency | 8 | 0.25 | 1.04 | 0.98–1.20 |"),
            "{section}"
        );
        assert!(
            section.contains("shm: 1 rounds, other load at most 2% of the CPUs"),
            "{section}"
        );
        let doc = "# Benchmarks\n\nolder text\n";
        let once = update_section(doc, &section);
        assert!(once.starts_with("# Benchmarks\n\n<!-- BEGIN generated: transport -->"));
        assert!(once.ends_with("older text\n"), "{once}");
        let changed = section.replace("1.04", "1.10");
        let twice = update_section(&once, &changed);
        assert_eq!(twice.matches("BEGIN generated: transport").count(), 1);
        assert!(twice.contains("1.10") && !twice.contains("| 1.04 |"));
    }

    #[test]
    fn invocations_share_one_table_with_their_spread() {
        let report = |ratio: f64| {
            serde_json::json!({
                "info": {
                    "suite": "transport", "command": "c", "commit": "abc", "date": "d",
                    "machine": "m", "placement": "p", "profile": "release"
                },
                "loads": [],
                "rows": [{"transport": "shm", "test": "latency", "size": 8, "baseline_name": "open-mpi",
                          "lumen": 0.2, "baseline": 0.1, "ratio": ratio}]
            })
        };
        let section = markdown_invocations(&[
            (report(0.9), "a.json".into()),
            (report(1.0), "b.json".into()),
            (report(1.1), "c.json".into()),
        ])
        .expect("renders");
        assert!(
            section.starts_with("<!-- BEGIN generated: transport x3 -->"),
            "{section}"
        );
        assert!(
            section.contains(
                "| shm | latency | 8 | open-mpi | 0.20 | 0.10 | 0.90 | 1.00 | 1.10 | ±10% |"
            ),
            "{section}"
        );
    }

    #[test]
    fn the_median_skips_missing_values() {
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_load_of_this_machine_is_a_share() {
        let busy = machine_busy();
        assert!((0.0..=1.0).contains(&busy), "{busy}");
    }
}
