//! The multipath target's table (constructor) line.
//!
//! Layout, from `multipath_ctr` in the kernel's `drivers/md/dm-mpath.c`:
//!
//! ```text
//! <#features> <feature words...>
//! <#hw_handler words> [<hw_handler name> <hw_handler args...>]
//! <#priority groups> <initial pg>
//! { <selector> <#selector args> <selector args...>
//!   <#paths> <#args per path> { <path dev> <path args...> } }
//! ```
//!
//! The kernel prints the loaded table back in the same layout (`STATUSTYPE_TABLE`), so
//! one parser serves both the tables we build and the ones `dmsetup table` shows.

use std::fmt;
use std::str::FromStr;

use super::{ParseError, WordWriter, Words};
use crate::model::DevT;

/// How the multipath device queues I/O (`queue_mode` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueMode {
    /// `bio`: bio-based.
    Bio,
    /// `rq`: request-based (the kernel's default; never printed back).
    Rq,
    /// `mq`: blk-mq request-based.
    Mq,
    /// `nvme`: NVMe bio-based, only in kernels 4.16 to 5.x.
    Nvme,
}

impl QueueMode {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueMode::Bio => "bio",
            QueueMode::Rq => "rq",
            QueueMode::Mq => "mq",
            QueueMode::Nvme => "nvme",
        }
    }

    fn parse(w: &str) -> Option<Self> {
        // The kernel compares with strcasecmp.
        match w.to_ascii_lowercase().as_str() {
            "bio" => Some(QueueMode::Bio),
            "rq" => Some(QueueMode::Rq),
            "mq" => Some(QueueMode::Mq),
            "nvme" => Some(QueueMode::Nvme),
            _ => None,
        }
    }
}

/// One entry of the table's feature list.
///
/// Known names are matched case-insensitively, as the kernel does, and print back in
/// lower case. Any other word is kept verbatim as [`Feature::Other`] so a table with a
/// feature this code does not know still round-trips (the kernel itself would reject it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `queue_if_no_path`: queue I/O instead of failing it when no path is left.
    QueueIfNoPath,
    /// `retain_attached_hw_handler`: keep a SCSI device handler already attached.
    RetainAttachedHwHandler,
    /// `pg_init_retries <n>`: how often to retry path-group initialisation.
    PgInitRetries(u32),
    /// `pg_init_delay_msecs <n>`: delay before retrying path-group initialisation.
    PgInitDelayMsecs(u32),
    /// `queue_mode <bio|rq|mq|nvme>`.
    QueueMode(QueueMode),
    /// A single word this model does not know, e.g. multipath-tools' `no_partitions`.
    Other(String),
}

impl Feature {
    /// How many words the feature takes in the feature list (name plus value).
    pub fn word_count(&self) -> usize {
        match self {
            Feature::QueueIfNoPath | Feature::RetainAttachedHwHandler | Feature::Other(_) => 1,
            Feature::PgInitRetries(_) | Feature::PgInitDelayMsecs(_) | Feature::QueueMode(_) => 2,
        }
    }

    fn write(&self, w: &mut WordWriter<'_, '_>) -> fmt::Result {
        match self {
            Feature::QueueIfNoPath => w.word("queue_if_no_path"),
            Feature::RetainAttachedHwHandler => w.word("retain_attached_hw_handler"),
            Feature::PgInitRetries(n) => {
                w.word("pg_init_retries")?;
                w.word(n)
            }
            Feature::PgInitDelayMsecs(n) => {
                w.word("pg_init_delay_msecs")?;
                w.word(n)
            }
            Feature::QueueMode(m) => {
                w.word("queue_mode")?;
                w.word(m.as_str())
            }
            Feature::Other(s) => w.word(s),
        }
    }
}

/// The SCSI device handler (`scsi_dh`) the kernel attaches to each path, e.g. `alua`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HwHandler {
    pub name: String,
    pub args: Vec<String>,
}

/// A path selector and its group-wide arguments, e.g. `round-robin` with none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    pub name: String,
    pub args: Vec<String>,
}

