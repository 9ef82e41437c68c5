//! The multipath target's status line (`dmsetup status`, kernel `STATUSTYPE_INFO`).
//!
//! Layout, from `multipath_status` in the kernel's `drivers/md/dm-mpath.c`:
//!
//! ```text
//! <#feature words> <feature words...>        kernel: "2 <queue_io> <pg_init_count>"
//! <#hw_handler status words> <words...>      kernel: always "0"
//! <#priority groups> <next pg>
//! { <D|A|E> <#selector status words> <words...>
//!   <#paths> <#selector status words per path>
//!   { <dev> <A|F> <fail count> <selector per-path words...> } }
//! ```
//!
//! Unlike the table, the feature and handler sections here are plain counted word
//! lists, so they are kept as words with typed accessors for the kernel's layout.

use std::fmt;
use std::str::FromStr;

use super::table::check_pg_number;
use super::{ParseError, WordWriter, Words};
use crate::model::DevT;

/// State of a priority group as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgState {
    /// `A`: the group I/O currently goes to.
    Active,
    /// `E`: usable, not in use.
    Enabled,
    /// `D`: bypassed (e.g. after a `disable_group` message or a busy pg_init).
    Disabled,
}

impl PgState {
    pub fn as_char(self) -> char {
        match self {
            PgState::Active => 'A',
            PgState::Enabled => 'E',
            PgState::Disabled => 'D',
        }
    }
}

impl FromStr for PgState {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "A" => Ok(PgState::Active),
            "E" => Ok(PgState::Enabled),
            "D" => Ok(PgState::Disabled),
            _ => Err(()),
        }
    }
}

impl fmt::Display for PgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// Whether the kernel considers a path usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathState {
    /// `A`: active.
    Active,
    /// `F`: failed (by I/O error or a `fail_path` message).
    Failed,
}

impl PathState {
    pub fn as_char(self) -> char {
        match self {
            PathState::Active => 'A',
            PathState::Failed => 'F',
        }
    }
}

impl FromStr for PathState {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "A" => Ok(PathState::Active),
            "F" => Ok(PathState::Failed),
            _ => Err(()),
        }
    }
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// One path's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathStatus {
    /// `MAJ:MIN`, as the kernel prints path devices.
    pub dev: String,
    pub state: PathState,
    /// How often the kernel has failed this path since the table was loaded.
    pub fail_count: u32,
    /// The selector's per-path words (`queue-length`: in-flight I/Os; `service-time`:
    /// in-flight size and relative throughput; `round-robin`: none).
    pub selector_args: Vec<String>,
}

impl PathStatus {
    /// The device number, when `dev` is in `MAJ:MIN` form.
    pub fn devt(&self) -> Option<DevT> {
        self.dev.parse().ok()
    }

    pub fn is_active(&self) -> bool {
        self.state == PathState::Active
    }
}

/// One priority group's status.
///
/// Invariant for `Display` to print a parseable line: every path has exactly
/// `selector_args_per_path` selector words; the parser always yields such groups.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgStatus {
    pub state: PgState,
    /// The selector's group-wide status words (none for the in-tree selectors).
    pub selector_status: Vec<String>,
    pub selector_args_per_path: u32,
    pub paths: Vec<PathStatus>,
}

/// The params string of a `multipath` target's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MultipathStatus {
    /// Raw feature words; the kernel prints two: see [`Self::queueing_io`] and
    /// [`Self::pg_init_count`].
    pub features: Vec<String>,
    /// Raw hardware-handler status words (the kernel prints none).
    pub hw_handler: Vec<String>,
    /// 1-based group the next I/O will go to (the current one if no switch is
    /// pending); 0 only when there are no groups.
    pub next_pg: u32,
    pub groups: Vec<PgStatus>,
}

impl MultipathStatus {
    /// Whether the kernel is holding I/O back until pg_init completes
    /// (`MPATHF_QUEUE_IO`): the first of the kernel's two feature words.
    ///
    /// Older kernels (2.6 era) printed the number of queued I/Os here instead, so
    /// any value other than 0 or 1 gives `None` rather than a guess.
    pub fn queueing_io(&self) -> Option<bool> {
        match self.kernel_features()? {
            ("0", _) => Some(false),
            ("1", _) => Some(true),
            _ => None,
        }
    }

    /// How many times path-group initialisation ran for the current group: the second
    /// of the kernel's two feature words.
    pub fn pg_init_count(&self) -> Option<u32> {
        self.kernel_features()?.1.parse().ok()
    }

    fn kernel_features(&self) -> Option<(&str, &str)> {
        match self.features.as_slice() {
            [a, b] => Some((a.as_str(), b.as_str())),
            _ => None,
        }
    }

