//! Actor meshes, the pure half: how a shard plan's ranks become named mesh
//! axes and slices, and how one call to a whole mesh travels as a tree of
//! messages instead of one send per actor from the caller.
//!
//! # Axes
//! A mesh built from a [`ShardPlan`] has the axes `dp`, `pp`, `tp`, in that
//! order (slowest first, as a user writes `dp × pp × tp`), then `cp` when
//! the plan has context parallelism (`cp > 1`). Member `i` is the plan's
//! rank `i` (one actor per planned GPU) and its coordinates are the
//! plan's. Expert parallelism is not an axis of its own (it is the fast
//! part of `dp`, see [`crate::shard`]); its groups are still in
//! [`MeshShape::group_of`] under the name `ep`.
//!
//! # Broadcast trees
//! A broadcast addresses the members' *hosts* (ranks), each host once: the
//! caller splits the host list into at most `fanout` contiguous chunks and
//! sends each chunk to its first host; a host that receives a chunk
//! delivers the call to its own actors and splits the rest of its chunk the
//! same way ([`split`]). Every host receives the message exactly once, the
//! caller sends at most `fanout` messages, every host forwards at most
//! `fanout`, and the depth is the smallest `d` with
//! `fanout + fanout² + … + fanoutᵈ ≥ hosts` (about `log_fanout(hosts)`).
//! Contiguous chunks of a rank-sorted list keep a subtree on neighbouring
//! ranks (ranks are numbered node by node), so most hops past the first
//! few stay inside a node or a rack. [`path`] gives the hosts a message to
//! a given host passes through: when one of them dies before forwarding,
//! the caller sends to the hosts below it directly (see the runtime's mesh
//! docs for how duplicates are dropped).

use serde::{Deserialize, Serialize};

use crate::shard::{Axis, ShardPlan};
use crate::Rank;

/// The default number of children of a broadcast tree's nodes: 16 keeps
/// 1024 hosts within three hops while no host sends more than 16 messages.
pub const DEFAULT_FANOUT: usize = 16;

/// A mesh axis: its name and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshAxis {
    /// `dp`, `pp`, `tp` or `cp`.
    pub name: String,
    /// Members along it.
    pub size: usize,
}

/// Why a mesh request makes no sense; each says what to ask instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The axis is not one of the mesh's.
    #[error("the mesh has no axis {axis:?} (its axes: {axes})")]
    NoAxis {
        /// What was asked.
        axis: String,
        /// The mesh's axes, comma separated.
        axes: String,
    },
    /// The index is past the axis' end.
    #[error("axis {axis} has {size} positions; index {index} is out of range")]
    OutOfRange {
        /// The axis.
        axis: String,
        /// Its size.
        size: usize,
        /// What was asked.
        index: usize,
    },
}

/// The shape of a mesh: its axes and each member's coordinates, taken
/// from a shard plan (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshShape {
    /// The axes, slowest first.
    pub axes: Vec<MeshAxis>,
    /// The plan the mesh was built from (its coordinates and groups).
    pub plan: ShardPlan,
}

fn axis_of(name: &str) -> Option<Axis> {
    Some(match name {
        "dp" => Axis::Dp,
        "pp" => Axis::Pp,
        "tp" => Axis::Tp,
        "cp" => Axis::Cp,
        "ep" => Axis::Ep,
        _ => return None,
    })
}

impl MeshShape {
    /// The mesh of `plan`: one member per planned rank.
    pub fn new(plan: &ShardPlan) -> Self {
        let p = &plan.parallelism;
        let mut axes = vec![
            MeshAxis {
                name: "dp".into(),
                size: p.dp,
            },
            MeshAxis {
                name: "pp".into(),
                size: p.pp,
            },
            MeshAxis {
                name: "tp".into(),
                size: p.tp,
            },
        ];
        if p.cp > 1 {
            axes.push(MeshAxis {
                name: "cp".into(),
                size: p.cp,
            });
        }
        MeshShape {
            axes,
            plan: plan.clone(),
        }
    }

    /// Members of the mesh.
    pub fn len(&self) -> usize {
        self.plan.world
    }

