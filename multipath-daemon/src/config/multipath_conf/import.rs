//! The import of a multipath.conf into mpathd's TOML config. Every setting is carried
//! over (the TOML line it became says `# file:line:col` of where it was), or noted with
//! its position and why it has no meaning for mpathd; none is dropped silently.

use super::parse::{Item, Section, Setting, parse};
use crate::config::ere;
use crate::config::text::{shorten, toml_str_pretty, toml_string};
use crate::config::{
    Config, ConfigErrors, Diagnostic, Features, FindMultipaths, HardwareHandler, PathChecker,
    RrWeight, dm_name_problem, normalize_wwid, wwid_problem,
};

/// The result of [`import`].
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// mpathd's TOML config (accepted by [`Config::from_toml_str`]).
    pub config_toml: String,
    /// One per setting not carried over, or carried over changed (a WWID folded, a
    /// checker renamed): where it is, why, and what mpathd does instead.
    pub notes: Vec<Diagnostic>,
}

/// Converts a multipath.conf into mpathd's TOML config. Fails only when the file does
/// not parse; everything that cannot be carried over becomes a note.
pub fn import(text: &str, origin: &str) -> Result<Import, ConfigErrors> {
    let conf = parse(text, origin)?;
    let mut im = Importer {
        origin,
        notes: Vec::new(),
        defaults: Vec::new(),
        overrides: Vec::new(),
        devices: Vec::new(),
        entries: Vec::new(),
        blacklist: FilterOut::default(),
        exceptions: FilterOut::default(),
    };
    for s in &conf.sections {
        match s.name.as_str() {
            "defaults" => im.defaults_section(s),
            "overrides" => im.overrides_section(s),
            "blacklist" => {
                let mut f = std::mem::take(&mut im.blacklist);
                im.filter_section(s, &mut f);
                im.blacklist = f;
            }
            "blacklist_exceptions" => {
                let mut f = std::mem::take(&mut im.exceptions);
                im.filter_section(s, &mut f);
                im.exceptions = f;
            }
            "multipaths" => im.multipaths_section(s),
            "devices" => im.devices_section(s),
            other => im.note(
                (s.line, s.col),
                format!(
                    "section \"{}\" not carried over: multipath-tools does not know it either",
                    shorten(other, 40)
                ),
            ),
        }
    }
    let config_toml = im.render();
    // What we write must load; if not, that is our bug, reported as such.
    if let Err(e) = Config::from_toml_str(&config_toml, "imported config") {
        return Err(ConfigErrors(
            e.0.into_iter()
                .map(|d| {
                    Diagnostic::whole_file(
                        origin,
                        format!("internal error: the converted config does not load: {d}"),
                    )
                })
                .collect(),
        ));
    }
    im.notes.sort_by_key(|d| (d.line, d.col));
    Ok(Import {
        config_toml,
        notes: im.notes,
    })
}

/// A line and column in the multipath.conf.
type Pos = (usize, usize);

/// A TOML key and its rendered value, with where it came from.
#[derive(Debug, Clone)]
struct KeyOut {
    key: String,
    value: String,
    from: Pos,
}

/// A blacklist device rule: vendor and product regexes, each with where it came from.
#[derive(Debug, Clone)]
struct DeviceRuleOut {
    vendor: Option<(String, Pos)>,
    product: Option<(String, Pos)>,
    from: Pos,
}

#[derive(Debug, Clone, Default)]
struct FilterOut {
    devnode: Vec<(String, Pos)>,
    wwid: Vec<(String, Pos)>,
    property: Vec<(String, Pos)>,
    device: Vec<DeviceRuleOut>,
}

impl FilterOut {
    fn has_lists(&self) -> bool {
        !(self.devnode.is_empty() && self.wwid.is_empty() && self.property.is_empty())
    }
}

/// A `[[devices]]` or `[[multipaths]]` entry: its keys (vendor/product/revision or
/// wwid/alias among them) and where its section starts.
#[derive(Debug, Clone)]
struct EntryOut {
    from: Pos,
    keys: Vec<KeyOut>,
}

struct Importer<'a> {
    origin: &'a str,
    notes: Vec<Diagnostic>,
    defaults: Vec<KeyOut>,
    overrides: Vec<KeyOut>,
    devices: Vec<EntryOut>,
    /// With each, its folded WWID (for repeated ones).
    entries: Vec<(String, EntryOut)>,
    blacklist: FilterOut,
    exceptions: FilterOut,
}

