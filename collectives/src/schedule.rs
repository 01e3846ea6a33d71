//! Collective algorithms as pure schedules: for one rank of `p`, the list of
//! steps it takes, each step naming which blocks of its buffer it sends to
//! which peer and which blocks it receives from which peer (and whether it
//! reduces them into its own or overwrites them). No IO happens here; the
//! communicator (`comm.rs`) executes a schedule over the transport, and the
//! tests below execute every schedule for `p = 1..=17` in a lock-step
//! simulator and check the result.
//!
//! # Buffer model
//!
//! A rank's buffer is cut into `nblocks` contiguous blocks; the caller's
//! [`BlockLayout`] says how many elements each block has (equal split for
//! allreduce, caller's counts for the v-variants). A [`Transfer`] names a
//! contiguous range of blocks. Every step carries a `round`: messages travel
//! under a tag that contains the round, and a receive in round `k` matches
//! the peer's send in its round `k`. Within a step a rank sends first, then
//! receives; a send's data is the buffer as it was before that step's receives
//! (the transport's send returns only once the data has been taken).
//!
//! # Algorithms and their sources
//!
//! - **Ring** reduce-scatter, allgather and allreduce (reduce-scatter then
//!   allgather): `2(p-1)` rounds, each moving `n/p` elements to the right
//!   neighbour; bandwidth-optimal. P. Patarasuk and X. Yuan, "Bandwidth
//!   optimal all-reduce algorithms for clusters of workstations", JPDC 69(2),
//!   2009; also section 4 of Thakur, Rabenseifner and Gropp (below).
//! - **Recursive doubling** allreduce: `log2 p` rounds of whole-buffer
//!   exchange with partner `rank ^ 2^k`; latency-optimal for short messages.
//! - **Rabenseifner** allreduce: reduce-scatter by recursive halving, then
//!   allgather by recursive doubling: `2 log2 p` rounds moving `2n(p-1)/p`
//!   elements. R. Thakur, R. Rabenseifner and W. Gropp, "Optimization of
//!   Collective Communication Operations in MPICH", IJHPCA 19(1), 2005, 4.4.
//!   Both recursive algorithms handle a `p` that is not a power of two as
//!   that paper does: with `r = p - 2^floor(log2 p)`, the first `2r` ranks pair
//!   up, each even rank hands its data to the odd one and sits out, and the odd
//!   rank sends the result back at the end.
//! - **Binomial tree** broadcast, reduce, gather and scatter: `ceil(log2 p)`
//!   rounds, ranks numbered relative to the root (Thakur et al., 4.1 and 4.3).
//! - **Pairwise exchange** all-to-all: in round `k = 1..p`, send to
//!   `rank + k` and receive from `rank - k` (Thakur et al., 4.6). Bruck's
//!   algorithm (J. Bruck et al., "Efficient algorithms for all-to-all
//!   communications in multiport message-passing systems", IEEE TPDS 8(11),
//!   1997) needs `log2 p` rounds but moves `n log2 p / 2` data and local
//!   rotations; it is not implemented (listed as missing in the crate docs).
//!   For small blocks a **direct** exchange (every send, then every receive,
//!   in one round; MPICH's and Open MPI's "basic linear") costs one latency.
//! - **Dissemination** barrier: round `k` signals `rank + 2^k` and waits for
//!   `rank - 2^k`. D. Hensgen, R. Finkel and U. Manber, "Two algorithms for
//!   barrier synchronization", IJPP 17(1), 1988.

use std::ops::Range;

/// Blocks moved in one message: `blocks` of the sender's buffer go to the
/// same blocks of the receiver's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The other rank (0-based, within the communicator).
    pub peer: usize,
    /// Block range (may be empty: a zero-byte message).
    pub blocks: Range<usize>,
}

/// What to do with received blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Overwrite the local blocks.
    Copy,
    /// Reduce into the local blocks (`local = local op received`).
    Reduce,
}

