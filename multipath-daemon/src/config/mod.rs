//! mpathd's configuration (TOML), multipath.conf import and check-config.
//!
//! The daemon reads one TOML file (`/etc/mpathd/mpathd.toml`, documented in
//! `docs/config.md`, example in `packaging/mpathd.toml`) into a [`Config`]:
//! policy [`Defaults`], per-WWID [`MultipathEntry`]s, and the blacklist and its
//! exceptions ([`Filter`]). [`Config::settings_for`] merges the defaults with a map's
//! entry; [`Config::filter`] decides whether a path device may be multipathed.
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
pub mod multipath_conf;
mod schema;
mod text;

pub use filter::{DeviceId, DeviceRule, Filter, Rule, Verdict};
pub use text::{ConfigErrors, Diagnostic};

use std::fmt;
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

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Policy for every map, and daemon-wide settings.
    pub defaults: Defaults,
    /// Per-WWID entries: alias and policy overrides.
    pub multipaths: Vec<MultipathEntry>,
    /// Devices never multipathed...
    pub blacklist: Filter,
    /// ...unless one of these matches (per kind of rule, as multipath-tools does).
    pub blacklist_exceptions: Filter,
}

/// `[defaults]`: the policy of every map unless its `[[multipaths]]` entry overrides it.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// How paths are grouped into priority groups. Default [`GroupingPolicy::Failover`].
    pub path_grouping_policy: GroupingPolicy,
    /// The kernel path selector in each group. Default [`SelectorKind::ServiceTime`].
    pub path_selector: SelectorKind,
    /// When to return to a higher priority group. Default [`Failback::Manual`].
    pub failback: Failback,
    /// What to do with IO when no path is left. Default [`NoPathRetry::Fail`]. This is
    /// the resolved value: the TOML parser folds `queue_if_no_path = true` into it when
    /// `no_path_retry` is not given.
    pub no_path_retry: NoPathRetry,
    /// `queue_if_no_path` as written (default false). `no_path_retry` wins when both are
    /// set; see [`MapSettings::queue_if_no_path`] for the resolved flag.
    pub queue_if_no_path: bool,
    /// Where path priorities come from. Default [`PrioSource::Const`].
    pub prio: PrioSource,
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
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            path_grouping_policy: GroupingPolicy::Failover,
            path_selector: SelectorKind::ServiceTime,
            failback: Failback::Manual,
            no_path_retry: NoPathRetry::Fail,
            queue_if_no_path: false,
            prio: PrioSource::Const,
            user_friendly_names: false,
            alias_prefix: DEFAULT_ALIAS_PREFIX.to_string(),
            find_multipaths: FindMultipaths::Strict,
            bindings_file: PathBuf::from(DEFAULT_BINDINGS_FILE),
            wwids_file: PathBuf::from(DEFAULT_WWIDS_FILE),
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }
}

/// One `[[multipaths]]` entry: a WWID, its alias, and policy overrides (`None` = the
/// default applies).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MultipathEntry {
    pub wwid: String,
    pub alias: Option<String>,
    pub path_grouping_policy: Option<GroupingPolicy>,
    pub path_selector: Option<SelectorKind>,
    pub failback: Option<Failback>,
    pub no_path_retry: Option<NoPathRetry>,
    pub queue_if_no_path: Option<bool>,
    pub prio: Option<PrioSource>,
    /// `file:line:col` of the entry, for messages (empty when built in code).
    pub location: String,
}

/// Settings for one map: defaults merged with its `multipaths` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MapSettings {
    /// The entry's alias, if it has one (user friendly names are the daemon's business:
    /// see [`bindings::Bindings`]).
    pub alias: Option<String>,
    pub path_grouping_policy: GroupingPolicy,
    pub path_selector: SelectorKind,
    pub failback: Failback,
    /// The resolved policy when no path is left (`no_path_retry` wins over
    /// `queue_if_no_path` at the same level; the entry's level wins over the defaults).
    pub no_path_retry: NoPathRetry,
    /// Whether the table starts with the `queue_if_no_path` feature: true unless
    /// `no_path_retry` is [`NoPathRetry::Fail`] (with `Retries(n)` the daemon turns
    /// queueing off after n retries, as multipathd does).
    pub queue_if_no_path: bool,
    pub prio: PrioSource,
}

