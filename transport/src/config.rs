//! Transport settings. The launcher reads them from the environment (one typed
//! config, `lumen_launcher::config`) and hands them over; tests build them directly.
//!
//! A [`TransportConfig`] is plain data with public fields, so whoever builds
//! one may put anything in them: [`TransportConfig::validate`] says whether
//! the transport can run with it, and the endpoint builder calls it first and
//! returns [`ConfigError`] (never panics) when it cannot.

use std::net::IpAddr;
use std::time::Duration;

/// Which implementation moves TCP bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpBackend {
    /// Today the same as [`Epoll`](Self::Epoll): caller-driven reads with a
    /// background epoll thread, which measured as fast as the caller-driven
    /// io_uring receiver at 8 B and faster from 4 KiB up (see the `tcp`
    /// module docs). io_uring is used only when asked for with
    /// [`Uring`](Self::Uring).
    #[default]
    Auto,
    /// io_uring only (multishot receives with a provided-buffer ring, whose
    /// completions waiting callers reap themselves); setup fails if the
    /// kernel refuses it.
    Uring,
    /// Caller-driven reads: a waiting thread reads the sockets itself, and a
    /// background thread blocks in a hand-written level-triggered epoll
    /// (`sys::Epoll`) for ranks that do not call in.
    Epoll,
}

/// When TCP connections between ranks of different nodes are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpConnect {
    /// [`Eager`](Self::Eager) up to 64 remote ranks, [`Lazy`](Self::Lazy)
    /// above (see the `tcp` module's `connect` docs for why).
    #[default]
    Auto,
    /// Every pair at setup: a dead peer shows up as a closed connection
    /// even if this rank never talked to it.
    Eager,
    /// On first use: a rank's first send (or get) to a peer connects it;
    /// a job opens only the connections its traffic needs. Needs
    /// `tcp_conns == 1` (with bulk lanes setup stays eager).
    Lazy,
}

/// Settings of one endpoint.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Messages up to this many bytes are copied through the ring or socket
    /// eagerly; larger ones on a node use rendezvous (receiver pulls).
    pub eager_limit: usize,
    /// Bytes per shared-memory ring (one ring per ordered pair of local ranks); power of two.
    pub ring_bytes: usize,
    /// How long a waiting call busy-polls before it sleeps.
    pub spin: Duration,
    /// TCP implementation.
    pub tcp_backend: TcpBackend,
    /// Address the TCP listener binds (port chosen by the kernel).
    pub tcp_bind: IpAddr,
    /// Largest frame payload on TCP; larger messages travel in chunks of this size.
    pub max_frame: u32,
    /// Largest message: a larger send fails with
    /// [`TransportError::MessageTooLarge`](crate::TransportError::MessageTooLarge),
    /// and a peer announcing a larger one is refused before anything is
    /// allocated for it (its connection is closed and it is marked dead).
    /// Every rank of a job must use the same value (`LUMEN_MAX_MESSAGE_BYTES`).
    pub max_message: u64,
    /// Raise glibc's mmap and trim thresholds (process-wide, once TCP peers
    /// exist) so that large received messages reuse heap memory instead of
    /// an `mmap`/`munmap` per message; see `sys::tune_malloc`. Measured on
    /// loopback: 1 MiB windowed bandwidth 2450 -> 4430 MB/s.
    pub tune_malloc: bool,
    /// TCP messages of at least this many bytes are sent with `MSG_ZEROCOPY`
    /// (pages pinned instead of copied; `send` waits for the kernel's
    /// completion before returning); 0 disables it (the default: on loopback
    /// the receiver copies anyway and it measured no faster, see `tcp`).
    pub tcp_zerocopy_min: usize,
    /// TCP connections per pair of ranks on different nodes (at least 1).
    /// Above 1, messages of at least [`tcp_stripe_min`](Self::tcp_stripe_min)
    /// bytes are striped over all of them (see the `stripe` module). Every
    /// rank of a job must use the same value.
    pub tcp_conns: usize,
    /// Smallest message striped over several connections.
    pub tcp_stripe_min: usize,
    /// When connections to ranks of other nodes are opened.
    pub tcp_connect: TcpConnect,
    /// How long setup waits for peers (segment attach, connections).
    pub connect_timeout: Duration,
    /// A TCP connection whose peer acknowledges nothing for this long is
    /// broken (`TCP_USER_TIMEOUT`, with keepalive probes on idle ones), so
    /// a host that stops answering fails sends to it within the bound
    /// instead of the kernel's ~15 minutes; `None` keeps the kernel's.
    pub failure_timeout: Option<Duration>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            // 128 KiB: below it, copying through the ring (pipelined, cache
            // warm) measured 3x the single-copy pull's bandwidth at 32-128
            // KiB here; at 256 KiB and up the pull wins (BENCHMARKS.md).
            eager_limit: 128 * 1024,
            ring_bytes: 1 << 20,
            spin: Duration::from_micros(50),
            tcp_backend: TcpBackend::Auto,
            tcp_bind: IpAddr::from([127, 0, 0, 1]),
            max_frame: 64 << 20,
            max_message: 4 << 30,
            tune_malloc: true,
            tcp_zerocopy_min: 0,
            tcp_conns: 1,
            tcp_stripe_min: 1 << 20,
            tcp_connect: TcpConnect::Auto,
            connect_timeout: Duration::from_secs(30),
            failure_timeout: None,
        }
    }
}

/// Smallest shared-memory ring ([`TransportConfig::ring_bytes`]).
pub const MIN_RING_BYTES: usize = 4096;

/// Why a [`TransportConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `ring_bytes` is not a power of two of at least [`MIN_RING_BYTES`].
    #[error(
        "ring_bytes is {0}: a shared-memory ring must be a power of two of at least \
         {MIN_RING_BYTES} bytes (4 KiB, 8 KiB, ..., 1 MiB by default; LUMEN_SHM_RING_BYTES)"
    )]
    RingBytes(usize),
}

impl TransportConfig {
    /// Checks that the transport can run with these settings. Called by
    /// [`EndpointBuilder::new`](crate::EndpointBuilder::new), which returns
    /// the error instead of setting anything up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < MIN_RING_BYTES {
            return Err(ConfigError::RingBytes(self.ring_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(TransportConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_ring_sizes_are_refused_with_what_is_allowed() {
        for bad in [0, 1000, 2048, 4097, 3 << 20] {
            let config = TransportConfig {
                ring_bytes: bad,
                ..TransportConfig::default()
            };
            let err = config.validate().unwrap_err();
            assert_eq!(err, ConfigError::RingBytes(bad));
            let text = err.to_string();
            assert!(
                text.contains(&bad.to_string()) && text.contains("power of two"),
                "{text}"
            );
        }
        for good in [4096, 1 << 20] {
            let config = TransportConfig {
                ring_bytes: good,
                ..TransportConfig::default()
            };
            assert_eq!(config.validate(), Ok(()));
        }
    }
}
