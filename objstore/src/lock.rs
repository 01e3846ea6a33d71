//! lock (implementation follows).
