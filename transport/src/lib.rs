//! Lumen's transport: tagged, reliable, per-pair ordered messages between the
//! ranks of a job, over shared memory on a node and TCP between nodes.
//!
//! **Owns**: the wire schemas and framing (`wire`, `frame`), authentication
//! (`auth`, `handshake`), the [`Endpoint`] (tagged messages, active-message
//! handlers, one-sided gets), its backends (`shm` on a node, `tcp` between
//! nodes, io_uring under `tcp`), and Lumen's one platform layer
//! ([`sys`]: shared-memory mappings, futexes, pidfds, `process_vm_readv`),
//! which the object store and the collectives use instead of their own.
//! **Main types**: [`EndpointBuilder`] → [`Endpoint`], [`TransportConfig`]
//! (checked by [`TransportConfig::validate`]), [`PeerAddress`], [`Message`],
//! [`TransportError`], [`sys::SharedMapping`]. **Depends on** no other Lumen
//! crate: every other crate of the workspace sits above it.
//!
//! Modules import downwards only: `types` and `error` (the shared types)
//! import none of `endpoint`, `tcp`, `stripe`; `tcp` reaches the endpoint's
//! state only through its `Inbox` trait.
//!
//! ```text
//!            Endpoint::send / recv / get / barrier / register_handler
//!                 │                         │
//!        same node│                         │other node
//!   ┌─────────────▼──────────┐    ┌─────────▼──────────────────────────┐
//!   │ shm: NodeSegment       │    │ tcp: one authenticated connection  │
//!   │ SPSC ring per pair,    │    │ per pair; writes from the caller,  │
//!   │ futex doorbell, pidfd  │    │ reads by the waiting caller, or a  │
//!   │ liveness, single-copy  │    │ background thread (epoll) when no  │
//!   │ large messages         │    │ caller polls; io_uring on request  │
//!   └────────────────────────┘    └────────────────────────────────────┘
//!        every frame: 32-byte header (frame.rs) + raw bytes or a verified
//!        flatbuffer (wire/); every connection: HMAC handshake (auth.rs)
//! ```
//!
//! Setup is two-phase so the launcher can exchange addresses in between:
//! [`EndpointBuilder::new`] listens and creates the node segment, the launcher
//! all-gathers [`PeerAddress`]es through its rendezvous store, then
//! [`EndpointBuilder::connect`] attaches, connects and authenticates.
//!
//! Design choices worth knowing:
//! - progress is driven by the calling threads (MPI style), see [`endpoint`],
//!   TCP sockets included: a waiting thread reads them itself, so a message
//!   costs no thread wake-up (8 B ping-pong over loopback: 90 us with a
//!   receiver thread, 4.9 us caller-driven; Open MPI 4.2 us);
//! - large messages on a node are pulled by the receiver with
//!   `process_vm_readv` (one copy); on TCP they stream in frames, relying on
//!   TCP's flow control instead of a ready-to-send round trip;
//! - several TCP connections per peer on request (`TransportConfig::tcp_conns`,
//!   `LUMEN_TCP_CONNS`): large messages are striped over them and put back in
//!   order (see `stripe`);
//! - the node segment is unlinked as soon as every local rank has mapped it,
//!   so no crash can leave it behind.

pub mod auth;
pub mod config;
pub mod endpoint;
mod error;
pub mod fabric;
pub mod frame;
pub mod handshake;
pub mod shm;
mod stripe;
pub mod sys;
mod tcp;
mod types;
pub mod wire;

/// Tag ranges by owner (top nibble), so layers of Lumen never read each
/// other's messages: user code below `0x8000_...`, the runtime (tasks, actors)
/// `0xA000_...`, object transfers `0xB000_...`, collectives `0xC000_...`, the
/// launcher `0xD000_...`; [`RESERVED_TAGS`] and above belong to the transport.
pub mod tags {
    /// First tag of the runtime's range (tasks, actors, object metadata).
    pub const RUNTIME: u64 = 0xA000_0000_0000_0000;
    /// First tag of the object store's transfers.
    pub const OBJECTS: u64 = 0xB000_0000_0000_0000;
    /// First tag of the collectives.
    pub const COLLECTIVES: u64 = 0xC000_0000_0000_0000;
    /// First tag of the launcher and bootstrap.
    pub const LAUNCHER: u64 = 0xD000_0000_0000_0000;
    /// First tag user code must not use.
    pub const USER_END: u64 = 0x8000_0000_0000_0000;
}

/// A rank of the job, `0..size`.
pub type Rank = u32;

/// Tags at or above this value are reserved for Lumen's own protocols.
pub const RESERVED_TAGS: u64 = 0xffff_0000_0000_0000;

pub use auth::JobSecret;
pub use config::{ConfigError, TcpBackend, TcpConnect, TransportConfig};
pub use endpoint::{
    segment_name, Endpoint, EndpointBuilder, EndpointOptions, FabricRoute, Handler, Message,
    PeerAddress, PollSession, RegionKey, RendezvousStats, Source, TcpConnections, TransportError,
};
pub use shm::doorbell_rings;
pub use sys::read_process_memory;
