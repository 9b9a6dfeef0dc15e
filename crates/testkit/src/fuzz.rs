//! Deterministic hostile input for the parsers' unit tests: a seeded xorshift PRNG, byte
//! mutations of valid inputs, and a runner that names the seed and case of a failure so it
//! can be replayed (`NS_FUZZ_SEED=<seed> cargo test ...`). No dependency, no clock: the same
//! seed gives the same cases on every machine.

/// xorshift64* (Vigna): small, fast, good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Byte strings that break parsers more often than random bytes do: line ends, NUL,
/// non-UTF-8, separators, huge numbers, nesting.
pub const HOSTILE: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\n\n",
    b"\0",
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x82",
    b" ",
    b"\t",
    b"\r\n ",
    b"\r\n\t",
    b":",
    b";",
    b",",
    b"=",
    b"\"",
    b"\\",
    b"[",
    b"]",
    b"{",
    b"}",
    b"$",
    b"${",
    b"%",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"ffffffffffffffffff",
    b"99999999999999999999999999999999",
    b"1e999",
    b"-0",
    b"NaN",
    b"null",
];

/// One random mutation of `input`: truncation, a byte flip, deletion, duplication of a run,
/// insertion of a [`HOSTILE`] or `dict` token, a run repeated many times, or random bytes.
pub fn mutate(rng: &mut Rng, input: &[u8], dict: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = rng.below(v.len() + 1);
        match rng.below(9) {
            0 => v.truncate(at),
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next_u64() as u8;
            }
            3 if at < v.len() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            4 if at < v.len() => {
                let end = (at + 1 + rng.below(32)).min(v.len());
                let run = v[at..end].to_vec();
                v.splice(at..at, run);
            }
            5 => {
                let t = rng.pick(HOSTILE);
                v.splice(at..at, t.iter().copied());
            }
            6 if !dict.is_empty() => {
                let t = rng.pick(dict);
                v.splice(at..at, t.iter().copied());
            }
            7 => {
                // Oversized: one token or run repeated up to a few thousand times.
                let t: Vec<u8> = if at < v.len() && rng.one_in(2) {
                    v[at..(at + 1 + rng.below(8)).min(v.len())].to_vec()
                } else {
                    rng.pick(HOSTILE).to_vec()
                };
                let times = 1 + rng.below(4096);
                let big: Vec<u8> = t.iter().copied().cycle().take(t.len() * times).collect();
                v.splice(at..at, big);
            }
            _ => {
                let n = rng.below(16);
                let r = rng.bytes(n);
                v.splice(at..at, r);
            }
        }
    }
    v
}

/// The seed of this run: `NS_FUZZ_SEED` when set (to replay a failure), else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("NS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Prints the name, seed and case while a case runs, if it panics.
struct Blame<'a> {
    name: &'a str,
    seed: u64,
    case: usize,
}

impl Drop for Blame<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz {}: failed at case {} with seed {} (replay: NS_FUZZ_SEED={})",
                self.name, self.case, self.seed, self.seed
            );
        }
    }
}

/// Run `cases` cases of `check`, each with the shared generator and its case number; a
/// panic (the parser's or the check's assertion) names the seed to replay it with.
pub fn run(name: &str, default_seed: u64, cases: usize, mut check: impl FnMut(&mut Rng, usize)) {
    let seed = seed(default_seed);
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        let blame = Blame { name, seed, case };
        check(&mut rng, case);
        drop(blame);
    }
}

/// Every prefix of `input` (truncation at each offset), then `input` with each single byte
/// replaced by each of `subst`, for the exhaustive part of a parser's test.
pub fn truncations_and_substitutions<'a>(
    input: &'a [u8],
    subst: &'a [u8],
) -> impl Iterator<Item = Vec<u8>> + 'a {
    let cuts = (0..input.len()).map(move |n| input[..n].to_vec());
    let subs = (0..input.len()).flat_map(move |i| {
        subst.iter().map(move |&b| {
            let mut v = input.to_vec();
            v[i] = b;
            v
        })
    });
    cuts.chain(subs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_cases() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            assert_eq!(
                mutate(&mut a, b"GET / HTTP/1.1\r\n\r\n", &[b"x"]),
                mutate(&mut b, b"GET / HTTP/1.1\r\n\r\n", &[b"x"])
            );
        }
        assert_eq!(Rng::new(0).below(0), 0);
        let n = truncations_and_substitutions(b"abc", b"\0\n").count();
        assert_eq!(n, 3 + 3 * 2);
    }
}
