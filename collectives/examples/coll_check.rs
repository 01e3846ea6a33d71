//! Checks every collective against a reference that each rank computes
//! locally (every rank can regenerate every other rank's input). Run it on
//! any number of ranks:
//!
//! ```text
//! cargo build --release --examples && target/release/lumen run -n 4 -- target/release/examples/coll_check
//! ```
//!
//! Options (used by the tests in `lumen/tests/coll_*.rs`):
//! - `--sizes 0,1,7,4099` element counts for every operation and type;
//! - `--big 1048576,16777217` element counts for allreduce of f32, f64, i64
//!   with every algorithm;
//! - `--types f32,i8,...` restricts the element types (default: all ten);
//! - `--two-comms` also runs two communicators at once from two threads;
//! - `--hier` requires the world communicator to be hierarchical (several
//!   nodes) and checks hierarchical allreduce and alltoall;
//! - `--kill-rank R`: every rank loops over 1 MiB allreduces, rank R
//!   SIGKILLs itself during the fourth; the others must report an error.
//!
//! Tolerance: integer results are exact. Floating-point inputs of the sum
//! checks are random in [-1, 1) for f32/f64 (so the reduction order matters)
//! and the result must be within `2 p eps sum|x_i|` of the f64 reference;
//! f16/bf16 inputs are small integers whose sums are exact in those types;
//! products use powers of two (exact).

use std::time::Instant;

use anyhow::{bail, ensure, Context};
use lumen_collectives::{
    bf16, f16, AllreduceAlgorithm, Communicator, Element, ElementKind, ReduceOp,
};

