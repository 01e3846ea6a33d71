//! A timeline of what each rank did, for Perfetto (ui.perfetto.dev) and
//! `chrome://tracing`: `LUMEN_TIMELINE=trace.json`.
//!
//! With it set, every rank records, in a ring buffer of its own (the last
//! [`CAPACITY`] events; older ones are dropped and counted), a span per
//! task it runs ("run NAME", with its duration) and instants where a task
//! is submitted ("submit NAME", on the owner, `peer`: the rank it went
//! to) and where its reply arrives ("reply", on the owner, `peer`: the
//! rank that ran it). Each event
//! carries the rank (the trace's process), the thread, and the task's
//! object id, so one task can be followed across ranks.
//!
//! Each rank writes `trace.rankR.json` when it leaves the job (a Chrome
//! trace: `traceEvents`, timestamps in microseconds of the wall clock);
//! `lumen timeline merge trace.rank*.json -o trace.json` makes one file of
//! them for the whole job.
//!
//! Design choices and what is not built (see the issue): timestamps are
//! `CLOCK_REALTIME`, so ranks of one machine are aligned exactly and ranks
//! of different machines as well as their clocks are synchronised (NTP,
//! PTP): aligning clocks at bootstrap is not built. Actor calls, object
//! transfers, collectives and placement decisions are not recorded yet.
//! The cost when off is one relaxed atomic load per task.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// `LUMEN_TIMELINE`.
pub(crate) const VAR: &str = "LUMEN_TIMELINE";
/// Events kept per rank.
pub(crate) const CAPACITY: usize = 1 << 18;

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EVENTS: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

/// One recorded event.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    name: String,
    /// Microseconds since the Unix epoch.
    ts: u64,
    /// Span length in microseconds; `None` for an instant.
    dur: Option<u64>,
    tid: u64,
    object: String,
    /// The other rank: where a submitted task went, who reported a reply.
    peer: Option<u32>,
}

/// Microseconds of the wall clock.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// True while recording (`LUMEN_TIMELINE` was set at start).
#[inline]
pub(crate) fn on() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Starts recording when `LUMEN_TIMELINE` is set.
pub(crate) fn enable_from_env() {
    if std::env::var_os(VAR).is_some_and(|v| !v.is_empty()) {
        ENABLED.store(true, Ordering::Relaxed);
    }
}

fn thread_id() -> u64 {
    thread_local! {
        static ID: u64 = {
            static NEXT: AtomicU64 = AtomicU64::new(1);
            NEXT.fetch_add(1, Ordering::Relaxed)
        };
    }
    ID.with(|id| *id)
}

fn push(event: Event) {
    let mut events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    if events.len() >= CAPACITY {
        events.pop_front();
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    events.push_back(event);
}

/// An instant: `what` ("submit", "reply") of task `name` for `object`.
pub(crate) fn instant(what: &str, name: &str, object: impl std::fmt::Display, peer: Option<u32>) {
    if !on() {
        return;
    }
    push(Event {
        name: if name.is_empty() {
            what.to_string()
        } else {
            format!("{what} {name}")
        },
        ts: now_us(),
        dur: None,
        tid: thread_id(),
        object: object.to_string(),
        peer,
    });
}

/// A span that began at `start` (from [`now_us`]) and ends now.
pub(crate) fn span(what: &str, name: &str, object: impl std::fmt::Display, start: u64) {
    if !on() {
        return;
    }
    push(Event {
        name: format!("{what} {name}"),
        ts: start,
        dur: Some(now_us().saturating_sub(start)),
        tid: thread_id(),
        object: object.to_string(),
        peer: None,
    });
}

/// `trace.json` -> `trace.rank3.json` (a name without `.json` gets it appended).
pub(crate) fn rank_path(base: &Path, rank: u32) -> PathBuf {
    let text = base.to_string_lossy();
    match text.strip_suffix(".json") {
        Some(stem) => PathBuf::from(format!("{stem}.rank{rank}.json")),
        None => PathBuf::from(format!("{text}.rank{rank}.json")),
    }
}

/// Writes this rank's events as a Chrome trace, one event at a time (a
/// rank's buffer holds up to [`CAPACITY`] events: no tree is built).
pub(crate) fn write_trace(
    out: &mut impl std::io::Write,
    rank: u32,
    node: u32,
) -> std::io::Result<()> {
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"?\"".into());
    let events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    write!(
        out,
        "{{\"displayTimeUnit\":\"ms\",\"otherData\":{{\"rank\":{rank},\"node\":{node},\"dropped_events\":{}}},\"traceEvents\":[",
        DROPPED.load(Ordering::Relaxed)
    )?;
    write!(
        out,
        "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{rank},\"tid\":0,\"args\":{{\"name\":{}}}}}",
        quote(&format!("rank {rank} (node {node})"))
    )?;
    for e in events.iter() {
        write!(
            out,
            ",{{\"name\":{},\"cat\":\"task\",\"pid\":{rank},\"tid\":{},\"ts\":{},",
            quote(&e.name),
            e.tid,
            e.ts
        )?;
        match e.dur {
            Some(dur) => write!(out, "\"ph\":\"X\",\"dur\":{dur},")?,
            None => write!(out, "\"ph\":\"i\",\"s\":\"t\",")?,
        }
        write!(out, "\"args\":{{\"object\":{}", quote(&e.object))?;
        if let Some(peer) = e.peer {
            write!(out, ",\"peer\":{peer}")?;
        }
        write!(out, "}}}}")?;
    }
    write!(out, "]}}")?;
    out.flush()
}

