//! Slurm hostlist expressions: `nid[001-004,010],gpu-a[01-02]`.
//!
//! # Grammar
//!
//! A hostlist is a list of items separated by commas (or whitespace) outside
//! brackets. An item is literal text with any number of bracket groups; a group
//! holds comma-separated ranges `lo-hi` or single numbers `n`:
//!
//! - `host`, `n1,n2`: plain names.
//! - `nid[001-004,010]`: `nid001 … nid004, nid010`. The zero padding of a range is
//!   the width of its start token (`[01-10]` pads to two digits, `[1-10]` does not
//!   pad), as in Slurm.
//! - `r[1-2]n[01-02]`: several groups expand to their cartesian product, the
//!   leftmost group varying slowest: `r1n01, r1n02, r2n01, r2n02`.
//!
//! Stepped ranges (`[1-9:2]`), descending ranges (`[5-1]`), empty groups and
//! nested or unbalanced brackets are rejected. So is an expression that would
//! expand to more than [`MAX_HOSTS`] names, before anything is allocated.
//!
//! # Compression
//!
//! [`compress`] is the inverse, following Slurm's `hostlist_ranged_string`:
//! consecutive hosts that differ only in their last run of digits (same prefix,
//! same suffix, same zero padding) share one bracket group, and runs of
//! consecutive numbers become ranges. The order of the input is kept, so
//! `expand(&compress(hosts)) == hosts` for every list of valid host names, and
//! sorted input gives Slurm's canonical form (`nid[001-003,010]`).

use std::fmt::Write as _;

use thiserror::Error;

/// Most host names that [`expand`] produces from one expression.
///
/// Far above any real machine; it exists so that a corrupt `SLURM_NODELIST` such
/// as `n[0-999999999]` is an error instead of an allocation of gigabytes.
pub const MAX_HOSTS: usize = 1 << 20;

/// Longest run of digits treated as a number (fits in a `u64`).
const MAX_DIGITS: usize = 19;

/// Why a hostlist expression could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HostlistError {
    /// A `[` has no matching `]`.
    #[error("hostlist {hostlist:?}: the `[` at byte {position} is never closed; write bracket groups as `nid[01-04]`")]
    UnclosedBracket {
        /// The whole expression.
        hostlist: String,
        /// Byte offset of the `[`.
        position: usize,
    },
    /// A `]` appears without an opening `[`.
    #[error("hostlist {hostlist:?}: the `]` at byte {position} has no matching `[`; write bracket groups as `nid[01-04]`")]
    UnopenedBracket {
        /// The whole expression.
        hostlist: String,
        /// Byte offset of the `]`.
        position: usize,
    },
    /// A `[` appears inside a bracket group.
    #[error("hostlist {hostlist:?}: the `[` at byte {position} is inside another bracket group; Slurm does not nest brackets, write `r[1-2]n[1-4]` instead")]
    NestedBracket {
        /// The whole expression.
        hostlist: String,
        /// Byte offset of the inner `[`.
        position: usize,
    },
    /// A bracket group or one of its comma-separated entries is empty (`[]`, `[1,]`).
    #[error(
        "hostlist {hostlist:?}: empty range in a bracket group; every entry must be `n` or `lo-hi`"
    )]
    EmptyRange {
        /// The whole expression.
        hostlist: String,
    },
    /// A range bound is not a decimal number of at most 19 digits.
    #[error("hostlist {hostlist:?}: range {range:?} is not `n` or `lo-hi` with decimal numbers")]
    InvalidRange {
        /// The whole expression.
        hostlist: String,
        /// The offending entry of the bracket group.
        range: String,
    },
    /// A range has a step (`1-9:2`), which Slurm's hostlist syntax does not have.
    #[error("hostlist {hostlist:?}: range {range:?} has a step, which Slurm hostlists do not support; list the numbers instead, e.g. `[1,3,5]`")]
    SteppedRange {
        /// The whole expression.
        hostlist: String,
        /// The offending entry of the bracket group.
        range: String,
    },
    /// A range ends below its start (`5-1`).
    #[error("hostlist {hostlist:?}: range {range:?} ends below its start; write ranges as `lo-hi` with lo <= hi")]
    DescendingRange {
        /// The whole expression.
        hostlist: String,
        /// The offending entry of the bracket group.
        range: String,
    },
    /// The expression expands to more than [`MAX_HOSTS`] names.
    #[error("hostlist {hostlist:?} expands to more than {limit} hosts; it is probably corrupt")]
    TooManyHosts {
        /// The whole expression.
        hostlist: String,
        /// The limit, [`MAX_HOSTS`].
        limit: usize,
    },
}

