//! Per-map settings: what each level of the config sets ([`Policy`]), the merge in
//! multipath-tools' order of precedence, and where each merged value came from.
//!
//! For a path (a [`PathIdent`]) each setting is taken from the first level that sets it:
//! its `[[multipaths]]` entry (by WWID), `[overrides]`, the matching `[[devices]]`
//! entries (later entries first), the matching built-in table entries (more specific
//! ones first), `[defaults]`, and the built-in default. This is `propsel.c`'s order in
//! multipath-tools ("multipaths > overrides > devices > built-in table > defaults").

use std::fmt;
use std::time::Duration;

use super::hwtable;
use super::values::{
    Failback, Features, GroupingPolicy, HardwareHandler, NoPathRetry, PathChecker, PrioSource,
    RrWeight, SelectorKind,
};
use super::{Config, MultipathEntry, normalize_wwid};

/// `checker_timeout` when nothing sets it: the SCSI layer's default command timeout.
pub const DEFAULT_CHECKER_TIMEOUT: Duration = Duration::from_secs(30);

/// A value and where it was written (`file:line:col`; empty for the built-in table).
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub at: String,
}

impl<T> Located<T> {
    pub fn new(value: T, at: impl Into<String>) -> Self {
        Self {
            value,
            at: at.into(),
        }
    }
}

/// The per-map settings one level of the config sets (`None`: not set there, a lower
/// level decides). The same keys are accepted in `[defaults]`, `[overrides]`,
/// `[[devices]]` and `[[multipaths]]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    pub path_grouping_policy: Option<Located<GroupingPolicy>>,
    pub path_selector: Option<Located<SelectorKind>>,
    pub failback: Option<Located<Failback>>,
    /// Also set by `queue_if_no_path` (true: queue, false: fail) when the same table
    /// has no `no_path_retry`.
    pub no_path_retry: Option<Located<NoPathRetry>>,
    pub prio: Option<Located<PrioSource>>,
    /// `Some(None)` is an explicit "0": no handler, even where a lower level has one.
    pub hardware_handler: Option<Located<Option<HardwareHandler>>>,
    pub features: Option<Located<Features>>,
    pub rr_weight: Option<Located<RrWeight>>,
    pub path_checker: Option<Located<PathChecker>>,
    pub checker_timeout: Option<Located<Duration>>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// What a path (or a map, from its paths) offers the config's lookup: the WWID for
/// `[[multipaths]]`, vendor, product and revision (SCSI INQUIRY, sysfs `vendor`,
/// `model`, `rev`, blanks trimmed) for the device tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathIdent<'a> {
    /// As `mpathd scan` prints it; blanks and underscores are folded before lookup.
    pub wwid: &'a str,
    pub vendor: &'a str,
    pub product: &'a str,
    pub revision: &'a str,
    /// The LUN reports ALUA support (TPGS). For a map, true only when every path does,
    /// as multipath-tools decides: the ALUA handler and prio apply only then.
    pub tpgs: bool,
}

/// The merged settings of one map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapSettings {
    /// The `[[multipaths]]` entry's alias, if it has one (user friendly names are the
    /// daemon's business: see [`super::bindings::Bindings`]).
    pub alias: Option<String>,
    pub path_grouping_policy: GroupingPolicy,
    pub path_selector: SelectorKind,
    pub failback: Failback,
    /// What IO does when no path is left, resolved with multipath-tools' rules: the
    /// first level that sets `no_path_retry`; when none does, `queue` if the resolved
    /// `features` has `queue_if_no_path`, else `fail`.
    pub no_path_retry: NoPathRetry,
    /// Whether the table starts with the `queue_if_no_path` feature: true unless
    /// `no_path_retry` is [`NoPathRetry::Fail`] (with `Retries(n)` the daemon turns
    /// queueing off after n retries, as multipathd does).
    pub queue_if_no_path: bool,
    pub prio: PrioSource,
    /// The SCSI device handler named in the table (`None`: "0").
    pub hardware_handler: Option<HardwareHandler>,
    /// The table's other features; `queue_if_no_path` is never set here (see
    /// [`MapSettings::queue_if_no_path`]).
    pub features: Features,
    pub rr_weight: RrWeight,
    pub path_checker: PathChecker,
    pub checker_timeout: Duration,
}

impl Default for MapSettings {
    /// The built-in defaults (multipath-tools' where it has the setting).
    fn default() -> Self {
        Self {
            alias: None,
            path_grouping_policy: GroupingPolicy::Failover,
            path_selector: SelectorKind::ServiceTime,
            failback: Failback::Manual,
            no_path_retry: NoPathRetry::Fail,
            queue_if_no_path: false,
            prio: PrioSource::Const,
            hardware_handler: None,
            features: Features::default(),
            rr_weight: RrWeight::Uniform,
            path_checker: PathChecker::Tur,
            checker_timeout: DEFAULT_CHECKER_TIMEOUT,
        }
    }
}

