//! Lumen in one page: remote functions, `ObjectRef` arguments, an actor,
//! and a large array put once and read by tasks.
//!
//! Run it bare (an embedded local cluster of one worker per core starts and
//! stops with it) or under a launcher:
//!
//! ```text
//! cargo run --release --example quickstart
//! target/release/lumen run -n 4 -- target/release/examples/quickstart
//! ```

use lumen::prelude::*;

/// A remote function: `add::remote(&rt, a, b)` runs it on some rank.
#[lumen::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Sums a slice object; the argument is resolved where the task runs.
#[lumen::remote]
fn checksum(data: ObjectRef<[f32]>) -> lumen::Result<f64> {
    let view = data.get()?;
    Ok(view.iter().map(|&x| f64::from(x)).sum())
}

/// A task that submits tasks (nested) and waits for them.
#[lumen::remote]
fn fib(n: u64) -> lumen::Result<u64> {
    if n < 2 {
        return Ok(n);
    }
    let rt = lumen::current()?;
    let a = fib::remote(&rt, n - 1)?;
    let b = fib::remote(&rt, n - 2)?;
    Ok(a.get()? + b.get()?)
}

/// An actor: state on one rank, methods run in order.
#[lumen::actor]
struct Counter {
    n: u64,
}

#[lumen::actor]
impl Counter {
    fn new(start: u64) -> Self {
        Counter { n: start }
    }

    fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    fn value(&self) -> u64 {
        self.n
    }
}

fn main() -> lumen::Result<()> {
    let rt = lumen::init()?;
    println!(
        "lumen quickstart: {} ranks on {} node(s), driver is rank {}",
        rt.size(),
        rt.num_nodes(),
        rt.rank()
    );

    // Tasks, and a task's result passed on as an argument by reference.
    let three = add::remote(&rt, 1, 2)?;
    let ten = add::remote(&rt, &three, 7)?;
    println!(
        "add: 1 + 2 = {}, (1 + 2) + 7 = {}",
        three.get()?,
        ten.get()?
    );

    // Many tasks at once, with per-call options.
    let refs: Vec<ObjectRef<u64>> = (0..100)
        .map(|i| add::options().max_retries(1).remote(&rt, i, i))
        .collect::<lumen::Result<_>>()?;
    let (ready, _) = lumen::wait(&refs, refs.len(), None)?;
    let total: u64 = ready.iter().map(|r| r.get()).sum::<lumen::Result<u64>>()?;
    println!("100 tasks: sum of 2i for i < 100 = {total}");

    // Nested tasks.
    println!("fib(10) by nested tasks = {}", fib::remote(&rt, 10)?.get()?);

    // An actor.
    let counter = Counter::new_remote(&rt, 10)?;
    for _ in 0..4 {
        counter.incr(5)?;
    }
    println!(
        "counter after 4 x incr(5) from 10 = {}",
        counter.value()?.get()?
    );

    // A large array: put once (16 M floats, 64 MiB), read by a task.
    let data = vec![0.5f32; 1 << 24];
    let big = rt.put_slice(&data)?;
    let sum = checksum::remote(&rt, big.clone())?.get()?;
    let local = big.get()?;
    println!(
        "64 MiB array: sum on a worker = {sum}, {} elements read back here",
        local.len()
    );
    assert_eq!(sum, (1u64 << 23) as f64);
    println!("quickstart: ok");
    Ok(())
}
