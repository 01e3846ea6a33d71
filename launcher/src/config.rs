//! Runtime tuning knobs, read once from the environment into a typed [`Config`].
//!
//! | Variable | Field | Default | Accepted |
//! |---|---|---|---|
//! | `LUMEN_EAGER_LIMIT` | [`eager_limit`](Config::eager_limit) | 131072 | bytes, 0 ..= 1 GiB |
//! | `LUMEN_TCP_BACKEND` | [`tcp_backend`](Config::tcp_backend) | `auto` | `auto`, `uring` (or `io_uring`), `epoll` |
//! | `LUMEN_TCP_IF` | [`tcp_interfaces`](Config::tcp_interfaces) | any | comma list of interface names (`ib0`) and subnets (`10.77.0.0/24`) |
//! | `LUMEN_TCP_CONNS` | [`tcp_conns_per_peer`](Config::tcp_conns_per_peer) | 1 | 1 ..= 64 |
//! | `LUMEN_TCP_CONNECT` | [`tcp_connect`](Config::tcp_connect) | `auto` | `auto` (eager up to 64 remote ranks, else lazy), `eager`, `lazy` |
//! | `LUMEN_RENDEZVOUS_TIMEOUT_MS` | [`rendezvous_timeout`](Config::rendezvous_timeout) | 30000 | 1 ..= 86400000 |
//! | `LUMEN_FAILURE_TIMEOUT_MS` | [`failure_timeout`](Config::failure_timeout) | 5000 | 0 (off) ..= 86400000 |
//! | `LUMEN_SHM_RING_BYTES` | [`shm_ring_bytes`](Config::shm_ring_bytes) | 1 MiB | power of two, 4 KiB ..= 1 GiB |
//! | `LUMEN_SPIN_US` | [`spin`](Config::spin) | 50 | 0 ..= 1000000 |
//! | `LUMEN_MAX_MESSAGE_BYTES` | [`max_message`](Config::max_message) | 4 GiB | bytes, 1 KiB ..= 1 TiB |
//!
//! Byte sizes are a decimal number with an optional binary suffix: `16384`,
//! `16K`, `16KiB`, `1M`, `1MiB`, `1G`, `1GiB` (case-insensitive). A variable set
//! to the empty string counts as unset. Every other malformed or out-of-range
//! value is a [`ConfigError`] that names the variable, the value and what is
//! accepted: a typo in a tuning knob should stop the job, not silently run it
//! with the default.
//!
//! [`Config::transport_config`] is the one mapping of these knobs onto the
//! transport's [`TransportConfig`].
//!
//! [`select_interface_addr`] is the pure policy that picks the address to
//! listen on from [`local_interfaces`] and `LUMEN_TCP_IF`, like Open MPI's
//! `btl_tcp_if_include`.

use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use lumen_transport::{TcpBackend, TcpConnect, TransportConfig};
use thiserror::Error;

/// `LUMEN_EAGER_LIMIT`.
pub const EAGER_LIMIT_VAR: &str = "LUMEN_EAGER_LIMIT";
/// `LUMEN_TCP_BACKEND`.
pub const TCP_BACKEND_VAR: &str = "LUMEN_TCP_BACKEND";
/// `LUMEN_TCP_IF`.
pub const TCP_IF_VAR: &str = "LUMEN_TCP_IF";
/// `LUMEN_TCP_CONNS`.
pub const TCP_CONNS_VAR: &str = "LUMEN_TCP_CONNS";
/// `LUMEN_TCP_CONNECT`.
pub const TCP_CONNECT_VAR: &str = "LUMEN_TCP_CONNECT";
/// `LUMEN_RENDEZVOUS_TIMEOUT_MS`.
pub const RENDEZVOUS_TIMEOUT_VAR: &str = "LUMEN_RENDEZVOUS_TIMEOUT_MS";
/// `LUMEN_FAILURE_TIMEOUT_MS`.
pub const FAILURE_TIMEOUT_VAR: &str = "LUMEN_FAILURE_TIMEOUT_MS";
/// `LUMEN_SHM_RING_BYTES`.
pub const SHM_RING_BYTES_VAR: &str = "LUMEN_SHM_RING_BYTES";
/// `LUMEN_SPIN_US`.
pub const SPIN_US_VAR: &str = "LUMEN_SPIN_US";
/// `LUMEN_MAX_MESSAGE_BYTES`.
pub const MAX_MESSAGE_VAR: &str = "LUMEN_MAX_MESSAGE_BYTES";

