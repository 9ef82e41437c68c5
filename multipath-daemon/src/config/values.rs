//! The values of per-map settings: each with the spelling the config file uses (the same
//! as multipath.conf wherever multipath-tools has the setting), parsed back by
//! `from_name` or `parse` and printed by `Display`, so `show config` output can be pasted
//! into a config file.

use std::fmt;
use std::time::Duration;

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

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Immediate => f.write_str("immediate"),
            Self::Manual => f.write_str("manual"),
            Self::Followover => f.write_str("followover"),
            Self::After(d) => write!(f, "{}", d.as_secs()),
        }
    }
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

impl fmt::Display for NoPathRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fail => f.write_str("fail"),
            Self::Queue => f.write_str("queue"),
            Self::Retries(n) => write!(f, "{n}"),
        }
    }
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

/// `const`, `alua`, or `weighted` followed by its weights in TOML inline-table form.
impl fmt::Display for PrioSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Self::Weighted(ws) = self {
            f.write_str(" [")?;
            for (i, w) in ws.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(
                    f,
                    "{{ {} = {}, prio = {} }}",
                    w.key.name(),
                    super::text::toml_str_pretty(w.source()),
                    w.prio
                )?;
            }
            f.write_str("]")?;
        }
        Ok(())
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
            pattern: super::compile_anchored(pattern)?,
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

/// `path_checker`: how the daemon's checker tests a path; the checkers' own registry.
pub use crate::checker::CheckerKind as PathChecker;

/// `rr_weight`: whether a path's priority scales its selector repeat count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RrWeight {
    /// Every path gets repeat count 1 (multipath-tools' default).
    Uniform,
    /// A path's repeat count is its priority, as multipath-tools writes it. The kernel's
    /// selectors use 1 whatever is loaded (they log that a larger count is deprecated).
    Priorities,
}

impl RrWeight {
    pub const ALL: [RrWeight; 2] = [Self::Uniform, Self::Priorities];

    pub fn name(&self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Priorities => "priorities",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl fmt::Display for RrWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kernel SCSI device handlers (`scsi_dh_*`) a multipath table may name.
pub const HW_HANDLERS: [&str; 4] = ["alua", "emc", "rdac", "hp_sw"];

/// `hardware_handler`: the SCSI device handler the kernel attaches to each path. A map
/// without one (`"0"`) is `None` where this is optional.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HardwareHandler {
    /// One of [`HW_HANDLERS`].
    pub name: String,
    pub args: Vec<String>,
}

impl HardwareHandler {
    pub fn alua() -> Self {
        Self {
            name: "alua".into(),
            args: Vec::new(),
        }
    }

    /// multipath.conf's spelling, `"1 alua"` (the word count first; `"0"` is no handler),
    /// or the words alone, `"alua"`. `Ok(None)` is no handler.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let words = match words.split_first() {
            None => return Err("is empty (\"0\" is no handler, \"1 alua\" the ALUA one)".into()),
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("count \"{n}\" is too large"))?;
                if n != rest.len() {
                    return Err(format!(
                        "says {n} word(s) but {} follow (\"1 alua\", \"0\" for none)",
                        rest.len()
                    ));
                }
                rest
            }
            Some(_) => &words[..],
        };
        let Some((name, args)) = words.split_first() else {
            return Ok(None);
        };
        if *name == "none" && args.is_empty() {
            return Ok(None);
        }
        if !HW_HANDLERS.contains(name) {
            return Err(format!(
                "names \"{}\", not one of the kernel's handlers {}",
                super::text::shorten(name, 40),
                HW_HANDLERS.join(", ")
            ));
        }
        Ok(Some(Self {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }))
    }
}

/// multipath.conf's spelling: the word count, then the handler and its arguments.
impl fmt::Display for HardwareHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", 1 + self.args.len(), self.name)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// How a map queues IO in the kernel (`queue_mode` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueMode {
    Bio,
    Rq,
    Mq,
}