    /// All paths, group by group.
    pub fn paths(&self) -> impl Iterator<Item = &PathStatus> {
        self.groups.iter().flat_map(|g| g.paths.iter())
    }

    /// The first path whose device is `dev`.
    pub fn path(&self, dev: &str) -> Option<&PathStatus> {
        self.paths().find(|p| p.dev == dev)
    }

    /// Number of paths the kernel considers usable; 0 means I/O fails or queues.
    pub fn active_paths(&self) -> usize {
        self.paths().filter(|p| p.is_active()).count()
    }

    /// Index (0-based) of the group in state `A`, if any.
    pub fn active_group(&self) -> Option<usize> {
        self.groups.iter().position(|g| g.state == PgState::Active)
    }
}

fn parse_group(w: &mut Words<'_>, n: u32) -> Result<PgStatus, ParseError> {
    let what = |field: &str| format!("priority group {n}: {field}");
    let st = w.word(&what("state"))?;
    let state = st
        .parse()
        .map_err(|()| w.invalid(&what("state"), st, "expected A, E or D"))?;
    let nsel = w.count(&what("selector status count"), 1)?;
    let selector_status = w.take(nsel, &what("selector status"))?;
    let npaths = w.number(&what("path count"))?;
    let per_path = w.number(&what("per-path selector status count"))?;
    // Each path: dev, state, fail count, then its selector words.
    let needed = u64::from(npaths).saturating_mul(3 + u64::from(per_path));
    if needed > w.remaining() as u64 {
        return Err(w.truncated(&what("paths"), needed));
    }
    let mut paths = Vec::with_capacity(npaths as usize);
    for p in 1..=npaths {
        let dev = w.word(&what(&format!("path {p} device")))?.to_string();
        let st_what = what(&format!("path {p} state"));
        let st = w.word(&st_what)?;
        let state = st
            .parse()
            .map_err(|()| w.invalid(&st_what, st, "expected A or F"))?;
        let fail_count = w.number(&what(&format!("path {p} fail count")))?;
        let selector_args = w.take(per_path, &what(&format!("path {p} selector status")))?;
        paths.push(PathStatus {
            dev,
            state,
            fail_count,
            selector_args,
        });
    }
    Ok(PgStatus {
        state,
        selector_status,
        selector_args_per_path: per_path,
        paths,
    })
}

impl FromStr for MultipathStatus {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut w = Words::new(s)?;
        let nfeat = w.count("feature count", 1)?;
        let features = w.take(nfeat, "features")?;
        let nhw = w.count("hardware handler status count", 1)?;
        let hw_handler = w.take(nhw, "hardware handler status")?;
        let ngroups = w.number("priority group count")?;
        let next_pg = w.number("next priority group")?;
        // Each group takes at least 4 words (state, 0, #paths, #words per path).
        if u64::from(ngroups) * 4 > w.remaining() as u64 {
            return Err(w.truncated("priority groups", u64::from(ngroups) * 4));
        }
        check_pg_number(&w, "next priority group", next_pg, ngroups)?;
        let mut groups = Vec::with_capacity(ngroups as usize);
        for n in 1..=ngroups {
            groups.push(parse_group(&mut w, n)?);
        }
        w.finish()?;
        Ok(Self {
            features,
            hw_handler,
            next_pg,
            groups,
        })
    }
}

