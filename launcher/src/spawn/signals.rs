//! SIGINT, SIGTERM and SIGHUP while `lumen run` waits for its ranks: one
//! process-wide handler that only counts (async-signal-safe), read by the
//! wait loop, which forwards the signal to the ranks; with no job running
//! the handler does what the default would.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use super::SpawnError;

/// Process-wide record of SIGINT/SIGTERM/SIGHUP for the jobs running now.
pub(super) struct Interrupts;

/// Number of `run_job` calls in progress; with none, a signal does what it
/// would do without our handler.
pub(super) static ACTIVE_JOBS: AtomicUsize = AtomicUsize::new(0);
/// Signals received while a job ran, ever.
pub(super) static SIGNAL_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The last such signal.
pub(super) static LAST_SIGNAL: AtomicUsize = AtomicUsize::new(0);

impl Interrupts {
    const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// Installs the handlers once per process.
    pub(super) fn install() -> Result<(), SpawnError> {
        static INSTALL: Once = Once::new();
        let mut result = Ok(());
        INSTALL.call_once(|| {
            for signal in Self::SIGNALS {
                // SAFETY: the action only touches atomics and calls
                // emulate_default_handler, all async-signal-safe; it captures
                // nothing, so nothing can dangle.
                let registered = unsafe {
                    signal_hook::low_level::register(signal, move || {
                        if ACTIVE_JOBS.load(Ordering::SeqCst) > 0 {
                            LAST_SIGNAL.store(signal as usize, Ordering::SeqCst);
                            SIGNAL_COUNT.fetch_add(1, Ordering::SeqCst);
                        } else {
                            let _ = signal_hook::low_level::emulate_default_handler(signal);
                        }
                    })
                };
                if let Err(error) = registered {
                    result = Err(SpawnError::Signals(error));
                    return;
                }
            }
        });
        result
    }
}

/// Marks a job as running for the signal handler while alive.
pub(super) struct ActiveJob;

impl ActiveJob {
    pub(super) fn start() -> Self {
        ACTIVE_JOBS.fetch_add(1, Ordering::SeqCst);
        ActiveJob
    }
}

impl Drop for ActiveJob {
    fn drop(&mut self) {
        ACTIVE_JOBS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// "SIGKILL" for 9, and so on, for the signals a rank commonly dies of.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}