/// `path_grouping_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupingPolicy {
    /// One path per priority group (`failover`).
    Failover,
    /// All paths in one group (`multibus`).
    Multibus,
    /// One group per distinct path priority (`group_by_prio`).
    GroupByPrio,
}

impl GroupingPolicy {
    pub const ALL: [GroupingPolicy; 3] = [Self::Failover, Self::Multibus, Self::GroupByPrio];

    /// The spelling in the config file (the same as multipath.conf).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::Multibus => "multibus",
            Self::GroupByPrio => "group_by_prio",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for GroupingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `path_selector`: the device-mapper path selector of each priority group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    RoundRobin,
    QueueLength,
    ServiceTime,
}

impl SelectorKind {
    pub const ALL: [SelectorKind; 3] = [Self::RoundRobin, Self::QueueLength, Self::ServiceTime];

    /// The kernel's name of the selector, also the spelling in the config file.
    pub fn dm_name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::QueueLength => "queue-length",
            Self::ServiceTime => "service-time",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.dm_name() == s)
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dm_name())
    }
}

/// `failback`: when IO returns to a better priority group after it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failback {
    /// As soon as a higher priority group has a usable path.
    Immediate,
    /// Never by itself (multipath-tools' default).
    Manual,
    /// Only when the first path of a group comes back (not when another node moved IO).
    Followover,
    /// This long after a higher priority group has a usable path.
    After(Duration),
}

/// `no_path_retry`: what happens to IO when no path is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoPathRetry {
    /// Fail it at once.
    Fail,
    /// Queue it until a path comes back, however long that takes.
    Queue,
    /// Queue it for this many path checker intervals, then fail it.
    Retries(u32),
}

/// `prio`: where each path's priority comes from (used by `group_by_prio`).
#[derive(Debug, Clone, PartialEq)]
pub enum PrioSource {
    /// Every path has priority 1.
    Const,
    /// From the target's ALUA port group state (optimized 50, non-optimized 10, ...).
    Alua,
    /// The first matching weight, as multipath-tools' `weightedpath`; 0 when none does.
    Weighted(Vec<Weight>),
}

impl PrioSource {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Const => "const",
            Self::Alua => "alua",
            Self::Weighted(_) => "weighted",
        }
    }
}

/// One rule of [`PrioSource::Weighted`]: paths whose `key` fully matches `pattern` get
/// `prio`.
#[derive(Debug, Clone)]
pub struct Weight {
    pub key: WeightKey,
    /// Compiled anchored (`^(?:...)$`): the whole value must match.
    pub pattern: regex::Regex,
    pub prio: u32,
}

impl Weight {
    /// A weight from the pattern as written (it is anchored here).
    pub fn new(key: WeightKey, pattern: &str, prio: u32) -> Result<Self, regex::Error> {
        Ok(Self {
            key,
            pattern: compile_anchored(pattern)?,
            prio,
        })
    }

    /// The pattern as written, without the anchors this module adds.
    pub fn source(&self) -> &str {
        let s = self.pattern.as_str();
        s.strip_prefix("^(?:")
            .and_then(|s| s.strip_suffix(")$"))
            .unwrap_or(s)
    }

    /// Whether this weight applies to a path with these identifiers.
    pub fn matches(&self, devname: &str, hbtl: &str, portal: Option<&str>) -> bool {
        match self.key {
            WeightKey::Devname => self.pattern.is_match(devname),
            WeightKey::Hbtl => self.pattern.is_match(hbtl),
            WeightKey::Portal => portal.is_some_and(|p| self.pattern.is_match(p)),
        }
    }
}

