//! Seeded randomness that replays.
//!
//! Every random draw in the harness (toxic jitter, toxicity, slicer sizes, the
//! mock provider's probabilistic rules) comes from a generator derived from the
//! run's seed and a label naming *what* is drawn (a proxy, a toxic, a connection
//! number). Deriving per label, rather than sharing one generator, is what makes
//! draws independent of scheduling: connection 7 of proxy `llm` gets the same
//! jitter whether it was accepted before or after connection 6 of another proxy.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A 64-bit value derived from `seed` and the labels, stable across platforms
/// and releases (SHA-256 of the seed and the length-prefixed labels).
pub fn derive(seed: u64, labels: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"gauntlet-seed-v1");
    hasher.update(seed.to_be_bytes());
    for label in labels {
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        hasher.update((label.len() as u64).to_be_bytes());
        hasher.update(label);
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A generator for the draws named by `labels` under `seed`.
pub fn rng(seed: u64, labels: &[&[u8]]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, labels))
}

/// A uniform draw in `[0, 1)` for the event named by `labels`: the same seed and
/// labels give the same value, whatever happened before.
pub fn unit(seed: u64, labels: &[&[u8]]) -> f64 {
    // 53 random bits make every representable value in [0, 1) equally spaced.
    (derive(seed, labels) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn derivation_depends_on_seed_and_every_label() {
        let base = derive(7, &[b"proxy", b"llm", b"3"]);
        assert_eq!(base, derive(7, &[b"proxy", b"llm", b"3"]));
        assert_ne!(base, derive(8, &[b"proxy", b"llm", b"3"]));
        assert_ne!(base, derive(7, &[b"proxy", b"llm", b"4"]));
        assert_ne!(derive(7, &[b"ab", b"c"]), derive(7, &[b"a", b"bc"]));
    }

    #[test]
    fn unit_draws_lie_in_the_half_open_interval_and_spread() {
        let draws: Vec<f64> = (0u32..1000)
            .map(|i| unit(42, &[b"t", &i.to_be_bytes()]))
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below_half = draws.iter().filter(|d| **d < 0.5).count();
        // A fair coin over 1000 flips lands within 400..600 with overwhelming odds.
        assert!(
            (400..600).contains(&below_half),
            "{below_half} of 1000 below 0.5"
        );
    }

    #[test]
    fn generators_replay() {
        let a: Vec<u32> = rng(1, &[b"x"]).random_iter().take(4).collect();
        let b: Vec<u32> = rng(1, &[b"x"]).random_iter().take(4).collect();
        assert_eq!(a, b);
    }
}
