//! Where the ranks of a job go and what they are told: host lists, ranks
//! filling hosts in order, the `LUMEN_*` variables of each rank, and the
//! launch agent's words for ranks on other hosts. Pure functions, unit-tested
//! in `spawn::tests`.

use std::net::SocketAddr;

use lumen_transport::auth::JobSecret;

use super::{JobSpec, SpawnError};
use crate::env::JOB_SECRET_VAR;

/// Parses `h1:4,h2:4` (slots default to 1: `h1,h2`).
///
/// ```
/// use lumen_launcher::spawn::parse_hosts;
/// assert_eq!(parse_hosts("a:2, b")?, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
/// # Ok::<(), lumen_launcher::spawn::SpawnError>(())
/// ```
pub fn parse_hosts(list: &str) -> Result<Vec<(String, u32)>, SpawnError> {
    let invalid = |entry: &str, reason| SpawnError::InvalidHost {
        entry: entry.to_string(),
        reason,
    };
    let hosts: Vec<(String, u32)> = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (host, slots) = match entry.rsplit_once(':') {
                Some((host, slots)) => {
                    let slots = slots
                        .parse::<u32>()
                        .ok()
                        .filter(|&slots| slots > 0)
                        .ok_or_else(|| invalid(entry, "slots must be a positive integer"))?;
                    (host, slots)
                }
                None => (entry, 1),
            };
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(invalid(entry, "the host name is empty or has spaces"));
            }
            Ok((host.to_string(), slots))
        })
        .collect::<Result<_, _>>()?;
    if hosts.is_empty() {
        return Err(invalid(list, "no hosts listed"));
    }
    Ok(hosts)
}

/// Where one rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement {
    pub(super) node_index: u32,
    pub(super) local_rank: u32,
    pub(super) local_size: u32,
}

/// Ranks assigned to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Host name of each node that got ranks, in node order.
    pub(super) nodes: Vec<String>,
    /// Placement of each rank.
    pub(super) ranks: Vec<Placement>,
}

pub(super) fn layout(
    ranks: u32,
    hosts: Option<&[(String, u32)]>,
    this_host: &str,
) -> Result<Layout, SpawnError> {
    if ranks == 0 {
        return Err(SpawnError::NoRanks);
    }
    let single;
    let hosts = match hosts {
        Some(hosts) => hosts,
        None => {
            single = [(this_host.to_string(), ranks)];
            &single[..]
        }
    };
    let slots: u64 = hosts.iter().map(|(_, slots)| u64::from(*slots)).sum();
    if slots < u64::from(ranks) {
        return Err(SpawnError::NotEnoughSlots { ranks, slots });
    }
    let mut nodes = Vec::new();
    let mut placements = Vec::with_capacity(ranks as usize);
    let mut left = ranks;
    for (host, slots) in hosts {
        if left == 0 {
            break;
        }
        let here = (*slots).min(left);
        if here == 0 {
            continue;
        }
        // Bounded by the number of ranks, a u32.
        let node_index = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        nodes.push(host.clone());
        placements.extend((0..here).map(|local_rank| Placement {
            node_index,
            local_rank,
            local_size: here,
        }));
        left -= here;
    }
    Ok(Layout {
        nodes,
        ranks: placements,
    })
}

/// The variables that tell rank `rank` who it is (see [`crate::env`]).
pub(super) fn rank_env(
    layout: &Layout,
    rank: u32,
    job_id: &str,
    rendezvous: SocketAddr,
    secret: &JobSecret,
) -> Vec<(String, String)> {
    let Some(place) = layout.ranks.get(rank as usize) else {
        return Vec::new();
    };
    let size = layout.ranks.len();
    [
        ("LUMEN_RANK", rank.to_string()),
        ("LUMEN_SIZE", size.to_string()),
        ("LUMEN_LOCAL_RANK", place.local_rank.to_string()),
        ("LUMEN_LOCAL_SIZE", place.local_size.to_string()),
        ("LUMEN_NODE_INDEX", place.node_index.to_string()),
        ("LUMEN_NUM_NODES", layout.nodes.len().to_string()),
        ("LUMEN_HOSTS", layout.nodes.join(",")),
        ("LUMEN_JOB_ID", job_id.to_string()),
        ("LUMEN_RENDEZVOUS", rendezvous.to_string()),
        (JOB_SECRET_VAR, secret.to_hex()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// This machine's host name, or "localhost".
pub(super) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

pub(super) fn is_this_host(host: &str, this_host: &str) -> bool {
    let short = |name: &str| name.split('.').next().unwrap_or(name).to_string();
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || host == this_host
        || short(host) == short(this_host)
}

/// The agent's words for `host`, or `None` when the rank is spawned directly.
pub(super) fn agent_words(
    spec: &JobSpec,
    host: &str,
    this_host: &str,
) -> Result<Option<Vec<String>>, SpawnError> {
    let Some(template) = spec.launch_agent.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if template == "local" || is_this_host(host, this_host) {
        return Ok(None);
    }
    let mut words: Vec<String> = template
        .split_whitespace()
        .map(|word| word.replace("{host}", host))
        .collect();
    if words.is_empty() {
        return Err(SpawnError::EmptyLaunchAgent);
    }
    if !template.contains("{host}") {
        words.push(host.to_string());
    }
    Ok(Some(words))
}
