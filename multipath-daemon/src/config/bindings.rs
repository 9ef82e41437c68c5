//! Persistent files in multipath-tools' formats: alias bindings (`user_friendly_names`)
//! and the WWIDs that have been multipathed (`find_multipaths`).
//!
//! Both keep every line they read (comments, and lines they could not parse, which are
//! reported as [`Diagnostic`]s and never dropped), append new entries, and save
//! atomically (temporary file in the same directory, fsync, rename).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::text::shorten;
use super::{Diagnostic, dm_name_problem, normalize_wwid, wwid_problem};

/// Largest bindings or wwids file read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

const BINDINGS_HEADER: &str = "\
# Multipath bindings, Version : 1.0
# NOTE: this file is automatically maintained by mpathd.
# You should not need to edit this file in normal circumstances.
#
# Format:
# alias wwid
#
";

const WWIDS_HEADER: &str = "\
# Multipath wwids, Version : 1.0
# NOTE: This file is automatically maintained by mpathd.
# You should not need to edit this file in normal circumstances.
#
# Valid WWIDs:
";

/// Why a bindings or wwids file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: larger than {max} bytes")]
    TooBig { path: PathBuf, max: u64 },
    #[error("{path}: not UTF-8 text")]
    NotUtf8 { path: PathBuf },
}

fn read_optional(path: &Path) -> Result<Option<String>, FileError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError::TooBig {
            path: path.to_path_buf(),
            max: MAX_FILE_BYTES,
        });
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| FileError::NotUtf8 {
            path: path.to_path_buf(),
        })
}

/// Writes `contents` to `path` atomically: a temporary file beside it, fsync, rename,
/// then fsync of the directory. Creates the directory if needed.
pub fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The user friendly name suffix of index `n` (1-based): a..z, aa..az, ba, ...
pub fn alias_suffix(mut n: u64) -> String {
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

/// The index of a suffix made only of lowercase letters (inverse of [`alias_suffix`]).
pub fn alias_index(suffix: &str) -> Option<u64> {
    if suffix.is_empty() || suffix.len() > 12 {
        return None;
    }
    let mut n: u64 = 0;
    for b in suffix.bytes() {
        if !b.is_ascii_lowercase() {
            return None;
        }
        n = n * 26 + u64::from(b - b'a' + 1);
    }
    Some(n)
}

/// One line of a file we keep: either as read (comment, blank, unparsable) or an entry.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    Verbatim(String),
    Entry(usize),
}

/// The alias bindings file: `alias wwid` lines, `#` comments.
#[derive(Debug, Clone, PartialEq)]
pub struct Bindings {
    path: PathBuf,
    lines: Vec<Line>,
    /// (alias, wwid) in file order.
    entries: Vec<(String, String)>,
    by_wwid: HashMap<String, usize>,
    by_alias: HashMap<String, usize>,
    problems: Vec<Diagnostic>,
    /// Whether the file existed when loaded (a new file gets the header).
    existed: bool,
}

