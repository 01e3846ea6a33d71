//! A hook for a tracer (the runtime's timeline, `LUMEN_TIMELINE`): each
//! collective call reports its name, its bytes (this rank's buffer) and
//! when it began, as it returns.
//!
//! This crate does not depend on the runtime, so the runtime installs a
//! function with [`set_hook`]; without one a call pays one atomic load.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the tracer hears: the collective (`"allreduce"`, ...), this
/// rank's bytes, when it began and how long it took (microseconds of the
/// wall clock).
pub type Hook = fn(op: &'static str, bytes: u64, start_us: u64, dur_us: u64);

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs the tracer (the first call wins; later ones are ignored).
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A collective call in progress; reports itself when dropped.
pub(crate) struct Span {
    traced: Option<(Hook, &'static str, u64, u64)>,
}

/// Begins the span of collective `op` over `bytes` of this rank.
pub(crate) fn span(op: &'static str, bytes: usize) -> Span {
    Span {
        traced: HOOK.get().map(|&hook| (hook, op, bytes as u64, now_us())),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((hook, op, bytes, start)) = self.traced {
            hook(op, bytes, start, now_us().saturating_sub(start));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    static SEEN: AtomicU64 = AtomicU64::new(0);

    fn record(op: &'static str, bytes: u64, _start: u64, _dur: u64) {
        if op == "test-op" {
            SEEN.store(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_span_reports_its_collective_to_the_hook() {
        super::set_hook(record);
        drop(super::span("test-op", 4096));
        assert_eq!(SEEN.load(Ordering::Relaxed), 4096);
    }
}