/// Sets `key` in `keys`, replacing an earlier value (later lines win).
fn set_key(keys: &mut Vec<KeyOut>, key: &str, value: String, from: Pos) {
    keys.retain(|k| k.key != key);
    keys.push(KeyOut {
        key: key.to_string(),
        value,
        from,
    });
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "yes" | "1" => Some(true),
        "no" | "0" => Some(false),
        _ => None,
    }
}

/// Why a multipath.conf setting has no mpathd equivalent (or none at this level).
fn reason(name: &str) -> &'static str {
    match name {
        "max_polling_interval" => {
            "mpathd checks every path each polling_interval seconds; it does not stretch \
             the interval for healthy paths"
        }
        "log_checker_err" => "mpathd has no setting for how often checker errors are logged",
        "delay_watch_checks"
        | "delay_wait_checks"
        | "marginal_path_err_sample_time"
        | "marginal_path_err_rate_threshold"
        | "marginal_path_err_recheck_gap_time"
        | "marginal_path_double_failed_time"
        | "marginal_pathgroups"
        | "san_path_err_threshold"
        | "san_path_err_forget_rate"
        | "san_path_err_recovery_time" => {
            "mpathd has no marginal-path settings: it does not hold back a path that keeps \
             failing (reinstate_checks in [defaults] sets how many clean checks in a row a \
             failed path needs before it is used again)"
        }
        "detect_prio" | "detect_checker" | "detect_pgpolicy" | "detect_pgpolicy_use_tpg" => {
            "mpathd does not autodetect; its built-in table has an entry for any LUN that \
             reports ALUA (prio alua, group_by_prio, hardware_handler \"1 alua\", \
             path_checker tur), below every device entry and every setting of the config"
        }
        "rr_min_io" | "rr_min_io_rq" => {
            "the kernel's path selectors use a repeat count of 1 whatever is loaded \
             (rr_weight is carried over)"
        }
        "getuid_callout" | "uid_attribute" | "uid_attrs" | "recheck_wwid" => {
            "mpathd reads each disk's WWID from sysfs, as `scsi_id -g -u` prints it"
        }
        "fast_io_fail_tmo" | "dev_loss_tmo" | "eh_deadline" | "max_retries" => {
            "mpathd does not change transport timeouts; set them in iscsid.conf or with a \
             udev rule"
        }
        "retain_attached_hw_handler" => {
            "Linux 4.3 and later always keep a device handler already attached, whatever \
             this says"
        }
        "pg_timeout" => "multipath-tools dropped it too (the kernel has no pg_timeout)",
        "all_tg_pt" | "reservation_key" | "prkeys_file" => {
            "mpathd does not manage persistent reservations"
        }
        "vpd_vendor" => "mpathd reads no vendor-specific VPD pages",
        "verbosity" => {
            "mpathd's logging is set with the MPATHD_LOG environment variable (e.g. debug)"
        }
        "find_multipaths_timeout" => {
            "mpathd does not hold back single paths (find_multipaths smart acts like on)"
        }
        "user_friendly_names"
        | "alias_prefix"
        | "find_multipaths"
        | "bindings_file"
        | "wwids_file"
        | "polling_interval" => "mpathd only has this setting in [defaults]",
        "flush_on_last_del"
        | "queue_without_daemon"
        | "deferred_remove"
        | "skip_kpartx"
        | "max_sectors_kb"
        | "ghost_delay"
        | "auto_resize"
        | "purge_disconnected"
        | "mode"
        | "uid"
        | "gid" => "mpathd has no such setting for its maps",
        "max_fds"
        | "uxsock_timeout"
        | "retrigger_tries"
        | "retrigger_delay"
        | "missing_uev_wait_timeout"
        | "strict_timing"
        | "config_dir"
        | "multipath_dir"
        | "enable_foreign"
        | "disable_changed_wwids"
        | "remove_retries"
        | "ignore_new_boot_devs"
        | "reassign_maps"
        | "force_sync"
        | "allow_usb_devices"
        | "partition_delimiter" => "a multipathd daemon setting with no mpathd equivalent",
        _ => "mpathd has no such setting",
    }
}

/// The prio settings of one section, resolved when the section ends.
#[derive(Default)]
struct PrioSeen {
    prio: Option<(String, Pos)>,
    args: Option<(String, Pos)>,
}

/// A multipath-tools (unanchored) ERE as a pattern that our anchored weights accept.
fn unanchored_to_full(re: &str) -> String {
    let starts = re.starts_with('^');
    let ends = re.ends_with('$') && !re.ends_with("\\$");
    if starts && ends {
        return re.to_string();
    }
    let mut s = String::new();
    if !starts {
        s.push_str(".*");
    }
    s.push_str("(?:");
    s.push_str(re);
    s.push(')');
    if !ends {
        s.push_str(".*");
    }
    s
}

