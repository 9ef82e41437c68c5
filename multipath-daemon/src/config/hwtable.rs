//! The built-in device table: per-array settings for the storage iSCSI users meet most,
//! below every setting of the config file but above `[defaults]`, as multipath-tools'
//! built-in hwtable is.
//!
//! The values are facts read from multipath-tools 0.14.3 (`libmultipath/hwtable.c` and
//! `libmultipath/propsel.c`, release commit c2fcdaf1, February 2026); each entry names
//! what it was read from. Only settings mpathd has are carried; each entry lists what
//! multipath-tools also sets there and why mpathd does not. Vendor and product are
//! regexes matched anywhere in the value (multipath-tools' `regexec`).
//!
//! Entries are in multipath-tools' order, the generic one first: when several match a
//! LUN, each setting comes from the last matching entry that sets it.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::settings::{Located, PathIdent, Policy};
use super::values::{
    Failback, Features, GroupingPolicy, HardwareHandler, NoPathRetry, PathChecker, PrioSource,
};

/// One built-in entry.
#[derive(Debug)]
pub struct BuiltinEntry {
    /// The product family, e.g. "Linux-IO (LIO) target".
    pub name: &'static str,
    /// Regexes; `None` matches any value.
    pub vendor: Option<Regex>,
    pub product: Option<Regex>,
    /// Only LUNs that report ALUA support (TPGS) match.
    pub tpgs_only: bool,
    pub policy: Policy,
    label: String,
}

impl BuiltinEntry {
    fn new(name: &'static str, vendor: &str, product: &str) -> Self {
        let re = |p: &str| Regex::new(p).expect("built-in table regexes compile");
        let mut e = Self {
            name,
            vendor: Some(re(vendor)),
            product: Some(re(product)),
            tpgs_only: false,
            policy: Policy::default(),
            label: String::new(),
        };
        e.label = format!("{name} (vendor \"{vendor}\" product \"{product}\")");
        e
    }

    /// What `show config` prints as the source, e.g.
    /// `Linux-IO (LIO) target (vendor "(LIO-ORG|SUSE)" product ".*")`.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn matches(&self, id: &PathIdent<'_>) -> bool {
        (!self.tpgs_only || id.tpgs)
            && self.vendor.as_ref().is_none_or(|r| r.is_match(id.vendor))
            && self.product.as_ref().is_none_or(|r| r.is_match(id.product))
    }

    fn group_by_prio(mut self) -> Self {
        self.policy.path_grouping_policy = Some(Located::new(GroupingPolicy::GroupByPrio, ""));
        self
    }

    fn multibus(mut self) -> Self {
        self.policy.path_grouping_policy = Some(Located::new(GroupingPolicy::Multibus, ""));
        self
    }

    fn failback(mut self, f: Failback) -> Self {
        self.policy.failback = Some(Located::new(f, ""));
        self
    }

    fn no_path_retry(mut self, n: NoPathRetry) -> Self {
        self.policy.no_path_retry = Some(Located::new(n, ""));
        self
    }

    fn alua(mut self) -> Self {
        self.policy.prio = Some(Located::new(PrioSource::Alua, ""));
        self
    }

    fn checker(mut self, c: PathChecker) -> Self {
        self.policy.path_checker = Some(Located::new(c, ""));
        self
    }

    fn features(mut self, f: &str) -> Self {
        let f = Features::parse(f).expect("built-in features parse");
        self.policy.features = Some(Located::new(f, ""));
        self
    }

    fn alua_handler(mut self) -> Self {
        self.policy.hardware_handler = Some(Located::new(Some(HardwareHandler::alua()), ""));
        self
    }
}

/// The table, built once.
pub fn table() -> &'static [BuiltinEntry] {
    static TABLE: LazyLock<Vec<BuiltinEntry>> = LazyLock::new(build);
    &TABLE
}