/// Every variable [`Config::from_env`] reads; a spawner forwards these to its
/// children so that all ranks run with the same configuration.
pub const VARIABLES: &[&str] = &[
    EAGER_LIMIT_VAR,
    TCP_BACKEND_VAR,
    TCP_IF_VAR,
    TCP_CONNS_VAR,
    TCP_CONNECT_VAR,
    RENDEZVOUS_TIMEOUT_VAR,
    FAILURE_TIMEOUT_VAR,
    SHM_RING_BYTES_VAR,
    SPIN_US_VAR,
    MAX_MESSAGE_VAR,
];

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MAX_TIMEOUT_MS: u64 = 86_400_000;

/// Why a configuration variable was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value is not a number (or a byte size) at all.
    #[error("{variable}={value:?} is not a valid number; accepted: {accepted}")]
    InvalidNumber {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What the variable accepts.
        accepted: &'static str,
    },
    /// The value is a number outside the accepted range.
    #[error("{variable}={value:?} is out of range; accepted: {accepted}")]
    OutOfRange {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What the variable accepts.
        accepted: &'static str,
    },
    /// A size that must be a power of two is not.
    #[error("{variable}={value:?} is not a power of two; accepted: {accepted}")]
    NotPowerOfTwo {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What the variable accepts.
        accepted: &'static str,
    },
    /// `LUMEN_TCP_BACKEND` names no known backend.
    #[error("LUMEN_TCP_BACKEND={value:?} is not a TCP backend; accepted: auto, uring (or io_uring), epoll")]
    InvalidBackend {
        /// The value.
        value: String,
    },
    /// `LUMEN_TCP_CONNECT` names no known policy.
    #[error("LUMEN_TCP_CONNECT={value:?} is not a connection policy; accepted: auto, eager, lazy")]
    InvalidConnect {
        /// The value.
        value: String,
    },
    /// An entry of `LUMEN_TCP_IF` is neither an interface name nor a subnet.
    #[error("LUMEN_TCP_IF entry {entry:?} is invalid ({reason}); accepted: comma list of interface names like `ib0` and subnets like `10.77.0.0/24`")]
    InvalidInterface {
        /// The offending entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Parses a `LUMEN_TCP_BACKEND` value into the transport's own
/// [`TcpBackend`]: `auto`, `uring` (or `io_uring`, `io-uring`), `epoll`,
/// case-insensitive.
///
/// ```
/// use lumen_launcher::config::parse_tcp_backend;
/// use lumen_transport::TcpBackend;
/// assert_eq!(parse_tcp_backend("IO_URING"), Ok(TcpBackend::Uring));
/// assert!(parse_tcp_backend("rdma").is_err());
/// ```
pub fn parse_tcp_backend(value: &str) -> Result<TcpBackend, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(TcpBackend::Auto),
        "uring" | "io_uring" | "io-uring" => Ok(TcpBackend::Uring),
        "epoll" => Ok(TcpBackend::Epoll),
        _ => Err(ConfigError::InvalidBackend {
            value: value.to_owned(),
        }),
    }
}

/// Parses a `LUMEN_TCP_CONNECT` value: `auto`, `eager`, `lazy`
/// (case-insensitive).
///
/// ```
/// use lumen_launcher::config::parse_tcp_connect;
/// use lumen_transport::TcpConnect;
/// assert_eq!(parse_tcp_connect("Lazy"), Ok(TcpConnect::Lazy));
/// assert!(parse_tcp_connect("later").is_err());
/// ```
pub fn parse_tcp_connect(value: &str) -> Result<TcpConnect, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(TcpConnect::Auto),
        "eager" => Ok(TcpConnect::Eager),
        "lazy" => Ok(TcpConnect::Lazy),
        _ => Err(ConfigError::InvalidConnect {
            value: value.to_owned(),
        }),
    }
}

/// One entry of `LUMEN_TCP_IF`: which interfaces the TCP transport may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum InterfaceSelector {
    /// An interface by name, e.g. `ib0`.
    Name(String),
    /// Every address inside a subnet: network address and prefix length, e.g.
    /// `10.77.0.0/24`. A bare address is a subnet of one (`/32`, `/128`).
    Subnet(IpAddr, u8),
}

