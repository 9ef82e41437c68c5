//! Typed model of the device-mapper `multipath` target's table and status lines.
//!
//! The daemon drives device-mapper by loading tables (`dmsetup table` format) and reads
//! back state with `dmsetup status`. Both are flat, count-prefixed word lists whose
//! layout lives in the kernel's `drivers/md/dm-mpath.c` (`multipath_ctr`,
//! `multipath_status`); this module turns them into values and back so that no other
//! stage handles raw strings.
//!
//! Both parsers take only the *params* part (what follows `<start> <length> multipath`);
//! [`TargetLine`] splits a whole line. They never panic, and every count read from the
//! input is checked against the number of words left before anything is allocated, so
//! hostile input cannot make them loop or allocate beyond its own size.

mod backend;
mod kernel;
mod status;
mod table;

pub use backend::{DmBackend, DmError, MapInfo, Message, SimDm, UUID_PREFIX, tables_match};
pub use kernel::KernelDm;

pub use status::{MultipathStatus, PathState, PathStatus, PgState, PgStatus};
pub use table::{Feature, HwHandler, MultipathTable, PathGroup, PathSpec, QueueMode, Selector};

use std::fmt;

/// Longest excerpt of the input that an error message repeats; enough to recognise a
/// table, short enough to keep a log line readable.
const ECHO_MAX_CHARS: usize = 200;

/// Why a table or status params string could not be parsed.
///
/// Every variant names the field (`what`, e.g. `priority group 2: path count`) and
/// echoes the input, since the message usually ends up in a log far from the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty params string")]
    Empty,
    /// The input ended before a field (or a counted run of fields) was complete.
    #[error("{what}: expected {expected} values in params string \"{input}\", found {found}")]
    Truncated {
        what: String,
        expected: u64,
        found: usize,
        input: String,
    },
    /// A count or number field is not a decimal `u32`.
    #[error("{what} \"{value}\" is not a number in \"{input}\"")]
    NotANumber {
        what: String,
        value: String,
        input: String,
    },
    /// A field is well-formed but not an allowed value.
    #[error("{what} \"{value}\" is invalid ({reason}) in \"{input}\"")]
    Invalid {
        what: String,
        value: String,
        reason: String,
        input: String,
    },
    /// Words remain after the last priority group: the counts do not describe the line.
    #[error("{count} unexpected trailing word(s) starting at \"{first}\" in \"{input}\"")]
    TrailingWords {
        count: usize,
        first: String,
        input: String,
    },
}

/// The input, shortened for an error message.
fn echo(input: &str) -> String {
    let trimmed = input.trim();
    if trimmed.chars().count() <= ECHO_MAX_CHARS {
        trimmed.to_string()
    } else {
        let mut s: String = trimmed.chars().take(ECHO_MAX_CHARS).collect();
        s.push_str("...");
        s
    }
}

/// A cursor over the whitespace-separated words of a params string.
///
/// All reads are checked; errors carry the field name and the input.
pub(crate) struct Words<'a> {
    input: &'a str,
    words: Vec<&'a str>,
    pos: usize,
}

impl<'a> Words<'a> {
    /// Splits `input`; an all-blank input is [`ParseError::Empty`].
    pub(crate) fn new(input: &'a str) -> Result<Self, ParseError> {
        let words: Vec<&str> = input.split_ascii_whitespace().collect();
        if words.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(Self {
            input,
            words,
            pos: 0,
        })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.words.len() - self.pos
    }

    pub(crate) fn truncated(&self, what: &str, expected: u64) -> ParseError {
        ParseError::Truncated {
            what: what.to_string(),
            expected,
            found: self.remaining(),
            input: echo(self.input),
        }
    }

    pub(crate) fn invalid(&self, what: &str, value: &str, reason: &str) -> ParseError {
        ParseError::Invalid {
            what: what.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
            input: echo(self.input),
        }
    }

