//! The TOML config file: walks toml_edit's tree (which keeps spans) and collects every
//! error with its line and column instead of stopping at the first.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::text::{LineIndex, shorten};
use super::{
    Config, ConfigErrors, Defaults, DeviceEntry, DeviceRule, Diagnostic, Failback, Features,
    Filter, FindMultipaths, GroupingPolicy, HardwareHandler, Located, MultipathEntry, NoPathRetry,
    PathChecker, Policy, PrioSource, RrWeight, Rule, SelectorKind, Weight, WeightKey,
    dm_name_problem, normalize_wwid, wwid_problem,
};

type Span = Option<Range<usize>>;

/// Per-map keys: accepted in `[defaults]`, `[overrides]`, `[[devices]]` and
/// `[[multipaths]]`.
pub(crate) const POLICY_KEYS: &[&str] = &[
    "path_grouping_policy",
    "path_selector",
    "failback",
    "no_path_retry",
    "queue_if_no_path",
    "prio",
    "prio_weights",
    "hardware_handler",
    "features",
    "rr_weight",
    "path_checker",
    "checker_timeout",
];

/// Daemon-wide keys: only in `[defaults]`.
pub(crate) const DAEMON_KEYS: &[&str] = &[
    "user_friendly_names",
    "alias_prefix",
    "find_multipaths",
    "bindings_file",
    "wwids_file",
    "socket",
    "polling_interval",
    "reinstate_checks",
];

const TOP_KEYS: &[&str] = &[
    "defaults",
    "overrides",
    "devices",
    "multipaths",
    "blacklist",
    "blacklist_exceptions",
];
const FILTER_KEYS: &[&str] = &["devnode", "wwid", "device", "property"];
const DEVICE_KEYS: &[&str] = &["vendor", "product"];
const WEIGHT_KEYS: &[&str] = &["devname", "hbtl", "portal", "prio"];

/// Longest `polling_interval`, in seconds.
const POLLING_INTERVAL_MAX: i64 = 3600;
/// Most `reinstate_checks`.
const REINSTATE_CHECKS_MAX: i64 = 1000;
/// Longest `checker_timeout`, in seconds.
const CHECKER_TIMEOUT_MAX: i64 = 3600;

fn keys_with(first: &[&'static str], rest: &[&'static str]) -> Vec<&'static str> {
    first.iter().chain(rest).copied().collect()
}

/// Longest alias prefix: leaves room for the letters in a 127-byte dm name.
const ALIAS_PREFIX_MAX: usize = 64;

pub(super) fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let idx = LineIndex::new(text);
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = match e.span() {
                Some(r) => idx.pos(r.start),
                None => (1, 1),
            };
            let msg = e.message().trim().replace('\n', "; ");
            return Err(ConfigErrors(vec![Diagnostic::new(
                origin,
                line,
                col,
                format!("TOML syntax: {msg}"),
            )]));
        }
    };
    let mut cx = Cx {
        origin,
        idx,
        errors: Vec::new(),
    };
    let mut cfg = Config::default();
    let root = doc.as_table();
    for (k, item) in root.iter() {
        let key_span = root.key(k).and_then(|k| k.span());
        match k {
            "defaults" => {
                if let Some(t) = cx.table(item, &key_span, "[defaults]") {
                    cfg.defaults = cx.defaults(t);
                }
            }
            "overrides" => {
                if let Some(t) = cx.table(item, &key_span, "[overrides]") {
                    cfg.overrides = cx.overrides(t);
                }
            }
            "devices" => cfg.devices = cx.device_entries(item, &key_span),
            "multipaths" => cfg.multipaths = cx.multipaths(item, &key_span),
            "blacklist" => cfg.blacklist = cx.filter(item, &key_span, "blacklist"),
            "blacklist_exceptions" => {
                cfg.blacklist_exceptions = cx.filter(item, &key_span, "blacklist_exceptions")
            }
            _ => cx.unknown(k, &key_span, "at the top level", TOP_KEYS),
        }
    }
    if cx.errors.is_empty() {
        Ok(cfg)
    } else {
        // Keep the order of the file (stable: same position keeps discovery order).
        cx.errors.sort_by_key(|d| (d.line, d.col));
        Err(ConfigErrors(cx.errors))
    }
}