impl InterfaceSelector {
    /// Whether the address `addr` of interface `name` is selected.
    pub fn matches(&self, name: &str, addr: IpAddr) -> bool {
        match *self {
            Self::Name(ref wanted) => wanted == name,
            Self::Subnet(IpAddr::V4(net), prefix) => match addr {
                IpAddr::V4(addr) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                    u32::from(net) & mask == u32::from(addr) & mask
                }
                IpAddr::V6(_) => false,
            },
            Self::Subnet(IpAddr::V6(net), prefix) => match addr {
                IpAddr::V6(addr) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                    u128::from(net) & mask == u128::from(addr) & mask
                }
                IpAddr::V4(_) => false,
            },
        }
    }
}

impl FromStr for InterfaceSelector {
    type Err = ConfigError;

    fn from_str(entry: &str) -> Result<Self, ConfigError> {
        let invalid = |reason| ConfigError::InvalidInterface {
            entry: entry.to_owned(),
            reason,
        };
        if let Some((addr, prefix)) = entry.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| invalid("not an IP address before `/`"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = Some(prefix)
                .filter(|prefix| !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|prefix| prefix.parse::<u8>().ok())
                .filter(|&prefix| prefix <= max)
                .ok_or_else(|| {
                    invalid("prefix length is not 0..=32 for IPv4 or 0..=128 for IPv6")
                })?;
            return Ok(Self::Subnet(addr, prefix));
        }
        if let Ok(addr) = entry.parse::<IpAddr>() {
            return Ok(Self::Subnet(addr, if addr.is_ipv4() { 32 } else { 128 }));
        }
        // Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
        if entry.is_empty() || entry.len() > 15 {
            return Err(invalid("an interface name has 1 to 15 characters"));
        }
        if entry
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c.is_control())
        {
            return Err(invalid("an interface name has no whitespace or `/`"));
        }
        Ok(Self::Name(entry.to_owned()))
    }
}

/// The runtime's tuning knobs; see the [module documentation](self) for the
/// variables, defaults and accepted values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `LUMEN_EAGER_LIMIT`: messages up to this many bytes are sent eagerly;
    /// larger ones use the rendezvous protocol.
    pub eager_limit: usize,
    /// `LUMEN_TCP_BACKEND`: event mechanism of the TCP transport.
    pub tcp_backend: TcpBackend,
    /// `LUMEN_TCP_IF`: interfaces the TCP transport may use, in order of
    /// preference; empty means any (see [`select_interface_addr`]).
    pub tcp_interfaces: Vec<InterfaceSelector>,
    /// `LUMEN_TCP_CONNS`: TCP connections per peer; above 1, messages of 1 MiB
    /// and more are striped over all of them (`TransportConfig::tcp_conns`).
    pub tcp_conns_per_peer: u32,
    /// `LUMEN_TCP_CONNECT`: whether ranks of different nodes connect all
    /// at start or on first use (`TransportConfig::tcp_connect`).
    pub tcp_connect: TcpConnect,
    /// `LUMEN_RENDEZVOUS_TIMEOUT_MS`: how long bootstrap waits for all ranks.
    pub rendezvous_timeout: Duration,
    /// `LUMEN_FAILURE_TIMEOUT_MS`: a rank silent this long (no message, no
    /// heartbeat) is declared dead by rank 0 and every rank is told; TCP
    /// connections to a host that acknowledges nothing this long break
    /// (`TCP_USER_TIMEOUT`). Zero turns the detector off (only exits and
    /// closed connections are noticed then). Default 5 s: heartbeats go
    /// every fifth of it, so a rank is declared after about 5 missed ones.
    pub failure_timeout: Duration,
    /// `LUMEN_SHM_RING_BYTES`: size of each shared-memory ring, one per ordered
    /// pair of ranks on a node; a power of two.
    pub shm_ring_bytes: usize,
    /// `LUMEN_SPIN_US`: how long a progress thread busy-polls before sleeping.
    pub spin: Duration,
    /// `LUMEN_MAX_MESSAGE_BYTES`: the largest message a rank sends or
    /// accepts (`TransportConfig::max_message`); every rank of a job must
    /// agree (the spawners forward it).
    pub max_message: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            eager_limit: 128 * 1024,
            tcp_backend: TcpBackend::Auto,
            tcp_interfaces: Vec::new(),
            tcp_conns_per_peer: 1,
            tcp_connect: TcpConnect::Auto,
            rendezvous_timeout: Duration::from_millis(30_000),
            failure_timeout: Duration::from_millis(5_000),
            shm_ring_bytes: MIB as usize,
            spin: Duration::from_micros(50),
            max_message: 4 * GIB,
        }
    }
}

