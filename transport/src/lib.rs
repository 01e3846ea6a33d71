//! Lumen's transport: tagged messages between ranks over shared memory and TCP.
pub mod auth;
pub mod frame;
pub mod handshake;
pub mod shm;
mod sys;
pub mod wire;