/// One step of a rank: its sends, then its receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Round number, shared with the matching step of each peer.
    pub round: u32,
    /// Messages this rank sends (before receiving).
    pub sends: Vec<Transfer>,
    /// Messages this rank receives, and what it does with them.
    pub recvs: Vec<(Transfer, Combine)>,
}

impl Step {
    fn exchange(round: u32, send: Transfer, recv: Transfer, combine: Combine) -> Step {
        Step {
            round,
            sends: vec![send],
            recvs: vec![(recv, combine)],
        }
    }

    fn send(round: u32, send: Transfer) -> Step {
        Step {
            round,
            sends: vec![send],
            recvs: Vec::new(),
        }
    }

    fn recv(round: u32, recv: Transfer, combine: Combine) -> Step {
        Step {
            round,
            sends: Vec::new(),
            recvs: vec![(recv, combine)],
        }
    }
}

/// Element offsets of the blocks of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockLayout {
    /// `count` elements in `nblocks` blocks whose sizes differ by at most
    /// one (the first `count % nblocks` blocks get the extra element);
    /// computed, not stored, so the common case allocates nothing.
    Equal {
        /// Elements.
        count: usize,
        /// Blocks (at least 1).
        nblocks: usize,
    },
    /// Blocks of given sizes: `offsets[i]..offsets[i + 1]` is block `i`.
    Offsets(Vec<usize>),
}

impl BlockLayout {
    /// `count` elements split into `nblocks` nearly equal blocks.
    pub fn equal(count: usize, nblocks: usize) -> Self {
        BlockLayout::Equal {
            count,
            nblocks: nblocks.max(1),
        }
    }

    /// Blocks of the given sizes, in order.
    pub fn from_counts(counts: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(counts.len() + 1);
        let mut at = 0;
        offsets.push(0);
        for &c in counts {
            at += c;
            offsets.push(at);
        }
        BlockLayout::Offsets(offsets)
    }

    /// Number of blocks.
    pub fn nblocks(&self) -> usize {
        match self {
            BlockLayout::Equal { nblocks, .. } => *nblocks,
            BlockLayout::Offsets(o) => o.len().saturating_sub(1),
        }
    }

    /// Total elements.
    pub fn total(&self) -> usize {
        match self {
            BlockLayout::Equal { count, .. } => *count,
            BlockLayout::Offsets(o) => o.last().copied().unwrap_or(0),
        }
    }

    fn offset(&self, block: usize) -> usize {
        match self {
            BlockLayout::Equal { count, nblocks } => {
                let (base, extra) = (count / nblocks, count % nblocks);
                block * base + block.min(extra)
            }
            BlockLayout::Offsets(o) => o[block],
        }
    }

    /// Elements covered by a block range (clamped to the layout).
    pub fn elements(&self, blocks: &Range<usize>) -> Range<usize> {
        let n = self.nblocks();
        let (start, end) = (blocks.start.min(n), blocks.end.min(n));
        self.offset(start)..self.offset(end.max(start))
    }
}

/// Largest power of two not above `p` (`p >= 1`).
pub fn pow2_floor(p: usize) -> usize {
    if p == 0 {
        return 0;
    }
    1 << (usize::BITS - 1 - p.leading_zeros())
}

fn log2(x: usize) -> u32 {
    x.trailing_zeros()
}

/// Round of a top-down tree step at distance `mask`: the largest distance
/// goes first, so rounds increase along every rank's steps.
fn down_round(mask: usize, p: usize) -> u32 {
    let top = p.next_power_of_two().trailing_zeros();
    top - 1 - log2(mask)
}

/// Ring reduce-scatter over `p` blocks: at the end rank `r` holds block `r`
/// reduced over all ranks (other blocks hold partial results). Rounds
/// `round0 .. round0 + p - 1`.
pub fn ring_reduce_scatter(rank: usize, p: usize, round0: u32) -> Vec<Step> {
    let right = (rank + 1) % p;
    let left = (rank + p - 1) % p;
    (0..p.saturating_sub(1))
        .map(|k| {
            let send = (rank + 2 * p - k - 1) % p;
            let recv = (rank + 2 * p - k - 2) % p;
            Step::exchange(
                round0 + k as u32,
                Transfer {
                    peer: right,
                    blocks: send..send + 1,
                },
                Transfer {
                    peer: left,
                    blocks: recv..recv + 1,
                },
                Combine::Reduce,
            )
        })
        .collect()
}

