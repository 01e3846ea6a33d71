//! table (implementation follows).