impl Selector {
    /// A selector without group-wide arguments (all in-tree selectors take none).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            args: Vec::new(),
        }
    }
}

/// One path of a priority group: the device and the selector's per-path arguments
/// (for `round-robin` the repeat count, for `service-time` repeat count and relative
/// throughput).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathSpec {
    /// `MAJ:MIN` as the kernel prints it, or a `/dev` path as a table may give it.
    pub dev: String,
    pub args: Vec<String>,
}

impl PathSpec {
    pub fn new(dev: impl Into<String>, args: Vec<String>) -> Self {
        Self {
            dev: dev.into(),
            args,
        }
    }

    /// The device number, when `dev` is in `MAJ:MIN` form.
    pub fn devt(&self) -> Option<DevT> {
        self.dev.parse().ok()
    }
}

/// A priority group: paths that share a selector and are used together.
///
/// Invariant for [`Display`](fmt::Display) to print a parseable table: every path has
/// exactly `args_per_path` arguments. The parser always yields such groups;
/// [`PathGroup::new`] derives the count from the paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathGroup {
    pub selector: Selector,
    /// The table states this once per group, not per path.
    pub args_per_path: u32,
    pub paths: Vec<PathSpec>,
}

impl PathGroup {
    /// A group whose per-path argument count is taken from the first path.
    pub fn new(selector: Selector, paths: Vec<PathSpec>) -> Self {
        let args_per_path = paths
            .first()
            .map_or(0, |p| u32::try_from(p.args.len()).unwrap_or(u32::MAX));
        Self {
            selector,
            args_per_path,
            paths,
        }
    }

    /// Whether every path has `args_per_path` arguments, i.e. the group prints as a
    /// table the kernel (and [`MultipathTable::from_str`]) accepts.
    pub fn is_consistent(&self) -> bool {
        self.paths
            .iter()
            .all(|p| p.args.len() as u64 == u64::from(self.args_per_path))
    }
}

/// The params string of a `multipath` target table.
///
/// `Display` prints the canonical form (single spaces, no trailing blank), which is
/// what the kernel prints back for a table it accepted. It assumes every string field
/// (feature, handler, selector, device, argument) is one non-empty word without
/// whitespace, as parsed values always are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipathTable {
    pub features: Vec<Feature>,
    pub hw_handler: Option<HwHandler>,
    /// 1-based number of the group to try first; 0 only when there are no groups.
    pub initial_pg: u32,
    pub groups: Vec<PathGroup>,
}

impl MultipathTable {
    /// Every path in its own group, tried in order: active/passive failover.
    ///
    /// Uses `round-robin` with a repeat count of 1, which is what a request-based map
    /// reads back whatever count was loaded, so the table compares equal to the kernel's.
    pub fn failover<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let groups: Vec<PathGroup> = paths
            .into_iter()
            .map(|p| PathGroup::new(Selector::new("round-robin"), vec![rr_path(p)]))
            .collect();
        Self::with_groups(groups)
    }

    /// All paths in one `round-robin` group: active/active.
    pub fn multibus<I, S>(paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let paths: Vec<PathSpec> = paths.into_iter().map(rr_path).collect();
        let groups = if paths.is_empty() {
            Vec::new()
        } else {
            vec![PathGroup::new(Selector::new("round-robin"), paths)]
        };
        Self::with_groups(groups)
    }

    fn with_groups(groups: Vec<PathGroup>) -> Self {
        Self {
            features: Vec::new(),
            hw_handler: None,
            initial_pg: u32::from(!groups.is_empty()),
            groups,
        }
    }

    /// Whether the table asks the kernel to queue I/O when no path is left.
    pub fn queue_if_no_path(&self) -> bool {
        self.features.contains(&Feature::QueueIfNoPath)
    }

    /// Adds or removes the `queue_if_no_path` feature.
    pub fn set_queue_if_no_path(&mut self, on: bool) {
        self.features.retain(|f| *f != Feature::QueueIfNoPath);
        if on {
            self.features.insert(0, Feature::QueueIfNoPath);
        }
    }

    /// Builder form of [`Self::set_queue_if_no_path`].
    pub fn with_queue_if_no_path(mut self, on: bool) -> Self {
        self.set_queue_if_no_path(on);
        self
    }

    /// The `pg_init_retries` value, if set.
    pub fn pg_init_retries(&self) -> Option<u32> {
        self.features.iter().find_map(|f| match f {
            Feature::PgInitRetries(n) => Some(*n),
            _ => None,
        })
    }

    /// The `pg_init_delay_msecs` value, if set.
    pub fn pg_init_delay_msecs(&self) -> Option<u32> {
        self.features.iter().find_map(|f| match f {
            Feature::PgInitDelayMsecs(n) => Some(*n),
            _ => None,
        })
    }

    /// The `queue_mode`, if set.
    pub fn queue_mode(&self) -> Option<QueueMode> {
        self.features.iter().find_map(|f| match f {
            Feature::QueueMode(m) => Some(*m),
            _ => None,
        })
    }

    /// Every path device, group by group.
    pub fn path_devs(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.paths.iter().map(|p| p.dev.as_str()))
    }

    /// Every path's device number, group by group (a path not named `MAJ:MIN` is left out).
    pub fn path_devts(&self) -> impl Iterator<Item = DevT> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.paths.iter().filter_map(PathSpec::devt))
    }
}

