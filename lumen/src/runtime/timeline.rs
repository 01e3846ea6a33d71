//! A timeline of what each rank did, for Perfetto (ui.perfetto.dev) and
//! `chrome://tracing`: `LUMEN_TIMELINE=trace.json`.
//!
//! With it set, every rank records, in a ring buffer of its own (the last
//! [`CAPACITY`] events; older ones are dropped and counted), a span per
//! task it runs ("run NAME", with its duration), a span per actor method
//! call it serves ("call Class::method"), and instants where a task or
//! call is submitted ("submit NAME", on the owner, `peer`: the rank it
//! went to) and where its reply arrives ("reply", on the owner, `peer`:
//! the rank that ran it). Each event carries the rank (the trace's
//! process), the thread, and the task's object id, so one task can be
//! followed across ranks.
//!
//! One file for the whole job: with `LUMEN_TIMELINE=trace.json`, rank 0
//! gathers every rank's events (one rank at a time, each written before
//! the next is asked for: rank 0 holds one rank's buffer at a time) as it
//! leaves (driver mode: before it tells
//! the others to stop; SPMD: before the closing barrier) and writes
//! `trace.json`, each rank's timestamps moved onto rank 0's clock;
//! [`Runtime::timeline`](crate::runtime::Runtime::timeline) writes the
//! same at any moment of the job. A rank that rank 0 did not gather from at
//! the end (rank 0 died first, or it did not answer) writes its own
//! `trace.rankR.json` as it leaves; `lumen timeline merge` makes one file
//! of such files.
//!
//! Clocks: timestamps are each rank's `CLOCK_REALTIME` in microseconds.
//! Ranks of rank 0's node share its clock (offset 0, exact). For each
//! other node, rank 0 measures the clock of the node's first rank against
//! its own with five round trips of a small probe and keeps the offset of
//! the shortest (the error is at most half that round trip: tens of
//! microseconds over TCP); the offsets are in the file's
//! `otherData.clock_offsets_us`. Design choice: measured when gathering
//! rather than at bootstrap, so that a clock that drifted during a long
//! job is still aligned where the events are; the offset is one per rank
//! per file, so drift *within* a job is not corrected.
//!
//! Also recorded: object transfers ("fetch (PATH)", with bytes, path
//! and the rank they came from), collective calls ("collective
//! allreduce", with this rank's bytes, through `lumen_collectives::trace`)
//! and placement decisions ("place actor Class", "place placement group
//! ... bundles", `peer`: the rank chosen; a task's placement is its
//! submit's `peer`). Not recorded: transfers between GPUs (device
//! objects). The cost when off is one relaxed atomic load per event.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::ids::ObjectId;

