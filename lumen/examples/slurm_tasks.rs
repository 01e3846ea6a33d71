//! Remote tasks on every host of a Slurm step: rank 0 (the driver) sends
//! four tasks to each node and prints where they ran; every other rank
//! serves tasks until the driver is done.
//!
//! ```text
//! srun -N 3 --ntasks-per-node=2 target/debug/examples/slurm_tasks
//! tasks: 12 tasks on 3 nodes ran on hosts ["h1", "h2", "h3"]
//! ```

/// The host name of the rank the task runs on.
#[lumen::remote]
fn host_of_task(i: u64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}#{i}", host.trim())
}

fn main() -> lumen::Result<()> {
    let rt = lumen::init()?;
    let nodes = rt.num_nodes();
    let mut pending = Vec::new();
    for node in 0..nodes {
        for i in 0..4 {
            pending.push((node, host_of_task::options().node(node).remote(&rt, i)?));
        }
    }
    let mut hosts = Vec::new();
    for (node, result) in pending {
        let answer = result.get()?;
        let host = answer.split('#').next().unwrap_or_default().to_owned();
        hosts.push((node, host));
    }
    // Every node's tasks ran on one host, and different nodes on different hosts.
    let mut distinct: Vec<String> = hosts.iter().map(|(_, h)| h.clone()).collect();
    distinct.sort();
    distinct.dedup();
    println!(
        "tasks: {} tasks on {nodes} nodes ran on hosts {distinct:?}",
        hosts.len()
    );
    Ok(())
}