fn rr_path(dev: impl Into<String>) -> PathSpec {
    PathSpec::new(dev, vec!["1".to_string()])
}

/// Parses the feature list; `argc` has already been checked against the input.
fn parse_features(w: &mut Words<'_>, argc: u32) -> Result<Vec<Feature>, ParseError> {
    let mut left = argc;
    let mut out = Vec::with_capacity(argc as usize);
    while left > 0 {
        let name = w.word("feature")?;
        left -= 1;
        let lower = name.to_ascii_lowercase();
        let feature = match lower.as_str() {
            "queue_if_no_path" => Feature::QueueIfNoPath,
            "retain_attached_hw_handler" => Feature::RetainAttachedHwHandler,
            "pg_init_retries" | "pg_init_delay_msecs" | "queue_mode" => {
                if left == 0 {
                    return Err(w.invalid(
                        "feature",
                        name,
                        "its value lies beyond the feature count",
                    ));
                }
                left -= 1;
                match lower.as_str() {
                    "pg_init_retries" => Feature::PgInitRetries(w.number("pg_init_retries")?),
                    "pg_init_delay_msecs" => {
                        Feature::PgInitDelayMsecs(w.number("pg_init_delay_msecs")?)
                    }
                    _ => {
                        let v = w.word("queue_mode")?;
                        Feature::QueueMode(QueueMode::parse(v).ok_or_else(|| {
                            w.invalid("queue_mode", v, "expected bio, rq, mq or nvme")
                        })?)
                    }
                }
            }
            _ => Feature::Other(name.to_string()),
        };
        out.push(feature);
    }
    Ok(out)
}

fn parse_group(w: &mut Words<'_>, n: u32) -> Result<PathGroup, ParseError> {
    let what = |field: &str| format!("priority group {n}: {field}");
    let name = w.word(&what("path selector"))?;
    let sel_argc = w.count(&what("selector argument count"), 1)?;
    let args = w.take(sel_argc, &what("selector arguments"))?;
    let selector = Selector {
        name: name.to_string(),
        args,
    };
    // Read both counts before checking their product against the input.
    let npaths = w.number(&what("path count"))?;
    let args_per_path = w.number(&what("per-path argument count"))?;
    let needed = u64::from(npaths).saturating_mul(1 + u64::from(args_per_path));
    if needed > w.remaining() as u64 {
        return Err(w.truncated(&what("paths"), needed));
    }
    let mut paths = Vec::with_capacity(npaths as usize);
    for p in 1..=npaths {
        let dev = w.word(&what(&format!("path {p} device")))?;
        let args = w.take(args_per_path, &what(&format!("path {p} arguments")))?;
        paths.push(PathSpec::new(dev, args));
    }
    Ok(PathGroup {
        selector,
        args_per_path,
        paths,
    })
}

