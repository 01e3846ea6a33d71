//! Collectives: communicators and MPI-class algorithms over the transport.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod element;
pub mod schedule;
