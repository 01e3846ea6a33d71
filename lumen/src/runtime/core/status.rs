//! Rank 0's status service (see `runtime::status` for the protocol and
//! what `lumen status` shows): a thread that authenticates callers with the
//! job secret and answers each with a [`JobStatus`] gathered from every
//! rank within a bounded wait.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lumen_transport::auth::JobSecret;
use lumen_transport::handshake;

use super::{Inner, Mode, Reply};
use crate::runtime::protocol::{RankStats, RtMsg};
use crate::runtime::status::{
    answer_caller, JobStatus, NodeStatus, RankStatus, StatusAddress, RANK_ANSWER_TIMEOUT,
};

/// `LUMEN_STATUS_ADDR`: the IP rank 0 serves its status on.
pub(crate) const ADDR_VAR: &str = "LUMEN_STATUS_ADDR";
/// How long a caller may take over its handshake and request.
const CALLER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where rank 0 serves: `LUMEN_STATUS_ADDR`, else the IP its endpoint
/// listens on (loopback when that is the wildcard).
pub(crate) fn bind_ip(
    get: impl Fn(&str) -> Option<String>,
    endpoint_ip: IpAddr,
) -> Result<IpAddr, String> {
    match get(ADDR_VAR).filter(|v| !v.trim().is_empty()) {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{ADDR_VAR}={text:?} is not an IP address")),
        None if endpoint_ip.is_unspecified() => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None => Ok(endpoint_ip),
    }
}

/// Starts rank 0's status thread on `ip` (an ephemeral port); `hosts` are
/// the nodes' host names by node index (may be empty). Returns what to
/// publish in the store.
pub(crate) fn serve(
    inner: &Arc<Inner>,
    ip: IpAddr,
    secret: JobSecret,
    hosts: Vec<String>,
) -> std::io::Result<StatusAddress> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let addr = listener.local_addr()?;
    let job_id = inner.job_id.clone();
    let weak = Arc::downgrade(inner);
    let published = StatusAddress {
        addr,
        job_id: job_id.clone(),
    };
    tracing::info!(%addr, "rank 0 serves lumen status");
    std::thread::Builder::new()
        .name("lumen-status".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match weak.upgrade() {
                    Some(inner) if !inner.stopping.load(Ordering::Acquire) => {}
                    _ => return,
                }
                if let Ok(stream) = stream {
                    caller(stream, &weak, &job_id, &secret, &hosts);
                }
            }
        })?;
    Ok(published)
}

/// One caller: handshake, request, answer; any failure drops it (a
/// refused caller is logged with its address).
fn caller(
    mut stream: TcpStream,
    inner: &Weak<Inner>,
    job_id: &str,
    secret: &JobSecret,
    hosts: &[String],
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_read_timeout(Some(CALLER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CALLER_TIMEOUT));
    let _ = stream.set_nodelay(true);
    if let Err(error) = handshake::accept(&mut stream, job_id, 0, secret) {
        tracing::warn!(?peer, %error, "lumen status: refused a caller without the job's secret");
        return;
    }
    let answered = answer_caller(&mut stream, || match inner.upgrade() {
        Some(inner) => inner.job_status(hosts),
        None => JobStatus {
            job_id: job_id.to_string(),
            size: 0,
            mode: "leaving".into(),
            taken_at_unix_ms: 0,
            gathered_ms: 0,
            ranks: Vec::new(),
            nodes: Vec::new(),
            placement_groups: Vec::new(),
            named_actors: Vec::new(),
        },
    });
    if let Err(error) = answered {
        tracing::debug!(?peer, %error, "lumen status: caller dropped");
    }
}

/// A rank's answer, as the gathering loop sees it.
enum Asked {
    Dead(String),
    Waiting(u64, Instant),
    Answered(Box<RankStats>, Duration),
    Silent,
}