impl QueueMode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Bio => "bio",
            Self::Rq => "rq",
            Self::Mq => "mq",
        }
    }
}

/// Largest `pg_init_retries` the kernel accepts (`dm-mpath.c`).
pub const PG_INIT_RETRIES_MAX: u32 = 50;
/// Largest `pg_init_delay_msecs` the kernel accepts.
pub const PG_INIT_DELAY_MSECS_MAX: u32 = 60000;

/// `features`: the multipath target's feature words, as multipath.conf writes them
/// (`"2 pg_init_retries 50"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Features {
    /// Queue IO when no path is left. As in multipath-tools this only applies when no
    /// `no_path_retry` is set at any level; the resolved map settings carry it in
    /// `MapSettings::no_path_retry` instead.
    pub queue_if_no_path: bool,
    /// Retries of path group initialisation (1 to 50).
    pub pg_init_retries: Option<u32>,
    /// Delay between those retries (0 to 60000 ms).
    pub pg_init_delay_msecs: Option<u32>,
    /// Keep a device handler the kernel already attached (kernels since 4.3 always do).
    pub retain_attached_hw_handler: bool,
    pub queue_mode: Option<QueueMode>,
}

impl Features {
    /// `"2 pg_init_retries 50"` (the word count first, as multipath.conf writes it) or the
    /// words alone. Errors say which word is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let all: Vec<&str> = s.split_whitespace().collect();
        let words: &[&str] = match all.split_first() {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("count \"{n}\" is too large"))?;
                if n != rest.len() {
                    return Err(format!("says {n} word(s) but {} follow", rest.len()));
                }
                rest
            }
            _ => &all,
        };
        let mut f = Features::default();
        let mut i = 0;
        let number = |w: Option<&&str>, what: &str, max: u32, min: u32| -> Result<u32, String> {
            let w = w.ok_or_else(|| format!("{what} needs a number after it"))?;
            match w.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{what} \"{}\" is not a number from {min} to {max}",
                    super::text::shorten(w, 20)
                )),
            }
        };
        while i < words.len() {
            let w = words[i];
            let dup = |seen: bool| {
                if seen {
                    Err(format!("\"{w}\" is given twice"))
                } else {
                    Ok(())
                }
            };
            match w {
                "queue_if_no_path" => {
                    dup(f.queue_if_no_path)?;
                    f.queue_if_no_path = true;
                }
                "retain_attached_hw_handler" => {
                    dup(f.retain_attached_hw_handler)?;
                    f.retain_attached_hw_handler = true;
                }
                "pg_init_retries" => {
                    dup(f.pg_init_retries.is_some())?;
                    f.pg_init_retries = Some(number(words.get(i + 1), w, PG_INIT_RETRIES_MAX, 1)?);
                    i += 1;
                }
                "pg_init_delay_msecs" => {
                    dup(f.pg_init_delay_msecs.is_some())?;
                    f.pg_init_delay_msecs =
                        Some(number(words.get(i + 1), w, PG_INIT_DELAY_MSECS_MAX, 0)?);
                    i += 1;
                }
                "queue_mode" => {
                    dup(f.queue_mode.is_some())?;
                    f.queue_mode = Some(match words.get(i + 1).copied() {
                        Some("bio") => QueueMode::Bio,
                        Some("rq") => QueueMode::Rq,
                        Some("mq") => QueueMode::Mq,
                        other => {
                            return Err(format!(
                                "queue_mode needs bio, rq or mq after it, found {}",
                                other.map_or("nothing".to_string(), |o| format!(
                                    "\"{}\"",
                                    super::text::shorten(o, 20)
                                ))
                            ));
                        }
                    });
                    i += 1;
                }
                other => {
                    return Err(format!(
                        "has \"{}\", not a feature mpathd loads (queue_if_no_path, \
                         pg_init_retries N, pg_init_delay_msecs N, retain_attached_hw_handler, \
                         queue_mode bio|rq|mq)",
                        super::text::shorten(other, 40)
                    ));
                }
            }
            i += 1;
        }
        Ok(f)
    }

    /// The feature words, without the count.
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.queue_if_no_path {
            w.push("queue_if_no_path".to_string());
        }
        if let Some(n) = self.pg_init_retries {
            w.push("pg_init_retries".into());
            w.push(n.to_string());
        }
        if let Some(n) = self.pg_init_delay_msecs {
            w.push("pg_init_delay_msecs".into());
            w.push(n.to_string());
        }
        if self.retain_attached_hw_handler {
            w.push("retain_attached_hw_handler".into());
        }
        if let Some(m) = self.queue_mode {
            w.push("queue_mode".into());
            w.push(m.name().into());
        }
        w
    }
}

