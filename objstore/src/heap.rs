//! heap (implementation follows).
