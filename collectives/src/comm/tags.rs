//! The tag layout of a communicator's messages (see the table in
//! [`super`]): context, kind (collective or point-to-point), credit bit,
//! sequence and round. Pure; the test checks that no two fields overlap.

use lumen_transport::tags;

/// Largest context id (20 bits); the last one is kept for the liveness probe.
pub(super) const MAX_CONTEXT: u32 = GROUP_CONTEXT - 1;
/// Context ids `GROUP_CONTEXT + tag` carry the agreement of
/// `create_group` calls (one per 16-bit tag), below the probe's.
pub(super) const GROUP_CONTEXT: u32 = (1 << 20) - 2 - (1 << 16);
pub(super) const PROBE_CONTEXT: u64 = (1 << 20) - 1;
pub(super) const P2P_BIT: u64 = 1 << 39;

/// Marks a credit message's tag (the top bit of the sequence field).
pub(super) const CREDIT_BIT: u64 = 1 << 38;

/// The tag of round `round` of collective number `sequence` on `context`.
pub(super) fn collective_tag(context: u32, sequence: u32, round: u32) -> u64 {
    tags::COLLECTIVES
        | (u64::from(context) << 40)
        | ((u64::from(sequence) & 0x3f_ffff) << 16)
        | (u64::from(round) & 0xffff)
}

/// The tag of a point-to-point message with user tag `tag` on `context`.
pub(super) fn p2p_tag(context: u32, tag: u32) -> u64 {
    tags::COLLECTIVES | (u64::from(context) << 40) | P2P_BIT | u64::from(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_contexts_operations_and_rounds_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for context in [0, 1, 2, MAX_CONTEXT] {
            for sequence in [0, 1, 0x3f_fffe] {
                for round in [0, 1, 0xffff] {
                    let tag = collective_tag(context, sequence, round);
                    assert_eq!(tag >> 60, 0xC, "collectives' range");
                    assert!(tag < lumen_transport::RESERVED_TAGS);
                    assert!(seen.insert(tag), "duplicate tag {tag:#x}");
                    assert!(seen.insert(tag | CREDIT_BIT), "credit collides");
                }
            }
            for user in [0, 7, u32::MAX] {
                assert!(seen.insert(p2p_tag(context, user)), "p2p collides");
            }
        }
        // The liveness probe's context is never allocated.
        assert!(u64::from(MAX_CONTEXT) < PROBE_CONTEXT);
    }
}
