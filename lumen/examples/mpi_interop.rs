//! MPI and Lumen side by side in one program (feature `mpi`): the Lumen job
//! is built from `MPI_COMM_WORLD` with the same rank order, then both are
//! used: an MPI allreduce and a Lumen message ring, checked against each
//! other.
//!
//! ```text
//! cargo build -p lumen --features mpi --example mpi_interop
//! mpirun -n 4 target/debug/examples/mpi_interop
//! mpi_interop: 4 ranks, MPI allreduce 6 = Lumen ring 6, same rank order
//! ```

use lumen::transport::Source;
use mpi::collective::SystemOperation;
use mpi::traits::{Communicator, CommunicatorCollectives};

const RING: u64 = 0x42;

fn main() -> anyhow::Result<()> {
    let universe =
        mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
    let world = universe.world();
    let job = lumen::bootstrap::join_mpi(&world)?;
    let ep = job.endpoint.clone();
    anyhow::ensure!(
        job.rank() == world.rank() as u32 && job.size() == world.size() as u32,
        "Lumen rank {}/{} differs from MPI rank {}/{}",
        job.rank(),
        job.size(),
        world.rank(),
        world.size()
    );
    // MPI: sum of ranks.
    let mut mpi_sum = 0u64;
    world.all_reduce_into(&(world.rank() as u64), &mut mpi_sum, SystemOperation::sum());
    // Lumen: the same sum passed around a ring, rank 0 starts it.
    let (me, n) = (ep.rank(), ep.size());
    let next = (me + 1) % n;
    let ring_sum = if n == 1 {
        0
    } else if me == 0 {
        ep.send(next, RING, &0u64.to_le_bytes())?;
        let m = ep.recv(Source::Rank(n - 1), RING)?;
        u64::from_le_bytes(m.data.as_slice().try_into()?)
    } else {
        let m = ep.recv(Source::Rank(me - 1), RING)?;
        let sum = u64::from_le_bytes(m.data.as_slice().try_into()?) + u64::from(me);
        ep.send(next, RING, &sum.to_le_bytes())?;
        sum
    };
    if me == 0 {
        anyhow::ensure!(
            ring_sum == mpi_sum,
            "Lumen ring {ring_sum} != MPI allreduce {mpi_sum}"
        );
        println!("mpi_interop: {n} ranks, MPI allreduce {mpi_sum} = Lumen ring {ring_sum}, same rank order");
    }
    job.finish()?;
    world.barrier();
    Ok(())
}