fn build() -> Vec<BuiltinEntry> {
    use Failback::Immediate;
    use NoPathRetry::{Queue, Retries};
    let generic = {
        // Any LUN that reports TPGS, whatever its vendor. multipath-tools autodetects
        // these (propsel.c): detect_prio gives prio alua (or sysfs, the same states),
        // detect_pgpolicy group_by_prio, select_hwhandler "1 alua" ("autodetected from
        // TPGS"), detect_checker tur. There, autodetection beats even a configured prio;
        // in mpathd it is the lowest built-in entry, so every vendor entry and every
        // level of the config file wins over it.
        let mut e = BuiltinEntry {
            name: "any LUN that reports ALUA (TPGS)",
            vendor: None,
            product: None,
            tpgs_only: true,
            policy: Policy::default(),
            label: String::new(),
        };
        e.label = e.name.to_string();
        e.group_by_prio()
            .alua()
            .alua_handler()
            .checker(PathChecker::Tur)
    };
    vec![
        generic,
        // hwtable.c, HPE "3PAR / Primera / Alletra 9000". Not carried: fast_io_fail 10,
        // dev_loss infinity (transport timeouts, set in iscsid.conf), vpd_vendor.
        BuiltinEntry::new("HPE 3PAR / Primera / Alletra 9000", "3PARdata", "VV")
            .group_by_prio()
            .failback(Immediate)
            .alua()
            .no_path_retry(Retries(18)),
        // hwtable.c, HPE "MSA 1040, 1050, 1060, 2040, 2050, 2060 and 2070 families".
        BuiltinEntry::new(
            "HPE MSA 1040-2070",
            "(HP|HPE)",
            "MSA [12]0[4567]0 (SAN|SAS|FC|iSCSI)",
        )
        .group_by_prio()
        .failback(Immediate)
        .no_path_retry(Retries(18))
        .alua(),
        // hwtable.c, HPE "StoreVirtual 4000 and 3200 families" (LeftHand, iSCSI).
        BuiltinEntry::new(
            "HPE StoreVirtual (LeftHand)",
            "LEFTHAND",
            "(P4000|iSCSIDisk|FCDISK)",
        )
        .group_by_prio()
        .failback(Immediate)
        .no_path_retry(Retries(18))
        .alua(),
        // hwtable.c, HPE "Nimble Storage / HPE Alletra 5000/6000".
        BuiltinEntry::new("Nimble Storage / HPE Alletra 5000/6000", "Nimble", "Server")
            .group_by_prio()
            .failback(Immediate)
            .alua()
            .no_path_retry(Queue),
        // hwtable.c, Dell EMC "Symmetrix / DMX / VMAX / PowerMax".
        BuiltinEntry::new("Dell EMC Symmetrix / VMAX / PowerMax", "EMC", "SYMMETRIX")
            .multibus()
            .no_path_retry(Retries(6)),
        // hwtable.c, Dell EMC "DGC CLARiiON CX/AX / VNX and Unity": no_path_retry is
        // 300 / DEFAULT_CHECKINT (5) = 60. Not carried: path_checker emc_clariion and
        // prio emc (mpathd has neither; in ALUA mode these LUNs report TPGS and get the
        // generic ALUA entry's prio, as multipath-tools' detect_prio gives them),
        // product_blacklist "LUNZ" (blacklist LUNZ yourself with a [blacklist] device
        // rule).
        BuiltinEntry::new(
            "Dell EMC CLARiiON / VNX / Unity",
            "^DGC",
            "^(RAID|DISK|VRAID)",
        )
        .group_by_prio()
        .failback(Immediate)
        .no_path_retry(Retries(60)),
        // hwtable.c, Dell EMC "SC Series (formerly Compellent)".
        BuiltinEntry::new("Dell SC Series (Compellent)", "COMPELNT", "Compellent Vol")
            .group_by_prio()
            .failback(Immediate)
            .no_path_retry(Queue),
        // hwtable.c, Dell EMC "PowerStore". Not carried: fast_io_fail 15.
        BuiltinEntry::new("Dell EMC PowerStore", "DellEMC", "PowerStore")
            .group_by_prio()
            .alua()
            .failback(Immediate)
            .no_path_retry(Retries(3)),
        // hwtable.c, Dell EMC "EqualLogic PS Series".
        BuiltinEntry::new("Dell EqualLogic PS Series", "EQLOGIC", "100E-00")
            .multibus()
            .no_path_retry(Retries(30)),
        // hwtable.c, Hitachi "USP-V, HUS VM, and VSP Series / HPE XP".
        BuiltinEntry::new(
            "Hitachi VSP / USP-V / HUS VM, HPE XP",
            "(HITACHI|HP|HPE)",
            "^OPEN-",
        )
        .group_by_prio()
        .failback(Immediate)
        .no_path_retry(Retries(10)),
        // hwtable.c, IBM "SAN Volume Controller / Storwize / FlashSystem" (2145).
        BuiltinEntry::new("IBM SVC / Storwize / FlashSystem", "IBM", "^2145")
            .no_path_retry(Queue)
            .group_by_prio()
            .failback(Immediate)
            .alua(),
        // hwtable.c, NetApp "ONTAP FAS/AFF/ASA Series". Not carried: prio ontap (mpathd
        // does not have it; ONTAP LUNs report TPGS and get the generic ALUA entry's
        // prio, as multipath-tools' detect_prio gives them), flush_on_last_del always
        // (mpathd never removes a map by itself), dev_loss infinity (a transport
        // timeout), user_friendly_names no (mpathd sets it in [defaults] only).
        BuiltinEntry::new("NetApp ONTAP FAS/AFF/ASA", "NETAPP", "LUN")
            .features("2 pg_init_retries 50")
            .no_path_retry(Queue)
            .group_by_prio()
            .failback(Immediate),
        // hwtable.c, Linux "Linux-IO (LIO) Target". Not carried: detect_checker off
        // (mpathd has no checker autodetection; this entry's checker wins over the
        // generic ALUA entry's anyway).
        BuiltinEntry::new("Linux-IO (LIO) target", "(LIO-ORG|SUSE)", ".*")
            .group_by_prio()
            .failback(Immediate)
            .no_path_retry(Retries(12))
            .alua()
            .checker(PathChecker::Directio),
        // hwtable.c, Linux "Generic SCSI Target Subsystem for Linux (SCST)".
        BuiltinEntry::new("SCST target", "^SCST_", ".*")
            .group_by_prio()
            .failback(Immediate)
            .no_path_retry(Retries(12))
            .alua(),
        // hwtable.c, DataCore "SANsymphony".
        BuiltinEntry::new("DataCore SANsymphony", "DataCore", "Virtual Disk")
            .group_by_prio()
            .failback(Immediate)
            .no_path_retry(Queue)
            .alua(),
        // hwtable.c, Pure Storage "FlashArray family". Not carried: detect_prio no
        // (mpathd has no prio autodetection), fast_io_fail 10 (a transport timeout),
        // max_sectors_kb 4096 (mpathd does not set queue limits).
        BuiltinEntry::new("Pure Storage FlashArray", "PURE", "FlashArray")
            .group_by_prio()
            .failback(Immediate)
            .alua(),
        // hwtable.c, Huawei "OceanStor V3 or better".
        BuiltinEntry::new(
            "Huawei OceanStor V3 and later",
            "^(HUAWEI|AnyStor|Marstor|NETPOSA|SanM|SUGON|UDsafe)",
            "XSG1",
        )
        .group_by_prio()
        .failback(Immediate)
        .no_path_retry(Retries(15)),
    ]
}