/// Checks the kernel's rule that the initial group is 0 exactly when there are no
/// groups, and, for a readable map, that it names an existing group.
pub(crate) fn check_pg_number(
    w: &Words<'_>,
    what: &str,
    pg: u32,
    groups: u32,
) -> Result<(), ParseError> {
    if groups == 0 && pg != 0 {
        return Err(w.invalid(what, &pg.to_string(), "must be 0 when there are no groups"));
    }
    if groups != 0 && (pg == 0 || pg > groups) {
        return Err(w.invalid(
            what,
            &pg.to_string(),
            &format!("must be between 1 and the group count {groups}"),
        ));
    }
    Ok(())
}

impl FromStr for MultipathTable {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut w = Words::new(s)?;
        let nfeat = w.count("feature count", 1)?;
        let features = parse_features(&mut w, nfeat)?;

        let nhw = w.count("hardware handler count", 1)?;
        let hw_handler = if nhw == 0 {
            None
        } else {
            let name = w.word("hardware handler")?.to_string();
            let args = w.take(nhw - 1, "hardware handler arguments")?;
            Some(HwHandler { name, args })
        };

        // Each group takes at least 4 words (selector, 0, #paths, #args per path).
        let ngroups = w.number("priority group count")?;
        let initial_pg = w.number("initial priority group")?;
        if u64::from(ngroups) * 4 > w.remaining() as u64 {
            return Err(w.truncated("priority groups", u64::from(ngroups) * 4));
        }
        check_pg_number(&w, "initial priority group", initial_pg, ngroups)?;
        let mut groups = Vec::with_capacity(ngroups as usize);
        for n in 1..=ngroups {
            groups.push(parse_group(&mut w, n)?);
        }
        w.finish()?;
        Ok(Self {
            features,
            hw_handler,
            initial_pg,
            groups,
        })
    }
}

