//! TCP between nodes: one authenticated connection per pair of ranks on
//! different nodes (more for striping bulk messages, see below), written by application threads (a lock per connection,
//! vectored writes, no copy of the payload) and read either by the caller or
//! by a background receiver thread.
//!
//! # Caller-driven reading (the default, `TcpBackend::Auto`/`Epoll`)
//! Like Open MPI's TCP BTL, a thread that waits in `recv`, `get` or a send
//! loop reads the sockets itself: [`TcpReaders::poll`] takes each
//! connection's lock with `try_lock` (so one thread reads a connection at a
//! time, and a busy connection is skipped rather than waited for), receives
//! without blocking and feeds the bytes through the connection's
//! [`ConnState`] decoder. A large payload is received straight into the
//! message's own buffer (no scratch copy). No thread is woken on the way: a
//! ping-pong hop costs a `send` and the peer's next `recv` poll.
//!
//! A background thread still exists for ranks that compute without calling in
//! (handlers, one-sided gets, and draining so that a peer's writes never stall
//! for good). It blocks in a level-triggered epoll and reads ready
//! connections, except while application threads are polling: a waiting
//! thread registers in [`TcpReaders::pollers`] during its spin phase, and the
//! background thread then naps on a futex (2 ms at a time) instead of being
//! woken by every arrival and competing for the two cores. It resumes when the
//! last poller goes to sleep (which kicks it), or when a registered poller
//! stopped polling for a whole nap (stuck in a long handler or a blocked
//! write), so the rule "a reader never blocks on a write" still holds.
//!
//! # The io_uring receiver (`TcpBackend::Uring`)
//! One multishot receive per connection with a provided-buffer ring,
//! caller-driven like the epoll path (see `uring`): a waiting thread reaps
//! the shared completion queue itself under `try_lock`, without a syscall
//! per poll; a connection's receive is submitted by the first caller that
//! polls it (the kernel runs the copy as that thread's task work, and with
//! `COOP_TASKRUN` it raises a flag instead of interrupting the thread with
//! an IPI); the background thread arms and reaps only when no caller
//! polls. Before (a receiver thread of its own, two wake-ups per hop) and
//! after, on the 2-core VM, loopback, `lumen bench transport --tcp-only
//! --tcp-backends epoll,uring --scale 0.1 --rounds 2` (both backends and
//! Open MPI's TCP BTL in one invocation, medians of the rounds):
//!
//! ```text
//!                   io_uring thread   io_uring caller-driven   caller-driven epoll   Open MPI
//! latency 8 B          78-90 us             6.6 us                  6.7 us           5.8-6.1 us
//! latency 4 KiB        77-93 us             8.5 us                  7.3 us           6.9 us
//! latency 1 MiB        670-730 us           750 us                  290 us           170-190 us
//! bandwidth 4 KiB        –                  540 MB/s                680 MB/s         660-730 MB/s
//! bandwidth 4 MiB     1500-1700 MB/s        5000 MB/s               5300 MB/s        4100-4300 MB/s
//! ```
//!
//! The steps that mattered: reaping in the caller (80 -> 23 us), the
//! caller taking a receive over from the background thread (23 -> 16 us),
//! `COOP_TASKRUN` (16 -> 6.6 us: an IPI is a VM exit here). io_uring still
//! copies every byte through its 256 KiB provided buffers, where the epoll
//! path receives a large payload straight into the message's buffer, so it
//! loses at 256 KiB-1 MiB. Across two network namespaces (`--netns`, one
//! run each, veth): 8 B 8.0 us epoll / 8.9 us io_uring, 4 KiB 9.4 / 8.8,
//! 256 KiB 97 / 118, 4 MiB 2050 / 1560 us (raw socket ping-pong: 5.6 us at
//! 8 B). One receiver serves a socket, so the choice cannot be per size:
//! `Auto` keeps caller-driven epoll, which is never far behind and wins
//! where io_uring loses most; io_uring is there on request
//! (`LUMEN_TCP_BACKEND=uring`).
//! `SendZc` for large sends is not used: the `MSG_ZEROCOPY` measurement
//! below (a completion only after the receiver read the data on loopback)
//! applies to it too.
//! # Large messages (measured as above, medians of 5 runs, Lumen only)
//! - Every received message is a fresh `Vec` handed to the application. With
//!   glibc's defaults a large one is an `mmap` per message, a page fault per
//!   4 KiB and an `munmap` (TLB shootdown) when the application drops it;
//!   [`crate::sys::tune_malloc`] keeps such blocks on the heap
//!   (`TransportConfig::tune_malloc`, on by default): bandwidth 1 MiB
//!   2450 -> 4430 MB/s, 4 MiB 2550 -> 3320 MB/s, latency unchanged. Prefaulting
//!   the buffer with `MADV_POPULATE_WRITE` instead measured no gain, nor did
//!   4 MiB or 2 MiB SO_SNDBUF/SO_RCVBUF (autotuning already reaches that).
//! - A receiver that keeps getting bytes stays in its spin phase (the spin
//!   restarts on progress) instead of handing a half-received message to the
//!   background thread: 4 MiB latency about 1750 -> 1450-1500 us.
//! - Writers: the socket is non-blocking for writes too (the reader's
//!   `O_NONBLOCK` is on the shared file description), but the writer's
//!   `poll(POLLOUT)` runs rarely (43 times for ~500 MiB sent in a 1 MiB run,
//!   strace), and a spin-retry before it measured no gain, so it stays.
//! - Zero-copy sends (`TransportConfig::tcp_zerocopy_min`, off by default):
//!   `MSG_ZEROCOPY`, completions reaped from the error queue before `send`
//!   returns. On loopback the kernel still copies on receive and a
//!   completion only arrives once the receiver has read the data, so each
//!   send waits for the peer: 1 MiB latency 390 -> 800 us, bandwidth
//!   4200 -> 900 MB/s. Worth measuring on a real NIC before enabling.
//!
//! # Several connections per peer (`TransportConfig::tcp_conns`, `LUMEN_TCP_CONNS`)
//! With N > 1 every remote pair keeps N connections; messages of at least
//! `tcp_stripe_min` bytes (1 MiB) are striped over all of them, written
//! concurrently with non-blocking writes and received straight into the
//! message buffer, in order (see [`crate::stripe`]). Measured on the 2-core
//! VM over loopback (`LUMEN_TCP_CONNS=N lumen bench transport --tcp-only
//! --scale 0.3`, other builds running, so the spread is wide): 4 MiB
//! bandwidth 2900-3500 MB/s with one connection, 4000-4800 with two or
//! four; 16 MiB 2500 -> 3000-3500 MB/s; 1 MiB latency 360-390 -> 220-330 us;
//! small messages unchanged (they only use the primary connection).
//!
//! The listener stays open after setup: late connections must pass the same
//! handshake, are then read like any other (an extra connection of that rank),
//! and a connection that sends a malformed frame is closed and logged without
//! disturbing the others. Only the loss of a rank's primary connection marks
//! that rank dead.
//!
//! # Layout
//! - [`Inbox`]: what the readers hand their results to (the endpoint's
//!   shared state implements it; this module never imports the endpoint);
//! - `connect`: [`Connector`], who holds the sending half toward each
//!   rank, and connecting on first use (`TcpConnect`);
//! - `peer`: [`TcpPeer`], the sending half (vectored, zero-copy, striped writes);
//! - `conn`: the read state of one connection (frame decoding, lanes);
//! - `readers`: [`TcpReaders`], caller-driven reading and the hand-over to
//!   the background thread;
//! - `setup`: connecting, accepting and authenticating at setup
//!   ([`TcpDomain`]), the acceptor and the background receiver threads;
//! - `uring`: the optional io_uring receiver.

