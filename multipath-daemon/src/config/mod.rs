//! mpathd's configuration (TOML), multipath.conf import and check-config.
//!
//! The daemon reads one TOML file (`/etc/mpathd/mpathd.toml`, documented in
//! `docs/config.md`, example in `packaging/mpathd.toml`) into a [`Config`]: daemon-wide
//! [`Defaults`], per-map settings ([`Policy`]) at four levels (`[defaults]`,
//! `[[devices]]`, `[overrides]`, per-WWID [`MultipathEntry`]s) plus the built-in device
//! table ([`hwtable`]), and the blacklist and its exceptions ([`Filter`]).
//! [`Config::settings_for`] merges the levels for a path in multipath-tools' order of
//! precedence, [`Config::explain`] says where each value came from, and
//! [`Config::filter`] decides whether a path device may be multipathed.
//!
//! Every error carries the file, line and column of the key or value at fault
//! ([`Diagnostic`]), and all semantic errors of a file are reported at once
//! ([`ConfigErrors`]). [`multipath_conf`] reads multipath-tools' `multipath.conf` and
//! turns it into our TOML; [`bindings`] keeps the persistent alias and WWID files in
//! multipath-tools' formats.
//!
//! Parsers here never panic, and allocate at most in proportion to their input.

pub mod bindings;
mod ere;
mod filter;
pub mod hwtable;
pub mod multipath_conf;
mod schema;
mod settings;
mod text;
mod values;

pub use filter::{DeviceId, DeviceRule, Filter, Rule, Verdict};
pub use settings::{
    DEFAULT_CHECKER_TIMEOUT, Explained, Located, MapSettings, PathIdent, Policy, Source,
    format_explained,
};
pub use text::{ConfigErrors, Diagnostic};
pub use values::{
    Failback, Features, FindMultipaths, GroupingPolicy, HW_HANDLERS, HardwareHandler, NoPathRetry,
    PathChecker, PrioSource, QueueMode, RrWeight, SelectorKind, Weight, WeightKey,
};

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the daemon looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mpathd/mpathd.toml";
/// Default persistent alias bindings (`user_friendly_names`).
pub const DEFAULT_BINDINGS_FILE: &str = "/etc/mpathd/bindings";
/// Default file of WWIDs that have been multipathed (`find_multipaths`).
pub const DEFAULT_WWIDS_FILE: &str = "/etc/mpathd/wwids";
/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/mpathd/mpathd.sock";
/// Default prefix of user friendly names (`mpatha`, `mpathb`, ...).
pub const DEFAULT_ALIAS_PREFIX: &str = "mpath";
/// Largest config file read; bigger files are refused rather than read into memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Longest device-mapper name (`DM_NAME_LEN` is 128 with the NUL).
pub const DM_NAME_MAX: usize = 127;

/// `polling_interval` when not set: seconds between two checks of a path.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(5);
/// `reinstate_checks` when not set: clean checks in a row before a failed path is used
/// again.
pub const DEFAULT_REINSTATE_CHECKS: u32 = 2;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Daemon-wide settings, and the per-map settings of the lowest level.
    pub defaults: Defaults,
    /// Per-map settings above every device entry (multipath-tools' `overrides`).
    pub overrides: Policy,
    /// Per-hardware entries, by vendor/product/revision regexes, in file order.
    pub devices: Vec<DeviceEntry>,
    /// Per-WWID entries: alias and the per-map settings of the highest level.
    pub multipaths: Vec<MultipathEntry>,
    /// Devices never multipathed...
    pub blacklist: Filter,
    /// ...unless one of these matches (per kind of rule, as multipath-tools does).
    pub blacklist_exceptions: Filter,
}

/// `[defaults]`: daemon-wide settings, and per-map settings below the device tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// The per-map settings written in `[defaults]`; what is not set takes the built-in
    /// default ([`MapSettings::default`]).
    pub policy: Policy,
    /// Name maps `<alias_prefix><letters>` from the bindings file instead of by WWID.
    /// Default false.
    pub user_friendly_names: bool,
    /// Prefix of user friendly names. Default `mpath`.
    pub alias_prefix: String,
    /// Which devices get a map. Default [`FindMultipaths::Strict`].
    pub find_multipaths: FindMultipaths,
    /// Persistent `alias wwid` bindings. Default `/etc/mpathd/bindings`.
    pub bindings_file: PathBuf,
    /// WWIDs that have ever been multipathed. Default `/etc/mpathd/wwids`.
    pub wwids_file: PathBuf,
    /// The control socket. Default `/run/mpathd/mpathd.sock`.
    pub socket: PathBuf,
    /// Time between two checks of a path. Default 5 s (multipath-tools' too).
    pub polling_interval: Duration,
    /// Clean checks in a row before a failed path is reinstated. Default 2.
    pub reinstate_checks: u32,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            user_friendly_names: false,
            alias_prefix: DEFAULT_ALIAS_PREFIX.to_string(),
            find_multipaths: FindMultipaths::Strict,
            bindings_file: PathBuf::from(DEFAULT_BINDINGS_FILE),
            wwids_file: PathBuf::from(DEFAULT_WWIDS_FILE),
            socket: PathBuf::from(DEFAULT_SOCKET),
            polling_interval: DEFAULT_POLLING_INTERVAL,
            reinstate_checks: DEFAULT_REINSTATE_CHECKS,
        }
    }
}

/// One `[[devices]]` entry: which hardware (regexes matched anywhere in the value, as
/// multipath-tools' `regexec`), and its per-map settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEntry {
    pub vendor: Rule,
    pub product: Rule,
    /// `None` matches any revision.
    pub revision: Option<Rule>,
    pub policy: Policy,
    /// `file:line:col` of the entry.
    pub location: String,
}