impl Inner {
    /// The job as this rank (rank 0) sees it now: every live rank is asked
    /// for its counters at once and waited for at most
    /// `RANK_ANSWER_TIMEOUT`.
    pub(crate) fn job_status(self: &Arc<Self>, hosts: &[String]) -> JobStatus {
        let began = Instant::now();
        let taken_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as u64);
        let size = self.ranks.len() as u32;
        let mut asked: Vec<Asked> = Vec::with_capacity(size as usize);
        for rank in 0..size {
            let dead = {
                let s = self.lock();
                s.dead.contains(&rank).then(|| {
                    s.dead_why
                        .get(&rank)
                        .cloned()
                        .unwrap_or_else(|| "dead".into())
                })
            };
            if let Some(why) = dead {
                asked.push(Asked::Dead(why));
                continue;
            }
            if rank == self.rank {
                asked.push(Asked::Answered(
                    Box::new(self.local_stats()),
                    Duration::ZERO,
                ));
                continue;
            }
            let request = self.new_request();
            self.lock().replies.insert(request, Reply::Waiting(rank));
            let sent = Instant::now();
            match self.send(rank, &RtMsg::Stats { request }) {
                Ok(()) => asked.push(Asked::Waiting(request, sent)),
                Err(e) => {
                    self.lock().replies.remove(&request);
                    asked.push(Asked::Dead(format!("its messages fail: {e}")));
                }
            }
        }
        let deadline = Instant::now() + RANK_ANSWER_TIMEOUT;
        loop {
            let mut waiting = false;
            {
                let mut s = self.lock();
                for entry in asked.iter_mut() {
                    let Asked::Waiting(request, sent) = *entry else {
                        continue;
                    };
                    match s.replies.get(&request) {
                        Some(Reply::Waiting(_)) => waiting = true,
                        Some(_) => match s.replies.remove(&request) {
                            Some(Reply::Stats(stats)) => {
                                *entry = Asked::Answered(stats, sent.elapsed());
                            }
                            _ => *entry = Asked::Dead("died while asked".into()),
                        },
                        None => *entry = Asked::Dead("died while asked".into()),
                    }
                }
                if !waiting || Instant::now() >= deadline {
                    for entry in asked.iter_mut() {
                        if let Asked::Waiting(request, _) = *entry {
                            s.replies.remove(&request);
                            *entry = Asked::Silent;
                        }
                    }
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let host = |node: u32| {
            hosts
                .get(node as usize)
                .cloned()
                .unwrap_or_else(|| format!("node{node}"))
        };
        let ranks: Vec<RankStatus> = asked
            .into_iter()
            .zip(&self.ranks)
            .map(|(asked, info)| {
                let (state, detail, answered_us, stats) = match asked {
                    Asked::Answered(stats, took) => {
                        ("alive", None, Some(took.as_micros() as u64), Some(*stats))
                    }
                    Asked::Dead(why) => ("dead", Some(why), None, None),
                    Asked::Silent | Asked::Waiting(..) => (
                        "not answering",
                        Some(format!(
                            "no answer to a request for its counters within {} s: busy without polling, stuck, or unreachable",
                            RANK_ANSWER_TIMEOUT.as_secs()
                        )),
                        None,
                        None,
                    ),
                };
                RankStatus {
                    rank: info.rank,
                    node: info.node,
                    host: host(info.node),
                    state: state.into(),
                    detail,
                    answered_us,
                    stats,
                }
            })
            .collect();
        let mut nodes: Vec<NodeStatus> = Vec::new();
        for rank in &ranks {
            if !nodes.iter().any(|n| n.node == rank.node) {
                nodes.push(NodeStatus {
                    node: rank.node,
                    host: rank.host.clone(),
                    ranks: Vec::new(),
                    arena_objects: 0,
                    arena_used_bytes: 0,
                    arena_capacity: 0,
                    arena_spilled_bytes: 0,
                });
            }
            let Some(node) = nodes.iter_mut().find(|n| n.node == rank.node) else {
                continue;
            };
            node.ranks.push(rank.rank);
            // Every rank of a node reads the same arena: take the first
            // answer's view of it.
            if let (Some(stats), 0) = (&rank.stats, node.arena_capacity) {
                node.arena_objects = stats.arena_objects;
                node.arena_used_bytes = stats.arena_used_bytes;
                node.arena_capacity = stats.arena_capacity;
                node.arena_spilled_bytes = stats.arena_spilled_bytes;
            }
        }
        nodes.sort_by_key(|n| n.node);
        let placement_groups = self
            .groups
            .head
            .as_ref()
            .map(|table| table.lock().unwrap_or_else(|p| p.into_inner()).summaries())
            .unwrap_or_default();
        let mut named_actors: Vec<String> = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        named_actors.sort();
        JobStatus {
            job_id: self.job_id.clone(),
            size,
            mode: match self.mode {
                Mode::Driver => "driver",
                Mode::Spmd => "spmd",
            }
            .into(),
            taken_at_unix_ms,
            gathered_ms: began.elapsed().as_millis() as u64,
            ranks,
            nodes,
            placement_groups,
            named_actors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_address_comes_from_the_endpoint_or_the_variable() {
        let none = |_: &str| None;
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(bind_ip(none, ip), Ok(ip));
        assert_eq!(
            bind_ip(none, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Ok(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let set = |_: &str| Some("0.0.0.0".to_string());
        assert_eq!(bind_ip(set, ip), Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        let bad = |_: &str| Some("host:1".to_string());
        assert!(bind_ip(bad, ip).unwrap_err().contains(ADDR_VAR));
    }
}