mod conn;
mod connect;
mod peer;
mod readers;
mod setup;
mod uring;

pub(crate) use connect::Connector;
pub(crate) use peer::TcpPeer;
pub(crate) use readers::TcpReaders;
pub(crate) use setup::TcpDomain;

use crate::error::TransportError;
use crate::types::{Message, Rank};
use crate::wire::GetRequestMsg;

/// Where the TCP readers hand what they receive, and whom they tell about a
/// peer's end: the endpoint's shared state. A trait, so that `tcp` depends
/// on no endpoint type (the endpoint depends on `tcp`, not the reverse).
pub(crate) trait Inbox: Send + Sync {
    /// This rank.
    fn rank(&self) -> Rank;
    /// The connections callers read themselves.
    fn readers(&self) -> &std::sync::Arc<TcpReaders>;
    /// Hands a complete message to its handler or to the mailbox.
    fn deliver(&self, message: Message);
    /// Queues a one-sided get request from `from` for the progress loop.
    fn queue_get_request(&self, from: Rank, request: GetRequestMsg);
    /// Completes this rank's pending get `request`.
    fn finish_get(&self, request: u64, result: Result<Vec<u8>, TransportError>);
    /// Records that peer `rank` is gone (`PEER_DEAD` or `PEER_DEPARTED`).
    fn mark_peer(&self, rank: Rank, state: u8, detail: String);
}
