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
use super::{Diagnostic, dm_name_problem, wwid_problem};

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
            let content = raw.split('#').next().unwrap_or("");
            let words: Vec<&str> = content.split_whitespace().take(3).collect();
            let problem = match words.as_slice() {
                [] => None,
                [alias, wwid] => {
                    if let Some(why) = dm_name_problem(alias) {
                        Some(format!("alias \"{}\" {why}", shorten(alias, 64)))
                    } else if let Some(why) = wwid_problem(wwid) {
                        Some(format!("wwid {why}"))
                    } else if let Some(&j) = b.by_alias.get(*alias) {
                        Some(format!(
                            "alias \"{alias}\" is already bound to {} (ignored)",
                            b.entries[j].1
                        ))
                    } else if let Some(&j) = b.by_wwid.get(*wwid) {
                        Some(format!(
                            "wwid {wwid} is already bound to \"{}\" (ignored)",
                            b.entries[j].0
                        ))
                    } else {
                        let j = b.entries.len();
                        b.entries.push((alias.to_string(), wwid.to_string()));
                        b.by_alias.insert(alias.to_string(), j);
                        b.by_wwid.insert(wwid.to_string(), j);
                        b.lines.push(Line::Entry(j));
                        continue;
                    }
                }
                _ => Some(format!(
                    "expected \"alias wwid\", found \"{}\" (ignored)",
                    shorten(content.trim(), 80)
                )),
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

    /// The alias bound to `wwid`, if any.
    pub fn lookup(&self, wwid: &str) -> Option<&str> {
        self.by_wwid.get(wwid).map(|&j| self.entries[j].0.as_str())
    }

    /// The WWID bound to `alias`, if any.
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
        self.by_wwid.insert(wwid.to_string(), j);
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
    wwids: Vec<String>,
    set: HashSet<String>,
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
            set: HashSet::new(),
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
                    if w.set.insert(wwid.to_string()) {
                        let j = w.wwids.len();
                        w.wwids.push(wwid.to_string());
                        w.lines.push(Line::Entry(j));
                    } else {
                        w.lines.push(Line::Verbatim(raw.to_string()));
                    }
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

    pub fn contains(&self, wwid: &str) -> bool {
        self.set.contains(wwid)
    }

    /// Adds `wwid`; false if it was already there (or is not a valid WWID).
    pub fn add(&mut self, wwid: &str) -> bool {
        if wwid_problem(wwid).is_some() || self.set.contains(wwid) {
            return false;
        }
        self.set.insert(wwid.to_string());
        let j = self.wwids.len();
        self.wwids.push(wwid.to_string());
        self.lines.push(Line::Entry(j));
        true
    }

    /// Removes `wwid`; false if it was not there.
    pub fn remove(&mut self, wwid: &str) -> bool {
        if !self.set.remove(wwid) {
            return false;
        }
        let Some(j) = self.wwids.iter().position(|w| w == wwid) else {
            return false;
        };
        self.lines.retain(|l| *l != Line::Entry(j));
        // Keep indices valid: blank the slot rather than shifting.
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
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
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