impl Config {
    /// Reads the configuration from an environment lookup such as
    /// `|name| std::env::var(name).ok()`; unset variables keep their defaults.
    ///
    /// ```
    /// use lumen_launcher::config::Config;
    /// use lumen_transport::TcpBackend;
    /// let config = Config::from_env(|name| match name {
    ///     "LUMEN_EAGER_LIMIT" => Some("64K".into()),
    ///     "LUMEN_TCP_BACKEND" => Some("epoll".into()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(config.eager_limit, 65536);
    /// assert_eq!(config.tcp_backend, TcpBackend::Epoll);
    /// # Ok::<(), lumen_launcher::config::ConfigError>(())
    /// ```
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let set = |variable: &str| get(variable).filter(|value| !value.trim().is_empty());
        let mut config = Config::default();
        if let Some(value) = set(EAGER_LIMIT_VAR) {
            let bytes = parse_bytes(
                EAGER_LIMIT_VAR,
                &value,
                0,
                GIB,
                "bytes from 0 to 1GiB, e.g. 16384 or 64K",
            )?;
            config.eager_limit = to_usize(EAGER_LIMIT_VAR, &value, bytes)?;
        }
        if let Some(value) = set(TCP_BACKEND_VAR) {
            config.tcp_backend = parse_tcp_backend(&value)?;
        }
        if let Some(value) = set(TCP_IF_VAR) {
            config.tcp_interfaces = value
                .split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .map(str::parse)
                .collect::<Result<_, _>>()?;
        }
        if let Some(value) = set(TCP_CONNS_VAR) {
            let conns = parse_integer(TCP_CONNS_VAR, &value, 1, 64, "an integer from 1 to 64")?;
            // The range check above bounds it to 64.
            config.tcp_conns_per_peer = u32::try_from(conns).unwrap_or(1);
        }
        if let Some(value) = set(TCP_CONNECT_VAR) {
            config.tcp_connect = parse_tcp_connect(&value)?;
        }
        let timeout_accepted = "milliseconds from 1 to 86400000";
        if let Some(value) = set(RENDEZVOUS_TIMEOUT_VAR) {
            let ms = parse_integer(
                RENDEZVOUS_TIMEOUT_VAR,
                &value,
                1,
                MAX_TIMEOUT_MS,
                timeout_accepted,
            )?;
            config.rendezvous_timeout = Duration::from_millis(ms);
        }
        if let Some(value) = set(FAILURE_TIMEOUT_VAR) {
            let ms = parse_integer(
                FAILURE_TIMEOUT_VAR,
                &value,
                0,
                MAX_TIMEOUT_MS,
                "milliseconds from 0 (off) to 86400000",
            )?;
            config.failure_timeout = Duration::from_millis(ms);
        }
        if let Some(value) = set(SHM_RING_BYTES_VAR) {
            let accepted = "a power of two from 4KiB to 1GiB, e.g. 1M";
            let bytes = parse_bytes(SHM_RING_BYTES_VAR, &value, 4 * KIB, GIB, accepted)?;
            if !bytes.is_power_of_two() {
                return Err(ConfigError::NotPowerOfTwo {
                    variable: SHM_RING_BYTES_VAR,
                    value,
                    accepted,
                });
            }
            config.shm_ring_bytes = to_usize(SHM_RING_BYTES_VAR, &value, bytes)?;
        }
        if let Some(value) = set(SPIN_US_VAR) {
            let us = parse_integer(
                SPIN_US_VAR,
                &value,
                0,
                1_000_000,
                "microseconds from 0 to 1000000",
            )?;
            config.spin = Duration::from_micros(us);
        }
        if let Some(value) = set(MAX_MESSAGE_VAR) {
            config.max_message = parse_bytes(
                MAX_MESSAGE_VAR,
                &value,
                KIB,
                1024 * GIB,
                "bytes from 1KiB to 1024GiB, e.g. 4G",
            )?;
        }
        Ok(config)
    }

    /// The transport's settings for an endpoint whose TCP listener binds
    /// `tcp_bind`: the one mapping from these knobs to
    /// [`TransportConfig`], used by every bootstrap path (joined jobs, MPI,
    /// the embedded local cluster), checked by
    /// [`TransportConfig::validate`] where it is built. Settings without a
    /// variable keep the transport's defaults.
    ///
    /// ```
    /// use lumen_launcher::config::Config;
    /// use std::net::{IpAddr, Ipv4Addr};
    /// let config = Config::from_env(|name| (name == "LUMEN_SHM_RING_BYTES").then(|| "64K".into()))?;
    /// let transport = config.transport_config(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    /// assert_eq!(transport.ring_bytes, 65536);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transport_config(
        &self,
        tcp_bind: IpAddr,
    ) -> Result<TransportConfig, lumen_transport::ConfigError> {
        let transport = TransportConfig {
            eager_limit: self.eager_limit,
            ring_bytes: self.shm_ring_bytes,
            spin: self.spin,
            tcp_backend: self.tcp_backend,
            tcp_bind,
            tcp_conns: self.tcp_conns_per_peer as usize,
            tcp_connect: self.tcp_connect,
            connect_timeout: self.rendezvous_timeout,
            failure_timeout: (!self.failure_timeout.is_zero()).then_some(self.failure_timeout),
            max_message: self.max_message,
            ..TransportConfig::default()
        };
        transport.validate()?;
        Ok(transport)
    }
}

