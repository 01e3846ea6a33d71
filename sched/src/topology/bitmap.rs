//! The two ways cpu sets are written: hwloc's bitmaps (`0x000000ff,0xffffffff`:
//! comma-separated 32-bit hex words, most significant first, an optional
//! `0xf...f` word for "and every higher bit") and Linux cpu lists
//! (`0-3,8-11`, as in `cpulist` and `cpuset.cpus`).

/// The largest cpu number a set may name: far above any machine, low enough
/// that a hostile `0-4294967295` cannot exhaust memory.
pub(super) const MAX_CPU: usize = 1 << 16;

/// Parses an hwloc bitmap into the set bits, ascending. An infinite tail
/// (`0xf...f`) is dropped: cpusets of real objects are finite.
pub(super) fn parse_hwloc_bitmap(text: &str) -> Result<Vec<usize>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty bitmap".into());
    }
    let words: Vec<&str> = text.split(',').collect();
    if words.len() * 32 > MAX_CPU {
        return Err(format!("bitmap of {} words is too long", words.len()));
    }
    let mut bits = Vec::new();
    for (position, word) in words.iter().rev().enumerate() {
        let word = word.trim();
        if word == "0xf...f" {
            continue;
        }
        let hex = word
            .strip_prefix("0x")
            .or_else(|| word.strip_prefix("0X"))
            .ok_or_else(|| format!("word {word:?} does not start with 0x"))?;
        let value = u32::from_str_radix(hex, 16)
            .map_err(|_| format!("word {word:?} is not a 32-bit hex number"))?;
        for bit in 0..32 {
            if value & (1 << bit) != 0 {
                bits.push(position * 32 + bit);
            }
        }
    }
    Ok(bits)
}

/// Parses a Linux cpu list (`0-3,8,10-11`; empty means no cpu).
pub(super) fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let number = |s: &str| -> Result<usize, String> {
            let n: usize = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a cpu number"))?;
            if n > MAX_CPU {
                return Err(format!("cpu {n} is above {MAX_CPU}"));
            }
            Ok(n)
        };
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (number(low)?, number(high)?);
                if low > high {
                    return Err(format!("range {part:?} runs backwards"));
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(number(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hwloc_bitmaps() {
        assert_eq!(parse_hwloc_bitmap("0x0000000f").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(
            parse_hwloc_bitmap("0x00000001,0x00000000").unwrap(),
            vec![32]
        );
        assert_eq!(
            parse_hwloc_bitmap("0xf...f,0x00000003").unwrap(),
            vec![0, 1]
        );
        assert!(parse_hwloc_bitmap("").is_err());
        assert!(parse_hwloc_bitmap("0xzz").is_err());
        assert!(parse_hwloc_bitmap("ff").is_err());
        assert!(parse_hwloc_bitmap("0x1ffffffff").is_err());
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("0-4294967295").is_err());
    }
}