/// Ring allgather over `p` blocks: rank `r` starts with block `r` and ends
/// with all blocks. Rounds `round0 .. round0 + p - 1`.
pub fn ring_allgather(rank: usize, p: usize, round0: u32) -> Vec<Step> {
    let right = (rank + 1) % p;
    let left = (rank + p - 1) % p;
    (0..p.saturating_sub(1))
        .map(|k| {
            let send = (rank + p - k) % p;
            let recv = (rank + 2 * p - k - 1) % p;
            Step::exchange(
                round0 + k as u32,
                Transfer {
                    peer: right,
                    blocks: send..send + 1,
                },
                Transfer {
                    peer: left,
                    blocks: recv..recv + 1,
                },
                Combine::Copy,
            )
        })
        .collect()
}

/// Ring allreduce over `p` blocks (reduce-scatter, then allgather).
pub fn ring_allreduce(rank: usize, p: usize) -> Vec<Step> {
    let mut steps = ring_reduce_scatter(rank, p, 0);
    steps.extend(ring_allgather(rank, p, p.saturating_sub(1) as u32));
    steps
}

/// How a rank takes part in the power-of-two core of a recursive algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fold {
    /// `2^floor(log2 p)`.
    pof2: usize,
    /// Ranks folded in (`p - pof2`).
    rem: usize,
    /// This rank's index in the core, or `None` when it sits out.
    core: Option<usize>,
}

fn fold(rank: usize, p: usize) -> Fold {
    let pof2 = pow2_floor(p);
    let rem = p - pof2;
    let core = if rank < 2 * rem {
        (rank % 2 == 1).then_some(rank / 2)
    } else {
        Some(rank - rem)
    };
    Fold { pof2, rem, core }
}

/// The real rank of core index `core`.
fn unfold(core: usize, rem: usize) -> usize {
    if core < rem {
        core * 2 + 1
    } else {
        core + rem
    }
}

/// First and last steps of a folded algorithm over `nblocks` blocks: the
/// even rank of a pair hands its data over (round 0) and gets the result
/// back (round `last`).
fn fold_steps(rank: usize, f: &Fold, nblocks: usize, last: u32) -> (Option<Step>, Option<Step>) {
    if rank >= 2 * f.rem {
        return (None, None);
    }
    let all = 0..nblocks;
    if rank % 2 == 0 {
        let peer = rank + 1;
        (
            Some(Step::send(
                0,
                Transfer {
                    peer,
                    blocks: all.clone(),
                },
            )),
            Some(Step::recv(
                last,
                Transfer { peer, blocks: all },
                Combine::Copy,
            )),
        )
    } else {
        let peer = rank - 1;
        (
            Some(Step::recv(
                0,
                Transfer {
                    peer,
                    blocks: all.clone(),
                },
                Combine::Reduce,
            )),
            Some(Step::send(last, Transfer { peer, blocks: all })),
        )
    }
}

/// Recursive-doubling allreduce of one block (any `p`).
pub fn recursive_doubling_allreduce(rank: usize, p: usize) -> Vec<Step> {
    let f = fold(rank, p);
    let rounds = log2(f.pof2);
    let (first, last) = fold_steps(rank, &f, 1, rounds + 1);
    let mut steps: Vec<Step> = first.into_iter().collect();
    if let Some(me) = f.core {
        for k in 0..rounds {
            let partner = unfold(me ^ (1 << k), f.rem);
            steps.push(Step::exchange(
                k + 1,
                Transfer {
                    peer: partner,
                    blocks: 0..1,
                },
                Transfer {
                    peer: partner,
                    blocks: 0..1,
                },
                Combine::Reduce,
            ));
        }
    }
    steps.extend(last);
    steps
}