fn parse_integer(
    variable: &'static str,
    value: &str,
    min: u64,
    max: u64,
    accepted: &'static str,
) -> Result<u64, ConfigError> {
    parse_bytes_with(variable, value, min, max, accepted, false)
}

fn parse_bytes(
    variable: &'static str,
    value: &str,
    min: u64,
    max: u64,
    accepted: &'static str,
) -> Result<u64, ConfigError> {
    parse_bytes_with(variable, value, min, max, accepted, true)
}

fn parse_bytes_with(
    variable: &'static str,
    value: &str,
    min: u64,
    max: u64,
    accepted: &'static str,
    suffixes: bool,
) -> Result<u64, ConfigError> {
    let invalid = || ConfigError::InvalidNumber {
        variable,
        value: value.to_owned(),
        accepted,
    };
    let out_of_range = || ConfigError::OutOfRange {
        variable,
        value: value.to_owned(),
        accepted,
    };
    let text = value.trim();
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let multiplier = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" | "kib" if suffixes => KIB,
        "m" | "mib" if suffixes => MIB,
        "g" | "gib" if suffixes => GIB,
        _ => return Err(invalid()),
    };
    // Digits that overflow u64 are certainly out of range.
    let number: u64 = digits.parse().map_err(|_| out_of_range())?;
    let number = number.checked_mul(multiplier).ok_or_else(out_of_range)?;
    if number < min || number > max {
        return Err(out_of_range());
    }
    Ok(number)
}

fn to_usize(variable: &'static str, value: &str, number: u64) -> Result<usize, ConfigError> {
    usize::try_from(number).map_err(|_| ConfigError::OutOfRange {
        variable,
        value: value.to_owned(),
        accepted: "a size that fits this machine's address space",
    })
}

/// Names of virtual bridges whose addresses are rarely reachable from other
/// nodes (container and VM networking).
const VIRTUAL_INTERFACE_PREFIXES: &[&str] = &["docker", "virbr", "veth", "br-", "cni", "podman"];

/// How good `addr` on interface `name` is as a listening address; lower is
/// better, `None` is unusable.
fn preference(name: &str, addr: IpAddr) -> Option<u8> {
    if addr.is_unspecified() || addr.is_multicast() {
        return None;
    }
    let virtual_bridge = VIRTUAL_INTERFACE_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix));
    Some(match addr {
        IpAddr::V4(v4) if v4.is_loopback() => 5,
        IpAddr::V6(v6) if v6.is_loopback() => 6,
        // fe80::/10 needs a scope id that a bare address cannot carry.
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => return None,
        IpAddr::V4(_) if virtual_bridge => 3,
        IpAddr::V6(_) if virtual_bridge => 4,
        IpAddr::V4(v4) if v4.is_link_local() => 2,
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => 1,
    })
}

