//! Collectives: communicators and MPI-class algorithms over the transport.
//!
//! (Skeleton: the work of issue 4 fills this crate.)
