//! Tests of the multipath.conf import: the seed's files, vendor-style and distribution
//! files (every setting carried over or noted), notes, regexes, hostile input.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{
    Config, DeviceId, Failback, Features, FindMultipaths, GroupingPolicy, HardwareHandler,
    NoPathRetry, PathChecker, PathIdent, PrioSource, RrWeight, SelectorKind, Source, WeightKey,
};

const SEED: &str = "defaults {
    user_friendly_names yes
    find_multipaths yes
}
multipaths {
    multipath {
        wwid 360014056001405f00dcafe0123456789
        alias sanvol1
    }
}
";

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Imports `text` and loads the TOML it gives (failing loudly if it does not load).
fn imported(text: &str, origin: &str) -> (Import, Config) {
    let im = import(text, origin).unwrap_or_else(|e| panic!("{e}"));
    let c = Config::from_toml_str(&im.config_toml, "imported.toml")
        .unwrap_or_else(|e| panic!("{e}\n{}", im.config_toml));
    (im, c)
}

fn notes(im: &Import) -> String {
    im.notes
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_notes(im: &Import, needles: &[&str]) {
    let all = notes(im);
    for n in needles {
        assert!(all.contains(n), "no note {n:?} in:\n{all}");
    }
}

fn lun(wwid: &str) -> PathIdent<'_> {
    PathIdent {
        wwid,
        vendor: "",
        product: "",
        revision: "",
        tpgs: false,
    }
}

fn hw<'a>(vendor: &'a str, product: &'a str) -> PathIdent<'a> {
    PathIdent {
        wwid: "3600a0980383030523424457a4a695a6f",
        vendor,
        product,
        revision: "9.1",
        tpgs: true,
    }
}

fn dev<'a>(
    devnode: &'a str,
    wwid: Option<&'a str>,
    vendor: &'a str,
    product: &'a str,
) -> DeviceId<'a> {
    DeviceId {
        devnode,
        wwid,
        vendor,
        product,
        properties: None,
    }
}

/// Every setting of `section` and its subsections, each with the lines of the sections
/// it is in.
fn all_settings<'a>(
    section: &'a Section,
    within: &[usize],
    out: &mut Vec<(&'a Setting, Vec<usize>)>,
) {
    let mut within = within.to_vec();
    within.push(section.line);
    for i in &section.items {
        match i {
            Item::Setting(s) => out.push((s, within.clone())),
            Item::Section(sub) => all_settings(sub, &within, out),
        }
    }
}

/// The round trip: every setting of the file is either in the TOML (its line cited in a
/// `# origin:line:col` comment) or noted at its line (or at the line of a section it is
/// in that was not carried over); never dropped silently.
fn assert_nothing_dropped(text: &str, origin: &str, im: &Import) {
    let conf = parse(text, origin).unwrap();
    let mut settings = Vec::new();
    for s in &conf.sections {
        all_settings(s, &[], &mut settings);
    }
    assert!(!settings.is_empty());
    for (s, within) in settings {
        let cited = im.config_toml.contains(&format!("{origin}:{}:", s.line));
        let noted = im.notes.iter().any(|n| {
            n.line == s.line || (within.contains(&n.line) && n.message.contains("section"))
        });
        assert!(
            cited || noted,
            "{origin}:{}: {} {:?} is neither carried over nor noted\n{}\n{}",
            s.line,
            s.name,
            s.value(),
            im.config_toml,
            notes(im)
        );
    }
    for n in &im.notes {
        assert!(n.line > 0 && n.col > 0, "{n}");
        assert!(
            n.message.contains("not carried over") || n.message.contains("carried over as"),
            "{n}"
        );
    }
}

#[test]
fn import_seed() {
    let (im, c) = imported(SEED, "/etc/multipath.conf");
    assert!(im.notes.is_empty(), "{:?}", im.notes);
    assert!(c.defaults.user_friendly_names);
    assert_eq!(c.defaults.find_multipaths, FindMultipaths::On);
    let s = c.settings_for(&lun("360014056001405f00dcafe0123456789"));
    assert_eq!(s.alias.as_deref(), Some("sanvol1"));
    // The seed file in fixtures is the same.
    assert_eq!(fixture("seed-multipath.conf"), SEED);
}