/// Where a merged value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The map's `[[multipaths]]` entry; `at` is the value's `file:line:col`.
    Multipaths {
        at: String,
    },
    Overrides {
        at: String,
    },
    /// A matching `[[devices]]` entry.
    Devices {
        at: String,
    },
    /// A matching entry of the built-in table, by its label.
    BuiltIn {
        entry: &'static str,
    },
    Defaults {
        at: String,
    },
    /// Nothing sets it: the built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Multipaths { at } => write!(f, "{at} [[multipaths]]"),
            Self::Overrides { at } => write!(f, "{at} [overrides]"),
            Self::Devices { at } => write!(f, "{at} [[devices]]"),
            Self::BuiltIn { entry } => write!(f, "built-in: {entry}"),
            Self::Defaults { at } => write!(f, "{at} [defaults]"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// One merged setting, for `mpathd show config`: its value as the config file spells
/// it, where it came from, and why it differs from what that level wrote, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub setting: &'static str,
    pub value: String,
    pub source: Source,
    pub note: Option<String>,
}

/// The levels in precedence order.
#[derive(Debug, Clone, Copy)]
enum Level {
    Multipaths,
    Overrides,
    Devices,
    BuiltIn(&'static str),
    Defaults,
}

impl Level {
    fn source(self, at: &str) -> Source {
        let at = at.to_string();
        match self {
            Self::Multipaths => Source::Multipaths { at },
            Self::Overrides => Source::Overrides { at },
            Self::Devices => Source::Devices { at },
            Self::BuiltIn(entry) => Source::BuiltIn { entry },
            Self::Defaults => Source::Defaults { at },
        }
    }
}

struct Layer<'c> {
    level: Level,
    policy: &'c Policy,
}

