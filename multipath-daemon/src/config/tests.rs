//! Tests of the TOML config, merging, the filter and check_file.

use super::*;

const ORIGIN: &str = "mpathd.toml";

fn parse(text: &str) -> Config {
    Config::from_toml_str(text, ORIGIN).unwrap_or_else(|e| panic!("{e}\n--- input:\n{text}"))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match Config::from_toml_str(text, ORIGIN) {
        Ok(c) => panic!("accepted: {c:?}\n--- input:\n{text}"),
        Err(e) => e.0,
    }
}

/// (line, col, message contains).
fn assert_errors(text: &str, expected: &[(usize, usize, &str)]) {
    let got = errors(text);
    let shown = ConfigErrors(got.clone()).to_string();
    assert_eq!(got.len(), expected.len(), "errors:\n{shown}");
    for (d, (line, col, needle)) in got.iter().zip(expected) {
        assert_eq!(
            (d.line, d.col),
            (*line, *col),
            "position of {d}\nall:\n{shown}"
        );
        assert!(d.message.contains(needle), "{d} lacks {needle:?}");
        assert_eq!(d.origin, ORIGIN);
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

/// A LUN known only by its WWID (no device table entry matches it).
fn lun(wwid: &str) -> PathIdent<'_> {
    PathIdent {
        wwid,
        vendor: "",
        product: "",
        revision: "",
        tpgs: false,
    }
}

/// A LUN of this hardware.
fn hw<'a>(wwid: &'a str, vendor: &'a str, product: &'a str, tpgs: bool) -> PathIdent<'a> {
    PathIdent {
        wwid,
        vendor,
        product,
        revision: "",
        tpgs,
    }
}

/// The settings `[defaults]` with `body` gives a LUN no table matches.
fn defaults_give(body: &str) -> MapSettings {
    parse(&format!("[defaults]\n{body}\n")).settings_for(&lun("w"))
}

#[test]
fn empty_file_is_all_defaults() {
    let c = parse("");
    assert_eq!(c, Config::default());
    let s = c.settings_for(&lun("w"));
    assert_eq!(s, MapSettings::default());
    assert_eq!(s.path_grouping_policy, GroupingPolicy::Failover);
    assert_eq!(s.path_selector, SelectorKind::ServiceTime);
    assert_eq!(s.failback, Failback::Manual);
    assert_eq!(s.no_path_retry, NoPathRetry::Fail);
    assert!(!s.queue_if_no_path);
    assert_eq!(s.prio, PrioSource::Const);
    assert_eq!(s.hardware_handler, None);
    assert_eq!(s.features, Features::default());
    assert_eq!(s.rr_weight, RrWeight::Uniform);
    assert_eq!(s.path_checker, PathChecker::Tur);
    assert_eq!(s.checker_timeout, Duration::from_secs(30));
    let d = &c.defaults;
    assert!(d.policy.is_empty());
    assert_eq!(d.polling_interval, Duration::from_secs(5));
    assert_eq!(d.reinstate_checks, 2);
    assert!(!d.user_friendly_names);
    assert_eq!(d.alias_prefix, "mpath");
    assert_eq!(d.find_multipaths, FindMultipaths::Strict);
    assert_eq!(d.bindings_file, Path::new("/etc/mpathd/bindings"));
    assert_eq!(d.wwids_file, Path::new("/etc/mpathd/wwids"));
    assert_eq!(d.socket, Path::new("/run/mpathd/mpathd.sock"));
    assert!(c.multipaths.is_empty() && c.devices.is_empty() && c.overrides.is_empty());
    assert!(c.blacklist.is_empty() && c.blacklist_exceptions.is_empty());
    // Comments and blank lines only.
    assert_eq!(parse("# nothing\n\n"), Config::default());
}