impl PartialEq for Weight {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.prio == other.prio
            && self.pattern.as_str() == other.pattern.as_str()
    }
}

/// What a [`Weight`] pattern is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKey {
    /// The kernel name of the path device, e.g. `sda`.
    Devname,
    /// SCSI `host:bus:target:lun`, e.g. `2:0:0:1`.
    Hbtl,
    /// The iSCSI portal of the path's session, `address:port`, e.g. `10.99.1.2:3260`.
    Portal,
}

impl WeightKey {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Devname => "devname",
            Self::Hbtl => "hbtl",
            Self::Portal => "portal",
        }
    }
}

/// `find_multipaths`: which non-blacklisted devices get a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FindMultipaths {
    /// Only WWIDs listed in `[[multipaths]]` or in the wwids file.
    Strict,
    /// Those, and any WWID seen on two or more paths (`on`, `yes`).
    On,
    /// Like `on`; mpathd does not wait for a second path to appear (multipath-tools
    /// holds a single path back for `find_multipaths_timeout`).
    Smart,
    /// Every non-blacklisted device (`greedy`, `off`, `no`).
    Greedy,
}

impl FindMultipaths {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Strict => "strict",
            Self::On => "on",
            Self::Smart => "smart",
            Self::Greedy => "greedy",
        }
    }

    /// Our spellings and multipath-tools' (`yes`, `no`, `off`).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "strict" => Self::Strict,
            "on" | "yes" => Self::On,
            "smart" => Self::Smart,
            "greedy" | "off" | "no" => Self::Greedy,
            _ => return None,
        })
    }
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

    /// The settings of the map of `wwid`: the defaults, overridden by its entry.
    pub fn settings_for(&self, wwid: &str) -> MapSettings {
        let d = &self.defaults;
        let e = self.entry_for(wwid);
        let no_path_retry = match e {
            Some(MultipathEntry {
                no_path_retry: Some(n),
                ..
            }) => *n,
            Some(MultipathEntry {
                queue_if_no_path: Some(q),
                ..
            }) => {
                if *q {
                    NoPathRetry::Queue
                } else {
                    NoPathRetry::Fail
                }
            }
            _ => d.no_path_retry,
        };
        MapSettings {
            alias: e.and_then(|e| e.alias.clone()),
            path_grouping_policy: e
                .and_then(|e| e.path_grouping_policy)
                .unwrap_or(d.path_grouping_policy),
            path_selector: e.and_then(|e| e.path_selector).unwrap_or(d.path_selector),
            failback: e.and_then(|e| e.failback).unwrap_or(d.failback),
            no_path_retry,
            queue_if_no_path: no_path_retry != NoPathRetry::Fail,
            prio: e
                .and_then(|e| e.prio.clone())
                .unwrap_or_else(|| d.prio.clone()),
        }
    }

    /// The `[[multipaths]]` entry of `wwid`, if any.
    pub fn entry_for(&self, wwid: &str) -> Option<&MultipathEntry> {
        self.multipaths.iter().find(|e| e.wwid == wwid)
    }

    /// The entry whose alias is `alias`, if any.
    pub fn entry_for_alias(&self, alias: &str) -> Option<&MultipathEntry> {
        self.multipaths
            .iter()
            .find(|e| e.alias.as_deref() == Some(alias))
    }

    /// Whether a path device may be multipathed: the blacklist, then its exceptions,
    /// kind by kind (devnode, then vendor/product, then WWID) as multipath-tools does: an
    /// exception only lifts a blacklist rule of the same kind.
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

/// Why `wwid` is not a usable WWID, if it is not.
pub fn wwid_problem(wwid: &str) -> Option<String> {
    if wwid.is_empty() {
        return Some("is empty".into());
    }
    if let Some(c) = wwid.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!("contains {c:?} (no blanks or control characters)"));
    }
    None
}

#[cfg(test)]
mod tests;