/// The value of the first layer that sets it, and where from.
fn pick<'c, T>(
    layers: &[Layer<'c>],
    get: impl Fn(&'c Policy) -> Option<&'c Located<T>>,
) -> Option<(&'c T, Source)> {
    layers
        .iter()
        .find_map(|l| get(l.policy).map(|loc| (&loc.value, l.level.source(&loc.at))))
}

/// Collects explanations only when asked (settings_for runs per path per pass).
struct Explainer(Option<Vec<Explained>>);

impl Explainer {
    fn add(&mut self, setting: &'static str, value: impl fmt::Display, source: &Source) {
        self.add_note(setting, value, source, None);
    }

    fn add_note(
        &mut self,
        setting: &'static str,
        value: impl fmt::Display,
        source: &Source,
        note: Option<String>,
    ) {
        if let Some(v) = &mut self.0 {
            v.push(Explained {
                setting,
                value: value.to_string(),
                source: source.clone(),
                note,
            });
        }
    }
}

impl Config {
    /// The levels that apply to `id`, highest precedence first.
    fn layers<'c>(&'c self, id: &PathIdent<'_>) -> (Option<&'c MultipathEntry>, Vec<Layer<'c>>) {
        let entry = self.entry_for(id.wwid);
        let mut layers = Vec::new();
        if let Some(e) = entry {
            layers.push(Layer {
                level: Level::Multipaths,
                policy: &e.policy,
            });
        }
        layers.push(Layer {
            level: Level::Overrides,
            policy: &self.overrides,
        });
        // Later entries win, as in multipath-tools (user entries after the built-in
        // ones, more specific built-in entries after the generic ones).
        for d in self.devices.iter().rev().filter(|d| d.matches(id)) {
            layers.push(Layer {
                level: Level::Devices,
                policy: &d.policy,
            });
        }
        for b in hwtable::table().iter().rev().filter(|b| b.matches(id)) {
            layers.push(Layer {
                level: Level::BuiltIn(b.label()),
                policy: &b.policy,
            });
        }
        layers.push(Layer {
            level: Level::Defaults,
            policy: &self.defaults.policy,
        });
        (entry, layers)
    }

    /// The merged settings of the map `id` belongs to.
    pub fn settings_for(&self, id: &PathIdent<'_>) -> MapSettings {
        self.resolve(id, false).0
    }

    /// Every merged setting of the map `id` belongs to, with where it came from.
    pub fn explain(&self, id: &PathIdent<'_>) -> Vec<Explained> {
        self.resolve(id, true).1
    }

    fn resolve(&self, id: &PathIdent<'_>, explain: bool) -> (MapSettings, Vec<Explained>) {
        let (entry, layers) = self.layers(id);
        let mut ex = Explainer(explain.then(Vec::new));
        let mut s = MapSettings::default();

        if let Some(e) = entry
            && let Some(a) = &e.alias
        {
            s.alias = Some(a.clone());
            ex.add(
                "alias",
                a,
                &Source::Multipaths {
                    at: e.location.clone(),
                },
            );
        }
        macro_rules! simple {
            ($field:ident) => {{
                let src = match pick(&layers, |p| p.$field.as_ref()) {
                    Some((v, src)) => {
                        s.$field = v.clone();
                        src
                    }
                    None => Source::Default,
                };
                ex.add(stringify!($field), &s.$field, &src);
            }};
        }
        simple!(path_grouping_policy);
        simple!(path_selector);
        simple!(failback);

        // features first: its queue_if_no_path matters only when no level sets
        // no_path_retry (multipath-tools' reconcile_features_with_options).
        let (mut features, features_src) = match pick(&layers, |p| p.features.as_ref()) {
            Some((f, src)) => (f.clone(), src),
            None => (Features::default(), Source::Default),
        };
        let features_queue = std::mem::take(&mut features.queue_if_no_path);
        let mut features_note = None;
        let npr_src = match pick(&layers, |p| p.no_path_retry.as_ref()) {
            Some((n, src)) => {
                s.no_path_retry = *n;
                if features_queue {
                    features_note = Some(format!(
                        "its queue_if_no_path is ignored: no_path_retry {} ({src}) decides",
                        s.no_path_retry
                    ));
                }
                src
            }
            None if features_queue => {
                s.no_path_retry = NoPathRetry::Queue;
                features_note = Some(
                    "its queue_if_no_path gives no_path_retry queue (no level sets \
                     no_path_retry)"
                        .into(),
                );
                features_src.clone()
            }
            None => Source::Default,
        };
        s.queue_if_no_path = s.no_path_retry != NoPathRetry::Fail;
        ex.add("no_path_retry", s.no_path_retry, &npr_src);
        s.features = features;
        ex.add_note("features", &s.features, &features_src, features_note);

        // prio and hardware handler: ALUA needs a LUN that reports TPGS. multipath-tools
        // falls back to const prio and drops the handler then (select_prio,
        // select_hwhandler); the kernel would refuse to attach the handler anyway.
        let (prio, prio_src) = match pick(&layers, |p| p.prio.as_ref()) {
            Some((p, src)) => (p.clone(), src),
            None => (PrioSource::Const, Source::Default),
        };
        if prio == PrioSource::Alua && !id.tpgs {
            s.prio = PrioSource::Const;
            ex.add_note(
                "prio",
                &s.prio,
                &prio_src,
                Some("alua from there falls back to const: the LUN does not report TPGS".into()),
            );
        } else {
            s.prio = prio;
            ex.add("prio", &s.prio, &prio_src);
        }
        let (hw, hw_src) = match pick(&layers, |p| p.hardware_handler.as_ref()) {
            Some((h, src)) => (h.clone(), src),
            None => (None, Source::Default),
        };
        let show =
            |h: &Option<HardwareHandler>| h.as_ref().map_or("0".to_string(), |h| h.to_string());
        if hw.as_ref().is_some_and(|h| h.name == "alua") && !id.tpgs {
            s.hardware_handler = None;
            ex.add_note(
                "hardware_handler",
                "0",
                &hw_src,
                Some(format!(
                    "\"{}\" from there is not loaded: the LUN does not report TPGS",
                    show(&hw)
                )),
            );
        } else {
            ex.add("hardware_handler", show(&hw), &hw_src);
            s.hardware_handler = hw;
        }

        simple!(rr_weight);
        simple!(path_checker);
        let src = match pick(&layers, |p| p.checker_timeout.as_ref()) {
            Some((v, src)) => {
                s.checker_timeout = *v;
                src
            }
            None => Source::Default,
        };
        ex.add("checker_timeout", s.checker_timeout.as_secs(), &src);
        (s, ex.0.unwrap_or_default())
    }

    /// Every `prio` any level of the config sets (the built-in table only sets `alua`).
    pub fn prio_sources(&self) -> impl Iterator<Item = &PrioSource> {
        std::iter::once(&self.defaults.policy)
            .chain(std::iter::once(&self.overrides))
            .chain(self.devices.iter().map(|d| &d.policy))
            .chain(self.multipaths.iter().map(|e| &e.policy))
            .filter_map(|p| p.prio.as_ref().map(|l| &l.value))
    }

    /// The `[[multipaths]]` entry of `wwid` (blanks and underscores folded), if any.
    pub fn entry_for(&self, wwid: &str) -> Option<&MultipathEntry> {
        let key = normalize_wwid(wwid);
        self.multipaths.iter().find(|e| e.wwid == key)
    }
}

/// The merged settings as a table for people: setting, value, where from; a note on
/// the line below where the value differs from what its source wrote.
pub fn format_explained(rows: &[Explained]) -> String {
    let w_set = rows.iter().map(|r| r.setting.len()).max().unwrap_or(0);
    let w_val = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let line = format!(
            "{:<w_set$}  {:<w_val$}  {}",
            r.setting,
            r.value,
            r.source,
            w_set = w_set,
            w_val = w_val
        );
        out.push_str(line.trim_end());
        out.push('\n');
        if let Some(n) = &r.note {
            out.push_str(&format!("{:w_set$}  note: {n}\n", "", w_set = w_set));
        }
    }
    out
}