/// `LUMEN_TIMELINE`.
pub(crate) const VAR: &str = "LUMEN_TIMELINE";
/// Events kept per rank.
pub(crate) const CAPACITY: usize = 1 << 18;

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static EVENTS: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());
/// Rank 0 took this rank's events for the job's file as it left.
static COLLECTED: AtomicBool = AtomicBool::new(false);

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Event {
    /// "submit", "run", "reply", "call", "fetch (PATH)".
    what: Cow<'static, str>,
    /// The task or method (empty for a reply).
    name: String,
    /// Microseconds since the Unix epoch.
    ts: u64,
    /// Span length in microseconds; `None` for an instant.
    dur: Option<u64>,
    tid: u64,
    /// The task, call or object (none for collectives and placements).
    object: Option<ObjectId>,
    /// The other rank: where a submitted task went, who reported a reply,
    /// where a transfer's bytes came from.
    peer: Option<u32>,
    /// Bytes a transfer moved.
    bytes: Option<u64>,
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
        // The whole ring at once: no copy of it as it grows (its pages
        // are touched as events arrive).
        EVENTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(CAPACITY);
        ENABLED.store(true, Ordering::Relaxed);
        lumen_collectives::trace::set_hook(collective);
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
pub(crate) fn instant(what: &'static str, name: &str, object: ObjectId, peer: Option<u32>) {
    if !on() {
        return;
    }
    push(Event {
        what: Cow::Borrowed(what),
        name: name.to_string(),
        ts: now_us(),
        dur: None,
        tid: thread_id(),
        object: Some(object),
        peer,
        bytes: None,
    });
}

/// A span that began at `start` (from [`now_us`]) and ends now.
pub(crate) fn span(what: &'static str, name: &str, object: ObjectId, start: u64) {
    if !on() {
        return;
    }
    push(Event {
        what: Cow::Borrowed(what),
        name: name.to_string(),
        ts: start,
        dur: Some(now_us().saturating_sub(start)),
        tid: thread_id(),
        object: Some(object),
        peer: None,
        bytes: None,
    });
}

/// A placement decision: `what` ("actor Class", a placement group's
/// bundles) goes to rank `to`.
pub(crate) fn placed(what: &str, to: u32) {
    if !on() {
        return;
    }
    push(Event {
        what: Cow::Borrowed("place"),
        name: what.to_string(),
        ts: now_us(),
        dur: None,
        tid: thread_id(),
        object: None,
        peer: Some(to),
        bytes: None,
    });
}

/// A collective call (`lumen_collectives::trace`'s hook): `op` over
/// `bytes` of this rank's buffer.
fn collective(op: &'static str, bytes: u64, start_us: u64, dur_us: u64) {
    if !on() {
        return;
    }
    push(Event {
        what: Cow::Borrowed("collective"),
        name: op.to_string(),
        ts: start_us,
        dur: Some(dur_us),
        tid: thread_id(),
        object: None,
        peer: None,
        bytes: Some(bytes),
    });
}

/// A transfer that began at `start` and ends now: `bytes` of `object`
/// from rank `from` by `path` ("one-sided pull", "chunked pull", "shm
/// get", "tcp get").
pub(crate) fn transfer(path: &str, bytes: u64, object: ObjectId, from: u32, start: u64) {
    if !on() {
        return;
    }
    push(Event {
        what: Cow::Owned(format!("fetch ({path})")),
        name: String::new(),
        ts: start,
        dur: Some(now_us().saturating_sub(start)),
        tid: thread_id(),
        object: Some(object),
        peer: Some(from),
        bytes: Some(bytes),
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

/// One rank's events, as gathered into the job's file.
#[derive(Debug, Clone)]
pub(crate) struct RankTrace {
    pub(crate) rank: u32,
    pub(crate) node: u32,
    /// This rank's clock minus rank 0's, in microseconds.
    pub(crate) offset_us: i64,
    /// Events its ring buffer dropped.
    pub(crate) dropped: u64,
    pub(crate) events: Vec<Event>,
}

/// A copy of this process's events and the count it dropped; `last`
/// marks them taken for the job's file (this rank then writes no file of
/// its own).
pub(crate) fn snapshot(last: bool) -> (Vec<Event>, u64) {
    let events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    if last {
        COLLECTED.store(true, Ordering::Relaxed);
    }
    (
        events.iter().cloned().collect(),
        DROPPED.load(Ordering::Relaxed),
    )
}

/// This rank's events as a [`RankTrace`] on its own clock.
fn own_trace(rank: u32, node: u32) -> RankTrace {
    let (events, dropped) = snapshot(false);
    RankTrace {
        rank,
        node,
        offset_us: 0,
        dropped,
        events,
    }
}

fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"?\"".into())
}

/// Writes a job's Chrome trace one rank at a time, as rank 0 gathers
/// them: only one rank's events are held at once, whatever the job's size
/// (Perfetto and `chrome://tracing` do not need the events sorted; each
/// rank's are, on rank 0's clock, and `lumen timeline merge` sorts all).
/// `otherData` (ranks, dropped events, clock offsets, ranks left out)
/// comes after the events, once they are known.
pub(crate) struct JobTraceWriter<W: std::io::Write> {
    out: W,
    first: bool,
    events: usize,
    dropped: u64,
    offsets: Vec<(u32, i64)>,
    missing: Vec<(u32, String)>,
    only: Option<(u32, u32)>,
}

impl<W: std::io::Write> JobTraceWriter<W> {
    /// Begins the file.
    pub(crate) fn new(mut out: W) -> std::io::Result<Self> {
        write!(out, "{{\"displayTimeUnit\":\"ms\",\"traceEvents\":[")?;
        Ok(JobTraceWriter {
            out,
            first: true,
            events: 0,
            dropped: 0,
            offsets: Vec::new(),
            missing: Vec::new(),
            only: None,
        })
    }

    fn comma(&mut self) -> std::io::Result<()> {
        if !self.first {
            write!(self.out, ",")?;
        }
        self.first = false;
        Ok(())
    }

    /// Writes one rank's events, moved onto rank 0's clock, in time order.
    pub(crate) fn rank(&mut self, mut t: RankTrace) -> std::io::Result<()> {
        self.only = if self.offsets.is_empty() {
            Some((t.rank, t.node))
        } else {
            None
        };
        self.offsets.push((t.rank, t.offset_us));
        self.dropped += t.dropped;
        self.comma()?;
        write!(
            self.out,
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{},\"tid\":0,\"args\":{{\"name\":{}}}}}",
            t.rank,
            quote(&format!("rank {} (node {})", t.rank, t.node))
        )?;
        // One offset per rank: its own clock's order is the aligned order.
        t.events.sort_by_key(|e| e.ts);
        for e in &t.events {
            let ts = (e.ts as i64).saturating_sub(t.offset_us).max(0) as u64;
            self.comma()?;
            let cat = if e.what == "collective" {
                "collective"
            } else if e.what == "place" {
                "placement"
            } else if e.bytes.is_some() {
                "transfer"
            } else if e.what == "call" {
                "actor"
            } else {
                "task"
            };
            let name = if e.name.is_empty() {
                quote(&e.what)
            } else {
                quote(&format!("{} {}", e.what, e.name))
            };
            write!(
                self.out,
                "{{\"name\":{name},\"cat\":\"{cat}\",\"pid\":{},\"tid\":{},\"ts\":{ts},",
                t.rank, e.tid,
            )?;
            match e.dur {
                Some(dur) => write!(self.out, "\"ph\":\"X\",\"dur\":{dur},")?,
                None => write!(self.out, "\"ph\":\"i\",\"s\":\"t\",")?,
            }
            let mut args = Vec::with_capacity(3);
            if let Some(object) = e.object {
                args.push(format!("\"object\":\"{object}\""));
            }
            if let Some(peer) = e.peer {
                args.push(format!("\"peer\":{peer}"));
            }
            if let Some(bytes) = e.bytes {
                args.push(format!("\"bytes\":{bytes}"));
            }
            write!(self.out, "\"args\":{{{}}}}}", args.join(","))?;
        }
        self.events += t.events.len();
        Ok(())
    }

    /// Notes a rank whose events are not in the file, and why.
    pub(crate) fn missing(&mut self, rank: u32, why: String) {
        self.missing.push((rank, why));
    }

    /// Ends the file; the events written.
    pub(crate) fn finish(mut self) -> std::io::Result<usize> {
        let offsets: Vec<String> = (self.offsets.iter())
            .map(|(rank, offset)| format!("\"{rank}\":{offset}"))
            .collect();
        let missing: Vec<String> = (self.missing.iter())
            .map(|(rank, why)| format!("\"{rank}\":{}", quote(why)))
            .collect();
        write!(
            self.out,
            "],\"otherData\":{{\"ranks\":{},\"dropped_events\":{},\"clock_offsets_us\":{{{}}},\"missing_ranks\":{{{}}}",
            self.offsets.len(),
            self.dropped,
            offsets.join(","),
            missing.join(",")
        )?;
        if let Some((rank, node)) = self.only {
            write!(self.out, ",\"rank\":{rank},\"node\":{node}")?;
        }
        write!(self.out, "}}}}")?;
        self.out.flush()?;
        Ok(self.events)
    }
}

/// Writes ranks' events as one Chrome trace (see [`JobTraceWriter`]);
/// `missing` names ranks whose events are not in it, and why. Returns the
/// events written.
pub(crate) fn write_job_trace(
    out: &mut impl std::io::Write,
    traces: &[RankTrace],
    missing: &[(u32, String)],
) -> std::io::Result<usize> {
    let mut writer = JobTraceWriter::new(out)?;
    for t in traces {
        writer.rank(t.clone())?;
    }
    for (rank, why) in missing {
        writer.missing(*rank, why.clone());
    }
    writer.finish()
}

/// Writes this rank's events alone as a Chrome trace.
pub(crate) fn write_trace(
    out: &mut impl std::io::Write,
    rank: u32,
    node: u32,
) -> std::io::Result<()> {
    write_job_trace(out, &[own_trace(rank, node)], &[]).map(|_| ())
}

/// Writes the job's trace to `path` as `gather` hands over each rank's
/// events (or why a rank is left out); the events written.
pub(crate) fn write_file(
    path: &Path,
    gather: impl FnOnce(&mut dyn FnMut(Result<RankTrace, (u32, String)>) -> std::io::Result<()>),
) -> std::io::Result<usize> {
    let file = std::fs::File::create(path)?;
    let mut writer = JobTraceWriter::new(std::io::BufWriter::new(file))?;
    let mut failed = None;
    gather(&mut |gathered| {
        let written = match gathered {
            Ok(trace) => writer.rank(trace),
            Err((rank, why)) => {
                writer.missing(rank, why);
                Ok(())
            }
        };
        if let Err(e) = &written {
            failed.get_or_insert(e.kind());
        }
        written
    });
    match failed {
        Some(kind) => Err(std::io::Error::from(kind)),
        None => writer.finish(),
    }
}

/// The job's file (`LUMEN_TIMELINE`) when recording.
pub(crate) fn job_path() -> Option<PathBuf> {
    if !on() {
        return None;
    }
    std::env::var_os(VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Ends this process's recording as its runtime leaves (after the files
/// are written): a later runtime in the same process records only when
/// `LUMEN_TIMELINE` is set again as it starts.
pub(crate) fn reset() {
    ENABLED.store(false, Ordering::Relaxed);
    COLLECTED.store(false, Ordering::Relaxed);
    DROPPED.store(0, Ordering::Relaxed);
    *EVENTS.lock().unwrap_or_else(|p| p.into_inner()) = VecDeque::new();
}

/// A rank that rank 0 did not gather from writes its own file when
/// recording; logs (never fails the job) on error.
pub(crate) fn write_if_on(rank: u32, node: u32) {
    if COLLECTED.load(Ordering::Relaxed) {
        return;
    }
    let Some(base) = job_path() else {
        return;
    };
    let path = rank_path(&base, rank);
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
        let object = ObjectId { owner: 0, seq: 1 };
        instant("submit", "m::f \"quoted\"", object, Some(2));
        span("run", "m::f", object, start);
        ENABLED.store(false, Ordering::Relaxed);
        instant(
            "submit",
            "m::not_recorded",
            ObjectId { owner: 0, seq: 2 },
            None,
        );
        let mut bytes = Vec::new();
        write_trace(&mut bytes, 0, 5).unwrap();
        let trace: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        assert_eq!(events[0]["args"]["name"], "rank 0 (node 5)");
        assert_eq!(trace["otherData"]["node"], 5);
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

    fn event(name: &str, ts: u64) -> Event {
        let (what, name) = name.split_once(' ').unwrap_or((name, ""));
        Event {
            what: Cow::Owned(what.to_string()),
            name: name.into(),
            ts,
            dur: None,
            tid: 1,
            object: Some(ObjectId { owner: 0, seq: 1 }),
            peer: None,
            bytes: None,
        }
    }

    #[test]
    fn a_job_trace_moves_each_rank_onto_rank_0s_clock() {
        // Rank 1's clock runs 1000 µs ahead: its "run" at 1030 is at 30
        // on rank 0's clock, between rank 0's submit (10) and reply (50).
        let traces = [
            RankTrace {
                rank: 0,
                node: 0,
                offset_us: 0,
                dropped: 0,
                events: vec![event("submit f", 10), event("reply", 50)],
            },
            RankTrace {
                rank: 1,
                node: 1,
                offset_us: 1000,
                dropped: 3,
                events: vec![event("run f", 1030)],
            },
        ];
        let mut bytes = Vec::new();
        let n = write_job_trace(&mut bytes, &traces, &[(2, "dead".into())]).unwrap();
        assert_eq!(n, 3);
        let trace: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut names: Vec<(&str, u64)> = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] != "M")
            .map(|e| (e["name"].as_str().unwrap(), e["ts"].as_u64().unwrap()))
            .collect();
        names.sort_by_key(|&(_, ts)| ts);
        assert_eq!(names, [("submit f", 10), ("run f", 30), ("reply", 50)]);
        assert_eq!(trace["otherData"]["clock_offsets_us"]["1"], 1000);
        assert_eq!(trace["otherData"]["dropped_events"], 3);
        assert_eq!(trace["otherData"]["missing_ranks"]["2"], "dead");
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