impl Bindings {
    /// Reads `path`; a missing file is an empty set of bindings. Lines that cannot be
    /// used are kept as they are and reported by [`Bindings::problems`].
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_optional(path)?;
        let existed = text.is_some();
        let mut b = Self::parse(text.as_deref().unwrap_or(""), path);
        b.existed = existed;
        Ok(b)
    }

    /// Parses bindings text; `path` is where [`Bindings::save`] writes and the origin
    /// of problems.
    pub fn parse(text: &str, path: &Path) -> Self {
        let origin = path.display().to_string();
        let mut b = Self {
            path: path.to_path_buf(),
            lines: Vec::new(),
            entries: Vec::new(),
            by_wwid: HashMap::new(),
            by_alias: HashMap::new(),
            problems: Vec::new(),
            existed: true,
        };
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            // The alias, then the WWID: the rest of the line, which may hold blanks as
            // older tools printed WWIDs (folded to compare, kept as written).
            let (alias, wwid) = match content.split_once(char::is_whitespace) {
                Some((a, w)) => (a, w.trim()),
                None => (content, ""),
            };
            let key = normalize_wwid(wwid);
            let problem = if content.is_empty() {
                None
            } else if wwid.is_empty() {
                Some(format!(
                    "expected \"alias wwid\", found \"{}\" (ignored)",
                    shorten(content, 80)
                ))
            } else if let Some(why) = dm_name_problem(alias) {
                Some(format!("alias \"{}\" {why}", shorten(alias, 64)))
            } else if let Some(why) = wwid_problem(wwid) {
                Some(format!("wwid {why}"))
            } else if let Some(&j) = b.by_alias.get(alias) {
                Some(format!(
                    "alias \"{alias}\" is already bound to {} (ignored)",
                    b.entries[j].1
                ))
            } else if let Some(&j) = b.by_wwid.get(key.as_ref()) {
                Some(format!(
                    "wwid {wwid} is already bound to \"{}\" (ignored)",
                    b.entries[j].0
                ))
            } else {
                let j = b.entries.len();
                b.entries.push((alias.to_string(), wwid.to_string()));
                b.by_alias.insert(alias.to_string(), j);
                b.by_wwid.insert(key.into_owned(), j);
                b.lines.push(Line::Entry(j));
                continue;
            };
            if let Some(message) = problem {
                let col = raw.chars().take_while(|c| c.is_whitespace()).count() + 1;
                b.problems
                    .push(Diagnostic::new(&origin, lineno, col, message));
            }
            b.lines.push(Line::Verbatim(raw.to_string()));
        }
        b
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that were kept but not used, each with its line number.
    pub fn problems(&self) -> &[Diagnostic] {
        &self.problems
    }

    /// (alias, wwid) pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(a, w)| (a.as_str(), w.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The alias bound to `wwid` (blanks and underscores folded), if any.
    pub fn lookup(&self, wwid: &str) -> Option<&str> {
        self.by_wwid
            .get(normalize_wwid(wwid).as_ref())
            .map(|&j| self.entries[j].0.as_str())
    }

    /// The WWID bound to `alias`, as the file writes it, if any.
    pub fn wwid_of(&self, alias: &str) -> Option<&str> {
        self.by_alias
            .get(alias)
            .map(|&j| self.entries[j].1.as_str())
    }

    /// The alias of `wwid`: its binding, or a new one (`true`) that is the first free
    /// name of `prefix` + a..z, aa.. (as multipath-tools allocates them).
    pub fn alias_for(&mut self, wwid: &str, prefix: &str) -> (String, bool) {
        self.alias_for_avoiding(wwid, prefix, &HashSet::new())
    }

    /// Like [`Bindings::alias_for`], and a new name is never one in `taken` (e.g. the
    /// aliases of `[[multipaths]]` entries and existing dm devices).
    pub fn alias_for_avoiding(
        &mut self,
        wwid: &str,
        prefix: &str,
        taken: &HashSet<String>,
    ) -> (String, bool) {
        if let Some(a) = self.lookup(wwid) {
            return (a.to_string(), false);
        }
        // At most len + taken + 1 candidates are in use or excluded: the loop ends.
        let limit = (self.entries.len() + taken.len() + 1) as u64;
        let mut name = String::new();
        for n in 1..=limit {
            name = format!("{prefix}{}", alias_suffix(n));
            if !self.by_alias.contains_key(&name) && !taken.contains(&name) {
                break;
            }
        }
        let j = self.entries.len();
        self.entries.push((name.clone(), wwid.to_string()));
        self.by_alias.insert(name.clone(), j);
        self.by_wwid.insert(normalize_wwid(wwid).into_owned(), j);
        self.lines.push(Line::Entry(j));
        (name, true)
    }

    /// The file's text as [`Bindings::save`] writes it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.existed || self.lines.is_empty() {
            out.push_str(BINDINGS_HEADER);
        }
        for l in &self.lines {
            match l {
                Line::Verbatim(s) => out.push_str(s),
                Line::Entry(j) => {
                    let (a, w) = &self.entries[*j];
                    out.push_str(a);
                    out.push(' ');
                    out.push_str(w);
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically (temporary file and rename).
    pub fn save(&self) -> io::Result<()> {
        write_atomic(&self.path, &self.to_text())
    }
}

/// The wwids file: one `/wwid/` per line, `#` comments.
#[derive(Debug, Clone, PartialEq)]
pub struct WwidsFile {
    path: PathBuf,
    lines: Vec<Line>,
    /// As written, in order of addition; a removed WWID leaves an empty slot.
    wwids: Vec<String>,
    /// Folded WWID ([`normalize_wwid`]) -> its slot in `wwids`.
    index: HashMap<String, usize>,
    problems: Vec<Diagnostic>,
    existed: bool,
}

impl WwidsFile {
    /// Reads `path`; a missing file is empty. Unusable lines are kept and reported by
    /// [`WwidsFile::problems`].
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = read_optional(path)?;
        let existed = text.is_some();
        let mut w = Self::parse(text.as_deref().unwrap_or(""), path);
        w.existed = existed;
        Ok(w)
    }

    pub fn parse(text: &str, path: &Path) -> Self {
        let origin = path.display().to_string();
        let mut w = Self {
            path: path.to_path_buf(),
            lines: Vec::new(),
            wwids: Vec::new(),
            index: HashMap::new(),
            problems: Vec::new(),
            existed: true,
        };
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                w.lines.push(Line::Verbatim(raw.to_string()));
                continue;
            }
            // multipath-tools writes "/wwid/" and may follow it with a comment.
            let parsed = t
                .strip_prefix('/')
                .and_then(|rest| rest.split_once('/'))
                .filter(|(_, after)| {
                    let after = after.trim();
                    after.is_empty() || after.starts_with('#')
                })
                .map(|(wwid, _)| wwid);
            match parsed {
                Some(wwid) if wwid_problem(wwid).is_none() => {
                    // A repeated WWID (however its blanks are written) stays in the file,
                    // tied to the same slot.
                    let key = normalize_wwid(wwid);
                    let j = match w.index.get(key.as_ref()) {
                        Some(&j) => j,
                        None => {
                            let j = w.wwids.len();
                            w.wwids.push(wwid.to_string());
                            w.index.insert(key.into_owned(), j);
                            j
                        }
                    };
                    w.lines.push(Line::Entry(j));
                }
                _ => {
                    let col = raw.chars().take_while(|c| c.is_whitespace()).count() + 1;
                    w.problems.push(Diagnostic::new(
                        &origin,
                        i + 1,
                        col,
                        format!(
                            "expected \"/wwid/\", found \"{}\" (ignored)",
                            shorten(t, 80)
                        ),
                    ));
                    w.lines.push(Line::Verbatim(raw.to_string()));
                }
            }
        }
        w
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn problems(&self) -> &[Diagnostic] {
        &self.problems
    }

    /// Whether `wwid` is in the file (blanks and underscores folded).
    pub fn contains(&self, wwid: &str) -> bool {
        self.index.contains_key(normalize_wwid(wwid).as_ref())
    }

    /// Adds `wwid`; false if it was already there (or is not a valid WWID).
    pub fn add(&mut self, wwid: &str) -> bool {
        let key = normalize_wwid(wwid);
        if wwid_problem(wwid).is_some() || self.index.contains_key(key.as_ref()) {
            return false;
        }
        let j = self.wwids.len();
        self.wwids.push(wwid.to_string());
        self.index.insert(key.into_owned(), j);
        self.lines.push(Line::Entry(j));
        true
    }

    /// Removes `wwid` (every line of it, however its blanks are written); false if it
    /// was not there.
    pub fn remove(&mut self, wwid: &str) -> bool {
        let Some(j) = self.index.remove(normalize_wwid(wwid).as_ref()) else {
            return false;
        };
        self.lines.retain(|l| *l != Line::Entry(j));
        // Keep the other slots' indices: blank this one rather than shift.
        self.wwids[j].clear();
        true
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.wwids
            .iter()
            .filter(|w| !w.is_empty())
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.existed || self.lines.is_empty() {
            out.push_str(WWIDS_HEADER);
        }
        for l in &self.lines {
            match l {
                Line::Verbatim(s) => out.push_str(s),
                Line::Entry(j) => {
                    out.push('/');
                    out.push_str(&self.wwids[*j]);
                    out.push('/');
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn save(&self) -> io::Result<()> {
        write_atomic(&self.path, &self.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mpathd-bindings-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn suffixes() {
        let names: Vec<String> = (1..=30).map(alias_suffix).collect();
        assert_eq!(names[0], "a");
        assert_eq!(names[25], "z");
        assert_eq!(names[26], "aa");
        assert_eq!(names[27], "ab");
        assert_eq!(alias_suffix(52), "az");
        assert_eq!(alias_suffix(53), "ba");
        assert_eq!(alias_suffix(702), "zz");
        assert_eq!(alias_suffix(703), "aaa");
        for n in 1..2000 {
            assert_eq!(alias_index(&alias_suffix(n)), Some(n));
        }
        assert_eq!(alias_index(""), None);
        assert_eq!(alias_index("aB"), None);
    }

    #[test]
    fn allocation_order_and_reuse() {
        let mut b = Bindings::parse("", Path::new("/nonexistent/bindings"));
        let mut got = Vec::new();
        for i in 0..28 {
            let (a, new) = b.alias_for(&format!("wwid{i}"), "mpath");
            assert!(new);
            got.push(a);
        }
        assert_eq!(got[0], "mpatha");
        assert_eq!(got[1], "mpathb");
        assert_eq!(got[25], "mpathz");
        assert_eq!(got[26], "mpathaa");
        assert_eq!(got[27], "mpathab");
        // Asking again gives the same name, not new.
        assert_eq!(b.alias_for("wwid3", "mpath"), ("mpathd".to_string(), false));
        assert_eq!(b.lookup("wwid26"), Some("mpathaa"));
        assert_eq!(b.wwid_of("mpathab"), Some("wwid27"));
    }

    #[test]
    fn allocation_fills_gaps_and_avoids_taken() {
        let mut b = Bindings::parse(
            "mpatha w1\nmpathc w3\nmpathe w5\n",
            Path::new("/x/bindings"),
        );
        assert_eq!(b.alias_for("w2", "mpath"), ("mpathb".into(), true));
        let taken: HashSet<String> = ["mpathd".to_string()].into();
        assert_eq!(
            b.alias_for_avoiding("w4", "mpath", &taken),
            ("mpathf".into(), true)
        );
        // Another prefix starts at a.
        assert_eq!(b.alias_for("w6", "san"), ("sana".into(), true));
        // Never a name another WWID has, even a hand-written one.
        let mut b = Bindings::parse("mpatha w1\nfoo w2\n", Path::new("/x/b"));
        let taken: HashSet<String> = (1..=5)
            .map(|n| format!("mpath{}", alias_suffix(n)))
            .collect();
        assert_eq!(
            b.alias_for_avoiding("w3", "mpath", &taken),
            ("mpathf".into(), true)
        );
    }

    #[test]
    fn round_trip_keeps_comments_and_bad_lines() {
        let dir = tmpdir("rt");
        let path = dir.join("sub/bindings");
        let mut b = Bindings::load(&path).unwrap();
        assert!(b.is_empty());
        b.alias_for("3600a", "mpath");
        b.alias_for("3600b", "mpath");
        b.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Multipath bindings"), "{text}");
        assert!(text.ends_with("mpatha 3600a\nmpathb 3600b\n"), "{text}");
        // Add a comment, a corrupt line and a duplicate by hand; load, add, save.
        std::fs::write(
            &path,
            format!("{text}# mine\nonlyoneword\nmpatha 3600z\nx/y 3600q\nmpathc 3600a\n"),
        )
        .unwrap();
        let mut b = Bindings::load(&path).unwrap();
        let probs: Vec<(usize, String)> = b
            .problems()
            .iter()
            .map(|d| (d.line, d.message.clone()))
            .collect();
        assert_eq!(probs.len(), 4, "{probs:?}");
        assert_eq!(probs[0].0, 11);
        assert!(probs[0].1.contains("expected \"alias wwid\""));
        assert!(probs[1].1.contains("already bound"));
        assert!(probs[2].1.contains("contains '/'"));
        assert_eq!(probs[3].0, 14);
        assert_eq!(b.len(), 2);
        assert_eq!(b.alias_for("3600c", "mpath"), ("mpathc".into(), true));
        b.save().unwrap();
        let again = std::fs::read_to_string(&path).unwrap();
        assert!(again.contains("# mine\nonlyoneword\n"), "{again}");
        assert!(again.ends_with("mpathc 3600a\nmpathc 3600c\n"), "{again}");
        assert_eq!(again.matches("# Multipath bindings").count(), 1);
        let b2 = Bindings::load(&path).unwrap();
        assert_eq!(b2.lookup("3600c"), Some("mpathc"));
        // No temporary file left behind.
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn never_panics_on_junk() {
        let junk = [
            "\0\0", "a b c d", "é é", "#", "   ", "a\tb", "..\tw", "/ /", "//", "/a b/", "/a/ x",
        ];
        for j in junk {
            let b = Bindings::parse(j, Path::new("b"));
            let _ = b.to_text();
            let w = WwidsFile::parse(j, Path::new("w"));
            let _ = w.to_text();
        }
    }

    #[test]
    fn wwids_and_bindings_fold_blanks_and_underscores() {
        // multipath 0.4.9 wrote the IET LUN's WWID with a blank; scsi_id -gu prints an
        // underscore; very old scsi_id one underscore per blank.
        let w = WwidsFile::parse(
            "/1IET 00010001/\n/1DEC_____321816758474/\n/1IET_00010001/\n",
            Path::new("w"),
        );
        assert!(w.problems().is_empty(), "{:?}", w.problems());
        assert_eq!(w.len(), 2, "the same LUN twice");
        assert!(w.contains("1IET_00010001") && w.contains("1IET 00010001"));
        assert!(w.contains("1DEC_321816758474"));
        // Lines stay as written.
        assert_eq!(
            w.to_text(),
            "/1IET 00010001/\n/1DEC_____321816758474/\n/1IET 00010001/\n"
        );
        let mut w = w;
        assert!(!w.add("1IET_00010001"));
        assert!(w.remove("1IET_00010001") && !w.contains("1IET 00010001"));

        let mut b = Bindings::parse(
            "remote_disk 1IET 00010001\nmpathb  1DEC_____3218  # old\n",
            Path::new("b"),
        );
        assert!(b.problems().is_empty(), "{:?}", b.problems());
        assert_eq!(b.lookup("1IET_00010001"), Some("remote_disk"));
        assert_eq!(b.lookup("1DEC_3218"), Some("mpathb"));
        assert_eq!(b.wwid_of("remote_disk"), Some("1IET 00010001"));
        assert_eq!(
            b.alias_for("1IET_00010001", "mpath"),
            ("remote_disk".into(), false)
        );
        let b = Bindings::parse("a 1IET 0001\nb 1IET_0001\n", Path::new("b"));
        assert_eq!(b.problems().len(), 1);
        assert!(b.problems()[0].message.contains("already bound to \"a\""));
    }

    #[test]
    fn wwids_file() {
        let dir = tmpdir("wwids");
        let path = dir.join("wwids");
        let mut w = WwidsFile::load(&path).unwrap();
        assert!(w.is_empty() && !w.contains("a"));
        assert!(w.add("3600a"));
        assert!(!w.add("3600a"));
        assert!(!w.add(" "));
        assert!(w.add("3600b"));
        w.save().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Multipath wwids"), "{text}");
        assert!(text.ends_with("/3600a/\n/3600b/\n"), "{text}");
        std::fs::write(
            &path,
            format!("{text}/3600c/ # note\nnot-a-wwid\n/3600a/\n"),
        )
        .unwrap();
        let mut w = WwidsFile::load(&path).unwrap();
        assert_eq!(w.len(), 3);
        assert!(w.contains("3600c"));
        assert_eq!(w.problems().len(), 1);
        assert_eq!(w.problems()[0].line, 9);
        assert!(w.remove("3600a"));
        assert!(!w.remove("3600a"));
        assert_eq!(w.iter().collect::<Vec<_>>(), vec!["3600b", "3600c"]);
        w.save().unwrap();
        let w = WwidsFile::load(&path).unwrap();
        assert!(!w.contains("3600a") && w.contains("3600b"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
