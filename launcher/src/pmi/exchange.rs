//! Put, fence and get of byte strings over either PMI protocol.
//!
//! PMI values are short text without separators, so bytes travel as
//! lowercase hex. A value that does not fit the server's limit is split: the
//! key itself holds `c<count>` and `key.0 .. key.{count-1}` the pieces; a
//! value that fits is stored as `h<hex>` under the key directly. The split is
//! pure ([`encode_value`], [`ValueHeader::parse`]) and unit-tested.

use super::client::{Pmi1Client, Pmi2Client};
use super::PmiError;

/// What both PMI clients offer.
pub(crate) trait KeyValueSpace {
    /// Publishes `value` under `key` at the next fence.
    fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError>;
    /// Waits for every rank; afterwards all puts before it are visible.
    fn fence(&mut self) -> Result<(), PmiError>;
    /// Reads a key published before the last fence.
    fn get(&mut self, key: &str) -> Result<String, PmiError>;
    /// Longest value the server accepts.
    fn max_value(&self) -> usize;
}

impl KeyValueSpace for Pmi2Client {
    fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
        Pmi2Client::put(self, key, value)
    }
    fn fence(&mut self) -> Result<(), PmiError> {
        Pmi2Client::fence(self)
    }
    fn get(&mut self, key: &str) -> Result<String, PmiError> {
        Pmi2Client::get(self, key)
    }
    fn max_value(&self) -> usize {
        // Slurm's limit is 1024; keep room for the `h`/`c` marker.
        super::pmi2::MAX_VALUE - 24
    }
}

impl KeyValueSpace for Pmi1Client {
    fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
        Pmi1Client::put(self, key, value)
    }
    fn fence(&mut self) -> Result<(), PmiError> {
        Pmi1Client::barrier(self)
    }
    fn get(&mut self, key: &str) -> Result<String, PmiError> {
        Pmi1Client::get(self, key)
    }
    fn max_value(&self) -> usize {
        Pmi1Client::max_value(self)
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; `None` when it is not hex of whole bytes.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// The `(key suffix, value)` pairs that store `bytes` with values of at most
/// `max_value` characters: `("", "h<hex>")` when it fits, else
/// `("", "c<count>")` and `(".i", piece)` for every piece.
pub(crate) fn encode_value(bytes: &[u8], max_value: usize) -> Vec<(String, String)> {
    let hex = to_hex(bytes);
    let max_value = max_value.max(4);
    if hex.len() < max_value {
        return vec![(String::new(), format!("h{hex}"))];
    }
    // Hex is ASCII: any split point is a character boundary.
    let pieces: Vec<&str> = hex
        .as_bytes()
        .chunks(max_value)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    let mut pairs = vec![(String::new(), format!("c{}", pieces.len()))];
    pairs.extend(
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| (format!(".{i}"), (*piece).to_owned())),
    );
    pairs
}

/// What the value under a key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ValueHeader {
    /// The bytes themselves.
    Inline(Vec<u8>),
    /// The bytes are split over this many pieces.
    Pieces(usize),
}

impl ValueHeader {
    /// Parses the value stored under the key itself.
    pub(crate) fn parse(value: &str) -> Option<ValueHeader> {
        if let Some(hex) = value.strip_prefix('h') {
            return from_hex(hex).map(ValueHeader::Inline);
        }
        let count: usize = value.strip_prefix('c')?.parse().ok()?;
        (1..=1 << 16)
            .contains(&count)
            .then_some(ValueHeader::Pieces(count))
    }
}

/// Puts `bytes` under `key` (split when needed).
pub(crate) fn put_bytes(
    kvs: &mut dyn KeyValueSpace,
    key: &str,
    bytes: &[u8],
) -> Result<(), PmiError> {
    for (suffix, value) in encode_value(bytes, kvs.max_value()) {
        kvs.put(&format!("{key}{suffix}"), &value)?;
    }
    Ok(())
}