/// Number of blocks [`rabenseifner_allreduce`] cuts the buffer into.
pub fn rabenseifner_blocks(p: usize) -> usize {
    pow2_floor(p.max(1))
}

/// Rabenseifner's allreduce over [`rabenseifner_blocks`]`(p)` blocks.
pub fn rabenseifner_allreduce(rank: usize, p: usize) -> Vec<Step> {
    let f = fold(rank, p);
    let rounds = log2(f.pof2);
    let (first, last) = fold_steps(rank, &f, f.pof2, 2 * rounds + 1);
    let mut steps: Vec<Step> = first.into_iter().collect();
    if let Some(me) = f.core {
        // Reduce-scatter by recursive halving: distance pof2/2 .. 1; the
        // window of blocks this rank is responsible for halves each round and
        // ends as block `me`.
        let mut window = 0..f.pof2;
        let mut windows = Vec::with_capacity(rounds as usize);
        for (i, k) in (0..rounds).rev().enumerate() {
            let d = 1usize << k;
            let partner = unfold(me ^ d, f.rem);
            let mid = window.start + (window.end - window.start) / 2;
            let (keep, give) = if me & d == 0 {
                (window.start..mid, mid..window.end)
            } else {
                (mid..window.end, window.start..mid)
            };
            steps.push(Step::exchange(
                i as u32 + 1,
                Transfer {
                    peer: partner,
                    blocks: give,
                },
                Transfer {
                    peer: partner,
                    blocks: keep.clone(),
                },
                Combine::Reduce,
            ));
            windows.push(window.clone());
            window = keep;
        }
        // Allgather by recursive doubling: distance 1 .. pof2/2, undoing the
        // halving: send the window held, receive its sibling.
        for (i, k) in (0..rounds).enumerate() {
            let d = 1usize << k;
            let partner = unfold(me ^ d, f.rem);
            let parent = windows[(rounds - 1 - k) as usize].clone();
            let sibling = if window.start == parent.start {
                window.end..parent.end
            } else {
                parent.start..window.start
            };
            steps.push(Step::exchange(
                rounds + i as u32 + 1,
                Transfer {
                    peer: partner,
                    blocks: window.clone(),
                },
                Transfer {
                    peer: partner,
                    blocks: sibling,
                },
                Combine::Copy,
            ));
            window = parent;
        }
    }
    steps.extend(last);
    steps
}

/// Rank relative to `root`.
fn relative(rank: usize, root: usize, p: usize) -> usize {
    (rank + p - root) % p
}

fn absolute(vrank: usize, root: usize, p: usize) -> usize {
    (vrank + root) % p
}