/// One `lo-hi` entry of a bracket group, zero-padded to `width` digits.
#[derive(Debug, Clone, Copy)]
struct Range {
    lo: u64,
    hi: u64,
    width: usize,
}

impl Range {
    fn len(&self) -> usize {
        // `hi - lo + 1` may not fit a usize on 32-bit targets; saturate, the
        // caller compares against MAX_HOSTS anyway.
        usize::try_from(self.hi - self.lo).map_or(usize::MAX, |d| d.saturating_add(1))
    }
}

/// A piece of an item: literal text or a bracket group.
#[derive(Debug)]
enum Segment<'a> {
    Literal(&'a str),
    Group(Vec<Range>),
}

/// Expands a hostlist expression into host names, in the order Slurm gives them.
///
/// An empty (or all-whitespace) expression gives an empty list.
///
/// ```
/// # use lumen_slurm::hostlist::expand;
/// assert_eq!(expand("r[1-2]n[01-02]")?, ["r1n01", "r1n02", "r2n01", "r2n02"]);
/// assert!(expand("n[1-9:2]").is_err());
/// # Ok::<(), lumen_slurm::HostlistError>(())
/// ```
pub fn expand(hostlist: &str) -> Result<Vec<String>, HostlistError> {
    let items = split_items(hostlist)?;
    let mut parsed = Vec::with_capacity(items.len());
    let mut total: usize = 0;
    for item in items {
        let segments = parse_item(hostlist, item)?;
        let count = segments
            .iter()
            .try_fold(1usize, |acc, segment| match segment {
                Segment::Literal(_) => Some(acc),
                Segment::Group(ranges) => {
                    let group: usize = ranges
                        .iter()
                        .try_fold(0usize, |sum, range| sum.checked_add(range.len()))?;
                    acc.checked_mul(group)
                }
            });
        total = count
            .and_then(|count| total.checked_add(count))
            .filter(|&total| total <= MAX_HOSTS)
            .ok_or_else(|| HostlistError::TooManyHosts {
                hostlist: hostlist.to_owned(),
                limit: MAX_HOSTS,
            })?;
        parsed.push(segments);
    }

    let mut hosts = Vec::with_capacity(total);
    for segments in parsed {
        let mut names = vec![String::new()];
        for segment in segments {
            match segment {
                Segment::Literal(text) => names.iter_mut().for_each(|name| name.push_str(text)),
                Segment::Group(ranges) => {
                    let mut next = Vec::new();
                    for name in &names {
                        for range in &ranges {
                            for n in range.lo..=range.hi {
                                next.push(format!("{name}{n:0width$}", width = range.width));
                            }
                        }
                    }
                    names = next;
                }
            }
        }
        hosts.extend(names);
    }
    Ok(hosts)
}

/// Splits at commas and whitespace outside brackets; checks bracket balance.
fn split_items(hostlist: &str) -> Result<Vec<&str>, HostlistError> {
    let mut items = Vec::new();
    let mut open: Option<usize> = None;
    let mut start = 0;
    for (position, c) in hostlist.char_indices() {
        match (c, open) {
            ('[', None) => open = Some(position),
            ('[', Some(_)) => {
                return Err(HostlistError::NestedBracket {
                    hostlist: hostlist.to_owned(),
                    position,
                })
            }
            (']', Some(_)) => open = None,
            (']', None) => {
                return Err(HostlistError::UnopenedBracket {
                    hostlist: hostlist.to_owned(),
                    position,
                })
            }
            (c, None) if c == ',' || c.is_ascii_whitespace() => {
                items.push(&hostlist[start..position]);
                start = position + c.len_utf8();
            }
            _ => {}
        }
    }
    if let Some(position) = open {
        return Err(HostlistError::UnclosedBracket {
            hostlist: hostlist.to_owned(),
            position,
        });
    }
    items.push(&hostlist[start..]);
    items.retain(|item| !item.is_empty());
    Ok(items)
}