/// multipath.conf's spelling: the word count, then the words (`"0"` when empty).
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.words();
        write!(f, "{}", w.len())?;
        for w in w {
            write!(f, " {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_parse_and_print_back() {
        let f = Features::parse("2 pg_init_retries 50").unwrap();
        assert_eq!(f.pg_init_retries, Some(50));
        assert_eq!(f.to_string(), "2 pg_init_retries 50");
        let f = Features::parse("queue_if_no_path pg_init_delay_msecs 0 queue_mode bio").unwrap();
        assert!(f.queue_if_no_path);
        assert_eq!(f.pg_init_delay_msecs, Some(0));
        assert_eq!(f.queue_mode, Some(QueueMode::Bio));
        assert_eq!(Features::parse(&f.to_string()).unwrap(), f);
        assert_eq!(Features::parse("0").unwrap(), Features::default());
        assert_eq!(Features::default().to_string(), "0");
        for (bad, needle) in [
            ("2 pg_init_retries", "says 2 word(s) but 1 follow"),
            ("pg_init_retries 51", "from 1 to 50"),
            ("pg_init_retries 0", "from 1 to 50"),
            ("pg_init_retries", "needs a number"),
            ("pg_init_delay_msecs 60001", "from 0 to 60000"),
            ("queue_mode", "found nothing"),
            ("queue_mode xx", "found \"xx\""),
            ("1 no_partitions", "not a feature mpathd loads"),
            ("queue_if_no_path queue_if_no_path", "given twice"),
            ("99999999999999999999999 x", "too large"),
        ] {
            let e = Features::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn hardware_handler_spellings() {
        assert_eq!(
            HardwareHandler::parse("1 alua").unwrap(),
            Some(HardwareHandler::alua())
        );
        assert_eq!(
            HardwareHandler::parse("alua").unwrap(),
            Some(HardwareHandler::alua())
        );
        assert_eq!(HardwareHandler::parse("0").unwrap(), None);
        assert_eq!(HardwareHandler::parse("none").unwrap(), None);
        let emc = HardwareHandler::parse("2 emc 1").unwrap().unwrap();
        assert_eq!((emc.name.as_str(), emc.args.len()), ("emc", 1));
        assert_eq!(emc.to_string(), "2 emc 1");
        assert_eq!(HardwareHandler::alua().to_string(), "1 alua");
        assert!(
            HardwareHandler::parse("1 foo")
                .unwrap_err()
                .contains("not one of")
        );
        assert!(
            HardwareHandler::parse("2 alua")
                .unwrap_err()
                .contains("says 2")
        );
        assert!(HardwareHandler::parse("").unwrap_err().contains("empty"));
    }

    #[test]
    fn names_round_trip() {
        for c in PathChecker::ALL {
            assert_eq!(PathChecker::from_name(c.name()), Some(c));
        }
        for r in RrWeight::ALL {
            assert_eq!(RrWeight::from_name(&r.to_string()), Some(r));
        }
        assert_eq!(Failback::After(Duration::from_secs(30)).to_string(), "30");
        assert_eq!(NoPathRetry::Retries(12).to_string(), "12");
    }
}