#[test]
fn full_config() {
    let c = parse(
        r#"
[defaults]
path_grouping_policy = "group_by_prio"
path_selector = "queue-length"
failback = 30
no_path_retry = 12
queue_if_no_path = true
prio = "weighted"
prio_weights = [{ hbtl = "2:.*", prio = 10 }, { devname = "sd[a-c]", prio = 5 }, { portal = '10\.99\.1\.2:3260', prio = 50 }]
user_friendly_names = true
alias_prefix = "san"
find_multipaths = "smart"
bindings_file = "/var/lib/mpathd/bindings"
wwids_file = "/var/lib/mpathd/wwids"
socket = "/run/m.sock"
polling_interval = 10
reinstate_checks = 3
hardware_handler = "0"
features = "1 queue_if_no_path"
rr_weight = "priorities"
path_checker = "directio"
checker_timeout = 60

[[multipaths]]
wwid = "360014056001405f00dcafe0123456789"
alias = "sanvol1"
path_grouping_policy = "multibus"
path_selector = "round-robin"
failback = "immediate"
no_path_retry = "queue"
prio = "alua"

[[multipaths]]
wwid = "3600a0b800026b2820000a9a44ba0a1b1"

[blacklist]
devnode = ["^(ram|raw|loop|fd|md|dm-|sr|scd|st)[0-9]*", "^hd[a-z]"]
wwid = [".*"]
device = [{ vendor = "DELL", product = "Universal Xport" }]

[blacklist_exceptions]
wwid = ["^3600140"]
[[blacklist_exceptions.device]]
vendor = "LIO-ORG"
"#,
    );
    let d = &c.defaults;
    let s = c.settings_for(&lun("unlisted"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.path_selector, SelectorKind::QueueLength);
    assert_eq!(s.failback, Failback::After(Duration::from_secs(30)));
    assert_eq!(s.no_path_retry, NoPathRetry::Retries(12));
    assert!(s.queue_if_no_path);
    assert_eq!(s.hardware_handler, None);
    assert_eq!(
        s.features,
        Features::default(),
        "queue_if_no_path taken out"
    );
    assert_eq!(s.rr_weight, RrWeight::Priorities);
    assert_eq!(s.path_checker, PathChecker::Directio);
    assert_eq!(s.checker_timeout, Duration::from_secs(60));
    assert_eq!(d.polling_interval, Duration::from_secs(10));
    assert_eq!(d.reinstate_checks, 3);
    assert_eq!(
        d.policy.failback.as_ref().map(|l| l.at.as_str()),
        Some("mpathd.toml:5:12")
    );
    let PrioSource::Weighted(ws) = &s.prio else {
        panic!("{:?}", s.prio)
    };
    assert_eq!(ws.len(), 3);
    assert_eq!(
        (ws[0].key, ws[0].source(), ws[0].prio),
        (WeightKey::Hbtl, "2:.*", 10)
    );
    assert!(ws[0].matches("sdz", "2:0:0:1", None));
    assert!(
        !ws[0].matches("sdz", "12:0:0:1", None),
        "weights match the whole value"
    );
    assert!(ws[1].matches("sdb", "0:0:0:0", None) && !ws[1].matches("sdbb", "0:0:0:0", None));
    assert_eq!(ws[2].key, WeightKey::Portal);
    assert!(ws[2].matches("sda", "1:0:0:0", Some("10.99.1.2:3260")));
    assert!(!ws[2].matches("sda", "1:0:0:0", None));
    assert!(d.user_friendly_names);
    assert_eq!(d.alias_prefix, "san");
    assert_eq!(d.find_multipaths, FindMultipaths::Smart);
    assert_eq!(d.bindings_file, Path::new("/var/lib/mpathd/bindings"));
    assert_eq!(d.wwids_file, Path::new("/var/lib/mpathd/wwids"));
    assert_eq!(d.socket, Path::new("/run/m.sock"));

    assert_eq!(c.multipaths.len(), 2);
    let e = &c.multipaths[0];
    assert_eq!(e.alias.as_deref(), Some("sanvol1"));
    assert_eq!(e.location, "mpathd.toml:24:1");
    let s = c.settings_for(&lun("360014056001405f00dcafe0123456789"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::Multibus);
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    assert_eq!(s.failback, Failback::Immediate);
    assert_eq!(s.no_path_retry, NoPathRetry::Queue);
    assert_eq!(s.prio, PrioSource::Const, "alua without TPGS falls back");
    let s = c.settings_for(&hw("360014056001405f00dcafe0123456789", "X", "Y", true));
    assert_eq!(s.prio, PrioSource::Alua);
    assert_eq!(
        c.multipaths[1],
        MultipathEntry {
            wwid: "3600a0b800026b2820000a9a44ba0a1b1".into(),
            location: "mpathd.toml:33:1".into(),
            ..Default::default()
        }
    );

    assert_eq!(c.blacklist.devnode.len(), 2);
    assert_eq!(c.blacklist.devnode[1].location, "mpathd.toml:37:57");
    assert_eq!(c.blacklist.wwid.len(), 1);
    assert_eq!(c.blacklist.device.len(), 1);
    assert_eq!(c.blacklist_exceptions.wwid.len(), 1);
    assert_eq!(c.blacklist_exceptions.device.len(), 1);
    assert!(c.blacklist_exceptions.device[0].product.is_none());
}

#[test]
fn inline_multipaths_and_dotted_keys() {
    let c = parse(
        "defaults.failback = \"followover\"\n\
         multipaths = [{ wwid = \"w1\", alias = \"a1\" }, { wwid = \"w2\", queue_if_no_path = true }]\n",
    );
    assert_eq!(c.settings_for(&lun("w9")).failback, Failback::Followover);
    assert_eq!(c.multipaths.len(), 2);
    assert_eq!(c.multipaths[0].location, "mpathd.toml:2:15");
    assert_eq!(c.settings_for(&lun("w2")).no_path_retry, NoPathRetry::Queue);
}

#[test]
fn value_spellings() {
    let d = defaults_give;
    assert_eq!(d("failback = 0").failback, Failback::Immediate);
    assert_eq!(d("failback = \"manual\"").failback, Failback::Manual);
    assert_eq!(d("no_path_retry = 0").no_path_retry, NoPathRetry::Fail);
    assert_eq!(
        d("no_path_retry = \"fail\"").no_path_retry,
        NoPathRetry::Fail
    );
    assert_eq!(
        d("path_selector = \"service-time 0\"").path_selector,
        SelectorKind::ServiceTime
    );
    let dd = |body: &str| parse(&format!("[defaults]\n{body}\n")).defaults;
    for (s, f) in [
        ("strict", FindMultipaths::Strict),
        ("on", FindMultipaths::On),
        ("yes", FindMultipaths::On),
        ("smart", FindMultipaths::Smart),
        ("greedy", FindMultipaths::Greedy),
        ("off", FindMultipaths::Greedy),
        ("no", FindMultipaths::Greedy),
    ] {
        assert_eq!(
            dd(&format!("find_multipaths = \"{s}\"")).find_multipaths,
            f,
            "{s}"
        );
    }
    assert_eq!(
        dd("find_multipaths = true").find_multipaths,
        FindMultipaths::On
    );
    assert_eq!(
        dd("find_multipaths = false").find_multipaths,
        FindMultipaths::Greedy
    );
    // prio_weights alone implies weighted.
    assert!(matches!(
        d("prio_weights = [{ devname = \"sda\", prio = 1 }]").prio,
        PrioSource::Weighted(_)
    ));
    for s in SelectorKind::ALL {
        assert_eq!(
            d(&format!("path_selector = \"{}\"", s.dm_name())).path_selector,
            s
        );
    }
    for g in GroupingPolicy::ALL {
        assert_eq!(
            d(&format!("path_grouping_policy = \"{g}\"")).path_grouping_policy,
            g
        );
    }
}

#[test]
fn queue_if_no_path_and_no_path_retry() {
    let d = defaults_give;
    // queue_if_no_path alone queues; no_path_retry wins when both are set.
    assert_eq!(
        d("queue_if_no_path = true").no_path_retry,
        NoPathRetry::Queue
    );
    assert_eq!(
        d("queue_if_no_path = true\nno_path_retry = \"fail\"").no_path_retry,
        NoPathRetry::Fail
    );
    assert_eq!(
        d("queue_if_no_path = false\nno_path_retry = 5").no_path_retry,
        NoPathRetry::Retries(5)
    );
    // Settings: the entry's level wins over the defaults, and the flag follows.
    let c = parse(
        "[defaults]\nno_path_retry = \"queue\"\n\
         [[multipaths]]\nwwid = \"a\"\nqueue_if_no_path = false\n\
         [[multipaths]]\nwwid = \"b\"\nno_path_retry = 3\nqueue_if_no_path = false\n\
         [[multipaths]]\nwwid = \"c\"\n",
    );
    let s = c.settings_for(&lun("a"));
    assert_eq!(
        (s.no_path_retry, s.queue_if_no_path),
        (NoPathRetry::Fail, false)
    );
    let s = c.settings_for(&lun("b"));
    assert_eq!(
        (s.no_path_retry, s.queue_if_no_path),
        (NoPathRetry::Retries(3), true)
    );
    let s = c.settings_for(&lun("c"));
    assert_eq!(
        (s.no_path_retry, s.queue_if_no_path),
        (NoPathRetry::Queue, true)
    );
    let s = c.settings_for(&lun("unlisted"));
    assert_eq!(
        (s.no_path_retry, s.queue_if_no_path),
        (NoPathRetry::Queue, true)
    );
}

#[test]
fn settings_for_merges_entry_over_defaults() {
    let c = parse(
        r#"
[defaults]
path_grouping_policy = "multibus"
failback = "immediate"
prio = "alua"

[[multipaths]]
wwid = "w1"
alias = "db"
path_grouping_policy = "group_by_prio"
path_selector = "round-robin"
prio = "const"
"#,
    );
    let s = c.settings_for(&lun("w1"));
    assert_eq!(s.alias.as_deref(), Some("db"));
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    assert_eq!(
        s.failback,
        Failback::Immediate,
        "not overridden: the default"
    );
    assert_eq!(s.prio, PrioSource::Const);
    let s = c.settings_for(&lun("w2"));
    assert_eq!(s.alias, None);
    assert_eq!(s.path_grouping_policy, GroupingPolicy::Multibus);
    assert_eq!(s.path_selector, SelectorKind::ServiceTime);
    assert_eq!(s.prio, PrioSource::Const, "alua without TPGS falls back");
    assert_eq!(
        c.settings_for(&hw("w2", "X", "Y", true)).prio,
        PrioSource::Alua
    );
    assert!(c.entry_for("w1").is_some() && c.entry_for("w2").is_none());
    assert_eq!(c.entry_for_alias("db").map(|e| e.wwid.as_str()), Some("w1"));
}

#[test]
fn syntax_error_has_position() {
    assert_errors("[defaults]\nfailback = \n", &[(2, 12, "TOML syntax")]);
    assert_errors(
        "[defaults]\nuser_friendly_names = yes\n",
        &[(2, 23, "TOML syntax")],
    );
    assert_errors("a = \"unterminated\n", &[(1, 18, "TOML syntax")]);
    // Duplicate keys are TOML errors too.
    let e = errors("[defaults]\nfailback = 1\nfailback = 2\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3, "{}", e[0]);
}

#[test]
fn every_semantic_error_is_reported_with_its_position() {
    let text = r#"[defaults]
path_grouping_policy = "round-robin"
path_selector = 3
failback = -1
no_path_retry = "sometimes"
queue_if_no_path = "yes"
user_friendly_names = 1
find_multipaths = "maybe"
bindings_file = "relative/path"
colour = "blue"
prio = "weighted"

[[multipaths]]
alias = "no/slash"

[[multipaths]]
wwid = "w1"
alias = "vol"
user_friendly_names = true

[[multipaths]]
wwid = "w1"
alias = "vol"

[blacklist]
devnode = ["^sd[", 7]
device = [{ vendor = "X", model = "Y" }, {}]

[extra]
"#;
    assert_errors(
        text,
        &[
            (2, 24, "path_grouping_policy \"round-robin\" is not one of"),
            (3, 17, "path_selector must be a string, found an integer"),
            (4, 12, "failback must be 0 or more seconds"),
            (
                5,
                17,
                "no_path_retry \"sometimes\" is not one of \"fail\", \"queue\"",
            ),
            (
                6,
                20,
                "queue_if_no_path must be true or false, found \"yes\"",
            ),
            (7, 23, "user_friendly_names must be true or false, found 1"),
            (8, 19, "find_multipaths \"maybe\" is not one of"),
            (9, 17, "bindings_file must be an absolute path"),
            (10, 1, "unknown key \"colour\" in [defaults]"),
            (
                11,
                8,
                "prio = \"weighted\" in [defaults] needs prio_weights",
            ),
            (13, 1, "has no wwid"),
            (14, 9, "alias \"no/slash\" contains '/'"),
            (
                19,
                1,
                "unknown key \"user_friendly_names\" in [[multipaths]] (it can only be set in [defaults])",
            ),
            (
                22,
                8,
                "wwid \"w1\" already has an entry at mpathd.toml:17:8",
            ),
            (23, 9, "alias \"vol\" is already used at mpathd.toml:18:9"),
            (
                26,
                12,
                "blacklist.devnode: invalid regex: unclosed character class",
            ),
            (
                26,
                20,
                "blacklist.devnode entries must be strings, found an integer",
            ),
            (27, 27, "unknown key \"model\" in blacklist.device"),
            (27, 42, "blacklist.device entry needs a vendor or a product"),
            (29, 2, "unknown key \"extra\" at the top level"),
        ],
    );
}

#[test]
fn more_type_errors() {
    assert_errors(
        "defaults = 3\nmultipaths = \"x\"\nblacklist = []\n",
        &[
            (1, 12, "[defaults] must be a table, found an integer"),
            (2, 14, "multipaths must be an array of tables"),
            (3, 13, "[blacklist] must be a table, found an array"),
        ],
    );
    assert_errors(
        "[defaults]\nprio = \"alua\"\nprio_weights = [{ hbtl = \"(\", prio = 1 }, 3, { prio = 2 }, { devname = \"a\", hbtl = \"b\", prio = 1 }, { devname = \"a\", prio = -1 }]\n",
        &[
            (3, 26, "prio_weights[0].hbtl: invalid regex"),
            (3, 43, "prio_weights[1] must be an inline table"),
            (
                3,
                46,
                "prio_weights[2] needs one of devname, hbtl, portal and a prio",
            ),
            (
                3,
                77,
                "prio_weights[3] has more than one of devname, hbtl, portal",
            ),
            (3, 125, "prio_weights[4].prio must be an integer from 0"),
        ],
    );
    assert_errors(
        "[defaults]\nprio = \"const\"\nprio_weights = [{ hbtl = \".*\", prio = 1 }]\n",
        &[(
            3,
            16,
            "prio_weights in [defaults] needs prio = \"weighted\", not \"const\"",
        )],
    );
    assert_errors(
        "[[multipaths]]\nwwid = \"has\\ttab\\u0007\"\n[[multipaths]]\nwwid = \" \"\nalias = \"..\"\n",
        &[
            (2, 8, "wwid contains '\\t'"),
            (4, 8, "wwid is empty"),
            (5, 9, "alias \"..\" cannot be"),
        ],
    );
    let long = "x".repeat(128);
    assert_errors(
        &format!(
            "[[multipaths]]\nwwid = \"w\"\nalias = \"{long}\"\n[defaults]\nalias_prefix = \"a b\"\n"
        ),
        &[
            (3, 9, "128 bytes long"),
            (5, 16, "alias_prefix contains ' '"),
        ],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes; the error is at character 9 of line 2.
    assert_errors(
        "[defaults]\n# é\n\"éé\" = 1\n",
        &[(3, 1, "unknown key \"éé\"")],
    );
    assert_errors(
        "[defaults]\nprio = \"é\"\n",
        &[(2, 8, "prio \"é\" is not one of")],
    );
    assert_errors(
        "[blacklist]\ndevnode = [\"ééé\", \"(\"]\n",
        &[(2, 19, "invalid regex")],
    );
}

#[test]
fn errors_display_one_per_line() {
    let e =
        Config::from_toml_str("[defaults]\nfailback = \"x\"\nprio = 3\n", "f.toml").unwrap_err();
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 2, "{s}");
    assert!(lines[0].starts_with("f.toml:2:12: failback"), "{s}");
    assert!(lines[1].starts_with("f.toml:3:8: prio"), "{s}");
    let _: &dyn std::error::Error = &e;
}

#[test]
fn filter_devnode_wwid_device_and_exceptions() {
    let c = parse(
        r#"[blacklist]
devnode = ["^sd[c-z]"]
wwid = ["^36000"]
device = [{ vendor = "^DELL", product = "Universal" }, { vendor = "IBM" }]

[blacklist_exceptions]
devnode = ["^sdd$"]
wwid = ["^360000001$"]
device = [{ vendor = "DELL", product = "Xport 2" }]
"#,
    );
    let v = c.filter(&dev("sda", Some("3600140"), "LIO-ORG", "disk"));
    assert_eq!(v, Verdict::Allowed);
    assert!(v.is_allowed());
    assert_eq!(
        c.filter(&dev("sdc", None, "LIO-ORG", "disk")),
        Verdict::Blacklisted {
            reason: "blacklist devnode \"^sd[c-z]\" (mpathd.toml:2:12)".into()
        }
    );
    // Exception of the same kind lifts it.
    assert!(c.filter(&dev("sdd", None, "LIO-ORG", "disk")).is_allowed());
    // An exception of another kind does not (multipath-tools' order of checks).
    assert!(
        !c.filter(&dev("sde", Some("360000001"), "LIO-ORG", "disk"))
            .is_allowed()
    );
    // WWID rules.
    let Verdict::Blacklisted { reason } = c.filter(&dev("sda", Some("3600002"), "X", "Y")) else {
        panic!()
    };
    assert_eq!(reason, "blacklist wwid \"^36000\" (mpathd.toml:3:9)");
    assert!(
        c.filter(&dev("sda", Some("360000001"), "X", "Y"))
            .is_allowed()
    );
    assert!(
        c.filter(&dev("sda", None, "X", "Y")).is_allowed(),
        "no WWID: WWID rules skipped"
    );
    // Device rules: both regexes must match; a missing one matches anything.
    let Verdict::Blacklisted { reason } = c.filter(&dev("sda", None, "DELL", "Universal Xport"))
    else {
        panic!()
    };
    assert_eq!(
        reason,
        "blacklist device vendor \"^DELL\" product \"Universal\" (mpathd.toml:4:11)"
    );
    assert!(c.filter(&dev("sda", None, "DELL", "PERC")).is_allowed());
    assert!(!c.filter(&dev("sda", None, "IBM", "anything")).is_allowed());
    assert!(
        c.filter(&dev("sda", None, "DELL", "Universal Xport 2"))
            .is_allowed()
    );
    // Default config allows everything.
    assert!(
        Config::default()
            .filter(&dev("loop0", None, "", ""))
            .is_allowed()
    );
}

#[test]
fn filter_built_in_code() {
    let mut c = Config::default();
    c.blacklist.wwid.push(Rule::new(".*").unwrap());
    c.blacklist_exceptions
        .wwid
        .push(Rule::new("^3600140").unwrap().at("here"));
    assert!(
        c.filter(&dev("sda", Some("36001405abc"), "", ""))
            .is_allowed()
    );
    assert_eq!(
        c.filter(&dev("sda", Some("35000c5"), "", "")),
        Verdict::Blacklisted {
            reason: "blacklist wwid \".*\"".into()
        }
    );
}

#[test]
fn packaged_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mpathd.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // The example documents the defaults; it must not change them by accident.
    assert_eq!(c.defaults, Defaults::default());
    assert!(!c.multipaths.is_empty());
    assert!(
        c.blacklist
            .devnode
            .iter()
            .any(|r| r.as_str().contains("loop"))
    );
}

#[test]
fn fixtures_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let good = check_file(&dir.join("good.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        good.settings_for(&lun("360014056001405f00dcafe0123456789"))
            .alias
            .as_deref(),
        Some("sanvol1")
    );
    let bad = check_file(&dir.join("bad.toml")).unwrap_err();
    assert!(bad.len() >= 3, "{bad}");
    for d in bad.iter() {
        assert!(d.line > 0 && d.col > 0, "{d}");
        assert!(d.origin.ends_with("bad.toml"));
    }
}

#[test]
fn check_file_spots_multipath_conf() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let e = check_file(&dir.join("seed-multipath.conf")).unwrap_err();
    assert!(e.0[0].message.contains("multipath.conf"), "{e}");
    assert!(e.0[0].message.contains("mpathd import"), "{e}");
    assert_eq!(e.0[0].line, 0);
    // Missing file.
    let e = check_file(&dir.join("does-not-exist.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e.to_string().ends_with("does-not-exist.toml: no such file"),
        "{e}"
    );
}

#[test]
fn check_file_conf_name_that_parses_as_neither() {
    let dir = std::env::temp_dir().join(format!("mpathd-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("broken.conf");
    std::fs::write(&p, "defaults {\n  x \"y\n").unwrap();
    let e = check_file(&p).unwrap_err();
    assert!(e.to_string().contains("mpathd import"), "{e}");
    // A TOML file named .conf is fine.
    let p = dir.join("ok.conf");
    std::fs::write(&p, "[defaults]\nfailback = 5\n").unwrap();
    assert_eq!(
        check_file(&p).unwrap().settings_for(&lun("w")).failback,
        Failback::After(Duration::from_secs(5))
    );
    // Not UTF-8.
    let p = dir.join("bin.toml");
    std::fs::write(&p, b"\xff\xfe").unwrap();
    assert!(check_file(&p).unwrap_err().to_string().contains("UTF-8"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dm_names_and_wwids() {
    assert!(dm_name_problem("sanvol1").is_none());
    assert!(dm_name_problem("a.b-c_d").is_none());
    for bad in ["", ".", "..", "a/b", "a b", "a\u{7}"] {
        assert!(dm_name_problem(bad).is_some(), "{bad:?}");
    }
    assert!(dm_name_problem(&"a".repeat(127)).is_none());
    assert!(dm_name_problem(&"a".repeat(128)).is_some());
    assert!(wwid_problem("3600").is_none() && wwid_problem("1IET 00010001").is_none());
    assert!(wwid_problem("").is_some() && wwid_problem("  ").is_some());
    assert!(wwid_problem("a\u{0}b").is_some());
}

/// A tiny deterministic generator for the never-panic loops.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

#[test]
fn toml_parser_never_panics_on_mangled_input() {
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mpathd.toml"),
    )
    .unwrap();
    let pieces = [
        "[",
        "]",
        "[[",
        "]]",
        "=",
        "\"",
        "'",
        "{",
        "}",
        ",",
        "\n",
        "é",
        "\\",
        "(",
        "[^",
        "-1",
        "99999999999999999999",
        "true",
        "wwid",
        "alias",
        "prio_weights",
        "multipaths",
        ".",
    ];
    let mut rng = Lcg(7);
    let chars: Vec<char> = base.chars().collect();
    for _ in 0..400 {
        let mut s: String = chars.iter().collect();
        for _ in 0..(rng.next() % 6 + 1) {
            let at = (rng.next() as usize) % (s.chars().count() + 1);
            let byte = s.char_indices().nth(at).map_or(s.len(), |(i, _)| i);
            if rng.next().is_multiple_of(2) {
                s.insert_str(byte, rng.pick(&pieces));
            } else {
                let end = s[byte..]
                    .char_indices()
                    .nth(3)
                    .map_or(s.len(), |(i, _)| byte + i);
                s.replace_range(byte..end, "");
            }
        }
        if let Err(e) = Config::from_toml_str(&s, ORIGIN) {
            for d in e.iter() {
                assert!(d.line >= 1 && d.col >= 1, "{d}");
            }
        }
    }
}

#[test]
fn docs_toml_examples_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").unwrap();
        Config::from_toml_str(&body[..end], "docs/config.md")
            .unwrap_or_else(|e| panic!("{e}\n{}", &body[..end]));
        n += 1;
        rest = &body[end..];
    }
    assert!(n >= 4, "{n} examples");
    // The seed's import, as the docs show it.
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/seed-multipath.conf"),
    )
    .unwrap();
    let im = multipath_conf::import(&seed, "/etc/multipath.conf").unwrap();
    for line in im
        .config_toml
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(doc.contains(line), "docs lack {line:?}");
    }
}

#[test]
fn docs_list_the_builtin_table() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md"))
            .unwrap();
    let start = "<!-- hwtable:start -->\n";
    let end = "<!-- hwtable:end -->";
    let (a, b) = (
        doc.find(start).unwrap() + start.len(),
        doc.find(end).unwrap(),
    );
    let want = hwtable::markdown();
    assert_eq!(
        &doc[a..b],
        want,
        "docs/config.md's built-in table is stale; put this between the markers:\n{want}"
    );
    for e in hwtable::table() {
        assert!(doc[a..b].contains(e.name), "{}", e.name);
    }
    // The RHEL 6 seed's import, as the docs show it.
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config/seed-000-multipaths.conf"),
    )
    .unwrap();
    let im = multipath_conf::import(&seed, "/etc/multipath.conf").unwrap();
    for line in im
        .config_toml
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(doc.contains(line), "docs lack {line:?}");
    }
    assert!(doc.contains(&im.notes[0].to_string()), "docs lack the note");
}