/// Parses one balanced, non-nested item into literal and group segments.
fn parse_item<'a>(hostlist: &str, item: &'a str) -> Result<Vec<Segment<'a>>, HostlistError> {
    let mut segments = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            segments.push(Segment::Literal(&rest[..open]));
        }
        // split_items guarantees a `]` after every `[`.
        let close = rest[open..].find(']').map_or(rest.len(), |c| open + c);
        let inner = &rest[open + 1..close];
        segments.push(Segment::Group(parse_group(hostlist, inner)?));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if !rest.is_empty() {
        segments.push(Segment::Literal(rest));
    }
    Ok(segments)
}

fn parse_group(hostlist: &str, inner: &str) -> Result<Vec<Range>, HostlistError> {
    inner
        .split(',')
        .map(|entry| parse_range(hostlist, entry))
        .collect()
}

fn parse_range(hostlist: &str, entry: &str) -> Result<Range, HostlistError> {
    let error =
        |make: fn(String, String) -> HostlistError| make(hostlist.to_owned(), entry.to_owned());
    if entry.is_empty() {
        return Err(HostlistError::EmptyRange {
            hostlist: hostlist.to_owned(),
        });
    }
    if entry.contains(':') {
        return Err(error(|hostlist, range| HostlistError::SteppedRange {
            hostlist,
            range,
        }));
    }
    let (lo_text, hi_text) = entry.split_once('-').unwrap_or((entry, entry));
    let lo = parse_number(lo_text);
    let hi = parse_number(hi_text);
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Err(error(|hostlist, range| HostlistError::InvalidRange {
            hostlist,
            range,
        }));
    };
    if hi < lo {
        return Err(error(|hostlist, range| HostlistError::DescendingRange {
            hostlist,
            range,
        }));
    }
    Ok(Range {
        lo,
        hi,
        width: lo_text.len(),
    })
}

fn parse_number(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A host name split around its last run of digits: `gpu-a01-ib` is
/// (`gpu-a`, 1 written `01`, `-ib`).
struct NumberedHost<'a> {
    prefix: &'a str,
    number: u64,
    digits: &'a str,
    suffix: &'a str,
}

fn split_host(host: &str) -> Option<NumberedHost<'_>> {
    let bytes = host.as_bytes();
    let end = bytes.iter().rposition(u8::is_ascii_digit)? + 1;
    let start = bytes[..end]
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |p| p + 1);
    let digits = &host[start..end];
    Some(NumberedHost {
        prefix: &host[..start],
        number: parse_number(digits)?,
        digits,
        suffix: &host[end..],
    })
}

/// Hosts that share a prefix, suffix and padding, in input order.
struct Group<'a> {
    first: &'a str,
    prefix: &'a str,
    suffix: &'a str,
    width: usize,
    /// Inclusive ranges, in input order.
    ranges: Vec<(u64, u64)>,
}

impl Group<'_> {
    fn is_single_host(&self) -> bool {
        matches!(self.ranges.as_slice(), [(lo, hi)] if lo == hi)
    }

    fn write(&self, out: &mut String) {
        if self.is_single_host() {
            out.push_str(self.first);
            return;
        }
        out.push_str(self.prefix);
        out.push('[');
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let width = self.width;
            // Writing into a String cannot fail.
            let _ = if lo == hi {
                write!(out, "{lo:0width$}")
            } else {
                write!(out, "{lo:0width$}-{hi:0width$}")
            };
        }
        out.push(']');
        out.push_str(self.suffix);
    }
}

