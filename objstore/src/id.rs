//! Object identifiers.

use std::fmt;

/// Names an object in the store: 16 bytes, `Pod`, printed as 32 hex digits
/// (`hi` first). The store attaches no meaning to the bits; the runtime
/// composes them (for example owner rank and task in `hi`, a counter in `lo`).
/// The all-zero id is reserved (it marks empty table slots) and refused.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, bytemuck::Pod, bytemuck::Zeroable,
)]
#[repr(C)]
pub struct ObjectId {
    /// High half.
    pub hi: u64,
    /// Low half.
    pub lo: u64,
}

impl ObjectId {
    /// The id `(hi, lo)`.
    pub const fn new(hi: u64, lo: u64) -> Self {
        ObjectId { hi, lo }
    }

    /// Big-endian bytes (`hi` then `lo`), the form used on the wire.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.hi.to_be_bytes());
        out[8..].copy_from_slice(&self.lo.to_be_bytes());
        out
    }

    /// Inverse of [`ObjectId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&bytes[..8]);
        lo.copy_from_slice(&bytes[8..]);
        ObjectId {
            hi: u64::from_be_bytes(hi),
            lo: u64::from_be_bytes(lo),
        }
    }

    /// Whether this is the reserved all-zero id.
    pub fn is_nil(self) -> bool {
        self.hi == 0 && self.lo == 0
    }

    /// A well-mixed 64-bit hash (for the shared table; stable across processes).
    pub(crate) fn mix(self) -> u64 {
        // SplitMix64 finaliser (Steele, Lea and Flood, "Fast splittable
        // pseudorandom number generators", OOPSLA 2014) over both halves.
        let mut z = self.hi ^ self.lo.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.hi, self.lo)
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_bytes_round_trip() {
        let id = ObjectId::new(0x0102_0304_0506_0708, 0xa0b0_c0d0_e0f0_0010);
        assert_eq!(id.to_string(), "0102030405060708a0b0c0d0e0f00010");
        assert_eq!(ObjectId::from_bytes(id.to_bytes()), id);
        assert!(ObjectId::default().is_nil());
        assert_ne!(ObjectId::new(1, 2).mix(), ObjectId::new(2, 1).mix());
    }
}