/// The table as a Markdown table for docs/config.md (a test keeps the doc in step).
pub fn markdown() -> String {
    let mut out = String::from("| Entry | vendor | product | Settings |\n|---|---|---|---|\n");
    for e in table() {
        let re = |r: &Option<Regex>| match r {
            Some(r) => format!("`{}`", r.as_str().replace('|', "\\|")),
            None => "any".to_string(),
        };
        let (vendor, product) = if e.tpgs_only {
            ("any, if TPGS".to_string(), "any".to_string())
        } else {
            (re(&e.vendor), re(&e.product))
        };
        out.push_str(&format!(
            "| {} | {vendor} | {product} | {} |\n",
            e.name,
            summary(&e.policy).replace('|', "\\|")
        ));
    }
    out
}

/// `key value, ...` for the settings a policy sets.
fn summary(p: &Policy) -> String {
    let mut parts = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k} {v}"));
        }
    };
    add(
        "path_grouping_policy",
        p.path_grouping_policy.as_ref().map(|l| l.value.to_string()),
    );
    add(
        "path_selector",
        p.path_selector.as_ref().map(|l| l.value.to_string()),
    );
    add("failback", p.failback.as_ref().map(|l| l.value.to_string()));
    add(
        "no_path_retry",
        p.no_path_retry.as_ref().map(|l| l.value.to_string()),
    );
    add("prio", p.prio.as_ref().map(|l| l.value.to_string()));
    add(
        "hardware_handler",
        p.hardware_handler.as_ref().map(|l| {
            l.value
                .as_ref()
                .map_or("\"0\"".to_string(), |h| format!("\"{h}\""))
        }),
    );
    add(
        "features",
        p.features.as_ref().map(|l| format!("\"{}\"", l.value)),
    );
    add(
        "rr_weight",
        p.rr_weight.as_ref().map(|l| l.value.to_string()),
    );
    add(
        "path_checker",
        p.path_checker.as_ref().map(|l| l.value.to_string()),
    );
    add(
        "checker_timeout",
        p.checker_timeout
            .as_ref()
            .map(|l| Duration::as_secs(&l.value).to_string()),
    );
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::table;
    use crate::config::{
        Config, Failback, Features, GroupingPolicy, HardwareHandler, MapSettings, NoPathRetry,
        PathChecker, PathIdent, PrioSource, Source,
    };

    /// The settings a disk of this vendor/product gets from an empty config, and the
    /// entry every built-in value came from.
    fn built_in(vendor: &str, product: &str, tpgs: bool) -> (MapSettings, Vec<String>) {
        let c = Config::default();
        let id = PathIdent {
            wwid: "3600000000000000000000000000000001",
            vendor,
            product,
            revision: "1.0",
            tpgs,
        };
        let sources = c
            .explain(&id)
            .into_iter()
            .filter_map(|e| match e.source {
                Source::BuiltIn { entry } => Some(format!("{} {}", e.setting, entry)),
                _ => None,
            })
            .collect();
        (c.settings_for(&id), sources)
    }

    /// One test per entry: a disk with the entry's vendor and product (as the array
    /// reports them) gets the entry's settings, each sourced from the entry.
    macro_rules! entry_test {
        ($name:ident, $entry:literal, $vendor:literal, $product:literal, tpgs = $tpgs:literal,
         $($field:ident = $value:expr),+ $(,)?) => {
            #[test]
            fn $name() {
                let (s, sources) = built_in($vendor, $product, $tpgs);
                $(assert_eq!(s.$field, $value, "{} of {} {}", stringify!($field), $vendor, $product);)+
                $(
                    assert!(
                        sources.iter().any(|x| x.starts_with(stringify!($field)) && x.contains($entry)),
                        "{} not from {:?}: {sources:?}", stringify!($field), $entry
                    );
                )+
                assert!(table().iter().any(|e| e.name.starts_with($entry)), "no entry {:?}", $entry);
            }
        };
    }

    use GroupingPolicy::{GroupByPrio, Multibus};
    use NoPathRetry::{Queue, Retries};

    entry_test!(
        generic_alua,
        "any LUN that reports ALUA",
        "ACME",
        "Virtual LUN",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        prio = PrioSource::Alua,
        hardware_handler = Some(HardwareHandler::alua()),
        path_checker = PathChecker::Tur
    );
    entry_test!(
        hpe_3par,
        "HPE 3PAR",
        "3PARdata",
        "VV",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        prio = PrioSource::Alua,
        no_path_retry = Retries(18)
    );
    entry_test!(
        hpe_msa,
        "HPE MSA",
        "HPE",
        "MSA 2050 iSCSI",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(18),
        prio = PrioSource::Alua
    );
    entry_test!(
        hpe_lefthand,
        "HPE StoreVirtual",
        "LEFTHAND",
        "iSCSIDisk",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(18),
        prio = PrioSource::Alua
    );
    entry_test!(
        nimble,
        "Nimble Storage",
        "Nimble",
        "Server",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        prio = PrioSource::Alua,
        no_path_retry = Queue
    );
    entry_test!(
        emc_symmetrix,
        "Dell EMC Symmetrix",
        "EMC",
        "SYMMETRIX",
        tpgs = false,
        path_grouping_policy = Multibus,
        no_path_retry = Retries(6)
    );
    entry_test!(
        dgc_unity,
        "Dell EMC CLARiiON",
        "DGC",
        "VRAID",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(60)
    );
    entry_test!(
        dell_compellent,
        "Dell SC Series",
        "COMPELNT",
        "Compellent Vol",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Queue
    );
    entry_test!(
        dell_powerstore,
        "Dell EMC PowerStore",
        "DellEMC",
        "PowerStore",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        prio = PrioSource::Alua,
        failback = Failback::Immediate,
        no_path_retry = Retries(3)
    );
    entry_test!(
        dell_equallogic,
        "Dell EqualLogic",
        "EQLOGIC",
        "100E-00",
        tpgs = false,
        path_grouping_policy = Multibus,
        no_path_retry = Retries(30)
    );
    entry_test!(
        hitachi_vsp,
        "Hitachi VSP",
        "HITACHI",
        "OPEN-V",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(10)
    );
    entry_test!(
        ibm_2145,
        "IBM SVC",
        "IBM",
        "2145",
        tpgs = true,
        no_path_retry = Queue,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        prio = PrioSource::Alua
    );
    entry_test!(
        netapp_ontap,
        "NetApp ONTAP",
        "NETAPP",
        "LUN C-Mode",
        tpgs = true,
        features = Features {
            pg_init_retries: Some(50),
            ..Features::default()
        },
        no_path_retry = Queue,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate
    );
    entry_test!(
        lio,
        "Linux-IO (LIO) target",
        "LIO-ORG",
        "FILEIO",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(12),
        prio = PrioSource::Alua,
        path_checker = PathChecker::Directio
    );
    entry_test!(
        scst,
        "SCST target",
        "SCST_FIO",
        "disk01",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(12),
        prio = PrioSource::Alua
    );
    entry_test!(
        datacore,
        "DataCore SANsymphony",
        "DataCore",
        "Virtual Disk",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Queue,
        prio = PrioSource::Alua
    );
    entry_test!(
        pure,
        "Pure Storage FlashArray",
        "PURE",
        "FlashArray",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        prio = PrioSource::Alua
    );
    entry_test!(
        huawei,
        "Huawei OceanStor",
        "HUAWEI",
        "XSG1",
        tpgs = true,
        path_grouping_policy = GroupByPrio,
        failback = Failback::Immediate,
        no_path_retry = Retries(15)
    );

    #[test]
    fn every_entry_has_a_test_above() {
        // Keep the tests in step with the table: one per entry.
        let src = include_str!("hwtable.rs");
        let tests = src
            .lines()
            .filter(|l| l.starts_with("    entry_test!("))
            .count();
        assert_eq!(
            tests,
            table().len(),
            "an entry without a test, or the reverse"
        );
    }

    #[test]
    fn vendor_entries_win_over_the_generic_alua_one() {
        // EqualLogic does not report TPGS in practice; if it did, its multibus would
        // still win, being the more specific entry.
        let (s, _) = built_in("EQLOGIC", "100E-00", true);
        assert_eq!(s.path_grouping_policy, Multibus);
        assert_eq!(
            s.prio,
            PrioSource::Alua,
            "not set by the entry: the generic one"
        );
        // LIO's directio beats the generic entry's tur.
        let (s, _) = built_in("LIO-ORG", "IBLOCK", true);
        assert_eq!(s.path_checker, PathChecker::Directio);
        // Without TPGS the generic entry does not apply, and alua falls back.
        let (s, _) = built_in("LIO-ORG", "IBLOCK", false);
        assert_eq!(s.prio, PrioSource::Const);
        assert_eq!(s.hardware_handler, None);
        // Unknown hardware without TPGS: only the defaults.
        let (s, sources) = built_in("ACME", "disk", false);
        assert_eq!(s, MapSettings::default());
        assert!(sources.is_empty(), "{sources:?}");
        assert_eq!(s.checker_timeout, Duration::from_secs(30));
    }

    #[test]
    fn regexes_match_as_multipath_tools_does() {
        // Anywhere in the value, case-sensitive.
        assert!(
            built_in("XLIO-ORGX", "d", false)
                .1
                .iter()
                .any(|s| s.contains("LIO"))
        );
        assert!(built_in("lio-org", "d", false).1.is_empty());
        // Anchored ones.
        assert!(built_in("IBM", "x2145", false).1.is_empty());
        assert!(!built_in("DGC", "RAID 5", false).1.is_empty());
        assert!(built_in("DGC", "LUNZ", false).1.is_empty());
    }
}
