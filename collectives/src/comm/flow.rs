//! Segmentation and credit flow control of point-to-point transfers (pure).
//!
//! A transfer longer than the segment size is cut into `pieces`, each
//! received (and reduced) before the next is taken, so the reduction reads
//! data still in cache. On an oversubscribed node, a receiver sends a
//! credit every `CREDIT_EVERY` segments and a sender stays at most
//! `CREDIT_WINDOW` segments ahead of the credits it has (see
//! `Communicator::flow_controlled`). Invariant, checked by the tests: the
//! credits given equal the credits taken, and credit `c` is given after a
//! segment earlier than the one it unlocks, so the waits cannot form a
//! cycle.

/// Segments a sender may have in flight to one peer before it waits for
/// credit (with 16 KiB segments: half of a default 1 MiB ring).
pub(super) const CREDIT_WINDOW: usize = 32;
/// Segments per credit message.
pub(super) const CREDIT_EVERY: usize = 8;
/// Credits a receiver of `nseg` flow-controlled segments sends.
pub(super) fn credits(nseg: usize) -> usize {
    nseg.saturating_sub(CREDIT_WINDOW).div_ceil(CREDIT_EVERY)
}

/// Whether the sender must take a credit before sending segment `i` of `nseg`.
pub(super) fn credit_before(i: usize, nseg: usize) -> bool {
    i >= CREDIT_WINDOW && (i - CREDIT_WINDOW) % CREDIT_EVERY == 0 && i < nseg
}

/// Whether the receiver sends a credit after receiving segment `j` of `nseg`.
pub(super) fn credit_after(j: usize, nseg: usize) -> bool {
    (j + 1) % CREDIT_EVERY == 0 && (j + 1) / CREDIT_EVERY <= credits(nseg)
}

/// Number of segments `range` is cut into (at least one, even when empty:
/// a zero-length message still travels).
pub(super) fn pieces(range: &std::ops::Range<usize>, segment: usize) -> usize {
    if segment == 0 {
        1
    } else {
        range.len().div_ceil(segment).max(1)
    }
}

/// Segment `i` of `range`, if it has one.
pub(super) fn piece(
    range: std::ops::Range<usize>,
    segment: usize,
    i: usize,
) -> Option<std::ops::Range<usize>> {
    if i >= pieces(&range, segment) {
        return None;
    }
    if segment == 0 {
        return Some(range);
    }
    let start = range.start + i * segment;
    Some(start..(start + segment).min(range.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_a_range_exactly_once() {
        for (len, segment) in [(0, 4), (1, 4), (8, 4), (9, 4), (9, 0), (3, 100)] {
            let range = 10..10 + len;
            let n = pieces(&range, segment);
            let parts: Vec<_> = (0..n + 1)
                .filter_map(|i| piece(range.clone(), segment, i))
                .collect();
            assert_eq!(parts.len(), n, "len {len} segment {segment}");
            assert_eq!(parts.first().map(|r| r.start), Some(10));
            assert_eq!(parts.last().map(|r| r.end), Some(10 + len));
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn credits_sent_match_credits_taken_and_come_in_time() {
        for nseg in [0, 1, 31, 32, 33, 40, 41, 100, 1000] {
            let taken: Vec<usize> = (0..nseg).filter(|&i| credit_before(i, nseg)).collect();
            let given: Vec<usize> = (0..nseg).filter(|&j| credit_after(j, nseg)).collect();
            assert_eq!(taken.len(), given.len(), "nseg {nseg}");
            assert_eq!(taken.len(), credits(nseg));
            // Credit c is given after an earlier segment than the one it
            // unlocks, so waits never form a cycle.
            assert!(taken.iter().zip(&given).all(|(t, g)| g < t), "nseg {nseg}");
            // Never more than the window ahead.
            for (c, &t) in taken.iter().enumerate() {
                assert!(t - (c * CREDIT_EVERY) <= CREDIT_WINDOW);
            }
        }
    }
}