/// The per-map keys of one table as read, before `prio` and `prio_weights` are combined
/// and `queue_if_no_path` folded into `no_path_retry`.
#[derive(Default)]
struct PolicySeen {
    policy: Policy,
    queue_if_no_path: Option<Located<bool>>,
    weights: WeightsSeen,
}

struct Cx<'a> {
    origin: &'a str,
    idx: LineIndex<'a>,
    errors: Vec<Diagnostic>,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => value_type_name(v),
    }
}

fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "an inline table",
    }
}

/// The span of an item, or `fallback` (its key) when it has none.
fn span_or(item: &Item, fallback: &Span) -> Span {
    item.span().or_else(|| fallback.clone())
}

fn regex_msg(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(s.as_str())
            .to_string(),
        regex::Error::CompiledTooBig(_) => "the compiled regex is too big".to_string(),
        other => other.to_string(),
    }
}

fn one_of(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'a> Cx<'a> {
    fn err(&mut self, span: &Span, message: impl Into<String>) {
        let (line, col) = match span {
            Some(r) => self.idx.pos(r.start),
            None => (1, 1),
        };
        self.errors
            .push(Diagnostic::new(self.origin, line, col, message));
    }

    fn location(&self, span: &Span) -> String {
        match span {
            Some(r) => {
                let (l, c) = self.idx.pos(r.start);
                format!("{}:{l}:{c}", self.origin)
            }
            None => self.origin.to_string(),
        }
    }

    fn unknown(&mut self, key: &str, span: &Span, place: &str, expected: &[&str]) {
        let hint = if !place.contains("[defaults]") && DAEMON_KEYS.contains(&key) {
            " (it can only be set in [defaults])".to_string()
        } else {
            format!(" (expected one of {})", expected.join(", "))
        };
        self.err(
            span,
            format!("unknown key \"{}\" {place}{hint}", shorten(key, 64)),
        );
    }

    fn table<'d>(&mut self, item: &'d Item, key: &Span, what: &str) -> Option<&'d dyn TableLike> {
        match item.as_table_like() {
            Some(t) => Some(t),
            None => {
                self.err(
                    &span_or(item, key),
                    format!("{what} must be a table, found {}", type_name(item)),
                );
                None
            }
        }
    }

    /// Visits each key of `t` with its key span and value span; unknown keys are errors.
    fn keys<'d>(
        &mut self,
        t: &'d dyn TableLike,
        place: &str,
        allowed: &[&str],
        mut f: impl FnMut(&mut Self, &str, &'d Item, Span, Span),
    ) {
        for (k, item) in t.iter() {
            let key_span = t.get_key_value(k).and_then(|(k, _)| k.span());
            if !allowed.contains(&k) {
                self.unknown(k, &key_span, place, allowed);
                continue;
            }
            let vspan = span_or(item, &key_span);
            f(self, k, item, key_span, vspan);
        }
    }

    fn string<'d>(&mut self, item: &'d Item, span: &Span, what: &str) -> Option<&'d str> {
        match item.as_str() {
            Some(s) => Some(s),
            None => {
                self.err(
                    span,
                    format!("{what} must be a string, found {}", type_name(item)),
                );
                None
            }
        }
    }

    fn boolean(&mut self, item: &Item, span: &Span, what: &str) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(
                    span,
                    format!(
                        "{what} must be true or false, found {}",
                        describe_value(item)
                    ),
                );
                None
            }
        }
    }

    /// A string among `names`, mapped by `from`.
    fn choice<T>(
        &mut self,
        item: &Item,
        span: &Span,
        what: &str,
        names: &[&str],
        from: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.string(item, span, what)?;
        match from(s) {
            Some(v) => Some(v),
            None => {
                self.err(
                    span,
                    format!(
                        "{what} \"{}\" is not one of {}",
                        shorten(s, 64),
                        one_of(names)
                    ),
                );
                None
            }
        }
    }

    fn path(&mut self, item: &Item, span: &Span, what: &str) -> Option<PathBuf> {
        let s = self.string(item, span, what)?;
        if !s.starts_with('/') {
            self.err(
                span,
                format!(
                    "{what} must be an absolute path, found \"{}\"",
                    shorten(s, 64)
                ),
            );
            return None;
        }
        if s.contains('\0') {
            self.err(span, format!("{what} contains a NUL character"));
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn failback(&mut self, item: &Item, span: &Span) -> Option<Failback> {
        if let Some(n) = item.as_integer() {
            return match u64::try_from(n) {
                Ok(0) => Some(Failback::Immediate),
                Ok(n) => Some(Failback::After(Duration::from_secs(n))),
                Err(_) => {
                    self.err(
                        span,
                        format!("failback must be 0 or more seconds, found {n}"),
                    );
                    None
                }
            };
        }
        let names = ["immediate", "manual", "followover"];
        if item.as_str().is_none() {
            self.err(
                span,
                format!(
                    "failback must be {} or a number of seconds, found {}",
                    one_of(&names),
                    describe_value(item)
                ),
            );
            return None;
        }
        self.choice(item, span, "failback", &names, |s| match s {
            "immediate" => Some(Failback::Immediate),
            "manual" => Some(Failback::Manual),
            "followover" => Some(Failback::Followover),
            _ => None,
        })
    }

    fn no_path_retry(&mut self, item: &Item, span: &Span) -> Option<NoPathRetry> {
        if let Some(n) = item.as_integer() {
            return match u32::try_from(n) {
                Ok(0) => Some(NoPathRetry::Fail),
                Ok(n) => Some(NoPathRetry::Retries(n)),
                Err(_) => {
                    self.err(
                        span,
                        format!(
                            "no_path_retry must be between 0 and {}, found {n}",
                            u32::MAX
                        ),
                    );
                    None
                }
            };
        }
        let names = ["fail", "queue"];
        if item.as_str().is_none() {
            self.err(
                span,
                format!(
                    "no_path_retry must be {} or a number of retries, found {}",
                    one_of(&names),
                    describe_value(item)
                ),
            );
            return None;
        }
        self.choice(item, span, "no_path_retry", &names, |s| match s {
            "fail" => Some(NoPathRetry::Fail),
            "queue" => Some(NoPathRetry::Queue),
            _ => None,
        })
    }

    fn weights(&mut self, item: &Item, span: &Span) -> Option<Vec<Weight>> {
        let Some(arr) = item.as_array() else {
            self.err(
                span,
                format!(
                    "prio_weights must be an array of {{ hbtl|devname|portal = \"regex\", prio = N }}, found {}",
                    type_name(item)
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in arr.iter().enumerate() {
            let vspan = v.span().or_else(|| span.clone());
            let what = format!("prio_weights[{i}]");
            let Some(t) = v.as_inline_table() else {
                self.err(
                    &vspan,
                    format!(
                        "{what} must be an inline table, found {}",
                        value_type_name(v)
                    ),
                );
                ok = false;
                continue;
            };
            let mut key: Option<(WeightKey, String, Span)> = None;
            let mut prio: Option<u32> = None;
            let mut bad = false;
            self.keys(
                t,
                &format!("in {what}"),
                WEIGHT_KEYS,
                |cx, k, it, kspan, vs| {
                    if k == "prio" {
                        match it.as_integer().map(u32::try_from) {
                            Some(Ok(p)) => prio = Some(p),
                            _ => {
                                cx.err(
                                    &vs,
                                    format!(
                                        "{what}.prio must be an integer from 0 to {}, found {}",
                                        u32::MAX,
                                        describe_value(it)
                                    ),
                                );
                                bad = true;
                            }
                        }
                        return;
                    }
                    let wk = match k {
                        "devname" => WeightKey::Devname,
                        "hbtl" => WeightKey::Hbtl,
                        _ => WeightKey::Portal,
                    };
                    if key.is_some() {
                        cx.err(
                            &kspan,
                            format!("{what} has more than one of devname, hbtl, portal"),
                        );
                        bad = true;
                        return;
                    }
                    if let Some(s) = cx.string(it, &vs, &format!("{what}.{k}")) {
                        key = Some((wk, s.to_string(), vs));
                    } else {
                        bad = true;
                    }
                },
            );
            if bad {
                ok = false;
                continue;
            }
            let (Some((wk, pat, pspan)), Some(p)) = (key, prio) else {
                self.err(
                    &vspan,
                    format!("{what} needs one of devname, hbtl, portal and a prio"),
                );
                ok = false;
                continue;
            };
            match Weight::new(wk, &pat, p) {
                Ok(w) => out.push(w),
                Err(e) => {
                    self.err(
                        &pspan,
                        format!("{what}.{}: invalid regex: {}", wk.name(), regex_msg(&e)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// Reads one per-map key of a table into `p` (the caller's visitor passes the
    /// others).
    fn policy_key(&mut self, p: &mut PolicySeen, k: &str, item: &Item, vs: &Span) {
        let at = self.location(vs);
        match k {
            "path_grouping_policy" => {
                let names = GroupingPolicy::ALL.map(|g| g.name());
                p.policy.path_grouping_policy = self
                    .choice(item, vs, k, &names, GroupingPolicy::from_name)
                    .map(|v| Located::new(v, at.as_str()));
            }
            "path_selector" => {
                let names = SelectorKind::ALL.map(|g| g.dm_name());
                p.policy.path_selector = self
                    .choice(item, vs, k, &names, |s| {
                        SelectorKind::from_name(s).or_else(|| {
                            // multipath.conf's "service-time 0" spelling.
                            s.strip_suffix(" 0").and_then(SelectorKind::from_name)
                        })
                    })
                    .map(|v| Located::new(v, at.as_str()));
            }
            "failback" => {
                p.policy.failback = self
                    .failback(item, vs)
                    .map(|v| Located::new(v, at.as_str()))
            }
            "no_path_retry" => {
                p.policy.no_path_retry = self
                    .no_path_retry(item, vs)
                    .map(|v| Located::new(v, at.as_str()))
            }
            "queue_if_no_path" => {
                p.queue_if_no_path = self
                    .boolean(item, vs, k)
                    .map(|v| Located::new(v, at.as_str()))
            }
            "hardware_handler" => {
                if let Some(s) = self.string(item, vs, k) {
                    match HardwareHandler::parse(s) {
                        Ok(h) => p.policy.hardware_handler = Some(Located::new(h, at.as_str())),
                        Err(why) => {
                            self.err(vs, format!("hardware_handler \"{}\" {why}", shorten(s, 64)))
                        }
                    }
                }
            }
            "features" => {
                if let Some(s) = self.string(item, vs, k) {
                    match Features::parse(s) {
                        Ok(f) => p.policy.features = Some(Located::new(f, at.as_str())),
                        Err(why) => self.err(vs, format!("features \"{}\" {why}", shorten(s, 64))),
                    }
                }
            }
            "rr_weight" => {
                let names = RrWeight::ALL.map(|r| r.name());
                p.policy.rr_weight = self
                    .choice(item, vs, k, &names, RrWeight::from_name)
                    .map(|v| Located::new(v, at.as_str()));
            }
            "path_checker" => {
                let names = PathChecker::ALL.map(|c| c.name());
                p.policy.path_checker = self
                    .choice(item, vs, k, &names, PathChecker::from_name)
                    .map(|v| Located::new(v, at.as_str()));
            }
            "checker_timeout" => {
                p.policy.checker_timeout = self
                    .integer(item, vs, k, 1, CHECKER_TIMEOUT_MAX, "seconds")
                    .map(|n| Located::new(Duration::from_secs(n as u64), at.as_str()));
            }
            "prio" => {
                p.weights.prio_span = vs.clone();
                p.weights.prio_name = self
                    .choice(item, vs, k, &["const", "alua", "weighted"], |s| {
                        ["const", "alua", "weighted"].into_iter().find(|n| *n == s)
                    })
                    .map(str::to_string);
                if p.weights.prio_name.is_none() {
                    p.weights.failed = true;
                }
            }
            "prio_weights" => {
                p.weights.weights_span = vs.clone();
                p.weights.weights = self.weights(item, vs);
                if p.weights.weights.is_none() {
                    p.weights.failed = true;
                }
            }
            _ => {}
        }
    }

    /// An integer from `min` to `max` (`unit` names it in the message).
    fn integer(
        &mut self,
        item: &Item,
        span: &Span,
        what: &str,
        min: i64,
        max: i64,
        unit: &str,
    ) -> Option<i64> {
        match item.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.err(
                    span,
                    format!(
                        "{what} must be a number of {unit} from {min} to {max}, found {}",
                        describe_value(item)
                    ),
                );
                None
            }
        }
    }

    /// The table's per-map settings once it is all read: `prio` and `prio_weights`
    /// combined, `queue_if_no_path` folded into `no_path_retry` when that is not set.
    fn finish_policy(&mut self, p: PolicySeen, place: &str) -> Policy {
        let PolicySeen {
            mut policy,
            queue_if_no_path,
            weights: w,
        } = p;
        if policy.no_path_retry.is_none()
            && let Some(q) = queue_if_no_path
        {
            let n = if q.value {
                NoPathRetry::Queue
            } else {
                NoPathRetry::Fail
            };
            policy.no_path_retry = Some(Located::new(n, q.at));
        }
        if w.failed {
            return policy;
        }
        let at = |cx: &Self, sp: &Span| cx.location(sp);
        policy.prio = match (w.prio_name.as_deref(), w.weights) {
            (None, None) => None,
            (Some("const"), None) => Some(Located::new(PrioSource::Const, at(self, &w.prio_span))),
            (Some("alua"), None) => Some(Located::new(PrioSource::Alua, at(self, &w.prio_span))),
            (Some("weighted"), Some(ws)) => Some(Located::new(
                PrioSource::Weighted(ws),
                at(self, &w.prio_span),
            )),
            (None, Some(ws)) => Some(Located::new(
                PrioSource::Weighted(ws),
                at(self, &w.weights_span),
            )),
            (Some("weighted"), None) => {
                self.err(
                    &w.prio_span,
                    format!("prio = \"weighted\" {place} needs prio_weights"),
                );
                None
            }
            (Some(other), Some(_)) => {
                self.err(
                    &w.weights_span,
                    format!("prio_weights {place} needs prio = \"weighted\", not \"{other}\""),
                );
                None
            }
            (Some(_), None) => None,
        };
        policy
    }

    fn defaults(&mut self, t: &dyn TableLike) -> Defaults {
        let mut d = Defaults::default();
        let mut p = PolicySeen::default();
        let allowed = keys_with(POLICY_KEYS, DAEMON_KEYS);
        self.keys(
            t,
            "in [defaults]",
            &allowed,
            |cx, k, item, _ks, vs| match k {
                "user_friendly_names" => {
                    if let Some(b) = cx.boolean(item, &vs, k) {
                        d.user_friendly_names = b;
                    }
                }
                "alias_prefix" => {
                    if let Some(s) = cx.string(item, &vs, k) {
                        match dm_name_problem(s) {
                            _ if s.len() > ALIAS_PREFIX_MAX => cx.err(
                                &vs,
                                format!("alias_prefix is longer than {ALIAS_PREFIX_MAX} bytes"),
                            ),
                            Some(why) => cx.err(&vs, format!("alias_prefix {why}")),
                            None => d.alias_prefix = s.to_string(),
                        }
                    }
                }
                "find_multipaths" => {
                    let v = if let Some(b) = item.as_bool() {
                        Some(if b {
                            FindMultipaths::On
                        } else {
                            FindMultipaths::Greedy
                        })
                    } else {
                        cx.choice(
                            item,
                            &vs,
                            k,
                            &["strict", "on", "smart", "greedy", "yes", "no", "off"],
                            FindMultipaths::from_name,
                        )
                    };
                    if let Some(v) = v {
                        d.find_multipaths = v;
                    }
                }
                "bindings_file" => {
                    if let Some(pb) = cx.path(item, &vs, k) {
                        d.bindings_file = pb;
                    }
                }
                "wwids_file" => {
                    if let Some(pb) = cx.path(item, &vs, k) {
                        d.wwids_file = pb;
                    }
                }
                "socket" => {
                    if let Some(pb) = cx.path(item, &vs, k) {
                        d.socket = pb;
                    }
                }
                "polling_interval" => {
                    if let Some(n) = cx.integer(item, &vs, k, 1, POLLING_INTERVAL_MAX, "seconds") {
                        d.polling_interval = Duration::from_secs(n as u64);
                    }
                }
                "reinstate_checks" => {
                    if let Some(n) = cx.integer(item, &vs, k, 1, REINSTATE_CHECKS_MAX, "checks") {
                        d.reinstate_checks = n as u32;
                    }
                }
                _ => cx.policy_key(&mut p, k, item, &vs),
            },
        );
        d.policy = self.finish_policy(p, "in [defaults]");
        d
    }

    fn overrides(&mut self, t: &dyn TableLike) -> Policy {
        let mut p = PolicySeen::default();
        self.keys(t, "in [overrides]", POLICY_KEYS, |cx, k, item, _ks, vs| {
            cx.policy_key(&mut p, k, item, &vs)
        });
        self.finish_policy(p, "in [overrides]")
    }

    fn device_entries(&mut self, item: &Item, key: &Span) -> Vec<DeviceEntry> {
        let tables = self.tables_of(
            item,
            key,
            "devices entries must be tables",
            "devices must be an array of tables ([[devices]])",
        );
        let allowed = keys_with(&["vendor", "product", "revision"], POLICY_KEYS);
        let mut out = Vec::new();
        for (t, tspan) in tables {
            let mut p = PolicySeen::default();
            let mut ids: [Option<Rule>; 3] = [None, None, None];
            let mut bad = false;
            self.keys(t, "in [[devices]]", &allowed, |cx, k, item, _ks, vs| {
                let slot = match k {
                    "vendor" => 0,
                    "product" => 1,
                    "revision" => 2,
                    _ => return cx.policy_key(&mut p, k, item, &vs),
                };
                let Some(s) = cx.string(item, &vs, &format!("devices.{k}")) else {
                    bad = true;
                    return;
                };
                match Rule::new(s) {
                    Ok(r) => ids[slot] = Some(r.at(cx.location(&vs))),
                    Err(e) => {
                        cx.err(
                            &vs,
                            format!("devices.{k}: invalid regex: {}", regex_msg(&e)),
                        );
                        bad = true;
                    }
                }
            });
            let policy = self.finish_policy(p, "in [[devices]]");
            let [vendor, product, revision] = ids;
            match (vendor, product) {
                (Some(vendor), Some(product)) if !bad => out.push(DeviceEntry {
                    vendor,
                    product,
                    revision,
                    policy,
                    location: self.location(&tspan),
                }),
                (v, p) if !bad => {
                    let missing = match (v.is_none(), p.is_none()) {
                        (true, true) => "vendor and product",
                        (true, false) => "vendor",
                        _ => "product",
                    };
                    self.err(
                        &tspan,
                        format!(
                            "this [[devices]] entry has no {missing} (both are required; \
                             \".*\" matches anything)"
                        ),
                    );
                }
                _ => {}
            }
        }
        out
    }

    /// The tables of an array of tables (`[[x]]`) or of an array of inline tables
    /// (`x = [{...}]`), each with its span; anything else is an error (`bad_entry` or
    /// `bad_item`, followed by ", found <type>").
    fn tables_of<'i>(
        &mut self,
        item: &'i Item,
        key: &Span,
        bad_entry: &str,
        bad_item: &str,
    ) -> Vec<(&'i dyn TableLike, Span)> {
        let mut tables: Vec<(&dyn TableLike, Span)> = Vec::new();
        match item {
            Item::ArrayOfTables(aot) => {
                for t in aot.iter() {
                    tables.push((t as &dyn TableLike, t.span().or_else(|| key.clone())));
                }
            }
            Item::Value(Value::Array(arr)) => {
                for v in arr.iter() {
                    match v.as_inline_table() {
                        Some(t) => tables.push((t as &dyn TableLike, v.span())),
                        None => self.err(
                            &v.span(),
                            format!("{bad_entry}, found {}", value_type_name(v)),
                        ),
                    }
                }
            }
            other => self.err(
                &span_or(other, key),
                format!("{bad_item}, found {}", type_name(other)),
            ),
        }
        tables
    }

    fn multipaths(&mut self, item: &Item, key: &Span) -> Vec<MultipathEntry> {
        // [[multipaths]] tables, or multipaths = [{...}, ...].
        let tables = self.tables_of(
            item,
            key,
            "multipaths entries must be tables",
            "multipaths must be an array of tables ([[multipaths]])",
        );
        let allowed = keys_with(&["wwid", "alias"], POLICY_KEYS);
        let mut out = Vec::new();
        let mut wwids: HashMap<String, String> = HashMap::new();
        let mut aliases: HashMap<String, String> = HashMap::new();
        for (t, tspan) in tables {
            let mut e = MultipathEntry {
                location: self.location(&tspan),
                ..Default::default()
            };
            let mut p = PolicySeen::default();
            let mut wwid_span = None;
            let mut written = String::new();
            let mut alias_span = None;
            self.keys(
                t,
                "in [[multipaths]]",
                &allowed,
                |cx, k, item, _ks, vs| match k {
                    "wwid" => {
                        if let Some(s) = cx.string(item, &vs, k) {
                            match wwid_problem(s) {
                                Some(why) => cx.err(&vs, format!("wwid {why}")),
                                None => {
                                    e.wwid = normalize_wwid(s).into_owned();
                                    written = s.to_string();
                                }
                            }
                        }
                        wwid_span = Some(vs);
                    }
                    "alias" => {
                        if let Some(s) = cx.string(item, &vs, k) {
                            match dm_name_problem(s) {
                                Some(why) => {
                                    cx.err(&vs, format!("alias \"{}\" {why}", shorten(s, 64)))
                                }
                                None => {
                                    e.alias = Some(s.to_string());
                                    alias_span = Some(vs);
                                }
                            }
                        }
                    }
                    _ => cx.policy_key(&mut p, k, item, &vs),
                },
            );
            e.policy = self.finish_policy(p, "in [[multipaths]]");
            match wwid_span {
                None => self.err(&tspan, "this [[multipaths]] entry has no wwid"),
                Some(ws) if !e.wwid.is_empty() => {
                    let here = self.location(&ws);
                    if let Some(first) = wwids.get(&e.wwid) {
                        let folded = if written == e.wwid {
                            String::new()
                        } else {
                            format!(" (folded: {})", shorten(&e.wwid, 80))
                        };
                        self.err(
                            &ws,
                            format!(
                                "wwid \"{}\"{folded} already has an entry at {first}",
                                shorten(&written, 80)
                            ),
                        );
                    } else {
                        wwids.insert(e.wwid.clone(), here);
                    }
                }
                Some(_) => {}
            }
            if let (Some(a), Some(asp)) = (&e.alias, &alias_span) {
                let here = self.location(asp);
                if let Some(first) = aliases.get(a) {
                    self.err(asp, format!("alias \"{a}\" is already used at {first}"));
                } else {
                    aliases.insert(a.clone(), here);
                }
            }
            out.push(e);
        }
        out
    }

    fn regex_list(&mut self, item: &Item, vs: &Span, what: &str) -> Vec<Rule> {
        let mut values: Vec<(&str, Span)> = Vec::new();
        if let Some(s) = item.as_str() {
            values.push((s, vs.clone()));
        } else if let Some(arr) = item.as_array() {
            for v in arr.iter() {
                match v.as_str() {
                    Some(s) => values.push((s, v.span())),
                    None => self.err(
                        &v.span(),
                        format!(
                            "{what} entries must be strings, found {}",
                            value_type_name(v)
                        ),
                    ),
                }
            }
        } else {
            self.err(
                vs,
                format!(
                    "{what} must be an array of regex strings, found {}",
                    type_name(item)
                ),
            );
        }
        let mut out = Vec::new();
        for (s, sp) in values {
            match Rule::new(s) {
                Ok(r) => out.push(r.at(self.location(&sp))),
                Err(e) => self.err(&sp, format!("{what}: invalid regex: {}", regex_msg(&e))),
            }
        }
        out
    }

    fn filter(&mut self, item: &Item, key: &Span, name: &str) -> Filter {
        let mut f = Filter::default();
        let Some(t) = self.table(item, key, &format!("[{name}]")) else {
            return f;
        };
        self.keys(
            t,
            &format!("in [{name}]"),
            FILTER_KEYS,
            |cx, k, item, _ks, vs| match k {
                "devnode" => f.devnode = cx.regex_list(item, &vs, &format!("{name}.devnode")),
                "wwid" => f.wwid = cx.regex_list(item, &vs, &format!("{name}.wwid")),
                "property" => f.property = cx.regex_list(item, &vs, &format!("{name}.property")),
                _ => f.device = cx.devices(item, &vs, name),
            },
        );
        f
    }

    fn devices(&mut self, item: &Item, vs: &Span, name: &str) -> Vec<DeviceRule> {
        let what = format!("{name}.device");
        let tables = self.tables_of(
            item,
            vs,
            &format!("{what} entries must be {{ vendor = \"regex\", product = \"regex\" }}"),
            &format!("{what} must be an array of {{ vendor = \"regex\", product = \"regex\" }}"),
        );
        let mut out = Vec::new();
        for (t, tspan) in tables {
            let mut rule = DeviceRule {
                vendor: None,
                product: None,
                location: self.location(&tspan),
            };
            let mut bad = false;
            self.keys(
                t,
                &format!("in {what}"),
                DEVICE_KEYS,
                |cx, k, item, _ks, vs| {
                    let Some(s) = cx.string(item, &vs, &format!("{what}.{k}")) else {
                        bad = true;
                        return;
                    };
                    match Rule::new(s) {
                        Ok(r) => {
                            let r = r.at(cx.location(&vs));
                            if k == "vendor" {
                                rule.vendor = Some(r);
                            } else {
                                rule.product = Some(r);
                            }
                        }
                        Err(e) => {
                            cx.err(&vs, format!("{what}.{k}: invalid regex: {}", regex_msg(&e)));
                            bad = true;
                        }
                    }
                },
            );
            if bad {
                continue;
            }
            if rule.vendor.is_none() && rule.product.is_none() {
                self.err(&tspan, format!("{what} entry needs a vendor or a product"));
                continue;
            }
            out.push(rule);
        }
        out
    }
}

/// What `prio` and `prio_weights` said in one table.
#[derive(Default)]
struct WeightsSeen {
    prio_name: Option<String>,
    prio_span: Span,
    weights: Option<Vec<Weight>>,
    weights_span: Span,
    failed: bool,
}

/// A value for a message: strings quoted, others by type.
fn describe_value(item: &Item) -> String {
    match item {
        Item::Value(Value::String(s)) => format!("\"{}\"", shorten(s.value(), 64)),
        Item::Value(Value::Integer(i)) => i.value().to_string(),
        Item::Value(Value::Boolean(b)) => b.value().to_string(),
        other => type_name(other).to_string(),
    }
}