impl DeviceEntry {
    pub fn matches(&self, id: &PathIdent<'_>) -> bool {
        self.vendor.pattern.is_match(id.vendor)
            && self.product.pattern.is_match(id.product)
            && self
                .revision
                .as_ref()
                .is_none_or(|r| r.pattern.is_match(id.revision))
    }
}

/// One `[[multipaths]]` entry: a WWID, its alias, and per-map settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultipathEntry {
    /// Normalised ([`normalize_wwid`]): blanks and underscore runs folded to one `_`.
    pub wwid: String,
    pub alias: Option<String>,
    pub policy: Policy,
    /// `file:line:col` of the entry, for messages (empty when built in code).
    pub location: String,
}

impl Config {
    /// Parses and checks a TOML config. `origin` names the file in messages.
    ///
    /// On failure every error found is returned, each with its line and column; a
    /// TOML syntax error stops the parse (it is then the only one).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        schema::parse(text, origin)
    }

    /// Reads and parses a TOML config file. A missing or unreadable file, or a
    /// multipath.conf given by mistake, is an error that says so.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        check_file(path)
    }

    /// The entry whose alias is `alias`, if any.
    pub fn entry_for_alias(&self, alias: &str) -> Option<&MultipathEntry> {
        self.multipaths
            .iter()
            .find(|e| e.alias.as_deref() == Some(alias))
    }

    /// Whether a path device may be multipathed: the blacklist, then its exceptions,
    /// kind by kind (udev properties, devnode, vendor/product, WWID) as multipath-tools
    /// does: an exception only lifts a blacklist rule of the same kind.
    pub fn filter(&self, dev: &DeviceId<'_>) -> Verdict {
        filter::check(&self.blacklist, &self.blacklist_exceptions, dev)
    }
}

/// Reads `path` for `mpathd check-config` (and [`Config::load`]): a TOML config, with
/// every error at its line and column. A multipath.conf (it does not parse as TOML but
/// does as multipath.conf, or its name ends in `.conf` and TOML fails) gets an error
/// that says so and suggests `mpathd import`.
pub fn check_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = text::read_limited(path, MAX_CONFIG_BYTES)
        .map_err(|msg| ConfigErrors::whole_file(&origin, msg))?;
    match Config::from_toml_str(&text, &origin) {
        Ok(c) => Ok(c),
        Err(errors) => {
            let syntax = errors.0.len() == 1 && errors.0[0].message.starts_with("TOML syntax");
            if !syntax {
                return Err(errors);
            }
            let is_conf = multipath_conf::parse(&text, &origin).is_ok();
            let named_conf = path.extension().is_some_and(|e| e == "conf");
            let mut errors = errors;
            if is_conf {
                errors.0.insert(
                    0,
                    Diagnostic::whole_file(
                        &origin,
                        format!(
                            "this looks like a multipath-tools multipath.conf, not an mpathd \
                             TOML config: convert it with `mpathd import {origin}`"
                        ),
                    ),
                );
            } else if named_conf {
                errors.0.push(Diagnostic::whole_file(
                    &origin,
                    format!(
                        "if this is a multipath.conf, `mpathd import {origin}` converts it \
                         (it does not parse as multipath.conf either)"
                    ),
                ));
            }
            Err(errors)
        }
    }
}

/// A regex compiled to match the whole string.
pub(crate) fn compile_anchored(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

/// A regex compiled to match anywhere (multipath-tools' `regexec` semantics).
pub(crate) fn compile_search(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
}

/// Why `name` is not a valid device-mapper name, if it is not.
pub fn dm_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name == "." || name == ".." {
        return Some("cannot be \".\" or \"..\"".into());
    }
    if name.len() > DM_NAME_MAX {
        return Some(format!(
            "is {} bytes long, device-mapper names are at most {DM_NAME_MAX}",
            name.len()
        ));
    }
    if name.contains('/') {
        return Some("contains '/'".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!("contains {c:?} (no blanks or control characters)"));
    }
    None
}

/// Why `wwid` is not a usable WWID, if it is not. Blanks are fine: they are folded
/// ([`normalize_wwid`]).
pub fn wwid_problem(wwid: &str) -> Option<String> {
    if wwid.trim().is_empty() {
        return Some("is empty".into());
    }
    if let Some(c) = wwid.chars().find(|c| c.is_control()) {
        return Some(format!("contains {c:?} (no control characters)"));
    }
    None
}

/// A WWID as mpathd compares them: blanks at the ends trimmed, and every run of blanks
/// and underscores inside folded into one `_`.
///
/// udev's `scsi_id -u` (and the `ID_SERIAL` property multipath-tools reads) replaces a
/// run of blanks by one underscore; older tools printed the blanks (multipath 0.4.9:
/// `1IET 00010001` where `scsi_id -gu` prints `1IET_00010001`) or one underscore per
/// blank (`1DEC_____321816758474`). All of these fold to the same key, so a WWID copied
/// from any of them finds the LUN.
pub fn normalize_wwid(wwid: &str) -> Cow<'_, str> {
    let t = wwid.trim();
    if t.len() == wwid.len() && !t.contains("__") && !t.chars().any(char::is_whitespace) {
        return Cow::Borrowed(wwid);
    }
    let mut out = String::with_capacity(t.len());
    let mut gap = false;
    for c in t.chars() {
        if c.is_whitespace() || c == '_' {
            gap = true;
        } else {
            if gap {
                out.push('_');
                gap = false;
            }
            out.push(c);
        }
    }
    if gap {
        out.push('_');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
