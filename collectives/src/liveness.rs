//! How often the collectives look for dead ranks while they wait.
//!
//! Both the point-to-point execution ([`crate::comm`]) and the
//! shared-memory algorithms ([`crate::shm`]) wait in slices of
//! [`LIVENESS_POLL`] and check the job's liveness between slices. The
//! constants live here, below both, so that `shm` never imports `comm`
//! (`comm` builds on `shm`, not the other way round).

use std::time::Duration;

/// How long a receive waits before checking that the job is still alive.
pub const LIVENESS_POLL: Duration = Duration::from_millis(100);

/// How long the yielding receive blocks in the transport once per
/// [`LIVENESS_POLL`], so that the transport looks at its peers' liveness
/// (it checks local peers' pidfds between its naps of up to 2 ms, so a
/// shorter wait never reaches a check). The wait ends early when the
/// message arrives, so it costs nothing in a healthy job.
pub(crate) const LIVENESS_CHECK: Duration = Duration::from_millis(10);
