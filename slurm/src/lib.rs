//! Slurm without libslurm: hostlists, tasks-per-node and the `SLURM_*` environment.