    /// The next word, or a [`ParseError::Truncated`] naming `what`.
    pub(crate) fn word(&mut self, what: &str) -> Result<&'a str, ParseError> {
        match self.words.get(self.pos) {
            Some(&w) => {
                self.pos += 1;
                Ok(w)
            }
            None => Err(self.truncated(what, 1)),
        }
    }

    /// The next word as a decimal `u32` (the kernel's `unsigned`).
    ///
    /// Only ASCII digits are accepted, so that what parses also prints back unchanged.
    pub(crate) fn number(&mut self, what: &str) -> Result<u32, ParseError> {
        let w = self.word(what)?;
        parse_u32(w).ok_or_else(|| ParseError::NotANumber {
            what: what.to_string(),
            value: w.to_string(),
            input: echo(self.input),
        })
    }

    /// A count, checked to need at most the words left when each item takes
    /// `words_per_item` words; this bounds every later loop and allocation by the input.
    pub(crate) fn count(&mut self, what: &str, words_per_item: u64) -> Result<u32, ParseError> {
        let n = self.number(what)?;
        let needed = u64::from(n).saturating_mul(words_per_item);
        if needed > self.remaining() as u64 {
            return Err(self.truncated(what, needed));
        }
        Ok(n)
    }

    /// Takes `n` words as owned strings (`what` names the run in errors).
    pub(crate) fn take(&mut self, n: u32, what: &str) -> Result<Vec<String>, ParseError> {
        let n64 = u64::from(n);
        if n64 > self.remaining() as u64 {
            return Err(self.truncated(what, n64));
        }
        let n = n as usize;
        let out = self.words[self.pos..self.pos + n]
            .iter()
            .map(|w| (*w).to_string())
            .collect();
        self.pos += n;
        Ok(out)
    }

    /// Fails if any word is left over.
    pub(crate) fn finish(self) -> Result<(), ParseError> {
        match self.words.get(self.pos) {
            None => Ok(()),
            Some(first) => Err(ParseError::TrailingWords {
                count: self.remaining(),
                first: (*first).to_string(),
                input: echo(self.input),
            }),
        }
    }
}

/// A decimal `u32` of ASCII digits only (no sign, no blanks).
fn parse_u32(w: &str) -> Option<u32> {
    if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok()
}

/// Writes space-separated words, so that `Display` impls never emit stray blanks.
pub(crate) struct WordWriter<'a, 'b> {
    f: &'a mut fmt::Formatter<'b>,
    first: bool,
}

impl<'a, 'b> WordWriter<'a, 'b> {
    pub(crate) fn new(f: &'a mut fmt::Formatter<'b>) -> Self {
        Self { f, first: true }
    }

    pub(crate) fn word(&mut self, w: impl fmt::Display) -> fmt::Result {
        if self.first {
            self.first = false;
            write!(self.f, "{w}")
        } else {
            write!(self.f, " {w}")
        }
    }

    pub(crate) fn words<I, T>(&mut self, ws: I) -> fmt::Result
    where
        I: IntoIterator<Item = T>,
        T: fmt::Display,
    {
        for w in ws {
            self.word(w)?;
        }
        Ok(())
    }

    /// A count followed by that many words, the shape of most dm-mpath sections.
    pub(crate) fn counted(&mut self, ws: &[String]) -> fmt::Result {
        self.word(ws.len())?;
        self.words(ws)
    }
}

/// One line of `dmsetup table` / `dmsetup status` output for a single target:
/// `<start> <length> <target type> <params...>`.
///
/// Lets callers hand a whole line to the daemon and keep the params string for
/// [`MultipathTable`] or [`MultipathStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLine {
    /// First sector the target covers.
    pub start: u64,
    /// Length in 512-byte sectors.
    pub length: u64,
    /// Target type, e.g. `multipath`.
    pub target: String,
    /// Everything after the target type, whitespace-normalised.
    pub params: String,
}

impl std::str::FromStr for TargetLine {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.split_ascii_whitespace();
        let input = echo(s);
        let num = |w: Option<&str>, what: &str| -> Result<u64, ParseError> {
            let w = w.ok_or_else(|| ParseError::Truncated {
                what: what.to_string(),
                expected: 1,
                found: 0,
                input: input.clone(),
            })?;
            if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::NotANumber {
                    what: what.to_string(),
                    value: w.to_string(),
                    input: input.clone(),
                });
            }
            w.parse().map_err(|_| ParseError::NotANumber {
                what: what.to_string(),
                value: w.to_string(),
                input: input.clone(),
            })
        };
        let first = it.next();
        if first.is_none() {
            return Err(ParseError::Empty);
        }
        let start = num(first, "target start sector")?;
        let length = num(it.next(), "target length")?;
        let target = it
            .next()
            .ok_or_else(|| ParseError::Truncated {
                what: "target type".to_string(),
                expected: 1,
                found: 0,
                input: input.clone(),
            })?
            .to_string();
        let params = it.collect::<Vec<_>>().join(" ");
        Ok(Self {
            start,
            length,
            target,
            params,
        })
    }
}