#[test]
fn import_seed_000_keeps_the_alias_of_a_wwid_with_a_blank() {
    // The multipaths section of /work/shared/seeds/000_1a660fd6a1eccbd8.txt, verbatim:
    // multipath 0.4.9 printed the IET LUN's WWID with a blank, scsi_id -gu with "_".
    let text = fixture("seed-000-multipaths.conf");
    assert!(text.contains("wwid \"1IET 00010001\"\nalias remote_disk\n"));
    let (im, c) = imported(&text, "/etc/multipath.conf");
    assert_eq!(im.notes.len(), 1, "{}", notes(&im));
    assert_eq!(
        im.notes[0].to_string(),
        "/etc/multipath.conf:3:6: wwid \"1IET 00010001\" (multipath) carried over as \
         \"1IET_00010001\": mpathd folds blanks and underscores in WWIDs into one \
         underscore, as `scsi_id -g -u` prints them, so it matches the LUN either way"
    );
    assert!(
        im.config_toml.contains(
            "wwid = \"1IET_00010001\"  # /etc/multipath.conf:3:6\nalias = \"remote_disk\""
        ),
        "{}",
        im.config_toml
    );
    // The path's WWID as mpathd scan (scsi_id -gu) gives it finds the alias; so does the
    // spelling multipath 0.4.9 showed.
    for w in ["1IET_00010001", "1IET 00010001"] {
        assert_eq!(
            c.settings_for(&lun(w)).alias.as_deref(),
            Some("remote_disk"),
            "{w}"
        );
    }
    assert_nothing_dropped(&text, "/etc/multipath.conf", &im);
}

