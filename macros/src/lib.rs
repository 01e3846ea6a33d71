//! `#[lumen::remote]` and `#[lumen::actor]`: registration at link time and
//! typed handles.
//!
//! (Skeleton: the work of issue 3 fills this crate.)
