//! Lumen's transport: tagged, reliable, per-pair ordered messages between the
//! ranks of a job, over shared memory on a node and TCP between nodes.
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
//! - the node segment is unlinked as soon as every local rank has mapped it,
//!   so no crash can leave it behind.

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod frame;
pub mod handshake;
pub mod shm;
mod sys;
mod tcp;
mod uring;
pub mod wire;

pub use auth::JobSecret;
pub use config::{TcpBackend, TransportConfig};
pub use endpoint::{
    segment_name, Endpoint, EndpointBuilder, EndpointOptions, Handler, Message, PeerAddress, Rank,
    RegionKey, Source, TransportError, RESERVED_TAGS,
};