/// Largest `polling_interval` and `checker_timeout` mpathd accepts, in seconds.
const SECONDS_MAX: u32 = 3600;

impl Importer<'_> {
    fn note(&mut self, (line, col): Pos, message: String) {
        self.notes
            .push(Diagnostic::new(self.origin, line, col, message));
    }

    fn not_carried(&mut self, s: &Setting, place: &str, why: &str) {
        self.note(
            (s.line, s.col),
            format!("{}{place} not carried over: {why}", shorten(&s.name, 60)),
        );
    }

    /// Seconds from 1 to [`SECONDS_MAX`], or a note.
    fn seconds(&mut self, s: &Setting, place: &str) -> Option<u32> {
        let v = s.value();
        match v.parse::<u32>() {
            Ok(n) if (1..=SECONDS_MAX).contains(&n) => Some(n),
            _ => {
                self.not_carried(
                    s,
                    place,
                    &format!(
                        "\"{}\" is not a number of seconds from 1 to {SECONDS_MAX}; the \
                         default applies",
                        shorten(&v, 40)
                    ),
                );
                None
            }
        }
    }

    /// Translates a per-map setting into `keys`; false if `s` is not one.
    fn policy(
        &mut self,
        s: &Setting,
        place: &str,
        keys: &mut Vec<KeyOut>,
        prio: &mut PrioSeen,
    ) -> bool {
        let v = s.value();
        let pos = s.value_pos();
        let vq = shorten(&v, 60);
        match s.name.as_str() {
            "path_grouping_policy" => match v.as_str() {
                "failover" | "multibus" | "group_by_prio" => {
                    set_key(keys, "path_grouping_policy", toml_string(&v), pos)
                }
                _ => self.not_carried(
                    s,
                    place,
                    &format!(
                        "\"{vq}\" is not supported (mpathd has failover, multibus and \
                         group_by_prio); a lower level's policy applies"
                    ),
                ),
            },
            "path_selector" => {
                let name = s.values.first().map(|w| w.text.as_str()).unwrap_or("");
                let name = name.split_whitespace().next().unwrap_or("");
                match name {
                    "round-robin" | "queue-length" | "service-time" => {
                        set_key(keys, "path_selector", toml_string(name), pos)
                    }
                    _ => self.not_carried(
                        s,
                        place,
                        &format!(
                            "selector \"{vq}\" is not supported (mpathd has round-robin, \
                             queue-length and service-time); a lower level's selector applies"
                        ),
                    ),
                }
            }
            "failback" => match v.as_str() {
                "immediate" | "manual" | "followover" => {
                    set_key(keys, "failback", toml_string(&v), pos)
                }
                n => match n.parse::<u32>() {
                    Ok(n) if n > 0 => set_key(keys, "failback", n.to_string(), pos),
                    _ => self.not_carried(
                        s,
                        place,
                        &format!(
                            "\"{vq}\" is not immediate, manual, followover or a number of \
                             seconds above 0 (multipath-tools reads 0 as unset); a lower \
                             level's failback applies"
                        ),
                    ),
                },
            },
            "no_path_retry" => match v.as_str() {
                // multipath-tools reads 0 as fail.
                "fail" | "0" => set_key(keys, "no_path_retry", toml_string("fail"), pos),
                "queue" => set_key(keys, "no_path_retry", toml_string("queue"), pos),
                n => match n.parse::<u32>() {
                    Ok(n) => set_key(keys, "no_path_retry", n.to_string(), pos),
                    _ => self.not_carried(
                        s,
                        place,
                        &format!(
                            "\"{vq}\" is not fail, queue or a number of retries; a lower \
                             level's no_path_retry applies"
                        ),
                    ),
                },
            },
            "features" => self.features(s, place, keys),
            "hardware_handler" => match HardwareHandler::parse(&v) {
                Ok(h) => {
                    let shown = h.map_or("0".to_string(), |h| h.to_string());
                    set_key(keys, "hardware_handler", toml_string(&shown), pos)
                }
                Err(why) => self.not_carried(s, place, &format!("\"{vq}\" {why}")),
            },
            "rr_weight" => match RrWeight::from_name(&v) {
                Some(r) => set_key(keys, "rr_weight", toml_string(r.name()), pos),
                None => {
                    self.not_carried(s, place, &format!("\"{vq}\" is not uniform or priorities"))
                }
            },
            "path_checker" | "checker" => match v.as_str() {
                "readsector0" => {
                    set_key(keys, "path_checker", toml_string("directio"), pos);
                    self.note(
                        pos,
                        format!(
                            "{}{place} readsector0 carried over as directio: both read the \
                             first sector (multipath-tools deprecates readsector0)",
                            s.name
                        ),
                    );
                }
                name => match PathChecker::from_name(name) {
                    Some(c) => set_key(keys, "path_checker", toml_string(c.name()), pos),
                    None => self.not_carried(
                        s,
                        place,
                        &format!(
                            "checker \"{vq}\" is not one of mpathd's (tur, directio, none); a \
                             lower level's checker applies (tur by default)"
                        ),
                    ),
                },
            },
            "checker_timeout" => {
                if let Some(n) = self.seconds(s, place) {
                    set_key(keys, "checker_timeout", n.to_string(), pos);
                }
            }
            "prio" => prio.prio = Some((v, pos)),
            "prio_args" => prio.args = Some((v, pos)),
            _ => return false,
        }
        true
    }

    /// `features`: the words mpathd loads are carried over, each other word noted.
    fn features(&mut self, s: &Setting, place: &str, keys: &mut Vec<KeyOut>) {
        let v = s.value();
        let pos = s.value_pos();
        let words: Vec<&str> = v.split_whitespace().collect();
        // The word count first, as multipath.conf writes it.
        let words = match words.split_first() {
            Some((n, rest)) if n.parse::<u32>().is_ok() => rest.to_vec(),
            _ => words,
        };
        let mut kept: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            let takes_value = matches!(w, "pg_init_retries" | "pg_init_delay_msecs" | "queue_mode");
            let known =
                takes_value || matches!(w, "queue_if_no_path" | "retain_attached_hw_handler");
            if known {
                kept.push(w);
                if takes_value && let Some(val) = words.get(i + 1) {
                    kept.push(val);
                    i += 1;
                }
            } else {
                let why = match w {
                    "no_partitions" => "mpathd makes no partition mappings",
                    _ => "not a feature of the kernel's multipath target",
                };
                self.note(
                    pos,
                    format!(
                        "features{place}: feature \"{}\" not carried over: {why}",
                        shorten(w, 40)
                    ),
                );
            }
            i += 1;
        }
        let joined = kept.join(" ");
        match Features::parse(&joined) {
            Ok(f) => set_key(keys, "features", toml_string(&f.to_string()), pos),
            Err(why) => self.not_carried(
                s,
                place,
                &format!(
                    "\"{}\" {why}; a lower level's features apply",
                    shorten(&v, 60)
                ),
            ),
        }
    }

    /// Resolves `prio` and `prio_args` of a section into `keys`.
    fn finish_prio(&mut self, prio: PrioSeen, place: &str, keys: &mut Vec<KeyOut>) {
        let Some((name, pos)) = prio.prio else {
            if let Some((_, apos)) = prio.args {
                self.note(
                    apos,
                    format!(
                        "prio_args{place} not carried over: without prio weightedpath in the \
                         same section mpathd has no use for it"
                    ),
                );
            }
            return;
        };
        match name.as_str() {
            "const" | "alua" => {
                set_key(keys, "prio", toml_string(&name), pos);
                if let Some((args, apos)) = prio.args {
                    self.note(
                        apos,
                        format!(
                            "prio_args{place} \"{}\" not carried over: mpathd's prio {name} \
                             takes no arguments",
                            shorten(&args, 40)
                        ),
                    );
                }
            }
            "sysfs" => {
                set_key(keys, "prio", toml_string("alua"), pos);
                self.note(
                    pos,
                    format!(
                        "prio{place} \"sysfs\" carried over as \"alua\": both read the ALUA \
                         state of the path"
                    ),
                );
            }
            "weightedpath" => {
                let Some((args, apos)) = prio.args else {
                    self.note(
                        pos,
                        format!(
                            "prio{place} weightedpath not carried over: it has no prio_args; \
                             a lower level's prio applies"
                        ),
                    );
                    return;
                };
                match self.weights(&args) {
                    Ok(ws) => {
                        set_key(keys, "prio", toml_string("weighted"), pos);
                        set_key(keys, "prio_weights", ws, apos);
                    }
                    Err(why) => self.note(
                        apos,
                        format!(
                            "prio{place} weightedpath not carried over: prio_args \"{}\" {why}; \
                             a lower level's prio applies",
                            shorten(&args, 60)
                        ),
                    ),
                }
            }
            other => self.note(
                pos,
                format!(
                    "prio{place} \"{}\" not carried over: mpathd has const, alua and \
                     weighted (weightedpath); a lower level's prio applies (for a LUN that \
                     reports ALUA, the built-in table's alua)",
                    shorten(other, 40)
                ),
            ),
        }
    }

    /// `hbtl|devname <regex> <prio> ...` as a TOML array of weights.
    fn weights(&self, args: &str) -> Result<String, String> {
        let words: Vec<&str> = args.split_whitespace().collect();
        let Some((&kind, pairs)) = words.split_first() else {
            return Err("is empty".into());
        };
        let key = match kind {
            "hbtl" => "hbtl",
            "devname" => "devname",
            "wwn" | "serial" => {
                return Err(format!(
                    "weights by {kind}, mpathd weighs by hbtl, devname or portal"
                ));
            }
            _ => {
                return Err(format!(
                    "starts with \"{}\", not hbtl or devname",
                    shorten(kind, 20)
                ));
            }
        };
        if pairs.is_empty() || pairs.len() % 2 != 0 {
            return Err("needs pairs of <regex> <prio>".into());
        }
        let mut out = Vec::new();
        for pair in pairs.chunks(2) {
            let re = ere::translate(pair[0])
                .map_err(|e| format!("has regex \"{}\" that {e}", pair[0]))?;
            let prio: u32 = pair[1]
                .parse()
                .map_err(|_| format!("has prio \"{}\" that is not a number", pair[1]))?;
            let full = unanchored_to_full(&re);
            crate::config::compile_anchored(&full)
                .map_err(|e| format!("has regex \"{}\" that does not compile: {e}", pair[0]))?;
            out.push(format!(
                "{{ {key} = {}, prio = {prio} }}",
                toml_str_pretty(&full)
            ));
        }
        Ok(format!("[{}]", out.join(", ")))
    }

    fn defaults_section(&mut self, sec: &Section) {
        let mut keys = std::mem::take(&mut self.defaults);
        let mut prio = PrioSeen::default();
        for item in &sec.items {
            let s = match item {
                Item::Setting(s) => s,
                Item::Section(sub) => {
                    self.note(
                        (sub.line, sub.col),
                        format!(
                            "section \"{}\" inside defaults not carried over: defaults has no \
                             subsections",
                            shorten(&sub.name, 40)
                        ),
                    );
                    continue;
                }
            };
            if self.policy(s, "", &mut keys, &mut prio) {
                continue;
            }
            let v = s.value();
            let pos = s.value_pos();
            let vq = shorten(&v, 60);
            match s.name.as_str() {
                "user_friendly_names" => match yes_no(&v) {
                    Some(b) => set_key(&mut keys, "user_friendly_names", b.to_string(), pos),
                    None => self.not_carried(s, "", &format!("\"{vq}\" is not yes or no")),
                },
                "alias_prefix" => match dm_name_problem(&v) {
                    None if v.len() <= 64 => {
                        set_key(&mut keys, "alias_prefix", toml_string(&v), pos)
                    }
                    _ => self.not_carried(
                        s,
                        "",
                        &format!("\"{vq}\" is not usable in a device-mapper name"),
                    ),
                },
                "find_multipaths" => match FindMultipaths::from_name(&v) {
                    Some(f) => set_key(&mut keys, "find_multipaths", toml_string(f.name()), pos),
                    None => self.not_carried(
                        s,
                        "",
                        &format!(
                            "\"{vq}\" is not one of yes, no, on, off, strict, smart, greedy; \
                             the default (strict) applies"
                        ),
                    ),
                },
                "bindings_file" | "wwids_file" => {
                    if v.starts_with('/') {
                        set_key(&mut keys, &s.name, toml_string(&v), pos);
                    } else {
                        self.not_carried(s, "", &format!("\"{vq}\" is not an absolute path"));
                    }
                }
                "polling_interval" => {
                    if let Some(n) = self.seconds(s, "") {
                        set_key(&mut keys, "polling_interval", n.to_string(), pos);
                    }
                }
                name => {
                    let why = reason(name);
                    self.not_carried(s, "", why);
                }
            }
        }
        self.finish_prio(prio, "", &mut keys);
        self.defaults = keys;
    }

    fn overrides_section(&mut self, sec: &Section) {
        let mut keys = std::mem::take(&mut self.overrides);
        let mut prio = PrioSeen::default();
        let place = " (overrides)";
        for item in &sec.items {
            match item {
                Item::Setting(s) => {
                    if !self.policy(s, place, &mut keys, &mut prio) {
                        self.not_carried(s, place, reason(&s.name));
                    }
                }
                Item::Section(sub) => self.note(
                    (sub.line, sub.col),
                    format!(
                        "section \"{}\" in overrides not carried over: mpathd has no \
                         per-protocol settings (a protocol section holds transport timeouts, \
                         which mpathd does not set)",
                        shorten(&sub.name, 40)
                    ),
                ),
            }
        }
        self.finish_prio(prio, place, &mut keys);
        self.overrides = keys;
    }

    /// A regex of `section` (`blacklist`, `devices device`, ...) translated to Rust
    /// syntax, or a note saying why not.
    fn regex_rule(&mut self, s: &Setting, section: &str) -> Option<String> {
        self.regex_of(s, &s.value(), section)
    }

    fn regex_of(&mut self, s: &Setting, v: &str, section: &str) -> Option<String> {
        match ere::translate(v) {
            Ok(re) => match crate::config::compile_search(&re) {
                Ok(_) => Some(re),
                Err(e) => {
                    let msg = e.to_string();
                    let why = msg.lines().last().unwrap_or("").to_string();
                    self.note(
                        s.value_pos(),
                        format!(
                            "{section} {} \"{}\" not carried over: the regex does not compile \
                             in Rust syntax ({why}); write it by hand",
                            s.name,
                            shorten(v, 60)
                        ),
                    );
                    None
                }
            },
            Err(why) => {
                self.note(
                    s.value_pos(),
                    format!(
                        "{section} {} \"{}\" not carried over: the POSIX regex {why}; write it \
                         by hand in Rust regex syntax",
                        s.name,
                        shorten(v, 60)
                    ),
                );
                None
            }
        }
    }

    fn filter_section(&mut self, sec: &Section, out: &mut FilterOut) {
        let name = sec.name.clone();
        for item in &sec.items {
            match item {
                Item::Setting(s) => match s.name.as_str() {
                    "devnode" => {
                        if let Some(re) = self.regex_rule(s, &name) {
                            out.devnode.push((re, s.value_pos()));
                        }
                    }
                    "wwid" => {
                        let v = s.value();
                        let folded = ere::fold_wwid_blanks(&v);
                        if let Some(f) = &folded {
                            self.note(
                                s.value_pos(),
                                format!(
                                    "{name} wwid \"{}\" carried over as \"{}\": mpathd's WWIDs \
                                     have an underscore where the LUN's id has blanks, as \
                                     `scsi_id -g -u` prints them",
                                    shorten(&v, 60),
                                    shorten(f, 60)
                                ),
                            );
                        }
                        if let Some(re) = self.regex_of(s, folded.as_deref().unwrap_or(&v), &name) {
                            out.wwid.push((re, s.value_pos()));
                        }
                    }
                    "property" => {
                        if let Some(re) = self.regex_rule(s, &name) {
                            out.property.push((re, s.value_pos()));
                        }
                    }
                    "protocol" => self.not_carried(
                        s,
                        &format!(" ({name})"),
                        "mpathd does not filter by protocol; it multipaths SCSI disks (use \
                         devnode, wwid, device or property rules)",
                    ),
                    _ => self.not_carried(s, &format!(" ({name})"), "not a blacklist rule"),
                },
                Item::Section(sub) if sub.name == "device" => {
                    let mut rule = DeviceRuleOut {
                        vendor: None,
                        product: None,
                        from: (sub.line, sub.col),
                    };
                    let mut ok = true;
                    for it in &sub.items {
                        match it {
                            Item::Setting(s) if s.name == "vendor" || s.name == "product" => {
                                match self.regex_rule(s, &format!("{name} device")) {
                                    Some(re) if s.name == "vendor" => {
                                        rule.vendor = Some((re, s.value_pos()))
                                    }
                                    Some(re) => rule.product = Some((re, s.value_pos())),
                                    None => ok = false,
                                }
                            }
                            Item::Setting(s) => self.not_carried(
                                s,
                                &format!(" ({name} device)"),
                                "a blacklist device only matches vendor and product",
                            ),
                            Item::Section(ss) => self.note(
                                (ss.line, ss.col),
                                format!(
                                    "section \"{}\" in {name} device not carried over: not \
                                     part of multipath.conf",
                                    shorten(&ss.name, 40)
                                ),
                            ),
                        }
                    }
                    if !ok {
                        continue;
                    }
                    if rule.vendor.is_none() && rule.product.is_none() {
                        self.note(
                            (sub.line, sub.col),
                            format!(
                                "{name} device not carried over: it has neither vendor nor \
                                 product"
                            ),
                        );
                        continue;
                    }
                    out.device.push(rule);
                }
                Item::Section(sub) => self.note(
                    (sub.line, sub.col),
                    format!(
                        "section \"{}\" in {name} not carried over: only device sections \
                         belong there",
                        shorten(&sub.name, 40)
                    ),
                ),
            }
        }
    }

    fn multipaths_section(&mut self, sec: &Section) {
        for item in &sec.items {
            let m = match item {
                Item::Section(m) if m.name == "multipath" => m,
                Item::Section(m) => {
                    self.note(
                        (m.line, m.col),
                        format!(
                            "section \"{}\" in multipaths not carried over: only multipath \
                             sections belong there",
                            shorten(&m.name, 40)
                        ),
                    );
                    continue;
                }
                Item::Setting(s) => {
                    self.not_carried(
                        s,
                        " (multipaths)",
                        "settings belong in a multipath { } section",
                    );
                    continue;
                }
            };
            self.multipath(m);
        }
    }

    fn multipath(&mut self, m: &Section) {
        let Some(ws) = m.get("wwid") else {
            self.note(
                (m.line, m.col),
                "multipath section not carried over: it has no wwid".to_string(),
            );
            return;
        };
        let written = ws.value();
        if let Some(why) = wwid_problem(&written) {
            self.note(
                ws.value_pos(),
                format!("multipath section not carried over: its wwid {why}"),
            );
            return;
        }
        let wwid = normalize_wwid(&written).into_owned();
        if wwid != written {
            self.note(
                ws.value_pos(),
                format!(
                    "wwid \"{}\" (multipath) carried over as \"{}\": mpathd folds blanks and \
                     underscores in WWIDs into one underscore, as `scsi_id -g -u` prints them, \
                     so it matches the LUN either way",
                    shorten(&written, 60),
                    shorten(&wwid, 60)
                ),
            );
        }
        if self.entries.iter().any(|(w, _)| *w == wwid) {
            self.note(
                (m.line, m.col),
                format!(
                    "multipath section for wwid {} not carried over: an earlier multipath \
                     section has the same wwid",
                    shorten(&written, 80)
                ),
            );
            return;
        }
        let place = format!(" (multipath {})", shorten(&written, 40));
        let mut keys = vec![KeyOut {
            key: "wwid".into(),
            value: toml_string(&wwid),
            from: ws.value_pos(),
        }];
        let mut prio = PrioSeen::default();
        for item in &m.items {
            let s = match item {
                Item::Setting(s) => s,
                Item::Section(sub) => {
                    self.note(
                        (sub.line, sub.col),
                        format!(
                            "section \"{}\"{place} not carried over: multipath sections have no \
                             subsections",
                            shorten(&sub.name, 40)
                        ),
                    );
                    continue;
                }
            };
            if s.name == "wwid" {
                if !std::ptr::eq(s, ws) {
                    self.not_carried(s, &place, "a later wwid line of this section is used");
                }
                continue;
            }
            if self.policy(s, &place, &mut keys, &mut prio) {
                continue;
            }
            if s.name == "alias" {
                let a = s.value();
                let quoted = toml_string(&a);
                if let Some(why) = dm_name_problem(&a) {
                    self.not_carried(s, &place, &format!("\"{}\" {why}", shorten(&a, 60)));
                } else if self
                    .entries
                    .iter()
                    .any(|(_, e)| e.keys.iter().any(|k| k.key == "alias" && k.value == quoted))
                {
                    self.not_carried(
                        s,
                        &place,
                        &format!("alias \"{a}\" is already used by an earlier multipath section"),
                    );
                } else {
                    set_key(&mut keys, "alias", quoted, s.value_pos());
                }
                continue;
            }
            self.not_carried(s, &place, reason(&s.name));
        }
        self.finish_prio(prio, &place, &mut keys);
        // wwid and alias first, as people read them.
        keys.sort_by_key(|k| match k.key.as_str() {
            "wwid" => 0,
            "alias" => 1,
            _ => 2,
        });
        self.entries.push((
            wwid,
            EntryOut {
                from: (m.line, m.col),
                keys,
            },
        ));
    }

    fn devices_section(&mut self, sec: &Section) {
        for item in &sec.items {
            match item {
                Item::Section(d) if d.name == "device" => self.device(d),
                Item::Section(d) => self.note(
                    (d.line, d.col),
                    format!(
                        "section \"{}\" in devices not carried over: only device sections \
                         belong there",
                        shorten(&d.name, 40)
                    ),
                ),
                Item::Setting(s) => {
                    self.not_carried(s, " (devices)", "settings belong in a device { } section")
                }
            }
        }
    }

    fn device(&mut self, d: &Section) {
        let ident = |k: &str| d.get(k).map(|s| s.value()).unwrap_or_default();
        let place = format!(
            " (device \"{}\" \"{}\")",
            shorten(&ident("vendor"), 20),
            shorten(&ident("product"), 30)
        );
        let mut keys = Vec::new();
        let mut prio = PrioSeen::default();
        let mut ids_ok = true;
        let mut vendor_re = None;
        let mut bl_product = None;
        for item in &d.items {
            let s = match item {
                Item::Setting(s) => s,
                Item::Section(ss) => {
                    self.note(
                        (ss.line, ss.col),
                        format!(
                            "section \"{}\"{place} not carried over: device sections have no \
                             subsections",
                            shorten(&ss.name, 40)
                        ),
                    );
                    continue;
                }
            };
            match s.name.as_str() {
                "vendor" | "product" | "revision" => match self.regex_rule(s, "devices device") {
                    Some(re) => {
                        set_key(&mut keys, &s.name, toml_str_pretty(&re), s.value_pos());
                        if s.name == "vendor" {
                            vendor_re = Some((re, s.value_pos()));
                        }
                    }
                    None => ids_ok = false,
                },
                "product_blacklist" => bl_product = Some(s),
                _ if self.policy(s, &place, &mut keys, &mut prio) => {}
                name => self.not_carried(s, &place, reason(name)),
            }
        }
        self.finish_prio(prio, &place, &mut keys);
        let missing: Vec<&str> = ["vendor", "product"]
            .into_iter()
            .filter(|k| d.get(k).is_none())
            .collect();
        if !missing.is_empty() {
            self.note(
                (d.line, d.col),
                format!(
                    "device section{place} not carried over: it has no {} (multipath-tools \
                     requires vendor and product)",
                    missing.join(" or ")
                ),
            );
            return;
        }
        if !ids_ok {
            self.note(
                (d.line, d.col),
                format!(
                    "device section{place} not carried over: its vendor, product or revision \
                     regex could not be carried over (see the note on it)"
                ),
            );
            return;
        }
        if let Some(s) = bl_product {
            // multipath.conf(5): the same as a blacklist device rule with this entry's
            // vendor and product_blacklist as the product.
            if let Some(p) = self.regex_rule(s, "devices device product_blacklist") {
                self.blacklist.device.push(DeviceRuleOut {
                    vendor: vendor_re,
                    product: Some((p, s.value_pos())),
                    from: s.value_pos(),
                });
            }
        }
        keys.sort_by_key(|k| match k.key.as_str() {
            "vendor" => 0,
            "product" => 1,
            "revision" => 2,
            _ => 3,
        });
        self.devices.push(EntryOut {
            from: (d.line, d.col),
            keys,
        });
    }

    fn render(&self) -> String {
        // The origin goes into comments: no line breaks.
        let o: String = self
            .origin
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let at = |(l, c): Pos| format!("  # {o}:{l}:{c}");
        let keys = |t: &mut String, keys: &[KeyOut]| {
            for k in keys {
                t.push_str(&format!("{} = {}{}\n", k.key, k.value, at(k.from)));
            }
        };
        let mut t = String::new();
        t.push_str(&format!(
            "# mpathd config converted from {o} by `mpathd import`.\n\
             # Settings not carried over were listed by the import; see docs/config.md.\n"
        ));
        for (name, list) in [("defaults", &self.defaults), ("overrides", &self.overrides)] {
            if !list.is_empty() {
                t.push_str(&format!("\n[{name}]\n"));
                keys(&mut t, list);
            }
        }
        for (name, f) in [
            ("blacklist", &self.blacklist),
            ("blacklist_exceptions", &self.exceptions),
        ] {
            if f.has_lists() {
                t.push_str(&format!("\n[{name}]\n"));
            }
            for (key, list) in [
                ("devnode", &f.devnode),
                ("wwid", &f.wwid),
                ("property", &f.property),
            ] {
                if list.is_empty() {
                    continue;
                }
                t.push_str(&format!("{key} = [\n"));
                for (re, pos) in list.iter() {
                    t.push_str(&format!("    {},{}\n", toml_str_pretty(re), at(*pos)));
                }
                t.push_str("]\n");
            }
            for d in &f.device {
                t.push_str(&format!("\n[[{name}.device]]{}\n", at(d.from)));
                for (key, v) in [("vendor", &d.vendor), ("product", &d.product)] {
                    if let Some((re, pos)) = v {
                        t.push_str(&format!("{key} = {}{}\n", toml_str_pretty(re), at(*pos)));
                    }
                }
            }
        }
        for d in &self.devices {
            t.push_str(&format!("\n[[devices]]{}\n", at(d.from)));
            keys(&mut t, &d.keys);
        }
        for (_, e) in &self.entries {
            t.push_str(&format!("\n[[multipaths]]{}\n", at(e.from)));
            keys(&mut t, &e.keys);
        }
        t
    }
}