    /// True for a mesh of no member (a plan never makes one).
    pub fn is_empty(&self) -> bool {
        self.plan.world == 0
    }

    fn axis(&self, name: &str) -> Result<Axis, MeshError> {
        let known = self.axes.iter().any(|a| a.name == name) || name == "ep";
        match axis_of(name) {
            Some(axis) if known => Ok(axis),
            _ => Err(MeshError::NoAxis {
                axis: name.to_string(),
                axes: self
                    .axes
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Member `member`'s coordinate along `axis`.
    pub fn coord(&self, member: usize, axis: &str) -> Result<usize, MeshError> {
        let c = self.plan.coords.get(member).ok_or(MeshError::OutOfRange {
            axis: "member".into(),
            size: self.len(),
            index: member,
        })?;
        Ok(match self.axis(axis)? {
            Axis::Dp => c.dp,
            Axis::Pp => c.pp,
            Axis::Tp => c.tp,
            Axis::Cp => c.cp,
            Axis::Ep => c.ep,
        })
    }

    /// The members whose coordinate along `axis` is `index`, ascending:
    /// `slice("tp", 0)` is every member with `tp == 0`.
    pub fn slice(&self, axis: &str, index: usize) -> Result<Vec<usize>, MeshError> {
        let size = self
            .axes
            .iter()
            .find(|a| a.name == axis)
            .map(|a| a.size)
            .ok_or_else(|| {
                self.axis(axis).err().unwrap_or(MeshError::NoAxis {
                    axis: axis.to_string(),
                    axes: String::new(),
                })
            })?;
        if index >= size {
            return Err(MeshError::OutOfRange {
                axis: axis.to_string(),
                size,
                index,
            });
        }
        let mut members = Vec::new();
        for member in 0..self.len() {
            if self.coord(member, axis)? == index {
                members.push(member);
            }
        }
        Ok(members)
    }

    /// The group of `axis` that `member` belongs to (in the axis' order:
    /// a ring's order, a pipeline's stages), and that group's index among
    /// the axis' groups — what a communicator of the axis is built from.
    pub fn group_of(&self, member: usize, axis: &str) -> Result<(usize, &[usize]), MeshError> {
        let groups = self.plan.groups.axis(self.axis(axis)?);
        groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.contains(&member))
            .map(|(i, g)| (i, g.as_slice()))
            .ok_or(MeshError::OutOfRange {
                axis: "member".into(),
                size: self.len(),
                index: member,
            })
    }
}

/// How a node of a broadcast tree passes a chunk of hosts on: the chunk's
/// first host is the receiver itself; the rest is cut into at most
/// `fanout` contiguous, nearly equal chunks, one per child (each child is
/// its chunk's first host). The caller, which is not in the list, cuts the
/// whole list the same way: call it with the list prefixed by nothing, as
/// `split_all`.
pub fn split(chunk: &[Rank], fanout: usize) -> Vec<&[Rank]> {
    split_all(chunk.get(1..).unwrap_or(&[]), fanout)
}

/// Cuts `hosts` into at most `fanout` contiguous chunks of nearly equal
/// size (the larger ones first): what the caller of a broadcast sends.
pub fn split_all(hosts: &[Rank], fanout: usize) -> Vec<&[Rank]> {
    let fanout = fanout.max(1);
    let parts = hosts.len().min(fanout);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = hosts.len() / parts + usize::from(i < hosts.len() % parts);
        out.push(&hosts[start..start + len]);
        start += len;
    }
    out
}

/// The hosts a broadcast message passes through before it reaches
/// `hosts[target]` (first hop first; empty for a host the caller sends to
/// itself), for a tree of `fanout` over `hosts` (see the module docs).
pub fn path(hosts: &[Rank], fanout: usize, target: usize) -> Vec<Rank> {
    let mut via = Vec::new();
    let mut chunk = hosts;
    let mut offset = 0;
    let mut first = true;
    loop {
        let parts = if first {
            split_all(chunk, fanout)
        } else {
            split(chunk, fanout)
        };
        let mut at = if first { offset } else { offset + 1 };
        let mut next = None;
        for part in parts {
            if target < at + part.len() {
                next = Some((part, at));
                break;
            }
            at += part.len();
        }
        let Some((part, start)) = next else {
            return via;
        };
        if start == target {
            return via;
        }
        via.push(part[0]);
        chunk = part;
        offset = start;
        first = false;
    }
}

/// The shape of a broadcast tree over `hosts` hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeShape {
    /// Hops from the caller to the farthest host.
    pub depth: usize,
    /// The most messages one sender (the caller or a host) sends.
    pub max_sends: usize,
    /// Messages in all (one per host).
    pub messages: usize,
    /// Hosts reached at each hop, first hop first.
    pub per_hop: Vec<usize>,
}

/// Walks the tree of `fanout` over `hosts` hosts (see the module docs).
pub fn tree_shape(hosts: usize, fanout: usize) -> TreeShape {
    let ranks: Vec<Rank> = (0..hosts as Rank).collect();
    let mut per_hop = Vec::new();
    let mut level: Vec<&[Rank]> = split_all(&ranks, fanout);
    let mut max_sends = level.len();
    let mut messages = 0;
    while !level.is_empty() {
        per_hop.push(level.len());
        messages += level.len();
        let mut next = Vec::new();
        for chunk in level {
            let children = split(chunk, fanout);
            max_sends = max_sends.max(children.len());
            next.extend(children);
        }
        level = next;
    }
    TreeShape {
        depth: per_hop.len(),
        max_sends,
        messages,
        per_hop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{plan, ClusterShape, Parallelism};

    #[test]
    fn every_host_is_reached_once_within_the_depth() {
        for hosts in [1usize, 2, 5, 16, 17, 100, 1024] {
            for fanout in [1usize, 2, 4, 16] {
                let ranks: Vec<Rank> = (0..hosts as Rank).map(|r| r * 3 + 1).collect();
                let shape = tree_shape(hosts, fanout);
                assert_eq!(shape.messages, hosts);
                assert!(shape.max_sends <= fanout);
                assert_eq!(shape.per_hop.iter().sum::<usize>(), hosts);
                for target in 0..hosts {
                    let via = path(&ranks, fanout, target);
                    assert!(via.len() < shape.depth, "{hosts} {fanout} {target}");
                    assert!(!via.contains(&ranks[target]));
                }
            }
        }
        let big = tree_shape(1024, 16);
        assert!(big.depth <= 3, "{big:?}");
    }

    #[test]
    fn paths_follow_the_splits() {
        let ranks: Vec<Rank> = (10..20).collect();
        // Fanout 2 over 10 hosts: chunks [10..15) and [15..20).
        assert_eq!(path(&ranks, 2, 0), Vec::<Rank>::new());
        assert_eq!(path(&ranks, 2, 5), Vec::<Rank>::new());
        // Host 10 splits [11..15) into [11, 12] and [13, 14].
        assert_eq!(path(&ranks, 2, 1), vec![10]);
        assert_eq!(path(&ranks, 2, 3), vec![10]);
        assert_eq!(path(&ranks, 2, 2), vec![10, 11]);
        assert_eq!(path(&ranks, 2, 4), vec![10, 13]);
    }

    #[test]
    fn axes_slices_and_groups() {
        let cluster = ClusterShape {
            nodes: 3,
            gpus_per_node: 2,
            nvlink_island: 2,
            nics_per_node: 1,
        };
        let plan = plan(&Parallelism::new(2, 1, 3), &cluster, None).expect("a plan");
        let mesh = MeshShape::new(&plan);
        let names: Vec<&str> = mesh.axes.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["dp", "pp", "tp"]);
        let tp0 = mesh.slice("tp", 0).expect("a slice");
        assert_eq!(tp0.len(), 3);
        for &m in &tp0 {
            assert_eq!(mesh.coord(m, "tp"), Ok(0));
        }
        let (_, group) = mesh.group_of(0, "tp").expect("a group");
        assert_eq!(group.len(), 2);
        assert!(group.iter().all(|&m| plan.node_of(m) == plan.node_of(0)));
        assert!(matches!(mesh.slice("xx", 0), Err(MeshError::NoAxis { .. })));
        assert!(matches!(
            mesh.slice("dp", 3),
            Err(MeshError::OutOfRange { .. })
        ));
    }
}