/// Picks the address the TCP transport listens on.
///
/// `candidates` are `(interface name, address)` pairs, as from
/// [`local_interfaces`]. With no selectors, the best address wins: a
/// non-loopback IPv4 address, then a global IPv6 one, then an IPv4 link-local
/// one, then addresses of container and VM bridges (`docker*`, `virbr*`, …),
/// then loopback; ties go to the earlier candidate. With selectors, the first
/// selector that matches any candidate decides, and the best address it matches
/// (by the same order) wins; `None` means nothing matched. IPv6 link-local
/// addresses are never chosen.
///
/// ```
/// use lumen_launcher::config::{select_interface_addr, InterfaceSelector};
/// use std::net::IpAddr;
/// let ip = |s: &str| s.parse::<IpAddr>().unwrap();
/// let candidates = [("lo".to_string(), ip("127.0.0.1")), ("eth0".to_string(), ip("10.0.0.5")),
///                   ("ib0".to_string(), ip("10.77.0.5"))];
/// assert_eq!(select_interface_addr(&[], &candidates), Some(ip("10.0.0.5")));
/// let ib = [InterfaceSelector::Subnet(ip("10.77.0.0"), 24)];
/// assert_eq!(select_interface_addr(&ib, &candidates), Some(ip("10.77.0.5")));
/// ```
pub fn select_interface_addr(
    selectors: &[InterfaceSelector],
    candidates: &[(String, IpAddr)],
) -> Option<IpAddr> {
    let best = |selector: Option<&InterfaceSelector>| {
        candidates
            .iter()
            .filter(|(name, addr)| selector.is_none_or(|selector| selector.matches(name, *addr)))
            .filter_map(|(name, addr)| Some((preference(name, *addr)?, *addr)))
            .min_by_key(|&(preference, _)| preference)
            .map(|(_, addr)| addr)
    };
    if selectors.is_empty() {
        return best(None);
    }
    selectors.iter().find_map(|selector| best(Some(selector)))
}