/// Compresses host names into a hostlist expression, keeping their order.
///
/// Host names must not contain `[`, `]`, `,` or whitespace (no valid host name
/// does); such names are copied through unchanged and will not expand back.
///
/// ```
/// # use lumen_slurm::hostlist::compress;
/// assert_eq!(compress(&["n1", "n2", "n3", "n5", "login"]), "n[1-3,5],login");
/// assert_eq!(compress(&["n09", "n10", "n1"]), "n[09-10],n1");
/// ```
pub fn compress<S: AsRef<str>>(hosts: &[S]) -> String {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for host in hosts {
        let host = host.as_ref();
        let Some(split) = split_host(host) else {
            groups.push(Group {
                first: host,
                prefix: host,
                suffix: "",
                width: 0,
                ranges: vec![(0, 0)],
            });
            continue;
        };
        if let Some(group) = groups.last_mut().filter(|group| {
            group.width > 0
                && group.prefix == split.prefix
                && group.suffix == split.suffix
                && format!("{:0width$}", split.number, width = group.width) == split.digits
        }) {
            match group.ranges.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(split.number) => *hi = split.number,
                _ => group.ranges.push((split.number, split.number)),
            }
            continue;
        }
        groups.push(Group {
            first: host,
            prefix: split.prefix,
            suffix: split.suffix,
            width: split.digits.len(),
            ranges: vec![(split.number, split.number)],
        });
    }

    let mut out = String::new();
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        group.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(expression: &str) -> Vec<String> {
        match expand(expression) {
            Ok(hosts) => hosts,
            Err(error) => panic!("{expression:?}: {error}"),
        }
    }

    #[test]
    fn expands_plain_names_and_lists() {
        assert_eq!(ok("host"), ["host"]);
        assert_eq!(ok("n1,n2"), ["n1", "n2"]);
        assert_eq!(ok(""), Vec::<String>::new());
        assert_eq!(ok("a, b\tc,,"), ["a", "b", "c"]);
    }

    #[test]
    fn expands_ranges_with_padding() {
        assert_eq!(
            ok("nid[001-004,010],gpu-a[01-02]"),
            ["nid001", "nid002", "nid003", "nid004", "nid010", "gpu-a01", "gpu-a02"]
        );
        assert_eq!(ok("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(ok("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(ok("n[7]"), ["n7"]);
        assert_eq!(ok("[1-2]x"), ["1x", "2x"]);
    }

    #[test]
    fn expands_several_groups_as_cartesian_product() {
        assert_eq!(ok("r[1-2]n[01-02]"), ["r1n01", "r1n02", "r2n01", "r2n02"]);
        assert_eq!(
            ok("r[1-2]n[1,3]-ib"),
            ["r1n1-ib", "r1n3-ib", "r2n1-ib", "r2n3-ib"]
        );
    }

    #[test]
    fn rejects_malformed_expressions() {
        type IsExpected = fn(&HostlistError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("n[1-2", |e| {
                matches!(e, HostlistError::UnclosedBracket { position: 1, .. })
            }),
            ("n1-2]", |e| {
                matches!(e, HostlistError::UnopenedBracket { position: 4, .. })
            }),
            ("n[1[2]]", |e| {
                matches!(e, HostlistError::NestedBracket { position: 3, .. })
            }),
            ("n[]", |e| matches!(e, HostlistError::EmptyRange { .. })),
            ("n[1,]", |e| matches!(e, HostlistError::EmptyRange { .. })),
            ("n[1-9:2]", |e| {
                matches!(e, HostlistError::SteppedRange { .. })
            }),
            ("n[5-1]", |e| {
                matches!(e, HostlistError::DescendingRange { .. })
            }),
            ("n[a-b]", |e| {
                matches!(e, HostlistError::InvalidRange { .. })
            }),
            ("n[1-]", |e| matches!(e, HostlistError::InvalidRange { .. })),
            ("n[-1]", |e| matches!(e, HostlistError::InvalidRange { .. })),
            ("n[1-2-3]", |e| {
                matches!(e, HostlistError::InvalidRange { .. })
            }),
            ("n[ 1]", |e| matches!(e, HostlistError::InvalidRange { .. })),
            ("n[99999999999999999999]", |e| {
                matches!(e, HostlistError::InvalidRange { .. })
            }),
            ("n[0-999999999]", |e| {
                matches!(e, HostlistError::TooManyHosts { .. })
            }),
            ("a[0-1023]b[0-1023]c[0-1]", |e| {
                matches!(e, HostlistError::TooManyHosts { .. })
            }),
        ];
        for (expression, is_expected) in cases {
            match expand(expression) {
                Err(error) => assert!(is_expected(&error), "{expression:?}: unexpected {error:?}"),
                Ok(hosts) => panic!("{expression:?} expanded to {hosts:?}"),
            }
        }
    }

    #[test]
    fn error_messages_name_the_expression() {
        let Err(error) = expand("n[1-9:2]") else {
            panic!("stepped range accepted")
        };
        let message = error.to_string();
        assert!(
            message.contains("n[1-9:2]") && message.contains("step"),
            "{message}"
        );
    }

    #[test]
    fn compresses_to_canonical_form() {
        let cases: &[(&[&str], &str)] = &[
            (&[], ""),
            (&["host"], "host"),
            (&["n1", "n2", "n3"], "n[1-3]"),
            (
                &["nid001", "nid002", "nid003", "nid004", "nid010"],
                "nid[001-004,010]",
            ),
            (
                &["nid001", "nid002", "gpu-a01", "gpu-a02"],
                "nid[001-002],gpu-a[01-02]",
            ),
            (&["n9", "n10", "n11"], "n[9-11]"),
            (&["n1", "n01"], "n1,n01"),
            (&["n08", "n9"], "n08,n9"),
            (&["n01-ib", "n02-ib", "n03-eth"], "n[01-02]-ib,n03-eth"),
            (&["r1n01", "r1n02", "r2n01"], "r1n[01-02],r2n01"),
            (&["login", "n1", "n2", "login2"], "login,n[1-2],login2"),
            (&["n3", "n1", "n2"], "n[3,1-2]"),
            (&["n1", "n1"], "n[1,1]"),
            (&["007"], "007"),
            (&["007", "008"], "[007-008]"),
        ];
        for (hosts, expected) in cases {
            assert_eq!(compress(hosts), *expected, "{hosts:?}");
            assert_eq!(ok(expected), *hosts, "round trip of {expected:?}");
        }
    }

    /// xorshift64*: deterministic and dependency-free randomness for tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    fn random_host(rng: &mut Rng) -> String {
        let prefix = rng.pick(&["n", "nid", "gpu-a", "r1n", "", "x-"]);
        let suffix = rng.pick(&["", "", "", "-ib", "x"]);
        if rng.below(8) == 0 {
            return format!("login{suffix}z");
        }
        let width = rng.below(4) as usize;
        let bound = if rng.below(4) == 0 { 2000 } else { 12 };
        let number = rng.below(bound);
        format!("{prefix}{number:0width$}{suffix}")
    }

    #[test]
    fn random_lists_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let len = rng.below(20) as usize;
            let mut hosts: Vec<String> = (0..len).map(|_| random_host(&mut rng)).collect();
            if rng.below(2) == 0 {
                hosts.sort();
            }
            let compressed = compress(&hosts);
            assert_eq!(ok(&compressed), hosts, "via {compressed:?}");
            // Compressing the expansion of a canonical form is the identity.
            assert_eq!(compress(&ok(&compressed)), compressed);
        }
    }

    #[test]
    fn random_expressions_expand_then_compress_to_same_hosts() {
        let mut rng = Rng(42);
        for _ in 0..500 {
            let mut expression = String::new();
            for item in 0..=rng.below(3) {
                if item > 0 {
                    expression.push(',');
                }
                expression.push_str(rng.pick(&["n", "r", "gpu-"]));
                for group in 0..=rng.below(2) {
                    if group > 0 {
                        expression.push_str(rng.pick(&["n", "-s"]));
                    }
                    let width = rng.below(3) as usize + 1;
                    let lo = rng.below(50);
                    let hi = lo + rng.below(5);
                    expression.push_str(&format!("[{lo:0width$}-{hi:0width$}]"));
                }
            }
            let hosts = ok(&expression);
            assert_eq!(ok(&compress(&hosts)), hosts, "{expression:?}");
        }
    }
}