#[test]
fn wwids_with_blanks_fold_in_multipaths() {
    let c = parse("[[multipaths]]\nwwid = \" 1IET 00010001 \"\nalias = \"remote_disk\"\n");
    assert_eq!(c.multipaths[0].wwid, "1IET_00010001");
    for w in [
        "1IET_00010001",
        "1IET 00010001",
        "1IET__00010001",
        "1IET \t_00010001",
    ] {
        assert_eq!(
            c.settings_for(&lun(w)).alias.as_deref(),
            Some("remote_disk"),
            "{w:?}"
        );
    }
    assert!(c.entry_for("1IET00010001").is_none());
    assert_errors(
        "[[multipaths]]\nwwid = \"1IET 00010001\"\n[[multipaths]]\nwwid = \"1IET_00010001\"\n",
        &[(
            4,
            8,
            "wwid \"1IET_00010001\" already has an entry at mpathd.toml:2:8",
        )],
    );
    assert_errors(
        "[[multipaths]]\nwwid = \"1IET_00010001\"\n[[multipaths]]\nwwid = \"1IET  00010001\"\n",
        &[(
            4,
            8,
            "wwid \"1IET  00010001\" (folded: 1IET_00010001) already has an entry",
        )],
    );
    assert_eq!(normalize_wwid("36001405aa"), "36001405aa");
    assert!(matches!(
        normalize_wwid("36001405aa"),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(normalize_wwid("_a__b_"), "_a_b_");
    assert_eq!(
        normalize_wwid(" 1DEC_____321816758474\n"),
        "1DEC_321816758474"
    );
}

const LAYERED: &str = r#"[defaults]
path_grouping_policy = "multibus"
no_path_retry = "fail"
failback = 30
path_checker = "none"

[overrides]
path_selector = "queue-length"

[[devices]]
vendor = "LIO-ORG"
product = ".*"
failback = "manual"
rr_weight = "priorities"

[[devices]]
vendor = "LIO-ORG"
product = "^IBLOCK$"
revision = "^4"
failback = "followover"
checker_timeout = 45

[[multipaths]]
wwid = "36001405aaaa"
alias = "db"
path_selector = "round-robin"
"#;

#[test]
fn precedence_is_multipath_tools_order() {
    let c = parse(LAYERED);
    let id = |wwid, product, revision| PathIdent {
        wwid,
        vendor: "LIO-ORG",
        product,
        revision,
        tpgs: true,
    };
    // multipaths > overrides.
    let s = c.settings_for(&id("36001405aaaa", "IBLOCK", "4.0"));
    assert_eq!(s.path_selector, SelectorKind::RoundRobin);
    // overrides > devices, built-in, defaults.
    let s = c.settings_for(&id("36001405bbbb", "IBLOCK", "4.0"));
    assert_eq!(s.path_selector, SelectorKind::QueueLength);
    // The later matching [[devices]] entry wins; the earlier one still gives what the
    // later one does not set.
    assert_eq!(s.failback, Failback::Followover);
    assert_eq!(s.rr_weight, RrWeight::Priorities);
    assert_eq!(s.checker_timeout, Duration::from_secs(45));
    // Revision does not match: only the first entry.
    let s = c.settings_for(&id("36001405bbbb", "IBLOCK", "5.0"));
    assert_eq!(s.failback, Failback::Manual);
    assert_eq!(s.checker_timeout, Duration::from_secs(30));
    // devices > built-in: the built-in LIO entry's checker is directio, but
    // [defaults]' none loses to it; its grouping beats [defaults]' multibus.
    assert_eq!(s.path_checker, PathChecker::Directio);
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    assert_eq!(s.no_path_retry, NoPathRetry::Retries(12));
    // Hardware no entry matches: [defaults], then the built-in default.
    let other = hw("35000c500", "SEAGATE", "ST4000", false);
    let s = c.settings_for(&other);
    assert_eq!(s.path_grouping_policy, GroupingPolicy::Multibus);
    assert_eq!(s.failback, Failback::After(Duration::from_secs(30)));
    assert_eq!(s.path_checker, PathChecker::None);
    assert_eq!(
        s.path_selector,
        SelectorKind::QueueLength,
        "overrides apply to all"
    );
    assert_eq!(s.rr_weight, RrWeight::Uniform);
}

#[test]
fn explain_says_where_each_value_came_from() {
    let c = parse(LAYERED);
    let id = PathIdent {
        wwid: "36001405aaaa",
        vendor: "LIO-ORG",
        product: "IBLOCK",
        revision: "4.0",
        tpgs: true,
    };
    let rows = c.explain(&id);
    let text = format_explained(&rows);
    let expected = "\
alias                 db             mpathd.toml:23:1 [[multipaths]]
path_grouping_policy  group_by_prio  built-in: Linux-IO (LIO) target (vendor \"(LIO-ORG|SUSE)\" product \".*\")
path_selector         round-robin    mpathd.toml:26:17 [[multipaths]]
failback              followover     mpathd.toml:20:12 [[devices]]
no_path_retry         12             built-in: Linux-IO (LIO) target (vendor \"(LIO-ORG|SUSE)\" product \".*\")
features              0              default
prio                  alua           built-in: Linux-IO (LIO) target (vendor \"(LIO-ORG|SUSE)\" product \".*\")
hardware_handler      1 alua         built-in: any LUN that reports ALUA (TPGS)
rr_weight             priorities     mpathd.toml:14:13 [[devices]]
path_checker          directio       built-in: Linux-IO (LIO) target (vendor \"(LIO-ORG|SUSE)\" product \".*\")
checker_timeout       45             mpathd.toml:21:19 [[devices]]
";
    assert_eq!(text, expected, "\n{text}");
    // Without TPGS the ALUA values are not used, and the table says why.
    let rows = c.explain(&PathIdent { tpgs: false, ..id });
    let text = format_explained(&rows);
    assert!(
        text.contains("prio                  const ")
            && text.contains(
                "note: alua from there falls back to const: the LUN does not report TPGS"
            ),
        "{text}"
    );
    // What settings_for returns agrees with explain, row by row.
    let s = c.settings_for(&id);
    let value = |k: &str| rows_value(&c.explain(&id), k);
    assert_eq!(value("path_selector"), s.path_selector.to_string());
    assert_eq!(value("no_path_retry"), s.no_path_retry.to_string());
    assert_eq!(
        value("checker_timeout"),
        s.checker_timeout.as_secs().to_string()
    );
    // An unconfigured LUN: every row is a default.
    let rows = Config::default().explain(&lun("w"));
    assert_eq!(rows.len(), 10, "no alias row");
    assert!(
        rows.iter()
            .all(|r| r.source == Source::Default && r.note.is_none())
    );
}

fn rows_value(rows: &[Explained], k: &str) -> String {
    rows.iter().find(|r| r.setting == k).unwrap().value.clone()
}

#[test]
fn features_and_no_path_retry_resolve_as_multipath_tools() {
    // features' queue_if_no_path counts only when no level sets no_path_retry.
    let c = parse(
        "[[devices]]\nvendor = \"ACME\"\nproduct = \".*\"\nfeatures = \"1 queue_if_no_path\"\n",
    );
    let acme = hw("w", "ACME", "x", false);
    let s = c.settings_for(&acme);
    assert_eq!(s.no_path_retry, NoPathRetry::Queue);
    assert!(s.queue_if_no_path);
    assert!(!s.features.queue_if_no_path, "moved out of features");
    let c = parse(
        "[defaults]\nno_path_retry = 3\n[[devices]]\nvendor = \"ACME\"\nproduct = \".*\"\nfeatures = \"1 queue_if_no_path\"\n",
    );
    let rows = c.explain(&acme);
    assert_eq!(rows_value(&rows, "no_path_retry"), "3");
    let f = rows.iter().find(|r| r.setting == "features").unwrap();
    assert!(
        f.note
            .as_deref()
            .unwrap()
            .contains("ignored: no_path_retry 3 (mpathd.toml:2:17 [defaults]) decides"),
        "{f:?}"
    );
    // "0" clears a built-in entry's features; the handler "0" clears the ALUA one.
    let c = parse("[overrides]\nfeatures = \"0\"\nhardware_handler = \"0\"\n");
    let s = c.settings_for(&hw("w", "NETAPP", "LUN", true));
    assert_eq!(s.features, Features::default());
    assert_eq!(s.hardware_handler, None);
    assert_eq!(
        Config::default()
            .settings_for(&hw("w", "NETAPP", "LUN", true))
            .features
            .pg_init_retries,
        Some(50)
    );
}

#[test]
fn new_settings_report_errors_with_their_position() {
    assert_errors(
        r#"[defaults]
polling_interval = 0
reinstate_checks = "2"
checker_timeout = 99999
path_checker = "rdac"
rr_weight = "weighted"
hardware_handler = "1 foo"
features = "2 pg_init_retries 99"

[overrides]
user_friendly_names = true
bogus = 1

[[devices]]
vendor = "("
product = "x"

[[devices]]
vendor = "X"
model = "Y"

[[devices]]
product = "Y"
queue_if_no_path = 1

[blacklist]
property = ["(ID_"]
"#,
        &[
            (
                2,
                20,
                "polling_interval must be a number of seconds from 1 to 3600, found 0",
            ),
            (
                3,
                20,
                "reinstate_checks must be a number of checks from 1 to 1000, found \"2\"",
            ),
            (
                4,
                19,
                "checker_timeout must be a number of seconds from 1 to 3600",
            ),
            (
                5,
                16,
                "path_checker \"rdac\" is not one of \"tur\", \"directio\", \"none\"",
            ),
            (
                6,
                13,
                "rr_weight \"weighted\" is not one of \"uniform\", \"priorities\"",
            ),
            (
                7,
                20,
                "hardware_handler \"1 foo\" names \"foo\", not one of the kernel's handlers",
            ),
            (
                8,
                12,
                "features \"2 pg_init_retries 99\" pg_init_retries \"99\" is not a number from 1 to 50",
            ),
            (
                11,
                1,
                "unknown key \"user_friendly_names\" in [overrides] (it can only be set in [defaults])",
            ),
            (12, 1, "unknown key \"bogus\" in [overrides]"),
            (15, 10, "devices.vendor: invalid regex"),
            (18, 1, "this [[devices]] entry has no product"),
            (20, 1, "unknown key \"model\" in [[devices]]"),
            (22, 1, "this [[devices]] entry has no vendor"),
            (24, 20, "queue_if_no_path must be true or false, found 1"),
            (27, 13, "blacklist.property: invalid regex"),
        ],
    );
}

#[test]
fn devices_and_overrides_load() {
    let c = parse(
        "devices = [{ vendor = \"PURE\", product = \"FlashArray\", no_path_retry = 10 }]\n\
         [overrides]\nprio = \"const\"\n",
    );
    assert_eq!(c.devices.len(), 1);
    assert_eq!(c.devices[0].location, "mpathd.toml:1:12");
    let s = c.settings_for(&hw("w", "PURE", "FlashArray", true));
    assert_eq!(s.no_path_retry, NoPathRetry::Retries(10));
    assert_eq!(
        s.prio,
        PrioSource::Const,
        "overrides beat the built-in alua"
    );
    assert_eq!(s.path_grouping_policy, GroupingPolicy::GroupByPrio);
    // prio_sources sees every level (the daemon asks it whether any prio weighs portals).
    let c = parse(
        "[[devices]]\nvendor = \"A\"\nproduct = \"B\"\nprio_weights = [{ portal = \".*\", prio = 1 }]\n",
    );
    assert!(
        c.prio_sources()
            .any(|p| matches!(p, PrioSource::Weighted(_)))
    );
}

#[test]
fn filter_property_rules() {
    let c = parse(
        "[blacklist]\nproperty = [\"^ID_CDROM$\"]\n[blacklist_exceptions]\nproperty = [\"(SCSI_IDENT_|ID_WWN)\"]\n",
    );
    let props = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let check = |names: &[String]| {
        let mut d = dev("sda", Some("36001"), "LIO-ORG", "disk");
        d.properties = Some(names);
        c.filter(&d)
    };
    assert!(check(&props(&["ID_SERIAL", "SCSI_IDENT_LUN_NAA_REGEXT"])).is_allowed());
    // An exception wins over a blacklist rule of the same kind.
    assert!(check(&props(&["ID_SERIAL", "ID_WWN", "ID_CDROM"])).is_allowed());
    let Verdict::Blacklisted { reason } = check(&props(&["ID_SERIAL", "ID_CDROM"])) else {
        panic!()
    };
    assert_eq!(
        reason,
        "blacklist property \"^ID_CDROM$\" matches ID_CDROM (mpathd.toml:2:13)"
    );
    let Verdict::Blacklisted { reason } = check(&props(&["ID_SERIAL", "ID_BUS"])) else {
        panic!()
    };
    assert!(reason.starts_with("udev property missing"), "{reason}");
    // Not identified by udev yet (no ID_SERIAL): not blacklisted for what it lacks.
    assert!(check(&props(&["DEVTYPE"])).is_allowed());
    // Properties unknown (udev not running): property rules skipped.
    assert!(
        c.filter(&dev("sda", Some("36001"), "LIO-ORG", "disk"))
            .is_allowed()
    );
    // Without exceptions, only blacklist rules count.
    let c = parse("[blacklist]\nproperty = \"^ID_CDROM$\"\n");
    let mut d = dev("sda", None, "", "");
    let names = props(&["ID_SERIAL"]);
    d.properties = Some(&names);
    assert!(c.filter(&d).is_allowed());
}