/// Lists the IPv4 and IPv6 addresses of this host's interfaces that are up,
/// as `(interface name, address)` pairs in the kernel's order.
pub fn local_interfaces() -> io::Result<Vec<(String, IpAddr)>> {
    /// Frees the list `getifaddrs` allocated, also on early return.
    struct List(*mut libc::ifaddrs);
    impl Drop for List {
        fn drop(&mut self) {
            // SAFETY: self.0 came from a successful getifaddrs and is freed once,
            // here; no reference into the list outlives the guard.
            unsafe { libc::freeifaddrs(self.0) }
        }
    }

    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid place for getifaddrs to store the list pointer.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let list = List(head);
    let mut interfaces = Vec::new();
    let mut cursor = list.0;
    while !cursor.is_null() {
        // SAFETY: `cursor` is non-null and points to a node of the list, which
        // stays allocated until `list` is dropped at the end of this function.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null()
            || entry.ifa_name.is_null()
            || entry.ifa_flags & libc::IFF_UP as libc::c_uint == 0
        {
            continue;
        }
        // SAFETY: `ifa_addr` is non-null and points to a sockaddr, whose first
        // field holds the family on every platform.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let addr = match family {
            libc::AF_INET => {
                // SAFETY: the family says this sockaddr is a sockaddr_in;
                // read_unaligned makes no assumption about its alignment.
                let sin =
                    unsafe { std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in>()) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this sockaddr is a sockaddr_in6;
                // read_unaligned makes no assumption about its alignment.
                let sin6 = unsafe {
                    std::ptr::read_unaligned(entry.ifa_addr.cast::<libc::sockaddr_in6>())
                };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        // SAFETY: `ifa_name` is non-null and a NUL-terminated string that lives
        // as long as the list; it is copied out before the list is freed.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        interfaces.push((name, addr));
    }
    drop(list);
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<&str, String> = pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect();
        Config::from_env(|name| env.get(name).cloned())
    }

    fn ip(text: &str) -> IpAddr {
        match text.parse() {
            Ok(ip) => ip,
            Err(error) => panic!("{text}: {error}"),
        }
    }

    #[test]
    fn defaults() {
        let config = from(&[]).expect("empty environment");
        assert_eq!(config, Config::default());
        assert_eq!(config.eager_limit, 131072);
        assert_eq!(config.tcp_backend, TcpBackend::Auto);
        assert!(config.tcp_interfaces.is_empty());
        assert_eq!(config.tcp_conns_per_peer, 1);
        assert_eq!(config.rendezvous_timeout, Duration::from_secs(30));
        assert_eq!(config.failure_timeout, Duration::from_secs(5));
        assert_eq!(config.shm_ring_bytes, 1 << 20);
        assert_eq!(config.spin, Duration::from_micros(50));
        // Empty values are unset.
        assert_eq!(
            from(&[(EAGER_LIMIT_VAR, ""), (TCP_IF_VAR, " ")]),
            Ok(Config::default())
        );
    }

    #[test]
    fn reads_every_variable() {
        let config = from(&[
            (EAGER_LIMIT_VAR, "64KiB"),
            (TCP_BACKEND_VAR, "io_uring"),
            (TCP_IF_VAR, "ib0, 10.77.0.0/24,fd00::/8,10.0.0.7"),
            (TCP_CONNS_VAR, "4"),
            (TCP_CONNECT_VAR, "lazy"),
            (RENDEZVOUS_TIMEOUT_VAR, "120000"),
            (FAILURE_TIMEOUT_VAR, "500"),
            (SHM_RING_BYTES_VAR, "4M"),
            (SPIN_US_VAR, "0"),
            (MAX_MESSAGE_VAR, "1G"),
        ])
        .expect("valid environment");
        assert_eq!(
            config,
            Config {
                eager_limit: 65536,
                tcp_backend: TcpBackend::Uring,
                tcp_interfaces: vec![
                    InterfaceSelector::Name("ib0".into()),
                    InterfaceSelector::Subnet(ip("10.77.0.0"), 24),
                    InterfaceSelector::Subnet(ip("fd00::"), 8),
                    InterfaceSelector::Subnet(ip("10.0.0.7"), 32),
                ],
                tcp_conns_per_peer: 4,
                tcp_connect: TcpConnect::Lazy,
                rendezvous_timeout: Duration::from_secs(120),
                failure_timeout: Duration::from_millis(500),
                shm_ring_bytes: 4 << 20,
                spin: Duration::ZERO,
                max_message: 1 << 30,
            }
        );
        assert_eq!(
            from(&[(TCP_BACKEND_VAR, "EPOLL")]).map(|c| c.tcp_backend),
            Ok(TcpBackend::Epoll)
        );
        assert_eq!(
            from(&[(EAGER_LIMIT_VAR, "0")]).map(|c| c.eager_limit),
            Ok(0)
        );
        assert_eq!(
            from(&[(EAGER_LIMIT_VAR, "1g")]).map(|c| c.eager_limit),
            Ok(1 << 30)
        );
    }

    #[test]
    fn rejects_bad_values_naming_variable_value_and_accepted() {
        let cases: &[(&str, &str, &str)] = &[
            (EAGER_LIMIT_VAR, "lots", "InvalidNumber"),
            (EAGER_LIMIT_VAR, "-1", "InvalidNumber"),
            (EAGER_LIMIT_VAR, "16KB", "InvalidNumber"),
            (EAGER_LIMIT_VAR, "2G", "OutOfRange"),
            (EAGER_LIMIT_VAR, "99999999999999999999999", "OutOfRange"),
            (TCP_CONNS_VAR, "0", "OutOfRange"),
            (TCP_CONNS_VAR, "65", "OutOfRange"),
            (TCP_CONNS_VAR, "4K", "InvalidNumber"),
            (RENDEZVOUS_TIMEOUT_VAR, "0", "OutOfRange"),
            (FAILURE_TIMEOUT_VAR, "10s", "InvalidNumber"),
            (SHM_RING_BYTES_VAR, "1000000", "NotPowerOfTwo"),
            (SHM_RING_BYTES_VAR, "1K", "OutOfRange"),
            (SPIN_US_VAR, "2000000", "OutOfRange"),
            (TCP_BACKEND_VAR, "rdma", "InvalidBackend"),
        ];
        for &(variable, value, kind) in cases {
            let error = match from(&[(variable, value)]) {
                Err(error) => error,
                Ok(config) => panic!("{variable}={value} accepted: {config:?}"),
            };
            assert!(
                format!("{error:?}").starts_with(kind),
                "{variable}={value}: {error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains(variable)
                    && message.contains(value)
                    && message.contains("accepted"),
                "{message}"
            );
        }
    }

    #[test]
    fn rejects_bad_interface_selectors() {
        for entry in [
            "10.77.0.0/+8",
            "10.77.0.0/",
            "10.77.0.0/33",
            "fd00::/129",
            "10.77.0/24",
            "10.0.0.0/x",
            "a-very-long-interface-name",
            "eth 0",
        ] {
            let error = match from(&[(TCP_IF_VAR, entry)]) {
                Err(error) => error,
                Ok(config) => panic!("{entry:?} accepted: {config:?}"),
            };
            assert!(
                matches!(error, ConfigError::InvalidInterface { .. }),
                "{entry:?}: {error:?}"
            );
            assert!(error.to_string().contains("LUMEN_TCP_IF"), "{error}");
        }
    }

    #[test]
    fn selector_matching() {
        let subnet = InterfaceSelector::Subnet(ip("10.77.0.0"), 24);
        assert!(subnet.matches("any", ip("10.77.0.255")));
        assert!(!subnet.matches("any", ip("10.77.1.1")));
        assert!(!subnet.matches("any", ip("::1")));
        assert!(InterfaceSelector::Subnet(ip("0.0.0.0"), 0).matches("x", ip("1.2.3.4")));
        assert!(InterfaceSelector::Subnet(ip("fd00::"), 8).matches("x", ip("fd12::1")));
        assert!(!InterfaceSelector::Subnet(ip("fd00::"), 8).matches("x", ip("fe80::1")));
        assert!(InterfaceSelector::Name("ib0".into()).matches("ib0", ip("1.2.3.4")));
        assert!(!InterfaceSelector::Name("ib0".into()).matches("ib1", ip("1.2.3.4")));
    }

    fn candidates(pairs: &[(&str, &str)]) -> Vec<(String, IpAddr)> {
        pairs
            .iter()
            .map(|&(name, addr)| (name.to_owned(), ip(addr)))
            .collect()
    }

    #[test]
    fn default_selection_prefers_routable_ipv4() {
        let all = candidates(&[
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("eth0", "fe80::1"),
            ("docker0", "172.17.0.1"),
            ("eth0", "2001:db8::5"),
            ("eth0", "10.0.0.5"),
            ("ib0", "10.77.0.5"),
        ]);
        assert_eq!(select_interface_addr(&[], &all), Some(ip("10.0.0.5")));
        assert_eq!(
            select_interface_addr(&[], &all[..5]),
            Some(ip("2001:db8::5"))
        );
        assert_eq!(
            select_interface_addr(&[], &all[..4]),
            Some(ip("172.17.0.1"))
        );
        assert_eq!(select_interface_addr(&[], &all[..3]), Some(ip("127.0.0.1")));
        assert_eq!(select_interface_addr(&[], &all[1..3]), Some(ip("::1")));
        assert_eq!(select_interface_addr(&[], &all[2..3]), None);
        assert_eq!(select_interface_addr(&[], &[]), None);
    }

    #[test]
    fn selectors_pick_in_their_order() {
        let all = candidates(&[
            ("lo", "127.0.0.1"),
            ("eth0", "10.0.0.5"),
            ("ib0", "fd00::5"),
            ("ib0", "10.77.0.5"),
        ]);
        let select = |entries: &str| -> Option<IpAddr> {
            let selectors: Vec<InterfaceSelector> =
                entries.split(',').map(|e| e.parse().expect(e)).collect();
            select_interface_addr(&selectors, &all)
        };
        assert_eq!(select("ib0"), Some(ip("10.77.0.5")));
        assert_eq!(select("10.77.0.0/16"), Some(ip("10.77.0.5")));
        assert_eq!(select("fd00::/8"), Some(ip("fd00::5")));
        assert_eq!(select("ib1,eth0,ib0"), Some(ip("10.0.0.5")));
        assert_eq!(select("lo"), Some(ip("127.0.0.1")));
        assert_eq!(select("ib1,192.168.0.0/16"), None);
    }

    #[test]
    fn local_interfaces_lists_addresses() {
        let interfaces = local_interfaces().expect("getifaddrs");
        assert!(interfaces.iter().all(|(name, _)| !name.is_empty()));
        if !interfaces.is_empty() {
            assert!(
                select_interface_addr(&[], &interfaces).is_some(),
                "{interfaces:?}"
            );
        }
    }
}
