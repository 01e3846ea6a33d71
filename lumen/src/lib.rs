//! Lumen: a Ray-style runtime for HPC clusters.