fn hash(rank: u32, i: usize, seed: u64) -> u64 {
    let mut x = (u64::from(rank) << 40) ^ (i as u64) ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Test values and the reference arithmetic for one element type.
trait Value: Element {
    /// Input of `rank` at index `i` for reduction `op`.
    fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self;
    /// Reference reduction of `values`; returns (value, tolerance).
    fn reference(values: &[Self], op: ReduceOp) -> (f64, f64);
    fn to_f64(self) -> f64;
    fn same(self, reference: (f64, f64)) -> bool {
        (self.to_f64() - reference.0).abs() <= reference.1
    }
}

macro_rules! int_value {
    ($t:ty) => {
        impl Value for $t {
            fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self {
                let h = hash(rank, i, seed);
                match op {
                    // Small factors keep some products from being all zero.
                    ReduceOp::Prod => (h % 5) as $t,
                    _ => h as $t,
                }
            }
            fn reference(values: &[Self], op: ReduceOp) -> (f64, f64) {
                let mut acc = values[0];
                for &v in &values[1..] {
                    acc = match op {
                        ReduceOp::Sum => acc.wrapping_add(v),
                        ReduceOp::Prod => acc.wrapping_mul(v),
                        ReduceOp::Min => acc.min(v),
                        ReduceOp::Max => acc.max(v),
                        ReduceOp::BitAnd => acc & v,
                        ReduceOp::BitOr => acc | v,
                        ReduceOp::BitXor => acc ^ v,
                    };
                }
                (acc as f64, 0.0)
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn same(self, reference: (f64, f64)) -> bool {
                // Exact (the reference went through the same type).
                self as f64 == reference.0
            }
        }
    };
}
int_value!(i8);
int_value!(u8);
int_value!(i32);
int_value!(u32);
int_value!(i64);
int_value!(u64);

fn float_input(rank: u32, i: usize, seed: u64, op: ReduceOp, half: bool) -> f64 {
    let h = hash(rank, i, seed);
    match op {
        ReduceOp::Prod => [0.5, 1.0, 2.0, -1.0][(h % 4) as usize],
        _ if half => (h % 17) as f64 - 8.0,
        _ => (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0,
    }
}

fn float_reference(values: &[f64], op: ReduceOp, eps: f64) -> (f64, f64) {
    let mut acc = values[0];
    for &v in &values[1..] {
        acc = match op {
            ReduceOp::Sum => acc + v,
            ReduceOp::Prod => acc * v,
            ReduceOp::Min => acc.min(v),
            ReduceOp::Max => acc.max(v),
            _ => acc,
        };
    }
    let tolerance = match op {
        ReduceOp::Sum => {
            2.0 * values.len() as f64 * eps * values.iter().map(|v| v.abs()).sum::<f64>()
        }
        _ => 0.0,
    };
    (acc, tolerance)
}

impl Value for f32 {
    fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self {
        float_input(rank, i, seed, op, false) as f32
    }
    fn reference(values: &[Self], op: ReduceOp) -> (f64, f64) {
        let v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        float_reference(&v, op, f32::EPSILON as f64)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Value for f64 {
    fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self {
        float_input(rank, i, seed, op, false)
    }
    fn reference(values: &[Self], op: ReduceOp) -> (f64, f64) {
        float_reference(values, op, f64::EPSILON)
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Value for f16 {
    fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self {
        f16::from_f64(float_input(rank, i, seed, op, true))
    }
    fn reference(values: &[Self], op: ReduceOp) -> (f64, f64) {
        let v: Vec<f64> = values.iter().map(|x| x.to_f64()).collect();
        float_reference(&v, op, 0.0)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
}

impl Value for bf16 {
    fn input(rank: u32, i: usize, seed: u64, op: ReduceOp) -> Self {
        bf16::from_f64(float_input(rank, i, seed, op, true))
    }
    fn reference(values: &[Self], op: ReduceOp) -> (f64, f64) {
        let v: Vec<f64> = values.iter().map(|x| x.to_f64()).collect();
        float_reference(&v, op, 0.0)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

fn inputs<T: Value>(rank: u32, n: usize, seed: u64, op: ReduceOp) -> Vec<T> {
    (0..n).map(|i| T::input(rank, i, seed, op)).collect()
}

/// Reference reduction over all ranks' inputs at every index.
fn expected<T: Value>(p: u32, n: usize, seed: u64, op: ReduceOp) -> Vec<(f64, f64)> {
    let all: Vec<Vec<T>> = (0..p).map(|r| inputs::<T>(r, n, seed, op)).collect();
    let mut column = Vec::with_capacity(p as usize);
    (0..n)
        .map(|i| {
            column.clear();
            column.extend(all.iter().map(|v| v[i]));
            T::reference(&column, op)
        })
        .collect()
}

fn compare<T: Value>(what: &str, got: &[T], reference: &[(f64, f64)]) -> anyhow::Result<()> {
    ensure!(
        got.len() == reference.len(),
        "{what}: {} elements, expected {}",
        got.len(),
        reference.len()
    );
    if let Some(i) = (0..got.len()).find(|&i| !got[i].same(reference[i])) {
        bail!(
            "{what}: element {i} is {:?}, expected {} (tolerance {})",
            got[i],
            reference[i].0,
            reference[i].1
        );
    }
    Ok(())
}

fn exact<T: Value>(what: &str, got: &[T], want: &[T]) -> anyhow::Result<()> {
    ensure!(
        got.len() == want.len(),
        "{what}: {} elements, expected {}",
        got.len(),
        want.len()
    );
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        bail!(
            "{what}: element {i} is {:?}, expected {:?}",
            got[i],
            want[i]
        );
    }
    Ok(())
}

struct Checks {
    passed: usize,
}

fn reductions<T: Value>() -> Vec<ReduceOp> {
    ReduceOp::ALL
        .into_iter()
        .filter(|&op| T::KIND.supports(op))
        .collect()
}

const ALGORITHMS: [AllreduceAlgorithm; 5] = [
    AllreduceAlgorithm::Direct,
    AllreduceAlgorithm::Auto,
    AllreduceAlgorithm::Ring,
    AllreduceAlgorithm::RecursiveDoubling,
    AllreduceAlgorithm::Rabenseifner,
];

fn check_type<T: Value>(c: &Communicator, n: usize, checks: &mut Checks) -> anyhow::Result<()> {
    let (me, p) = (c.rank(), c.size());
    let pn = p as usize * n;
    let name = T::KIND.name();
    let ctx = |what: &str| format!("{what} {name} n={n} p={p} rank {me}");
    // Allreduce: every reduction, every algorithm.
    for op in reductions::<T>() {
        let seed = 11 + op as u64;
        let reference = expected::<T>(p, n, seed, op);
        for algorithm in ALGORITHMS {
            let mut buffer = inputs::<T>(me, n, seed, op);
            c.allreduce_with(&mut buffer, op, algorithm)?;
            compare(
                &ctx(&format!("allreduce {op} {algorithm:?}")),
                &buffer,
                &reference,
            )?;
            checks.passed += 1;
        }
        // Reduce to the last rank, from separate buffers.
        let root = p - 1;
        let send = inputs::<T>(me, n, seed, op);
        let mut recv = if me == root {
            vec![T::zeroed(); n]
        } else {
            Vec::new()
        };
        c.reduce(&send, &mut recv, op, root)?;
        if me == root {
            compare(&ctx(&format!("reduce {op}")), &recv, &reference)?;
        }
        // Reduce-scatter (block), out of place and in place.
        let send = inputs::<T>(me, pn, seed + 100, op);
        let full = expected::<T>(p, pn, seed + 100, op);
        let mine = &full[me as usize * n..(me as usize + 1) * n];
        let mut recv = vec![T::zeroed(); n];
        c.reduce_scatter(&send, &mut recv, op)?;
        compare(&ctx(&format!("reduce_scatter {op}")), &recv, mine)?;
        let mut buffer = send.clone();
        c.reduce_scatter_in_place(&mut buffer, op)?;
        compare(
            &ctx(&format!("reduce_scatter_in_place {op}")),
            &buffer[me as usize * n..(me as usize + 1) * n],
            mine,
        )?;
        checks.passed += 3;
    }
    let op = ReduceOp::Sum;
    // allreduce_into and reduce_in_place.
    let send = inputs::<T>(me, n, 5, op);
    let reference = expected::<T>(p, n, 5, op);
    let mut recv = vec![T::zeroed(); n];
    c.allreduce_into(&send, &mut recv, op)?;
    compare(&ctx("allreduce_into"), &recv, &reference)?;
    let mut buffer = send.clone();
    c.reduce_in_place(&mut buffer, op, 0)?;
    if me == 0 {
        compare(&ctx("reduce_in_place"), &buffer, &reference)?;
    }
    // Broadcast from every root.
    for root in 0..p {
        let want = inputs::<T>(root, n, 7, op);
        let mut buffer = if me == root {
            want.clone()
        } else {
            vec![T::zeroed(); n]
        };
        c.bcast(&mut buffer, root)?;
        exact(&ctx(&format!("bcast root {root}")), &buffer, &want)?;
    }
    // Allgather, allgather in place, allgatherv.
    let want: Vec<T> = (0..p).flat_map(|r| inputs::<T>(r, n, 8, op)).collect();
    let mut recv = vec![T::zeroed(); pn];
    c.allgather(&inputs::<T>(me, n, 8, op), &mut recv)?;
    exact(&ctx("allgather"), &recv, &want)?;
    let mut buffer = vec![T::zeroed(); pn];
    buffer[me as usize * n..(me as usize + 1) * n].copy_from_slice(&inputs::<T>(me, n, 8, op));
    c.allgather_in_place(&mut buffer)?;
    exact(&ctx("allgather_in_place"), &buffer, &want)?;
    let counts: Vec<usize> = (0..p as usize).map(|r| n + r % 3).collect();
    let want: Vec<T> = (0..p)
        .flat_map(|r| inputs::<T>(r, counts[r as usize], 9, op))
        .collect();
    let mut recv = vec![T::zeroed(); want.len()];
    c.allgatherv(
        &inputs::<T>(me, counts[me as usize], 9, op),
        &mut recv,
        &counts,
    )?;
    exact(&ctx("allgatherv"), &recv, &want)?;
    // Alltoall: block j of rank r is inputs(r)[j*n..]; we get block `me` of everyone.
    let send = inputs::<T>(me, pn, 10, op);
    let mut recv = vec![T::zeroed(); pn];
    c.alltoall(&send, &mut recv)?;
    let want: Vec<T> = (0..p)
        .flat_map(|r| inputs::<T>(r, pn, 10, op)[me as usize * n..(me as usize + 1) * n].to_vec())
        .collect();
    exact(&ctx("alltoall"), &recv, &want)?;
    // Alltoallv: rank r sends (r + j) % 3 + n elements to rank j.
    let count = |from: u32, to: u32| ((from + to) % 3) as usize + n;
    let send_counts: Vec<usize> = (0..p).map(|j| count(me, j)).collect();
    let recv_counts: Vec<usize> = (0..p).map(|i| count(i, me)).collect();
    let send = inputs::<T>(me, send_counts.iter().sum(), 12, op);
    let mut recv = vec![T::zeroed(); recv_counts.iter().sum()];
    c.alltoallv(&send, &send_counts, &mut recv, &recv_counts)?;
    let want: Vec<T> = (0..p)
        .flat_map(|r| {
            let all = inputs::<T>(r, (0..p).map(|j| count(r, j)).sum(), 12, op);
            let start: usize = (0..me).map(|j| count(r, j)).sum();
            all[start..start + count(r, me)].to_vec()
        })
        .collect();
    exact(&ctx("alltoallv"), &recv, &want)?;
    // Gather and scatter at rank 1 % p.
    let root = 1 % p;
    let want: Vec<T> = (0..p).flat_map(|r| inputs::<T>(r, n, 13, op)).collect();
    let mut recv = if me == root {
        vec![T::zeroed(); pn]
    } else {
        Vec::new()
    };
    c.gather(&inputs::<T>(me, n, 13, op), &mut recv, root)?;
    if me == root {
        exact(&ctx("gather"), &recv, &want)?;
    }
    let send = if me == root { want.clone() } else { Vec::new() };
    let mut recv = vec![T::zeroed(); n];
    c.scatter(&send, &mut recv, root)?;
    exact(&ctx("scatter"), &recv, &inputs::<T>(me, n, 13, op))?;
    // Point to point around the ring.
    c.send((me + 1) % p, 77, &inputs::<T>(me, n, 14, op))?;
    let got: Vec<T> = c.recv((me + p - 1) % p, 77)?;
    exact(
        &ctx("send/recv"),
        &got,
        &inputs::<T>((me + p - 1) % p, n, 14, op),
    )?;
    // Non-blocking: two in flight, then wait.
    let a = c.iallreduce(inputs::<T>(me, n, 15, op), op);
    let b = c.ibcast(inputs::<T>(0, n, 16, op), 0);
    let ra = a.wait()?;
    let rb = b.wait()?;
    compare(&ctx("iallreduce"), &ra, &expected::<T>(p, n, 15, op))?;
    exact(&ctx("ibcast"), &rb, &inputs::<T>(0, n, 16, op))?;
    // A group communicator made by its members only (ranks p-1, 0, 1 in
    // that order; the others go on without calling).
    if p >= 3 {
        let group = [p - 1, 0, 1];
        if let Some(position) = group.iter().position(|&r| r == me) {
            let g = c.create_group(&group, 7)?;
            if g.rank() != position as u32 || g.size() != 3 {
                bail!(
                    "{}: create_group gave rank {} of {}",
                    ctx("create_group"),
                    g.rank(),
                    g.size()
                );
            }
            let mut x = inputs::<T>(me, n, 17, op);
            g.allreduce(&mut x, op)?;
            let all: Vec<Vec<T>> = group.iter().map(|&r| inputs::<T>(r, n, 17, op)).collect();
            let want: Vec<(f64, f64)> = (0..n)
                .map(|i| T::reference(&all.iter().map(|v| v[i]).collect::<Vec<T>>(), op))
                .collect();
            compare(&ctx("create_group allreduce"), &x, &want)?;
            let mut b = if position == 0 {
                inputs::<T>(p - 1, n, 18, op)
            } else {
                vec![T::zeroed(); n]
            };
            g.bcast(&mut b, 0)?;
            exact(
                &ctx("create_group bcast"),
                &b,
                &inputs::<T>(p - 1, n, 18, op),
            )?;
        }
    }
    // Non-blocking v-variants, both in flight.
    let counts: Vec<usize> = (0..p as usize).map(|r| n + r % 3).collect();
    let gv = c.iallgatherv(inputs::<T>(me, counts[me as usize], 9, op), counts.clone());
    let send_counts: Vec<usize> = (0..p).map(|j| count(me, j)).collect();
    let recv_counts: Vec<usize> = (0..p).map(|i| count(i, me)).collect();
    let av = c.ialltoallv(
        inputs::<T>(me, send_counts.iter().sum(), 12, op),
        send_counts,
        recv_counts,
    );
    let want: Vec<T> = (0..p)
        .flat_map(|r| inputs::<T>(r, counts[r as usize], 9, op))
        .collect();
    exact(&ctx("iallgatherv"), &gv.wait()?, &want)?;
    let want: Vec<T> = (0..p)
        .flat_map(|r| {
            let all = inputs::<T>(r, (0..p).map(|j| count(r, j)).sum(), 12, op);
            let start: usize = (0..me).map(|j| count(r, j)).sum();
            all[start..start + count(r, me)].to_vec()
        })
        .collect();
    exact(&ctx("ialltoallv"), &av.wait()?, &want)?;
    // Non-blocking gather and scatter at the last rank, behind an ialltoall.
    let root = p - 1;
    let a = c.ialltoall(inputs::<T>(me, pn, 10, op));
    let g = c.igather(inputs::<T>(me, n, 13, op), root);
    let everyone: Vec<T> = (0..p).flat_map(|r| inputs::<T>(r, n, 13, op)).collect();
    let s = c.iscatter(
        if me == root {
            everyone.clone()
        } else {
            Vec::new()
        },
        n,
        root,
    );
    let got = a.wait()?;
    let want: Vec<T> = (0..p)
        .flat_map(|r| inputs::<T>(r, pn, 10, op)[me as usize * n..(me as usize + 1) * n].to_vec())
        .collect();
    exact(&ctx("ialltoall"), &got, &want)?;
    let gathered = g.wait()?;
    if me == root {
        exact(&ctx("igather"), &gathered, &everyone)?;
    }
    exact(&ctx("iscatter"), &s.wait()?, &inputs::<T>(me, n, 13, op))?;
    c.ibarrier().wait()?;
    c.barrier()?;
    checks.passed += 20;
    Ok(())
}

fn check_all_types(
    c: &Communicator,
    n: usize,
    types: &[String],
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let want = |k: ElementKind| types.is_empty() || types.iter().any(|t| t == k.name());
    macro_rules! each {
        ($($t:ty),*) => {$(
            if want(<$t as Element>::KIND) {
                check_type::<$t>(c, n, checks)?;
            }
        )*};
    }
    each!(f32, f64, f16, bf16, i8, u8, i32, u32, i64, u64);
    Ok(())
}

fn check_big<T: Value>(c: &Communicator, n: usize, checks: &mut Checks) -> anyhow::Result<()> {
    let op = ReduceOp::Sum;
    let reference = expected::<T>(c.size(), n, 21, op);
    // Direct is for short buffers (it sends the whole buffer to every rank).
    for algorithm in &ALGORITHMS[1..] {
        let mut buffer = inputs::<T>(c.rank(), n, 21, op);
        c.allreduce_with(&mut buffer, op, *algorithm)?;
        compare(
            &format!("big allreduce {} n={n} {algorithm:?}", T::KIND.name()),
            &buffer,
            &reference,
        )?;
        checks.passed += 1;
    }
    Ok(())
}

/// Two communicators over the same ranks (different contexts), driven at the
/// same time from two threads with different data and interleaved ops.
fn check_two_comms(world: &Communicator, checks: &mut Checks) -> anyhow::Result<()> {
    let (me, p) = (world.rank(), world.size());
    let forward = world
        .split(Some(0), i64::from(me))?
        .context("split gave no communicator")?;
    let backward = world
        .split(Some(0), -i64::from(me))?
        .context("split gave no communicator")?;
    ensure!(
        forward.context() != backward.context(),
        "two splits share a context id"
    );
    ensure!(backward.rank() == p - 1 - me, "split ordered by key");
    let odd_even = world.split(Some(me % 2), 0)?.context("parity split")?;
    ensure!(odd_even.size() == (p + 1 - me % 2) / 2, "parity split size");
    let run = |c: Communicator, seed: u64| {
        std::thread::spawn(move || -> anyhow::Result<()> {
            for round in 0..20u64 {
                let n = [1usize, 100, 5000, 70_000][(round % 4) as usize];
                let mut a = inputs::<i64>(c.rank(), n, seed + round, ReduceOp::Sum);
                c.allreduce(&mut a, ReduceOp::Sum)?;
                compare(
                    "two comms allreduce",
                    &a,
                    &expected::<i64>(c.size(), n, seed + round, ReduceOp::Sum),
                )?;
                let mut b = if c.rank() == 0 {
                    inputs::<u32>(0, n, seed, ReduceOp::Sum)
                } else {
                    vec![0; n]
                };
                c.bcast(&mut b, 0)?;
                exact(
                    "two comms bcast",
                    &b,
                    &inputs::<u32>(0, n, seed, ReduceOp::Sum),
                )?;
            }
            Ok(())
        })
    };
    let t1 = run(forward, 1000);
    let t2 = run(backward, 2000);
    let t3 = run(odd_even, 3000);
    for t in [t1, t2, t3] {
        t.join()
            .map_err(|_| anyhow::anyhow!("checker thread panicked"))??;
    }
    checks.passed += 3;
    Ok(())
}

fn check_hierarchical(world: &Communicator, checks: &mut Checks) -> anyhow::Result<()> {
    ensure!(
        world.is_hierarchical(),
        "the world communicator spans nodes but is not hierarchical"
    );
    let p = world.size();
    for n in [1usize, 7, 4099, 1 << 20] {
        let op = ReduceOp::Sum;
        for algorithm in [
            AllreduceAlgorithm::Hierarchical,
            AllreduceAlgorithm::Auto,
            AllreduceAlgorithm::Ring,
        ] {
            let mut buffer = inputs::<f64>(world.rank(), n, 31, op);
            world.allreduce_with(&mut buffer, op, algorithm)?;
            compare(
                &format!("hier allreduce n={n} {algorithm:?}"),
                &buffer,
                &expected::<f64>(p, n, 31, op),
            )?;
            let mut ints = inputs::<i64>(world.rank(), n, 32, op);
            world.allreduce_with(&mut ints, op, algorithm)?;
            compare(
                &format!("hier allreduce i64 n={n}"),
                &ints,
                &expected::<i64>(p, n, 32, op),
            )?;
            checks.passed += 2;
        }
    }
    check_type::<f32>(world, 4099, checks)?;
    check_type::<u8>(world, 1 << 16, checks)?;
    Ok(())
}

fn kill_test(world: &Communicator, victim: u32) -> anyhow::Result<()> {
    let mut buffer = vec![1.0f32; 1 << 20];
    let mut last_ok = Instant::now();
    for i in 0.. {
        if i == 3 && world.rank() == victim {
            // SAFETY: raising a signal at ourselves has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        match world.allreduce(&mut buffer, ReduceOp::Sum) {
            Ok(()) => last_ok = Instant::now(),
            Err(e) => {
                println!(
                    "coll_check: rank {} got an error {} ms after its last good collective: {e}",
                    world.rank(),
                    last_ok.elapsed().as_millis()
                );
                std::process::exit(3);
            }
        }
        buffer.fill(1.0);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let list = |flag: &str| -> anyhow::Result<Vec<usize>> {
        match value(flag) {
            Some(l) if !l.is_empty() => l
                .split(',')
                .map(|s| s.parse().context("bad number"))
                .collect(),
            _ => Ok(Vec::new()),
        }
    };
    let sizes = if value("--sizes").is_some() {
        list("--sizes")?
    } else {
        vec![0, 1, 7, 4099]
    };
    let big = list("--big")?;
    let types: Vec<String> = value("--types")
        .map(|t| t.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let job = lumen_launcher::bootstrap::join()?;
    let rendezvous = match value("--rendezvous") {
        Some(min) => Some(attach_rendezvous(
            &job.endpoint,
            min.parse().context("--rendezvous BYTES")?,
        )?),
        None => None,
    };
    let world = Communicator::world(job.endpoint.clone())?;
    if let Some(victim) = value("--kill-rank") {
        return kill_test(&world, victim.parse()?);
    }
    let start = Instant::now();
    let mut checks = Checks { passed: 0 };
    for &n in &sizes {
        check_all_types(&world, n, &types, &mut checks)?;
    }
    for &n in &big {
        check_big::<f32>(&world, n, &mut checks)?;
        check_big::<f64>(&world, n, &mut checks)?;
        check_big::<i64>(&world, n, &mut checks)?;
    }
    if args.iter().any(|a| a == "--two-comms") {
        check_two_comms(&world, &mut checks)?;
    }
    if args.iter().any(|a| a == "--hier") {
        check_hierarchical(&world, &mut checks)?;
    }
    if world.rank() == 0 {
        println!(
            "coll_check: {} ranks, {} checks passed in {:.2} s (hierarchical: {})",
            world.size(),
            checks.passed,
            start.elapsed().as_secs_f64(),
            world.is_hierarchical()
        );
    }
    if rendezvous.is_some() {
        let stats = job.endpoint.rendezvous_stats();
        println!(
            "coll_check: rank {} rendezvous: sent {} received {} fallbacks {}",
            world.rank(),
            stats.sent,
            stats.received,
            stats.fallbacks
        );
    }
    drop(world);
    job.finish()?;
    drop(rendezvous);
    Ok(())
}

/// `--rendezvous BYTES`: messages of at least BYTES to ranks of other nodes
/// go as one-sided reads over Lumen's emulated TCP backend (the path a
/// verbs or libfabric backend takes on hardware).
fn attach_rendezvous(
    endpoint: &lumen_transport::Endpoint,
    min_bytes: usize,
) -> anyhow::Result<std::sync::Arc<dyn lumen_transport::fabric::OneSided>> {
    use lumen_transport::fabric::{tcp::TcpOneSided, OneSided};
    const ADDR_TAG: u64 = 0x7e57_0000_0000_0001;
    let ip = endpoint.tcp_address().ip().to_string();
    let backend: std::sync::Arc<dyn OneSided> =
        std::sync::Arc::new(TcpOneSided::open(Some(&ip), 0x0c01)?);
    let me = endpoint.rank();
    let others: Vec<u32> = (0..endpoint.size())
        .filter(|&r| r != me && !endpoint.is_local(r))
        .collect();
    let address = backend.address()?;
    for &peer in &others {
        endpoint.send(peer, ADDR_TAG, &address)?;
    }
    let mut peers = std::collections::HashMap::new();
    for &peer in &others {
        let m = endpoint.recv(lumen_transport::Source::Rank(peer), ADDR_TAG)?;
        peers.insert(peer, backend.insert_peer(&m.data)?);
    }
    endpoint.attach_fabric(lumen_transport::FabricRoute {
        backend: backend.clone(),
        peers,
        min_bytes,
    })?;
    endpoint.barrier()?;
    Ok(backend)
}