/// Binomial-tree broadcast of one block from `root`.
pub fn binomial_bcast(rank: usize, p: usize, root: usize) -> Vec<Step> {
    let vr = relative(rank, root, p);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < p {
        if vr & mask != 0 {
            steps.push(Step::recv(
                down_round(mask, p),
                Transfer {
                    peer: absolute(vr - mask, root, p),
                    blocks: 0..1,
                },
                Combine::Copy,
            ));
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if vr + mask < p {
            steps.push(Step::send(
                down_round(mask, p),
                Transfer {
                    peer: absolute(vr + mask, root, p),
                    blocks: 0..1,
                },
            ));
        }
        mask >>= 1;
    }
    steps
}

/// Binomial-tree reduce of one block to `root` (commutative operations).
pub fn binomial_reduce(rank: usize, p: usize, root: usize) -> Vec<Step> {
    let vr = relative(rank, root, p);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < p {
        if vr & mask == 0 {
            if vr + mask < p {
                steps.push(Step::recv(
                    log2(mask),
                    Transfer {
                        peer: absolute(vr + mask, root, p),
                        blocks: 0..1,
                    },
                    Combine::Reduce,
                ));
            }
        } else {
            steps.push(Step::send(
                log2(mask),
                Transfer {
                    peer: absolute(vr - mask, root, p),
                    blocks: 0..1,
                },
            ));
            break;
        }
        mask <<= 1;
    }
    steps
}

/// Binomial-tree gather to `root` over `p` blocks in *relative* order (block
/// `i` belongs to rank `(root + i) % p`): at the end the root holds all.
pub fn binomial_gather(rank: usize, p: usize, root: usize) -> Vec<Step> {
    let vr = relative(rank, root, p);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < p {
        if vr & mask == 0 {
            if vr + mask < p {
                steps.push(Step::recv(
                    log2(mask),
                    Transfer {
                        peer: absolute(vr + mask, root, p),
                        blocks: vr + mask..(vr + 2 * mask).min(p),
                    },
                    Combine::Copy,
                ));
            }
        } else {
            steps.push(Step::send(
                log2(mask),
                Transfer {
                    peer: absolute(vr - mask, root, p),
                    blocks: vr..(vr + mask).min(p),
                },
            ));
            break;
        }
        mask <<= 1;
    }
    steps
}

/// Binomial-tree scatter from `root` over `p` blocks in relative order (the
/// reverse of [`binomial_gather`]).
pub fn binomial_scatter(rank: usize, p: usize, root: usize) -> Vec<Step> {
    let vr = relative(rank, root, p);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < p {
        if vr & mask != 0 {
            steps.push(Step::recv(
                down_round(mask, p),
                Transfer {
                    peer: absolute(vr - mask, root, p),
                    blocks: vr..(vr + mask).min(p),
                },
                Combine::Copy,
            ));
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if vr + mask < p {
            steps.push(Step::send(
                down_round(mask, p),
                Transfer {
                    peer: absolute(vr + mask, root, p),
                    blocks: vr + mask..(vr + 2 * mask).min(p),
                },
            ));
        }
        mask >>= 1;
    }
    steps
}

/// Pairwise-exchange all-to-all over `2p` blocks: blocks `0..p` are the
/// input (block `j` goes to rank `j`), blocks `p..2p` the output (block
/// `p + j` comes from rank `j`). The own block is copied locally by the
/// caller. Round `k` (1..p) exchanges with `rank ± k`.
pub fn pairwise_alltoall(rank: usize, p: usize) -> Vec<Step> {
    (1..p)
        .map(|k| {
            let dst = (rank + k) % p;
            let src = (rank + p - k) % p;
            Step {
                round: k as u32,
                sends: vec![Transfer {
                    peer: dst,
                    blocks: dst..dst + 1,
                }],
                recvs: vec![(
                    Transfer {
                        peer: src,
                        blocks: p + src..p + src + 1,
                    },
                    Combine::Copy,
                )],
            }
        })
        .collect()
}

/// Direct all-to-all over the same `2p` blocks as [`pairwise_alltoall`]:
/// one round in which every rank sends all its blocks, then receives all.
/// For small blocks, whose sends are eager (they return at once), this
/// costs one message latency instead of `p - 1`.
pub fn direct_alltoall(rank: usize, p: usize) -> Vec<Step> {
    if p < 2 {
        return Vec::new();
    }
    let others = || (1..p).map(move |k| (rank + k) % p);
    vec![Step {
        round: 0,
        sends: others()
            .map(|j| Transfer {
                peer: j,
                blocks: j..j + 1,
            })
            .collect(),
        recvs: others()
            .map(|j| {
                (
                    Transfer {
                        peer: j,
                        blocks: p + j..p + j + 1,
                    },
                    Combine::Copy,
                )
            })
            .collect(),
    }]
}

/// Direct allgather over `p` blocks: one round in which every rank sends its
/// block to all others and receives theirs (small blocks, see
/// [`direct_alltoall`]).
pub fn direct_allgather(rank: usize, p: usize) -> Vec<Step> {
    if p < 2 {
        return Vec::new();
    }
    let others = || (1..p).map(move |k| (rank + k) % p);
    vec![Step {
        round: 0,
        sends: others()
            .map(|j| Transfer {
                peer: j,
                blocks: rank..rank + 1,
            })
            .collect(),
        recvs: others()
            .map(|j| {
                (
                    Transfer {
                        peer: j,
                        blocks: j..j + 1,
                    },
                    Combine::Copy,
                )
            })
            .collect(),
    }]
}

/// Dissemination barrier: zero-byte messages, `ceil(log2 p)` rounds.
pub fn dissemination_barrier(rank: usize, p: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut d = 1;
    let mut round = 0;
    while d < p {
        steps.push(Step::exchange(
            round,
            Transfer {
                peer: (rank + d) % p,
                blocks: 0..0,
            },
            Transfer {
                peer: (rank + p - d) % p,
                blocks: 0..0,
            },
            Combine::Copy,
        ));
        d *= 2;
        round += 1;
    }
    steps
}

/// Node grouping for hierarchical algorithms: given each rank's node key
/// (any value equal exactly for ranks of one node), returns for every rank
/// `(node index, index within its node)`, node indices numbered by first
/// appearance and members ordered by rank, plus each node's leader (its
/// lowest rank).
pub fn node_groups(keys: &[u64]) -> (Vec<(usize, usize)>, Vec<usize>) {
    let mut leaders: Vec<usize> = Vec::new();
    let mut node_keys: Vec<u64> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    let mut place = Vec::with_capacity(keys.len());
    for (rank, key) in keys.iter().enumerate() {
        let node = match node_keys.iter().position(|k| k == key) {
            Some(n) => n,
            None => {
                node_keys.push(*key);
                leaders.push(rank);
                sizes.push(0);
                node_keys.len() - 1
            }
        };
        place.push((node, sizes[node]));
        sizes[node] += 1;
    }
    (place, leaders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    /// Messages in flight per (from, to) pair: blocks and data.
    type Wire = HashMap<(usize, usize), VecDeque<(Range<usize>, Vec<i64>)>>;
    type Algorithm = fn(usize, usize) -> Vec<Step>;

    /// Runs every rank's schedule in lock step over per-rank buffers of
    /// `i64` (reduction: sum), checking that every receive has a matching
    /// send of the same size in the same round and that no send is left over.
    fn simulate(
        mut buffers: Vec<Vec<i64>>,
        layout: &BlockLayout,
        schedules: &[Vec<Step>],
    ) -> Vec<Vec<i64>> {
        let p = buffers.len();
        let max_round = schedules
            .iter()
            .flat_map(|s| s.iter().map(|st| st.round))
            .max();
        let Some(max_round) = max_round else {
            return buffers;
        };
        for s in schedules {
            assert!(
                s.windows(2).all(|w| w[0].round < w[1].round),
                "rounds must increase"
            );
        }
        for round in 0..=max_round {
            let mut wire: Wire = HashMap::new();
            for (rank, s) in schedules.iter().enumerate() {
                for step in s.iter().filter(|st| st.round == round) {
                    for t in &step.sends {
                        assert!(t.peer < p && t.peer != rank, "bad peer");
                        let range = layout.elements(&t.blocks);
                        wire.entry((rank, t.peer))
                            .or_default()
                            .push_back((t.blocks.clone(), buffers[rank][range].to_vec()));
                    }
                }
            }
            for (rank, s) in schedules.iter().enumerate() {
                for step in s.iter().filter(|st| st.round == round) {
                    for (t, combine) in &step.recvs {
                        let (blocks, data) = wire
                            .get_mut(&(t.peer, rank))
                            .and_then(VecDeque::pop_front)
                            .unwrap_or_else(|| {
                                panic!("round {round}: rank {rank} waits for {} in vain", t.peer)
                            });
                        let range = layout.elements(&t.blocks);
                        assert_eq!(
                            data.len(),
                            range.len(),
                            "round {round}: size mismatch {blocks:?} vs {:?}",
                            t.blocks
                        );
                        let local = &mut buffers[rank][range];
                        match combine {
                            Combine::Copy => local.copy_from_slice(&data),
                            Combine::Reduce => {
                                for (a, b) in local.iter_mut().zip(&data) {
                                    *a += b;
                                }
                            }
                        }
                    }
                }
            }
            assert!(
                wire.values().all(VecDeque::is_empty),
                "round {round}: unreceived messages"
            );
        }
        buffers
    }

    fn inputs(p: usize, count: usize) -> Vec<Vec<i64>> {
        (0..p)
            .map(|r| (0..count).map(|i| (r * 1000 + i) as i64 * 7 + 1).collect())
            .collect()
    }

    fn sum(inputs: &[Vec<i64>]) -> Vec<i64> {
        let mut s = vec![0; inputs[0].len()];
        for v in inputs {
            for (a, b) in s.iter_mut().zip(v) {
                *a += b;
            }
        }
        s
    }

    #[test]
    fn allreduce_schedules_for_1_to_17_ranks() {
        for p in 1..=17 {
            for count in [0, 1, 5, 37, 64] {
                let input = inputs(p, count);
                let expected = sum(&input);
                let cases: [(&str, usize, Algorithm); 3] = [
                    ("ring", p, ring_allreduce),
                    ("rd", 1, recursive_doubling_allreduce),
                    (
                        "rabenseifner",
                        rabenseifner_blocks(p),
                        rabenseifner_allreduce,
                    ),
                ];
                for (name, nblocks, algo) in cases {
                    let layout = BlockLayout::equal(count, nblocks);
                    let schedules: Vec<_> = (0..p).map(|r| algo(r, p)).collect();
                    let out = simulate(input.clone(), &layout, &schedules);
                    for (r, b) in out.iter().enumerate() {
                        assert_eq!(b, &expected, "{name} p={p} count={count} rank {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_counts_are_the_textbook_ones() {
        assert_eq!(ring_allreduce(0, 5).len(), 8);
        assert_eq!(recursive_doubling_allreduce(7, 8).len(), 3);
        // p = 6: ranks 0..4 pair up; rank 0 sends and later receives only.
        assert_eq!(recursive_doubling_allreduce(0, 6).len(), 2);
        assert_eq!(recursive_doubling_allreduce(1, 6).len(), 4);
        assert_eq!(rabenseifner_allreduce(5, 8).len(), 6);
        assert_eq!(binomial_bcast(0, 8, 0).len(), 3);
        assert_eq!(dissemination_barrier(2, 5).len(), 3);
        assert_eq!(pairwise_alltoall(0, 4).len(), 3);
    }

    #[test]
    fn reduce_scatter_and_allgather_rings() {
        for p in 1..=9 {
            let counts: Vec<usize> = (0..p).map(|i| i % 3 + (i == 2) as usize * 4).collect();
            let layout = BlockLayout::from_counts(&counts);
            let input = inputs(p, layout.total());
            let expected = sum(&input);
            let schedules: Vec<_> = (0..p).map(|r| ring_reduce_scatter(r, p, 0)).collect();
            let out = simulate(input, &layout, &schedules);
            for (r, b) in out.iter().enumerate() {
                let range = layout.elements(&(r..r + 1));
                assert_eq!(&b[range.clone()], &expected[range], "rs p={p} r={r}");
            }
            // Allgather: rank r fills block r only.
            let full = inputs(1, layout.total()).remove(0);
            let start: Vec<Vec<i64>> = (0..p)
                .map(|r| {
                    let mut v = vec![-1; layout.total()];
                    let range = layout.elements(&(r..r + 1));
                    v[range.clone()].copy_from_slice(&full[range]);
                    v
                })
                .collect();
            let schedules: Vec<_> = (0..p).map(|r| ring_allgather(r, p, 3)).collect();
            for b in simulate(start.clone(), &layout, &schedules) {
                assert_eq!(b, full, "allgather p={p}");
            }
            let schedules: Vec<_> = (0..p).map(|r| direct_allgather(r, p)).collect();
            for b in simulate(start, &layout, &schedules) {
                assert_eq!(b, full, "direct allgather p={p}");
            }
        }
    }

    #[test]
    fn trees_from_every_root() {
        for p in 1..=13 {
            for root in 0..p {
                // Broadcast.
                let layout = BlockLayout::equal(3, 1);
                let start: Vec<Vec<i64>> = (0..p)
                    .map(|r| if r == root { vec![4, 5, 6] } else { vec![0; 3] })
                    .collect();
                let s: Vec<_> = (0..p).map(|r| binomial_bcast(r, p, root)).collect();
                for b in simulate(start, &layout, &s) {
                    assert_eq!(b, vec![4, 5, 6], "bcast p={p} root={root}");
                }
                // Reduce.
                let input = inputs(p, 3);
                let expected = sum(&input);
                let s: Vec<_> = (0..p).map(|r| binomial_reduce(r, p, root)).collect();
                assert_eq!(simulate(input, &layout, &s)[root], expected);
                // Gather (relative blocks of 2 elements).
                let layout = BlockLayout::equal(2 * p, p);
                let start: Vec<Vec<i64>> = (0..p)
                    .map(|r| {
                        let mut v = vec![0; 2 * p];
                        let vr = relative(r, root, p);
                        v[2 * vr] = r as i64;
                        v[2 * vr + 1] = 100 + r as i64;
                        v
                    })
                    .collect();
                let full: Vec<i64> = (0..p)
                    .flat_map(|vr| {
                        let r = absolute(vr, root, p) as i64;
                        [r, 100 + r]
                    })
                    .collect();
                let s: Vec<_> = (0..p).map(|r| binomial_gather(r, p, root)).collect();
                assert_eq!(simulate(start, &layout, &s)[root], full, "gather");
                // Scatter: everyone ends with its own relative block.
                let start: Vec<Vec<i64>> = (0..p)
                    .map(|r| {
                        if r == root {
                            full.clone()
                        } else {
                            vec![0; 2 * p]
                        }
                    })
                    .collect();
                let s: Vec<_> = (0..p).map(|r| binomial_scatter(r, p, root)).collect();
                for (r, b) in simulate(start, &layout, &s).iter().enumerate() {
                    let vr = relative(r, root, p);
                    assert_eq!(&b[2 * vr..2 * vr + 2], &[r as i64, 100 + r as i64]);
                }
            }
        }
    }

    #[test]
    fn alltoall_and_barrier() {
        for p in 1..=9 {
            let layout = BlockLayout::equal(2 * p, 2 * p);
            let start: Vec<Vec<i64>> = (0..p)
                .map(|r| {
                    let mut v: Vec<i64> = (0..p).map(|j| (r * 100 + j) as i64).collect();
                    v.extend(std::iter::repeat_n(-1, p));
                    v[p + r] = (r * 100 + r) as i64;
                    v
                })
                .collect();
            for algo in [pairwise_alltoall, direct_alltoall] {
                let s: Vec<_> = (0..p).map(|r| algo(r, p)).collect();
                for (r, b) in simulate(start.clone(), &layout, &s).iter().enumerate() {
                    let expected: Vec<i64> = (0..p).map(|j| (j * 100 + r) as i64).collect();
                    assert_eq!(&b[p..], &expected[..], "alltoall p={p} r={r}");
                }
            }
            let layout = BlockLayout::equal(0, 1);
            let s: Vec<_> = (0..p).map(|r| dissemination_barrier(r, p)).collect();
            simulate(vec![Vec::new(); p], &layout, &s);
        }
    }

    #[test]
    fn layouts_and_node_groups() {
        let l = BlockLayout::equal(10, 4);
        assert_eq!(l.elements(&(0..1)), 0..3);
        assert_eq!(l.elements(&(2..4)), 6..10);
        assert_eq!(BlockLayout::equal(2, 4).elements(&(3..4)), 2..2);
        let (place, leaders) = node_groups(&[7, 7, 3, 9, 3, 7]);
        assert_eq!(leaders, vec![0, 2, 3]);
        assert_eq!(place, vec![(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2)]);
        assert_eq!(pow2_floor(1), 1);
        assert_eq!(pow2_floor(6), 4);
        assert_eq!(pow2_floor(16), 16);
    }
}