impl fmt::Display for MultipathTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = WordWriter::new(f);
        let nfeat: usize = self.features.iter().map(Feature::word_count).sum();
        w.word(nfeat)?;
        for feat in &self.features {
            feat.write(&mut w)?;
        }
        match &self.hw_handler {
            None => w.word(0)?,
            Some(h) => {
                w.word(1 + h.args.len())?;
                w.word(&h.name)?;
                w.words(&h.args)?;
            }
        }
        w.word(self.groups.len())?;
        w.word(self.initial_pg)?;
        for g in &self.groups {
            w.word(&g.selector.name)?;
            w.counted(&g.selector.args)?;
            w.word(g.paths.len())?;
            w.word(g.args_per_path)?;
            for p in &g.paths {
                w.word(&p.dev)?;
                w.words(&p.args)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::testutil::{Rng, fuzz_inputs, norm};

    /// Tables from the brief's lab notes and the kernel's dm-multipath documentation
    /// (dm-queue-length.rst, dm-service-time.rst), plus feature variants.
    const VALID: &[&str] = &[
        "1 queue_if_no_path 0 2 1 round-robin 0 1 1 8:0 1 round-robin 0 1 1 8:16 1",
        "0 1 alua 1 1 service-time 0 2 2 8:0 1 1 8:16 1 1",
        "0 0 2 1 round-robin 0 1 1 8:0 1 round-robin 0 1 1 8:16 1",
        "0 0 1 1 round-robin 0 2 1 8:0 1 8:16 1",
        "3 queue_if_no_path pg_init_retries 50 0 1 1 round-robin 0 1 1 8:0 1",
        "2 pg_init_delay_msecs 100 0 1 1 round-robin 0 1 1 8:0 1",
        "1 retain_attached_hw_handler 1 alua 1 1 round-robin 0 1 1 8:0 1",
        "2 queue_mode bio 0 1 1 round-robin 0 1 1 8:0 1",
        "2 queue_mode mq 0 1 1 round-robin 0 1 1 8:0 1",
        "2 queue_mode rq 0 1 1 round-robin 0 1 1 8:0 1",
        "2 queue_if_no_path no_partitions 0 1 1 round-robin 0 1 1 8:0 1",
        "0 2 rdac arg 1 1 round-robin 0 1 1 /dev/sda 1",
        // A feature with a value this model does not know keeps its words.
        "3 queue_if_no_path queue_if_no_path_timeout 30 0 1 1 round-robin 0 1 1 8:0 1",
        // dm-queue-length.rst
        "0 0 1 1 queue-length 0 2 1 8:0 128 8:16 128",
        // dm-service-time.rst
        "0 0 1 1 service-time 0 2 2 8:0 128 1 8:16 128 4",
        "0 0 1 1 service-time 0 2 2 8:0 128 2 8:16 128 8",
        // No groups at all (an empty map).
        "0 0 0 0",
        "0 0 1 1 historical-service-time 2 a b 1 0 8:0",
    ];

    #[test]
    fn valid_tables_round_trip() {
        for s in VALID {
            let t: MultipathTable = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(t.to_string(), norm(s), "round trip of {s}");
            assert!(t.groups.iter().all(PathGroup::is_consistent));
        }
    }

    #[test]
    fn whitespace_is_normalised() {
        let s = "  1\tqueue_if_no_path 0 1 1\n round-robin 0  1 1 8:0 1 \n";
        let t: MultipathTable = s.parse().unwrap();
        assert_eq!(t.to_string(), norm(s));
    }

    #[test]
    fn failover_and_multibus_build_the_lab_tables() {
        let fo = MultipathTable::failover(["8:0", "8:16"]);
        assert_eq!(
            fo.to_string(),
            "0 0 2 1 round-robin 0 1 1 8:0 1 round-robin 0 1 1 8:16 1"
        );
        assert_eq!(fo, fo.to_string().parse().unwrap());
        let mb = MultipathTable::multibus(["8:0", "8:16"]);
        assert_eq!(mb.to_string(), "0 0 1 1 round-robin 0 2 1 8:0 1 8:16 1");
        assert_eq!(mb, mb.to_string().parse().unwrap());
        let q = MultipathTable::failover(["8:0", "8:16"]).with_queue_if_no_path(true);
        assert_eq!(
            q.to_string(),
            "1 queue_if_no_path 0 2 1 round-robin 0 1 1 8:0 1 round-robin 0 1 1 8:16 1"
        );
        assert!(q.queue_if_no_path());
        assert!(!q.clone().with_queue_if_no_path(false).queue_if_no_path());
        assert_eq!(
            MultipathTable::failover(Vec::<String>::new()).to_string(),
            "0 0 0 0"
        );
        assert_eq!(
            MultipathTable::multibus(Vec::<String>::new()).to_string(),
            "0 0 0 0"
        );
    }

    #[test]
    fn parsed_fields() {
        let t: MultipathTable = "4 queue_if_no_path pg_init_retries 50 retain_attached_hw_handler 2 alua x 1 1 service-time 0 2 2 8:0 1 1 8:16 1 1"
            .parse()
            .unwrap();
        assert!(t.queue_if_no_path());
        assert_eq!(t.pg_init_retries(), Some(50));
        assert_eq!(t.pg_init_delay_msecs(), None);
        assert_eq!(t.queue_mode(), None);
        assert!(t.features.contains(&Feature::RetainAttachedHwHandler));
        assert_eq!(
            t.hw_handler,
            Some(HwHandler {
                name: "alua".into(),
                args: vec!["x".into()]
            })
        );
        assert_eq!(t.initial_pg, 1);
        assert_eq!(t.groups[0].selector, Selector::new("service-time"));
        assert_eq!(t.groups[0].args_per_path, 2);
        assert_eq!(t.groups[0].paths[1].devt(), Some(DevT::new(8, 16)));
        assert_eq!(t.path_devs().collect::<Vec<_>>(), ["8:0", "8:16"]);
    }

    #[test]
    fn feature_names_are_case_insensitive() {
        let t: MultipathTable = "3 QUEUE_IF_NO_PATH Queue_Mode BIO 0 0 0".parse().unwrap();
        assert!(t.queue_if_no_path());
        assert_eq!(t.queue_mode(), Some(QueueMode::Bio));
        assert_eq!(t.to_string(), "3 queue_if_no_path queue_mode bio 0 0 0");
    }

    fn err(s: &str) -> String {
        match s.parse::<MultipathTable>() {
            Ok(t) => panic!("{s:?} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_tables_give_useful_errors() {
        assert_eq!(err(""), "empty params string");
        assert_eq!(err("   \n"), "empty params string");

        let e = err("x 0 0 0");
        assert_eq!(e, "feature count \"x\" is not a number in \"x 0 0 0\"");

        // The brief's alua example declares 2 groups but has only one.
        let e = err("0 1 alua 2 1 service-time 0 2 2 8:0 1 1 8:16 1 1");
        assert!(
            e.contains("priority group 2: path selector: expected 1 values"),
            "{e}"
        );

        let e = err("3 queue_if_no_path pg_init_retries 0 0 0");
        assert!(
            e.contains("pg_init_retries \"0\"") || e.contains("expected"),
            "{e}"
        );

        let e = err("0 0 1 1 round-robin 0 x 1 8:0 1");
        assert_eq!(
            e,
            "priority group 1: path count \"x\" is not a number in \"0 0 1 1 round-robin 0 x 1 8:0 1\""
        );

        let e = err("0 0 1 1 round-robin 0 1 1 8:0");
        assert!(
            e.starts_with("priority group 1: paths: expected 2 values"),
            "{e}"
        );
        assert!(e.ends_with("found 1"), "{e}");

        let e = err("0 0 1 1 round-robin 0 1 1 8:0 1 extra");
        assert!(
            e.contains("1 unexpected trailing word(s) starting at \"extra\""),
            "{e}"
        );

        let e = err("0 0 1 0 round-robin 0 1 1 8:0 1");
        assert!(e.contains("initial priority group \"0\" is invalid"), "{e}");
        let e = err("0 0 1 2 round-robin 0 1 1 8:0 1");
        assert!(e.contains("between 1 and the group count 1"), "{e}");
        let e = err("0 0 0 1");
        assert!(e.contains("must be 0 when there are no groups"), "{e}");

        let e = err("1 pg_init_retries 5 0 0 0");
        assert!(e.contains("beyond the feature count"), "{e}");
        let e = err("2 queue_mode fast 0 0 0");
        assert!(e.contains("queue_mode \"fast\" is invalid"), "{e}");
        let e = err("2 pg_init_delay_msecs soon 0 0 0");
        assert!(
            e.contains("pg_init_delay_msecs \"soon\" is not a number"),
            "{e}"
        );
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        for s in [
            "4294967295",
            "4294967295 a",
            "0 4294967295 alua",
            "0 0 4294967295 1 round-robin 0 1 1 8:0 1",
            "0 0 1 1 round-robin 4294967295 1 1 8:0 1",
            "0 0 1 1 round-robin 0 4294967295 4294967295 8:0 1",
            "0 0 1 1 round-robin 0 1 4294967295 8:0 1",
            "0 0 1 1 round-robin 0 4294967295 0 8:0",
            "0 0 1 1 round-robin 0 1 1 8:0 1 4294967296",
            "99999999999999999999 0 0 0",
        ] {
            let e = err(s);
            assert!(
                e.contains("expected") || e.contains("not a number") || e.contains("trailing"),
                "{s}: {e}"
            );
        }
        let e = err("0 0 4294967295 1 round-robin 0 1 1 8:0 1");
        assert!(
            e.contains("priority groups: expected 17179869180 values"),
            "{e}"
        );
    }

    /// A random valid table: random features, 1-4 groups of 1-4 paths, selectors with
    /// 0-2 args, 0-2 args per path.
    pub(crate) fn random_table(rng: &mut Rng) -> MultipathTable {
        let mut features = Vec::new();
        for _ in 0..rng.below(4) {
            let f = match rng.below(6) {
                0 => Feature::QueueIfNoPath,
                1 => Feature::RetainAttachedHwHandler,
                2 => Feature::PgInitRetries(rng.range(0, 50) as u32),
                3 => Feature::PgInitDelayMsecs(rng.below(60001) as u32),
                4 => Feature::QueueMode(*rng.pick(&[
                    QueueMode::Bio,
                    QueueMode::Rq,
                    QueueMode::Mq,
                    QueueMode::Nvme,
                ])),
                _ => Feature::Other(rng.pick(&["no_partitions", "x-feature", "7"]).to_string()),
            };
            features.push(f);
        }
        let hw_handler = match rng.below(3) {
            0 => None,
            _ => Some(HwHandler {
                name: rng.pick(&["alua", "emc", "rdac", "hp_sw"]).to_string(),
                args: (0..rng.below(3)).map(|i| format!("h{i}")).collect(),
            }),
        };
        let ngroups = rng.range(1, 4);
        let groups: Vec<PathGroup> = (0..ngroups)
            .map(|_| {
                let selector = Selector {
                    name: rng
                        .pick(&["round-robin", "queue-length", "service-time"])
                        .to_string(),
                    args: (0..rng.below(3)).map(|i| format!("{}", i * 7)).collect(),
                };
                let args_per_path = rng.below(3) as u32;
                let paths = (0..rng.range(1, 4))
                    .map(|_| {
                        let dev = if rng.chance(80) {
                            format!("{}:{}", rng.below(300), rng.below(1 << 20))
                        } else {
                            format!("/dev/sd{}", (b'a' + rng.below(26) as u8) as char)
                        };
                        let args = (0..args_per_path)
                            .map(|_| rng.below(1000).to_string())
                            .collect();
                        PathSpec::new(dev, args)
                    })
                    .collect();
                PathGroup {
                    selector,
                    args_per_path,
                    paths,
                }
            })
            .collect();
        MultipathTable {
            features,
            hw_handler,
            initial_pg: rng.range(1, ngroups) as u32,
            groups,
        }
    }

    #[test]
    fn property_random_tables_round_trip() {
        let mut rng = Rng::new(0x5eed_7ab1e);
        for i in 0..2000 {
            let t = random_table(&mut rng);
            let s = t.to_string();
            let back: MultipathTable = s
                .parse()
                .unwrap_or_else(|e| panic!("case {i}: {s:?} does not parse: {e}"));
            assert_eq!(back, t, "case {i}: {s}");
            assert_eq!(back.to_string(), s);
        }
    }

    #[test]
    fn fuzz_never_panics_and_reparses_what_it_accepts() {
        let mut rng = Rng::new(42);
        let mut valid: Vec<String> = VALID.iter().map(|s| s.to_string()).collect();
        for _ in 0..50 {
            valid.push(random_table(&mut rng).to_string());
        }
        let valid_refs: Vec<&str> = valid.iter().map(String::as_str).collect();
        let mut accepted = 0;
        for s in fuzz_inputs(&mut rng, &valid_refs, 20_000) {
            if let Ok(t) = s.parse::<MultipathTable>() {
                accepted += 1;
                let again: MultipathTable = t
                    .to_string()
                    .parse()
                    .unwrap_or_else(|e| panic!("{s:?} -> {t} does not reparse: {e}"));
                assert_eq!(again, t, "{s:?}");
            }
            // Tables fed to the status parser must not panic either.
            let _ = s.parse::<crate::dm::MultipathStatus>();
        }
        // Also every word-prefix of every valid table.
        for v in &valid {
            let ws: Vec<&str> = v.split_ascii_whitespace().collect();
            for n in 0..ws.len() {
                let prefix = ws[..n].join(" ");
                assert!(prefix.parse::<MultipathTable>().is_err(), "{prefix:?}");
            }
        }
        assert!(accepted > 0, "fuzz inputs never hit a valid table");
    }
}