#[test]
fn import_debian_sample() {
    let text = fixture("debian-multipath.conf");
    let (im, c) = imported(&text, "multipath.conf");
    assert_nothing_dropped(&text, "multipath.conf", &im);
    let d = &c.defaults;
    assert!(d.user_friendly_names);
    assert_eq!(d.find_multipaths, FindMultipaths::Smart);
    assert_eq!(d.polling_interval, Duration::from_secs(10));
    // A LUN no device entry matches: defaults, with overrides on top.
    let s = c.settings_for(&lun("36001405aa"));
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    assert_eq!(s.path_grouping_policy, GroupingPolicy::Multibus);
    assert_eq!(s.failback, Failback::Immediate);
    assert_eq!(s.path_checker, PathChecker::Tur);
    // overrides' no_path_retry queue beats defaults' fail.
    assert_eq!(s.no_path_retry, NoPathRetry::Queue);
    assert_eq!(
        c.overrides.no_path_retry.as_ref().unwrap().value,
        NoPathRetry::Queue
    );

    // The NETAPP device entry: its settings, below overrides.
    let n = c.settings_for(&hw("NETAPP", "LUN C-Mode"));
    assert_eq!(n.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(n.rr_weight, RrWeight::Uniform);
    assert_eq!(n.hardware_handler, None, "\"0\" carried over");
    assert_eq!(n.features.pg_init_retries, Some(50));
    assert_eq!(n.no_path_retry, NoPathRetry::Queue);
    assert_eq!(
        n.prio,
        PrioSource::Alua,
        "prio ontap noted; the ALUA entry applies"
    );

    // Blacklist: the usual devnode rules, the untranslatable wwid noted, the property.
    assert!(!c.filter(&dev("loop0", None, "", "")).is_allowed());
    assert!(!c.filter(&dev("dm-3", None, "", "")).is_allowed());
    assert!(!c.filter(&dev("sr0", None, "", "")).is_allowed());
    assert!(!c.filter(&dev("hda", None, "", "")).is_allowed());
    assert!(!c.filter(&dev("cciss!c0d1", None, "", "")).is_allowed());
    assert!(
        c.filter(&dev("sda", Some("36001405aa"), "LIO-ORG", "disk"))
            .is_allowed()
    );
    assert!(!c.filter(&dev("sda", None, "DEC", "MSA500")).is_allowed());
    assert_eq!(c.blacklist.wwid.len(), 0);
    assert_eq!(c.blacklist.property.len(), 1);
    assert_eq!(c.blacklist_exceptions.wwid.len(), 1);

    let y = c.settings_for(&lun("3600508b4000156d700012000000b0000"));
    assert_eq!(y.alias.as_deref(), Some("yellow"));
    assert_eq!(y.path_grouping_policy, GroupingPolicy::Multibus);
    assert_eq!(y.path_selector, SelectorKind::ServiceTime);
    assert_eq!(y.failback, Failback::Manual);
    assert_eq!(y.rr_weight, RrWeight::Priorities);
    assert_eq!(y.no_path_retry, NoPathRetry::Retries(5));
    let PrioSource::Weighted(ws) = &y.prio else {
        panic!("{:?}", y.prio)
    };
    assert_eq!(ws.len(), 2);
    assert_eq!((ws[0].key, ws[0].prio), (WeightKey::Hbtl, 2));
    assert!(ws[0].matches("sda", "1:0:0:3", None));
    assert!(!ws[0].matches("sda", "2:0:0:3", None));
    assert!(ws[1].matches("sda", "4:0:0:0", None));
    // The WWID written with one underscore per blank finds the path's folded WWID.
    assert_eq!(
        c.settings_for(&lun("1DEC_321816758474")).alias.as_deref(),
        Some("red")
    );
    assert_eq!(c.multipaths.len(), 2);

    assert_notes(
        &im,
        &[
            "multipath.conf:11:2: rr_min_io not carried over: the kernel's path selectors use a repeat count of 1",
            "multipath.conf:12:2: getuid_callout not carried over: mpathd reads each disk's WWID from sysfs",
            "multipath.conf:19:7: blacklist wwid \"(a)\\1\" not carried over: the POSIX regex back-reference",
            "multipath.conf:36:10: prio (device \"NETAPP\" \"LUN.*\") \"ontap\" not carried over",
            "multipath.conf:57:10: wwid \"1DEC_____321816758474\" (multipath) carried over as \"1DEC_321816758474\"",
            "mode (multipath 1DEC_____321816758474) not carried over",
            "multipath.conf:61:2: multipath section not carried over: it has no wwid",
            "multipath.conf:68:2: dev_loss_tmo (overrides) not carried over: mpathd does not change transport timeouts",
        ],
    );
    // path_checker tur is carried over, not noted.
    assert!(!notes(&im).contains("multipath.conf:6:2"), "{}", notes(&im));
    // The converted text points back to the source lines.
    assert!(
        im.config_toml.contains("# multipath.conf:16:10"),
        "{}",
        im.config_toml
    );
}

#[test]
fn import_netapp_recommendation() {
    let text = fixture("import/netapp-ontap.conf");
    let (im, c) = imported(&text, "netapp.conf");
    assert_nothing_dropped(&text, "netapp.conf", &im);
    assert_eq!(c.devices.len(), 1);
    let s = c.settings_for(&hw("NETAPP", "LUN C-Mode"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.prio, PrioSource::Alua);
    assert_eq!(s.path_checker, PathChecker::Tur);
    assert_eq!(s.failback, Failback::Immediate);
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    assert_eq!(s.hardware_handler, Some(HardwareHandler::alua()));
    assert_eq!(s.features.pg_init_retries, Some(50));
    // The built-in NETAPP entry's no_path_retry queue beats [defaults]' fail (devices
    // and the built-in table rank above defaults, as in multipath-tools); the
    // device's features queue_if_no_path would not count anyway once a level sets
    // no_path_retry.
    assert_eq!(s.no_path_retry, NoPathRetry::Queue);
    // Where each came from.
    let ex = c.explain(&hw("NETAPP", "LUN C-Mode"));
    let src = |k: &str| ex.iter().find(|e| e.setting == k).unwrap().source.clone();
    assert!(
        matches!(src("path_grouping_policy"), Source::Devices { at } if at.starts_with("imported.toml:")),
        "{ex:?}"
    );
    assert!(
        matches!(src("no_path_retry"), Source::BuiltIn { entry } if entry.starts_with("NetApp ONTAP")),
        "{ex:?}"
    );
    let f = ex.iter().find(|e| e.setting == "features").unwrap();
    assert_eq!(f.value, "2 pg_init_retries 50");
    assert!(
        f.note
            .as_ref()
            .unwrap()
            .contains("queue_if_no_path is ignored"),
        "{f:?}"
    );
    // A LUN of other hardware: the readsector0 checker, as directio.
    assert_eq!(
        c.settings_for(&lun("x")).path_checker,
        PathChecker::Directio
    );
    assert_notes(
        &im,
        &[
            "netapp.conf:4:16: path_checker readsector0 carried over as directio",
            "netapp.conf:7:2: max_fds not carried over: a multipathd daemon setting",
            "netapp.conf:8:2: flush_on_last_del not carried over",
            "netapp.conf:31:3: rr_min_io (device \"NETAPP\" \"LUN.*\") not carried over",
            "netapp.conf:32:3: dev_loss_tmo (device",
            "netapp.conf:34:3: retain_attached_hw_handler (device \"NETAPP\" \"LUN.*\") not carried over: Linux 4.3",
            "netapp.conf:35:3: detect_prio (device \"NETAPP\" \"LUN.*\") not carried over: mpathd does not autodetect",
        ],
    );
}

#[test]
fn import_pure_recommendation() {
    let text = fixture("import/pure-flasharray.conf");
    let (im, c) = imported(&text, "pure.conf");
    assert_nothing_dropped(&text, "pure.conf", &im);
    assert_eq!(c.defaults.polling_interval, Duration::from_secs(10));
    let s = c.settings_for(&hw("PURE", "FlashArray"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.path_selector, SelectorKind::ServiceTime);
    assert_eq!(s.hardware_handler, Some(HardwareHandler::alua()));
    assert_eq!(s.prio, PrioSource::Alua);
    assert_eq!(s.failback, Failback::Immediate);
    assert_eq!(s.path_checker, PathChecker::Tur);
    // no_path_retry 0 is multipath-tools' fail; features 0 clears the built-in's.
    assert_eq!(s.no_path_retry, NoPathRetry::Fail);
    assert_eq!(s.features, Features::default());
    assert_notes(
        &im,
        &[
            "pure.conf:17:3: fast_io_fail_tmo (device \"PURE\" \"FlashArray\") not carried over",
            "pure.conf:18:3: user_friendly_names (device \"PURE\" \"FlashArray\") not carried over: mpathd only has this setting in [defaults]",
            "pure.conf:21:3: dev_loss_tmo",
        ],
    );
}

#[test]
fn import_dellemc_recommendation() {
    let text = fixture("import/dellemc.conf");
    let (im, c) = imported(&text, "dellemc.conf");
    assert_nothing_dropped(&text, "dellemc.conf", &im);
    assert_eq!(c.defaults.find_multipaths, FindMultipaths::Greedy);
    assert_eq!(c.defaults.polling_interval, Duration::from_secs(5));
    assert_eq!(
        c.settings_for(&lun("x")).checker_timeout,
        Duration::from_secs(15)
    );
    let p = c.settings_for(&hw("DellEMC", "PowerStore"));
    assert_eq!(p.path_selector, SelectorKind::QueueLength);
    assert_eq!(p.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(p.no_path_retry, NoPathRetry::Retries(3));
    assert_eq!(p.prio, PrioSource::Alua, "the built-in PowerStore entry");
    let u = c.settings_for(&hw("DGC", "VRAID"));
    assert_eq!(u.no_path_retry, NoPathRetry::Retries(60));
    assert_eq!(
        u.features,
        Features::default(),
        "queue_if_no_path moved out"
    );
    assert_eq!(u.path_checker, PathChecker::Tur, "emc_clariion noted");
    assert_eq!(u.hardware_handler, Some(HardwareHandler::alua()));
    // product_blacklist became a blacklist device rule, as multipath.conf(5) says.
    assert!(!c.filter(&dev("sdq", None, "DGC", "LUNZ")).is_allowed());
    assert!(c.filter(&dev("sdq", None, "DGC", "VRAID")).is_allowed());
    assert_notes(
        &im,
        &[
            "dellemc.conf:6:2: disable_changed_wwids not carried over",
            "dellemc.conf:15:3: detect_prio (device \"DellEMC\" \"PowerStore\") not carried over",
            "dellemc.conf:23:3: max_sectors_kb",
            "dellemc.conf:31:3: path_checker (device \"DGC\" \".*\") not carried over: checker \"emc_clariion\" is not one of mpathd's",
        ],
    );
}

#[test]
fn import_hpe_3par_recommendation() {
    let text = fixture("import/hpe-3par.conf");
    let (im, c) = imported(&text, "3par.conf");
    assert_nothing_dropped(&text, "3par.conf", &im);
    let s = c.settings_for(&hw("3PARdata", "VV"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    assert_eq!(s.no_path_retry, NoPathRetry::Retries(18));
    assert_eq!(s.hardware_handler, Some(HardwareHandler::alua()));
    assert_eq!(s.rr_weight, RrWeight::Uniform);
    assert_notes(
        &im,
        &[
            "3par.conf:7:2: getuid_callout not carried over",
            "3par.conf:23:3: rr_min_io_rq (device \"3PARdata\" \"VV\") not carried over",
            "3par.conf:26:3: dev_loss_tmo",
        ],
    );
}

#[test]
fn import_rhel_defaults() {
    let text = fixture("import/rhel9-mpathconf.conf");
    let (im, c) = imported(&text, "rhel9.conf");
    assert_nothing_dropped(&text, "rhel9.conf", &im);
    assert_eq!(c.defaults.find_multipaths, FindMultipaths::On);
    assert_eq!(c.blacklist_exceptions.property.len(), 1);
    assert_notes(&im, &["rhel9.conf:14:2: enable_foreign not carried over"]);
    // The property exception, with udev's properties known: a SCSI disk udev
    // identified passes; one without SCSI_IDENT_*/ID_WWN does not.
    let good = ["ID_SERIAL".to_string(), "ID_WWN".to_string()];
    let bad = ["ID_SERIAL".to_string(), "ID_BUS".to_string()];
    let mut d = dev("sda", Some("36001"), "LIO-ORG", "disk");
    d.properties = Some(&good);
    assert!(c.filter(&d).is_allowed());
    d.properties = Some(&bad);
    assert!(!c.filter(&d).is_allowed());

    let text = fixture("import/rhel6-0.4.9.conf");
    let (im, c) = imported(&text, "rhel6.conf");
    assert_nothing_dropped(&text, "rhel6.conf", &im);
    let r = c.settings_for(&lun("1IET_00010001"));
    assert_eq!(r.alias.as_deref(), Some("remote_disk"));
    assert_eq!(r.path_grouping_policy, GroupingPolicy::Failover);
    assert_eq!(r.rr_weight, RrWeight::Priorities);
    // The IET device entry, below the multipaths entry.
    let i = c.settings_for(&PathIdent {
        vendor: "IET",
        product: "VIRTUAL-DISK",
        ..lun("1IET_00010001")
    });
    assert_eq!(i.path_grouping_policy, GroupingPolicy::Failover);
    assert_eq!(i.failback, Failback::After(Duration::from_secs(15)));
    assert_eq!(i.no_path_retry, NoPathRetry::Queue);
    assert_eq!(i.path_checker, PathChecker::Directio);
    // The blacklisted WWID written with a blank matches the path's.
    assert!(
        !c.filter(&dev("sdc", Some("1IET_00010002"), "IET", "VIRTUAL-DISK"))
            .is_allowed()
    );
    assert_notes(
        &im,
        &[
            "rhel6.conf:16:7: blacklist wwid \"1IET 00010002\" carried over as \"1IET_00010002\"",
            "rhel6.conf:12:2: pg_timeout not carried over",
            "rhel6.conf:27:8: wwid \"1IET 00010001\" (multipath) carried over as \"1IET_00010001\"",
        ],
    );
}

#[test]
fn import_notes_features_and_prio() {
    let (im, c) = imported(
        "defaults {\n features \"2 queue_if_no_path no_partitions\"\n prio emc\n \
         path_grouping_policy group_by_serial\n failback 0\n no_path_retry 0\n}\n\
         multipaths {\n multipath {\n  wwid a\n  prio weightedpath\n  prio_args \"wwn .* 3\"\n }\n \
         multipath {\n  wwid b\n  prio sysfs\n }\n multipath {\n  wwid a\n }\n}\nfoo {\n}\n",
        "m.conf",
    );
    // no_path_retry 0 is fail, which beats features' queue_if_no_path.
    let s = c.settings_for(&lun("x"));
    assert_eq!(s.no_path_retry, NoPathRetry::Fail);
    assert_eq!(s.prio, PrioSource::Const);
    assert_eq!(c.settings_for(&lun("a")).prio, PrioSource::Const);
    let b = PathIdent {
        tpgs: true,
        ..lun("b")
    };
    assert_eq!(c.settings_for(&b).prio, PrioSource::Alua);
    assert_notes(
        &im,
        &[
            "m.conf:2:11: features: feature \"no_partitions\" not carried over: mpathd makes no partition mappings",
            "m.conf:3:7: prio \"emc\" not carried over",
            "m.conf:4:2: path_grouping_policy not carried over: \"group_by_serial\"",
            "m.conf:5:2: failback not carried over",
            "m.conf:12:13: prio (multipath a) weightedpath not carried over: prio_args \"wwn .* 3\" weights by wwn",
            "m.conf:16:8: prio (multipath b) \"sysfs\" carried over as \"alua\"",
            "m.conf:18:2: multipath section for wwid a not carried over: an earlier multipath section has the same wwid",
            "m.conf:22:1: section \"foo\" not carried over",
        ],
    );
    assert!(
        !notes(&im).contains("m.conf:6:"),
        "no_path_retry 0 is carried"
    );
}

#[test]
fn import_device_sections() {
    let (im, c) = imported(
        "devices {\n device {\n  vendor \"LIO-ORG\"\n  product \".*\"\n  revision \"4\\.0\"\n  \
         path_checker tur\n  hardware_handler \"1 rdac\"\n  features \"pg_init_retries 99\"\n  \
         alias_prefix lio\n }\n device {\n  vendor X\n }\n device {\n  vendor \"(a\"\n  product y\n }\n}\n\
         overrides {\n path_checker none\n polling_interval 3\n protocol {\n  type scsi:iscsi\n }\n}\n",
        "d.conf",
    );
    assert_eq!(c.devices.len(), 1);
    let lio = PathIdent {
        wwid: "36001405",
        vendor: "LIO-ORG",
        product: "FILEIO",
        revision: "4.0",
        tpgs: true,
    };
    let s = c.settings_for(&lio);
    assert_eq!(s.path_checker, PathChecker::None, "overrides beat devices");
    assert_eq!(s.hardware_handler.map(|h| h.name), Some("rdac".to_string()));
    assert_eq!(
        s.features,
        Features::default(),
        "pg_init_retries 99 is out of range: noted, not carried"
    );
    let other_rev = PathIdent {
        revision: "5.0",
        ..lio
    };
    assert_eq!(
        c.settings_for(&other_rev).hardware_handler,
        Some(HardwareHandler::alua()),
        "revision does not match: the built-in entries apply"
    );
    assert_notes(
        &im,
        &[
            "d.conf:8:3: features (device \"LIO-ORG\" \".*\") not carried over: \"pg_init_retries 99\" pg_init_retries \"99\" is not a number from 1 to 50",
            "d.conf:9:3: alias_prefix (device \"LIO-ORG\" \".*\") not carried over: mpathd only has this setting in [defaults]",
            "d.conf:11:2: device section (device \"X\" \"\") not carried over: it has no product",
            "d.conf:15:10: devices device vendor \"(a\" not carried over",
            "d.conf:14:2: device section (device \"(a\" \"y\") not carried over: its vendor, product or revision regex",
            "d.conf:21:2: polling_interval (overrides) not carried over: mpathd only has this setting in [defaults]",
            "d.conf:22:2: section \"protocol\" in overrides not carried over",
        ],
    );
}

#[test]
fn import_regex_translation() {
    let (im, c) = imported(
        "blacklist {\n devnode \"^sd[[:digit:]\\]\"\n wwid \"[[.a.]]\"\n device {\n  vendor \"A&&B\"\n }\n}\n",
        "m.conf",
    );
    assert_eq!(c.blacklist.devnode.len(), 1);
    assert!(!c.filter(&dev("sd\\", None, "A&&B", "")).is_allowed());
    assert_eq!(c.blacklist.device.len(), 1);
    assert!(
        im.notes
            .iter()
            .any(|n| n.message.contains("collating element")),
        "{:?}",
        im.notes
    );
}

#[test]
fn import_fails_only_on_syntax() {
    let e = import("defaults {\n", "m.conf").unwrap_err();
    assert_eq!(e.0[0].line, 1);
    let (_, c) = imported("", "m.conf");
    assert_eq!(c, Config::default());
}

#[test]
fn hostile_origin_and_values_still_give_valid_toml() {
    let conf = r#"defaults {
 alias_prefix "a'b"""
 bindings_file "/x""\"
}
multipaths {
 multipath {
  wwid "w'"""
  alias "x\y"
 }
}
"#;
    let im = import(conf, "weird\nname'\"").unwrap();
    let c = Config::from_toml_str(&im.config_toml, "x")
        .unwrap_or_else(|e| panic!("{e}\n{}", im.config_toml));
    assert_eq!(c.defaults.alias_prefix, "a'b\"");
    assert_eq!(c.defaults.bindings_file, std::path::Path::new("/x\"\\"));
    assert_eq!(c.settings_for(&lun("w'\"")).alias.as_deref(), Some("x\\y"));
}

/// A tiny deterministic generator for the never-panic loops.
fn lcg(state: &mut u64) -> usize {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 33) as usize
}

#[test]
fn parse_and_import_never_panic_on_mangled_input() {
    let pieces = [
        "{",
        "}",
        "\"",
        "\"\"",
        "#",
        "!",
        "\n",
        "é",
        "\\",
        "[",
        "(",
        "multipath",
        "device",
        "wwid",
        "prio_args",
        "features",
        "hardware_handler",
        " ",
        "0",
    ];
    let mut st = 11u64;
    for base in [
        fixture("debian-multipath.conf"),
        fixture("import/dellemc.conf"),
        fixture("import/rhel6-0.4.9.conf"),
    ] {
        let base: Vec<char> = base.chars().collect();
        for _ in 0..300 {
            let mut v = base.clone();
            for _ in 0..(lcg(&mut st) % 8 + 1) {
                let at = lcg(&mut st) % (v.len() + 1);
                if lcg(&mut st).is_multiple_of(2) {
                    let p = pieces[lcg(&mut st) % pieces.len()];
                    for (k, ch) in p.chars().enumerate() {
                        v.insert(at + k, ch);
                    }
                } else {
                    let end = (at + lcg(&mut st) % 5).min(v.len());
                    v.drain(at..end);
                }
            }
            let s: String = v.iter().collect();
            match import(&s, "m.conf") {
                Ok(im) => {
                    Config::from_toml_str(&im.config_toml, "x")
                        .unwrap_or_else(|e| panic!("{e}\n{}\n--- from\n{s}", im.config_toml));
                }
                Err(e) => {
                    for d in e.iter() {
                        assert!(
                            d.line >= 1 && d.col >= 1 && !d.message.starts_with("internal"),
                            "{d}\n{s}"
                        );
                    }
                }
            }
        }
    }
}
