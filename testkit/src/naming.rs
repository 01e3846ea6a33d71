//! Pure naming rules: namespace prefixes, the subnet a prefix maps to, and the
//! process id embedded in a namespace name.
//!
//! Invariant: every namespace this crate creates is named
//! `{prefix}-br` or `{prefix}-h{i}`, and a prefix made by [`unique_prefix`] is
//! `{tag}-{pid}-{sequence}`, so [`embedded_pid`] can find the creating process
//! of any namespace from its name alone.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::NetnsError;

/// Largest number of hosts in one cluster: addresses run from `.10` to `.254`.
pub const MAX_HOSTS: usize = 245;

/// The range the second octet of a cluster's subnet `10.S.0.0/24` is taken
/// from.
pub const SUBNET_OCTETS: std::ops::RangeInclusive<u8> = 200..=250;

/// Longest accepted prefix. Namespace names are file names under
/// `/run/netns` (255 bytes at most); this leaves room for the `-h{i}` suffix.
const MAX_PREFIX_LEN: usize = 200;

/// Checks that `prefix` can name namespaces: non-empty, at most 200 bytes,
/// only ASCII letters, digits, `-`, `_` and `.`, starting with a letter or
/// digit.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), NetnsError> {
    let invalid = |reason| {
        Err(NetnsError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        })
    };
    let Some(first) = prefix.bytes().next() else {
        return invalid("it is empty");
    };
    if prefix.len() > MAX_PREFIX_LEN {
        return invalid("it is longer than 200 bytes");
    }
    if !first.is_ascii_alphanumeric() {
        return invalid("it must start with an ASCII letter or digit");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// The second octet `S` of the subnet `10.S.0.0/24` used by the cluster named
/// `prefix`.
///
/// It is the 64-bit FNV-1a hash of the prefix bytes, modulo 51, plus 200: a
/// value in [`SUBNET_OCTETS`] (10.200.0.0/24 to 10.250.0.0/24) that is the
/// same on every run and every Rust version (unlike `DefaultHasher`), so a
/// failing test can be re-run and inspected with the same addresses. Two
/// clusters may get the same subnet; that is harmless, because each cluster's
/// hosts and bridge live in namespaces of their own with no route between
/// clusters or to the machine's own network.
pub fn subnet_octet(prefix: &str) -> u8 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = prefix.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    let span = u64::from(SUBNET_OCTETS.end() - SUBNET_OCTETS.start()) + 1;
    // The remainder is below 51, so the sum fits in a u8.
    SUBNET_OCTETS.start() + (hash % span) as u8
}

/// A prefix unique to this process and call: `{tag}-{pid}-{sequence}`.
///
/// The process id makes concurrent test processes (cargo-nextest runs one per
/// test) distinct, the sequence number makes concurrent tests of one process
/// (`cargo test` threads) distinct, and [`crate::NetnsCluster::cleanup_stale`]
/// reads the process id back. `tag` should not contain a `-`-separated field
/// made only of digits, or that field would be taken for the process id.
pub fn unique_prefix(tag: &str) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{sequence}", std::process::id())
}

/// The process id embedded in namespace `name` below `prefix_start`: the first
/// `-`-separated field after `prefix_start` that consists only of ASCII
/// digits. `None` when `name` does not start with `prefix_start`, has no such
/// field, or the field is not a possible process id (0, or above `i32::MAX`).
pub(crate) fn embedded_pid(name: &str, prefix_start: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix_start)?;
    rest.split('-')
        .find(|field| !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|field| field.parse().ok())
        .filter(|&pid| pid > 0 && i32::try_from(pid).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_is_in_range_and_stable() {
        for i in 0..2000 {
            let octet = subnet_octet(&format!("lumen-test-{i}"));
            assert!(SUBNET_OCTETS.contains(&octet), "{octet}");
        }
        assert_eq!(subnet_octet("abc"), subnet_octet("abc"));
        // FNV-1a of "" is the offset basis: 0xcbf29ce484222325 % 51 = 47.
        assert_eq!(subnet_octet(""), 247);
    }

    #[test]
    fn subnets_spread_over_the_whole_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..5000 {
            seen.insert(subnet_octet(&format!("t-{i}-0")));
        }
        assert_eq!(seen.len(), SUBNET_OCTETS.count());
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix("lumen-test-123-0").is_ok());
        assert!(validate_prefix("a.b_c").is_ok());
        for bad in ["", "-x", "a/b", "a b", "ä", ".."] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_prefix(&"x".repeat(201)).is_err());
    }

    #[test]
    fn pid_is_read_from_the_first_numeric_field() {
        assert_eq!(embedded_pid("lumen-t-1234-5-h0", "lumen-t"), Some(1234));
        assert_eq!(embedded_pid("lumen-t-1234-5-br", "lumen-t-"), Some(1234));
        assert_eq!(embedded_pid("lumen-t1-77-0-h3", "lumen"), Some(77));
        assert_eq!(embedded_pid("lumen-t-x-h0", "lumen-t"), None);
        assert_eq!(embedded_pid("other-1234-h0", "lumen"), None);
        assert_eq!(embedded_pid("lumen-99999999999-h0", "lumen"), None);
        assert_eq!(embedded_pid("lumen-3000000000-h0", "lumen"), None);
        assert_eq!(embedded_pid("lumen-0-h0", "lumen"), None);
    }

    #[test]
    fn unique_prefixes_differ_and_embed_the_pid() {
        let a = unique_prefix("lumen-t");
        let b = unique_prefix("lumen-t");
        assert_ne!(a, b);
        assert_eq!(embedded_pid(&a, "lumen-t"), Some(std::process::id()));
    }
}