impl fmt::Display for MultipathStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut w = WordWriter::new(f);
        w.counted(&self.features)?;
        w.counted(&self.hw_handler)?;
        w.word(self.groups.len())?;
        w.word(self.next_pg)?;
        for g in &self.groups {
            w.word(g.state)?;
            w.counted(&g.selector_status)?;
            w.word(g.paths.len())?;
            w.word(g.selector_args_per_path)?;
            for p in &g.paths {
                w.word(&p.dev)?;
                w.word(p.state)?;
                w.word(p.fail_count)?;
                w.words(&p.selector_args)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::testutil::{Rng, fuzz_inputs, norm};

    const LAB_FAILED: &str = "2 0 0 0 2 2 E 0 1 0 8:0 F 1 A 0 1 0 8:16 A 0";
    const LAB_HEALTHY: &str = "2 0 0 0 2 1 A 0 1 0 8:0 A 0 E 0 1 0 8:16 A 0";
    /// dm-queue-length.rst
    const DOC_QL: &str = "2 0 0 0 1 1 E 0 2 1 8:0 A 0 0 8:16 A 0 0";
    /// dm-service-time.rst, both examples
    const DOC_ST1: &str = "2 0 0 0 1 1 E 0 2 2 8:0 A 0 0 1 8:16 A 0 0 4";
    const DOC_ST2: &str = "2 0 0 0 1 1 E 0 2 2 8:0 A 0 0 2 8:16 A 0 0 8";

    const VALID: &[&str] = &[
        LAB_FAILED,
        LAB_HEALTHY,
        DOC_QL,
        DOC_ST1,
        DOC_ST2,
        "2 1 3 0 0 0",
        "2 0 0 1 x 1 1 D 1 y 1 0 /dev/sda F 4294967295",
    ];

    #[test]
    fn valid_statuses_round_trip() {
        for s in VALID {
            let st: MultipathStatus = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(st.to_string(), norm(s), "round trip of {s}");
        }
        // The kernel ends the line with a blank.
        let st: MultipathStatus = format!("{LAB_HEALTHY} ").parse().unwrap();
        assert_eq!(st.to_string(), LAB_HEALTHY);
    }

    #[test]
    fn lab_status_after_fail_path() {
        let st: MultipathStatus = LAB_FAILED.parse().unwrap();
        assert_eq!(st.queueing_io(), Some(false));
        assert_eq!(st.pg_init_count(), Some(0));
        assert!(st.hw_handler.is_empty());
        assert_eq!(st.next_pg, 2);
        assert_eq!(st.groups.len(), 2);
        assert_eq!(st.groups[0].state, PgState::Enabled);
        assert_eq!(st.groups[1].state, PgState::Active);
        assert_eq!(st.active_group(), Some(1));
        let p0 = st.path("8:0").unwrap();
        assert_eq!(p0.state, PathState::Failed);
        assert_eq!(p0.fail_count, 1);
        assert_eq!(p0.devt(), Some(DevT::new(8, 0)));
        let p1 = st.path("8:16").unwrap();
        assert_eq!(p1.state, PathState::Active);
        assert_eq!(p1.fail_count, 0);
        assert!(p1.selector_args.is_empty());
        assert_eq!(st.active_paths(), 1);
        assert!(st.path("8:32").is_none());
    }

    #[test]
    fn lab_status_healthy() {
        let st: MultipathStatus = LAB_HEALTHY.parse().unwrap();
        assert_eq!(st.next_pg, 1);
        assert_eq!(
            st.groups.iter().map(|g| g.state).collect::<Vec<_>>(),
            [PgState::Active, PgState::Enabled]
        );
        assert!(st.paths().all(|p| p.is_active() && p.fail_count == 0));
        assert_eq!(st.active_paths(), 2);
    }

    #[test]
    fn doc_selector_status_words() {
        let ql: MultipathStatus = DOC_QL.parse().unwrap();
        assert_eq!(ql.groups[0].selector_args_per_path, 1);
        assert_eq!(ql.path("8:16").unwrap().selector_args, ["0"]);
        let st: MultipathStatus = DOC_ST1.parse().unwrap();
        assert_eq!(st.groups[0].state, PgState::Enabled);
        assert_eq!(st.active_group(), None);
        assert_eq!(st.path("8:16").unwrap().selector_args, ["0", "4"]);
    }

    #[test]
    fn queueing_flag_and_unknown_feature_layouts() {
        let st: MultipathStatus = "2 1 3 0 0 0".parse().unwrap();
        assert_eq!(st.queueing_io(), Some(true));
        assert_eq!(st.pg_init_count(), Some(3));
        assert!(st.groups.is_empty());
        let odd: MultipathStatus = "1 7 0 0 0".parse().unwrap();
        assert_eq!(odd.queueing_io(), None);
        assert_eq!(odd.pg_init_count(), None);
    }

    fn err(s: &str) -> String {
        match s.parse::<MultipathStatus>() {
            Ok(t) => panic!("{s:?} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_statuses_give_useful_errors() {
        assert_eq!(err(""), "empty params string");
        let e = err("2 0 0 0 2 2 X 0 1 0 8:0 F 1 A 0 1 0 8:16 A 0");
        assert!(
            e.starts_with("priority group 1: state \"X\" is invalid (expected A, E or D)"),
            "{e}"
        );
        let e = err("2 0 0 0 2 2 E 0 1 0 8:0 F 1 A 0 1 0 8:16 B 0");
        assert!(
            e.starts_with("priority group 2: path 1 state \"B\" is invalid (expected A or F)"),
            "{e}"
        );
        let e = err("2 0 0 0 2 2 E 0 1 0 8:0 F one A 0 1 0 8:16 A 0");
        assert!(
            e.starts_with("priority group 1: path 1 fail count \"one\" is not a number"),
            "{e}"
        );
        let e = err("2 0 0 0 2 2 E 0 1 0 8:0 F 1 A 0 1 0 8:16 A");
        assert!(
            e.starts_with("priority group 2: paths: expected 3 values"),
            "{e}"
        );
        assert!(e.ends_with("found 2"), "{e}");
        let e = err("2 0 0 0 2 2 E 0 1 0 8:0 F 1 A 0 x 0 8:16 A 0");
        assert!(
            e.starts_with("priority group 2: path count \"x\" is not a number in \""),
            "{e}"
        );
        let e = err(&format!("{LAB_FAILED} 9"));
        assert!(e.contains("trailing word(s) starting at \"9\""), "{e}");
        let e = err("2 0 0 0 2 3 E 0 1 0 8:0 F 1 A 0 1 0 8:16 A 0");
        assert!(e.contains("next priority group \"3\" is invalid"), "{e}");
        let e = err("3 0 0");
        assert_eq!(
            e,
            "feature count: expected 3 values in params string \"3 0 0\", found 2"
        );
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        for s in [
            "4294967295 0 0",
            "2 0 0 4294967295 x",
            "2 0 0 0 4294967295 1 E 0 1 0 8:0 A 0",
            "2 0 0 0 1 1 E 4294967295 1 0 8:0 A 0",
            "2 0 0 0 1 1 E 0 4294967295 0 8:0 A 0",
            "2 0 0 0 1 1 E 0 1 4294967295 8:0 A 0",
            "2 0 0 0 1 1 E 0 4294967295 4294967295 8:0 A 0",
            "2 0 0 0 1 1 E 0 1 0 8:0 A 4294967296",
        ] {
            let e = err(s);
            assert!(
                e.contains("expected") || e.contains("not a number"),
                "{s}: {e}"
            );
        }
    }

    fn random_status(rng: &mut Rng) -> MultipathStatus {
        let ngroups = rng.below(5);
        let groups: Vec<PgStatus> = (0..ngroups)
            .map(|_| {
                let per_path = rng.below(3) as u32;
                PgStatus {
                    state: *rng.pick(&[PgState::Active, PgState::Enabled, PgState::Disabled]),
                    selector_status: (0..rng.below(3)).map(|i| format!("s{i}")).collect(),
                    selector_args_per_path: per_path,
                    paths: (0..rng.range(1, 4))
                        .map(|_| PathStatus {
                            dev: format!("{}:{}", rng.below(300), rng.below(4096)),
                            state: *rng.pick(&[PathState::Active, PathState::Failed]),
                            fail_count: if rng.chance(10) {
                                u32::MAX
                            } else {
                                rng.below(10) as u32
                            },
                            selector_args: (0..per_path)
                                .map(|_| rng.below(100_000).to_string())
                                .collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        MultipathStatus {
            features: vec![rng.below(2).to_string(), rng.below(100).to_string()],
            hw_handler: (0..rng.below(2)).map(|i| format!("h{i}")).collect(),
            next_pg: if ngroups == 0 {
                0
            } else {
                rng.range(1, ngroups) as u32
            },
            groups,
        }
    }

    #[test]
    fn property_random_statuses_round_trip() {
        let mut rng = Rng::new(7);
        for i in 0..2000 {
            let st = random_status(&mut rng);
            let s = st.to_string();
            let back: MultipathStatus = s
                .parse()
                .unwrap_or_else(|e| panic!("case {i}: {s:?} does not parse: {e}"));
            assert_eq!(back, st, "case {i}: {s}");
        }
    }

    #[test]
    fn fuzz_never_panics_and_reparses_what_it_accepts() {
        let mut rng = Rng::new(99);
        let mut valid: Vec<String> = VALID.iter().map(|s| s.to_string()).collect();
        for _ in 0..50 {
            valid.push(random_status(&mut rng).to_string());
        }
        let refs: Vec<&str> = valid.iter().map(String::as_str).collect();
        for s in fuzz_inputs(&mut rng, &refs, 20_000) {
            if let Ok(st) = s.parse::<MultipathStatus>() {
                let again: MultipathStatus = st
                    .to_string()
                    .parse()
                    .unwrap_or_else(|e| panic!("{s:?} -> {st} does not reparse: {e}"));
                assert_eq!(again, st, "{s:?}");
            }
            // Statuses fed to the table parser (and vice versa below) must not panic.
            let _ = s.parse::<crate::dm::MultipathTable>();
        }
        for v in &valid {
            let ws: Vec<&str> = v.split_ascii_whitespace().collect();
            for n in 0..ws.len() {
                let prefix = ws[..n].join(" ");
                assert!(prefix.parse::<MultipathStatus>().is_err(), "{prefix:?}");
            }
        }
    }
}