/// Writes this rank's file when recording; logs (never fails the job) on error.
pub(crate) fn write_if_on(rank: u32, node: u32) {
    if !on() {
        return;
    }
    let Some(base) = std::env::var_os(VAR) else {
        return;
    };
    let path = rank_path(Path::new(&base), rank);
    let written = std::fs::File::create(&path)
        .and_then(|file| write_trace(&mut std::io::BufWriter::new(file), rank, node));
    match written {
        Ok(()) => tracing::info!(rank, "timeline written to {}", path.display()),
        Err(e) => eprintln!(
            "lumen: rank {rank}: cannot write the timeline to {}: {e}",
            path.display()
        ),
    }
}

/// One trace of several ranks' files (`lumen timeline merge`): their events
/// in one `traceEvents` array, sorted by time (metadata first).
pub fn merge(traces: &[serde_json::Value]) -> Result<serde_json::Value, String> {
    let mut events = Vec::new();
    let mut dropped = 0u64;
    for (i, trace) in traces.iter().enumerate() {
        let list = trace["traceEvents"]
            .as_array()
            .ok_or_else(|| format!("input {} has no traceEvents array", i + 1))?;
        events.extend(list.iter().cloned());
        dropped += trace["otherData"]["dropped_events"].as_u64().unwrap_or(0);
    }
    events.sort_by_key(|e| (e["ph"] != "M", e["ts"].as_u64().unwrap_or(0)));
    Ok(serde_json::json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"ranks": traces.len(), "dropped_events": dropped},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_files_are_named_after_the_base() {
        assert_eq!(
            rank_path(Path::new("/t/trace.json"), 3),
            PathBuf::from("/t/trace.rank3.json")
        );
        assert_eq!(
            rank_path(Path::new("/t/trace"), 0),
            PathBuf::from("/t/trace.rank0.json")
        );
    }

    #[test]
    fn a_written_trace_is_valid_json_with_the_recorded_events() {
        ENABLED.store(true, Ordering::Relaxed);
        let start = now_us();
        instant("submit", "m::f \"quoted\"", "object 0:1", Some(2));
        span("run", "m::f", "object 0:1", start);
        ENABLED.store(false, Ordering::Relaxed);
        instant("submit", "m::not_recorded", "object 0:2", None);
        let mut bytes = Vec::new();
        write_trace(&mut bytes, 0, 5).unwrap();
        let trace: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        assert_eq!(events[0]["args"]["name"], "rank 0 (node 5)");
        let submit = events
            .iter()
            .find(|e| e["name"] == "submit m::f \"quoted\"")
            .unwrap();
        assert_eq!(submit["args"]["peer"], 2);
        assert_eq!(submit["ph"], "i");
        let run = events.iter().find(|e| e["name"] == "run m::f").unwrap();
        assert_eq!(run["ph"], "X");
        assert!(run["dur"].as_u64().is_some());
        assert!(!events.iter().any(|e| e["name"] == "submit m::not_recorded"));
    }

    #[test]
    fn merging_sorts_by_time_and_keeps_metadata_first() {
        let a = serde_json::json!({"traceEvents": [
            {"name": "process_name", "ph": "M", "pid": 0},
            {"name": "submit f", "ph": "i", "ts": 10, "pid": 0},
            {"name": "reply f", "ph": "i", "ts": 50, "pid": 0}]});
        let b = serde_json::json!({"traceEvents": [
            {"name": "process_name", "ph": "M", "pid": 1},
            {"name": "run f", "ph": "X", "ts": 20, "dur": 5, "pid": 1}],
            "otherData": {"dropped_events": 2}});
        let merged = merge(&[a, b]).unwrap();
        let names: Vec<&str> = merged["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "process_name",
                "process_name",
                "submit f",
                "run f",
                "reply f"
            ]
        );
        assert_eq!(merged["otherData"]["dropped_events"], 2);
        assert!(merge(&[serde_json::json!({"nothing": 1})]).is_err());
    }
}
