//! Lumen's transport: tagged messages between ranks over shared memory and TCP.
