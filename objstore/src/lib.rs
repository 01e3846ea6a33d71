//! Object store: the node arena in shared memory, sealed immutable objects,
//! zero-copy views, eviction and spill.
//!
//! (Skeleton: the work of issue 3 fills this crate.)
