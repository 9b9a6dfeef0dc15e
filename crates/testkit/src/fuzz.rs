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

/// A sample INI with its commented-out options (`#key = value`) switched on at random, each
/// with probability 1/2: the samples document every option that way, so the mutations start
/// from files that set many of them (with the samples' placeholder values, bad ones too).
pub fn uncomment(rng: &mut Rng, ini: &str) -> String {
    let mut out = String::with_capacity(ini.len());
    for line in ini.lines() {
        let on = line
            .strip_prefix('#')
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()) && l.contains(" = "));
        match on {
            Some(l) if rng.one_in(2) => out.push_str(l),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// What a configuration error must be: one line (no raw line break or control byte from
/// a value) naming `place` (the file, `path:LINE: ...`) or the default a value reached
/// through `$` (`name (default): ...`).
pub fn assert_config_error(msg: &str, place: &str) {
    assert!(
        !msg.contains(|c: char| c.is_control()),
        "not one clean line: {msg:?}"
    );
    assert!(
        msg.contains(place) || msg.contains("(default)"),
        "does not name {place}: {msg}"
    );
}

/// A program's sample INI, its options switched on at random ([`uncomment`]) and mutated
/// with `dict`, `cases` times: `load` reads the text as the file `place` and returns its
/// error, if any, which must pass [`assert_config_error`].
pub fn sample_files(
    name: &str,
    seed: u64,
    cases: usize,
    sample: &str,
    dict: &[&[u8]],
    place: &str,
    mut load: impl FnMut(&str) -> Option<String>,
) {
    run(name, seed, cases, |rng, _| {
        let text = uncomment(rng, sample);
        let bytes = mutate(rng, text.as_bytes(), dict);
        if let Some(msg) = load(&String::from_utf8_lossy(&bytes)) {
            assert_config_error(&msg, place);
        }
    });
}

/// `base` (which must load: `load` gives no error) then each `(group, name)` option set in
/// turn to values with a continuation line, a control byte, `$` references, an unclosed
/// bracket and a long path (lines oslo reads as one value): each error passes
/// [`assert_config_error`], so a value is never echoed unquoted.
pub fn hostile_values<'a>(
    options: impl IntoIterator<Item = (&'a str, &'a str)>,
    base: &str,
    place: &str,
    mut load: impl FnMut(&str) -> Option<String>,
) {
    assert_eq!(load(base), None, "the base configuration loads");
    // Also one long enough for every length check (a socket path, a name).
    let long = format!("/var/lib/x\n  {}", "y".repeat(200));
    for (group, name) in options {
        for bad in [
            "169.254.169.254:80\n  x:1",
            "1\n  \u{1}",
            "$$x\n  ${nope}",
            "tcp:[::1\n  ]:1",
            &long,
        ] {
            let text = format!("{base}[{group}]\n{name} = {bad}\n");
            if let Some(msg) = load(&text) {
                assert_config_error(&msg, place);
            }
        }
    }
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
        let mut r = Rng::new(1);
        let on: Vec<String> = (0..20)
            .map(|_| uncomment(&mut r, "[DEFAULT]\n#a = 1\n# prose\n"))
            .collect();
        assert!(on.iter().any(|t| t == "[DEFAULT]\na = 1\n# prose\n"));
        assert!(on.iter().any(|t| t == "[DEFAULT]\n#a = 1\n# prose\n"));
        assert_eq!(n, 3 + 3 * 2);
    }
}
