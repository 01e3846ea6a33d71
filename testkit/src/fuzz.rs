//! Fuzzing on stable Rust: structured random mutation of valid inputs.
//! A harness gives seeds (valid encodings of the messages a decoder takes)
//! and the decoder; [`fuzz`] feeds it mutants — bit flips, bytes set to
//! interesting values (0, 0xff, 0x7f, 0x80, lengths near a power of two),
//! insertions, deletions, truncations, duplicated and spliced ranges,
//! lengths and counts overwritten with large numbers — and records every
//! panic (the input and its message) and the slowest input, so a harness
//! asserts none panicked and none hung. Coverage-guided fuzzing
//! (cargo-fuzz) needs nightly; this needs nothing.
//!
//! `LUMEN_FUZZ_ITERS` sets the inputs per harness (default 20 000, a short
//! run for CI; the long runs recorded in RELIABILITY.md use 1 000 000).

use std::time::{Duration, Instant};

/// What one harness run found.
#[derive(Debug, Clone)]
pub struct FuzzReport {
    /// The harness.
    pub name: String,
    /// Inputs tried.
    pub inputs: u64,
    /// Inputs that made the decoder panic (at most 8 kept) and the panic's
    /// message.
    pub panics: Vec<(Vec<u8>, String)>,
    /// Panics in all.
    pub panic_count: u64,
    /// The slowest single input.
    pub slowest: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl FuzzReport {
    /// Panics unless no input panicked and none took `max_per_input`.
    pub fn assert_clean(&self, max_per_input: Duration) {
        assert!(
            self.panic_count == 0,
            "{}: {} of {} inputs panicked; first: {:?}",
            self.name,
            self.panic_count,
            self.inputs,
            self.panics.first()
        );
        assert!(
            self.slowest < max_per_input,
            "{}: an input took {:?} (a hang?)",
            self.name,
            self.slowest
        );
    }

    /// One line for logs and RELIABILITY.md.
    pub fn summary(&self) -> String {
        format!(
            "fuzz {}: {} inputs in {:.1} s, {} panics, slowest input {:?}",
            self.name,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.panic_count,
            self.slowest
        )
    }
}

/// Inputs per harness: `LUMEN_FUZZ_ITERS`, else 20 000.
pub fn iterations() -> u64 {
    std::env::var("LUMEN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(20_000)
}

/// splitmix64: a fixed, seedable stream (a failing run can be replayed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xfe, 0xff, b'=', b';', b'\n', b' ', b':', b'[', b']', b',', b'-',
];

/// One mutant of one of `seeds` (an empty seed list gives random bytes).
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = if seeds.is_empty() {
        (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect()
    } else {
        seeds[rng.below(seeds.len())].clone()
    };
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(10) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    out.insert(at, rng.next_u64() as u8);
                }
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                out.drain(at..at + n);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                // Duplicate a range.
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                let piece: Vec<u8> = out[at..at + n].to_vec();
                let to = rng.below(len + 1);
                out.splice(to..to, piece);
            }
            6 if !seeds.is_empty() => {
                // Splice in a piece of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let at = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - at).min(32));
                    let to = rng.below(len + 1);
                    out.splice(to..to, other[at..at + n].iter().copied());
                }
            }
            7 if len >= 4 => {
                // A length or count field overwritten with a large number.
                let at = rng.below(len - 3);
                let value: u32 = match rng.below(4) {
                    0 => u32::MAX,
                    1 => 0x8000_0000,
                    2 => 1 << rng.below(32),
                    _ => rng.next_u64() as u32,
                };
                out[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            8 if len >= 8 => {
                let at = rng.below(len - 7);
                let value = if rng.below(2) == 0 {
                    u64::MAX
                } else {
                    1 << rng.below(64)
                };
                out[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                // Decimal numbers in text get huge or negative.
                if let Some(at) = out.iter().position(|b| b.is_ascii_digit()) {
                    let replacement: &[u8] = match rng.below(4) {
                        0 => b"99999999999999999999",
                        1 => b"-1",
                        2 => b"4294967296",
                        _ => b"0",
                    };
                    out.splice(at..at + 1, replacement.iter().copied());
                }
            }
        }
    }
    out
}

/// Feeds `iterations` mutants of `seeds` (the seeds themselves first) to
/// `target`, catching panics (see the module docs).
pub fn fuzz(name: &str, seeds: &[Vec<u8>], iterations: u64, target: impl Fn(&[u8])) -> FuzzReport {
    let previous = std::panic::take_hook();
    // Quiet: a panic is recorded, not printed, 10^6 times.
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut rng = Rng::new(
        0x5EED
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    let mut report = FuzzReport {
        name: name.to_string(),
        inputs: 0,
        panics: Vec::new(),
        panic_count: 0,
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    for i in 0..iterations {
        let input = match seeds.get(i as usize) {
            Some(seed) => seed.clone(),
            None => mutate(&mut rng, seeds),
        };
        let one = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&input)));
        report.slowest = report.slowest.max(one.elapsed());
        report.inputs += 1;
        if let Err(payload) = outcome {
            report.panic_count += 1;
            if report.panics.len() < 8 {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                report.panics.push((input, message));
            }
        }
    }
    report.elapsed = started.elapsed();
    std::panic::set_hook(previous);
    eprintln!("{}", report.summary());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_caught_and_reported() {
        let report = fuzz("demo", &[b"ab".to_vec()], 500, |input| {
            if input.len() > 3 && input[0] == b'a' {
                panic!("long input");
            }
        });
        assert_eq!(report.inputs, 500);
        assert!(report.panic_count > 0);
        assert_eq!(report.panics[0].1, "long input");
    }

    #[test]
    fn mutants_differ_and_stay_small() {
        let mut rng = Rng::new(1);
        let seeds = vec![b"cmd=get kvsname=x key=y\n".to_vec()];
        let mutants: Vec<Vec<u8>> = (0..200).map(|_| mutate(&mut rng, &seeds)).collect();
        assert!(mutants.iter().any(|m| m != &seeds[0]));
        assert!(mutants.iter().all(|m| m.len() < 1024));
    }
}