impl fmt::Display for TargetLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.start, self.length, self.target)?;
        if !self.params.is_empty() {
            write!(f, " {}", self.params)?;
        }
        Ok(())
    }
}

/// Deterministic helpers shared by the property- and fuzz-style tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// xorshift64*: tiny, deterministic, good enough to spread test cases.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        /// Uniform-ish in `lo..=hi`.
        pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.below(hi - lo + 1)
        }

        pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len() as u64) as usize]
        }

        pub(crate) fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Collapses runs of whitespace, so expected strings can be compared with output.
    pub(crate) fn norm(s: &str) -> String {
        s.split_ascii_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Words that make up malformed inputs: valid tokens of both grammars plus junk.
    pub(crate) const FUZZ_WORDS: &[&str] = &[
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "1024",
        "4294967295",
        "4294967296",
        "99999999999999999999",
        "-1",
        "+1",
        "x",
        "A",
        "F",
        "E",
        "D",
        "a",
        "8:0",
        "8:16",
        "/dev/sda",
        "round-robin",
        "service-time",
        "queue-length",
        "alua",
        "queue_if_no_path",
        "pg_init_retries",
        "pg_init_delay_msecs",
        "retain_attached_hw_handler",
        "queue_mode",
        "bio",
        "mq",
        "rq",
        "no_partitions",
        "é",
    ];

    /// Random word soups and truncated / mutated copies of `valid`, for fuzz loops.
    pub(crate) fn fuzz_inputs(rng: &mut Rng, valid: &[&str], n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let s = match i % 4 {
                0 => {
                    let len = rng.below(30) as usize;
                    (0..len)
                        .map(|_| *rng.pick(FUZZ_WORDS))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
                1 => {
                    // Truncate a valid string at a random character boundary.
                    let v = rng.pick(valid);
                    let cut = rng.below(v.len() as u64 + 1) as usize;
                    let cut = (0..=cut)
                        .rev()
                        .find(|c| v.is_char_boundary(*c))
                        .unwrap_or(0);
                    v[..cut].to_string()
                }
                2 => {
                    // Replace, drop or insert one word of a valid string.
                    let v = rng.pick(valid);
                    let mut ws: Vec<&str> = v.split_ascii_whitespace().collect();
                    let at = rng.below(ws.len() as u64 + 1) as usize;
                    match rng.below(3) {
                        0 if at < ws.len() => ws[at] = *rng.pick(FUZZ_WORDS),
                        1 if at < ws.len() => {
                            ws.remove(at);
                        }
                        _ => ws.insert(at, *rng.pick(FUZZ_WORDS)),
                    }
                    ws.join(" ")
                }
                _ => {
                    // A valid string with random bytes of junk appended.
                    let v = rng.pick(valid);
                    format!("{v} {}", rng.pick(FUZZ_WORDS))
                }
            };
            out.push(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_line_splits_and_round_trips() {
        let line = "0 10 multipath  0 0 1 1 queue-length 0 2 1 8:0 128 8:16 128\n";
        let t: TargetLine = line.parse().unwrap();
        assert_eq!(t.start, 0);
        assert_eq!(t.length, 10);
        assert_eq!(t.target, "multipath");
        assert_eq!(t.params, "0 0 1 1 queue-length 0 2 1 8:0 128 8:16 128");
        assert_eq!(t.to_string(), testutil::norm(line));
        let table: MultipathTable = t.params.parse().unwrap();
        assert_eq!(table.groups.len(), 1);
    }

    #[test]
    fn target_line_errors() {
        assert_eq!("".parse::<TargetLine>(), Err(ParseError::Empty));
        let e = "x 10 multipath".parse::<TargetLine>().unwrap_err();
        assert!(e.to_string().contains("target start sector \"x\""), "{e}");
        let e = "0 10".parse::<TargetLine>().unwrap_err();
        assert!(e.to_string().contains("target type"), "{e}");
    }

    #[test]
    fn error_echo_is_bounded() {
        let long = "9 ".repeat(1000);
        let e = long.parse::<MultipathTable>().unwrap_err().to_string();
        assert!(e.len() < 400, "{e}");
        assert!(e.contains("..."), "{e}");
    }

    #[test]
    fn numbers_are_plain_decimal() {
        assert_eq!(parse_u32("0"), Some(0));
        assert_eq!(parse_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32("4294967296"), None);
        assert_eq!(parse_u32("+1"), None);
        assert_eq!(parse_u32("-1"), None);
        assert_eq!(parse_u32(""), None);
        assert_eq!(parse_u32("1x"), None);
    }
}