/// Gets the bytes that [`put_bytes`] stored under `key`.
pub(crate) fn get_bytes(kvs: &mut dyn KeyValueSpace, key: &str) -> Result<Vec<u8>, PmiError> {
    let bad = |reason: &str| PmiError::BadValue {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let header = kvs.get(key)?;
    match ValueHeader::parse(&header).ok_or_else(|| bad("neither h<hex> nor c<count>"))? {
        ValueHeader::Inline(bytes) => Ok(bytes),
        ValueHeader::Pieces(count) => {
            let mut hex = String::new();
            for i in 0..count {
                hex.push_str(&kvs.get(&format!("{key}.{i}"))?);
            }
            from_hex(&hex).ok_or_else(|| bad("the pieces are not hex"))
        }
    }
}

/// Every rank's `mine`, in rank order: each rank puts under
/// `{prefix}.{rank}`, all fence, then each gets everyone's.
pub(crate) fn allgather(
    kvs: &mut dyn KeyValueSpace,
    prefix: &str,
    rank: u32,
    size: u32,
    mine: &[u8],
) -> Result<Vec<Vec<u8>>, PmiError> {
    put_bytes(kvs, &format!("{prefix}.{rank}"), mine)?;
    kvs.fence()?;
    (0..size)
        .map(|r| {
            if r == rank {
                Ok(mine.to_vec())
            } else {
                get_bytes(kvs, &format!("{prefix}.{r}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Map {
        staged: HashMap<String, String>,
        visible: HashMap<String, String>,
        max: usize,
    }

    impl KeyValueSpace for Map {
        fn put(&mut self, key: &str, value: &str) -> Result<(), PmiError> {
            assert!(value.len() <= self.max, "{} > {}", value.len(), self.max);
            self.staged.insert(key.into(), value.into());
            Ok(())
        }
        fn fence(&mut self) -> Result<(), PmiError> {
            self.visible.extend(self.staged.drain());
            Ok(())
        }
        fn get(&mut self, key: &str) -> Result<String, PmiError> {
            self.visible
                .get(key)
                .cloned()
                .ok_or_else(|| PmiError::NotFound { key: key.into() })
        }
        fn max_value(&self) -> usize {
            self.max
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("é0"), None);
    }

    #[test]
    fn small_values_inline_large_ones_split() {
        assert_eq!(
            encode_value(b"ab", 100),
            vec![(String::new(), "h6162".into())]
        );
        let big = vec![7u8; 100];
        let pairs = encode_value(&big, 64);
        assert_eq!(pairs[0], (String::new(), "c4".into()));
        assert_eq!(pairs.len(), 5);
        assert!(pairs.iter().all(|(_, v)| v.len() <= 64));
        assert_eq!(ValueHeader::parse("c4"), Some(ValueHeader::Pieces(4)));
        assert_eq!(
            ValueHeader::parse("h00"),
            Some(ValueHeader::Inline(vec![0]))
        );
        for bad in ["", "x", "c", "c0", "c-1", "h0", "cx"] {
            assert_eq!(ValueHeader::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn allgather_through_a_map() {
        let mut map = Map {
            max: 40,
            ..Map::default()
        };
        let values: Vec<Vec<u8>> = (0..3u8).map(|r| vec![r; 10 + 30 * r as usize]).collect();
        for (rank, value) in values.iter().enumerate() {
            put_bytes(&mut map, &format!("ep.{rank}"), value).unwrap();
        }
        let table = allgather(&mut map, "ep", 0, 3, &values[0]).unwrap();
        assert_eq!(table, values);
        map.put("bad", "nothex").unwrap();
        map.fence().unwrap();
        assert!(matches!(
            get_bytes(&mut map, "bad"),
            Err(PmiError::BadValue { .. })
        ));
        assert!(matches!(
            get_bytes(&mut map, "missing"),
            Err(PmiError::NotFound { .. })
        ));
    }
}
