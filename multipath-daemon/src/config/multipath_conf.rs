//! multipath-tools' `multipath.conf`: a tokenizer and section parser, and the import
//! into mpathd's TOML config.
//!
//! The format: one setting per line (`keyword value`), sections `name {` ... `}`,
//! comments from a `#` or `!` that starts a word to the end of the line, values in
//! double quotes when they hold blanks (`""` inside quotes is one `"`). Every error and
//! every import note carries its line and column.

use std::collections::HashSet;

use super::ere;
use super::text::{shorten, toml_str_pretty, toml_string};
use super::{Config, ConfigErrors, Diagnostic, FindMultipaths, dm_name_problem, wwid_problem};

/// Deepest section nesting accepted (multipath.conf uses 2; `overrides { protocol {`
/// is the deepest).
pub const MAX_DEPTH: usize = 8;
/// Most errors reported before the parser gives up.
const MAX_ERRORS: usize = 100;

/// A parsed multipath.conf: its top-level sections in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfFile {
    pub sections: Vec<Section>,
}

impl ConfFile {
    /// The top-level sections named `name` (multipath-tools merges repeated ones).
    pub fn sections<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections.iter().filter(move |s| s.name == name)
    }
}

/// `name { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub col: usize,
    pub items: Vec<Item>,
}

impl Section {
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.items.iter().filter_map(|i| match i {
            Item::Setting(s) => Some(s),
            Item::Section(_) => None,
        })
    }

    pub fn subsections(&self) -> impl Iterator<Item = &Section> {
        self.items.iter().filter_map(|i| match i {
            Item::Section(s) => Some(s),
            Item::Setting(_) => None,
        })
    }

    /// The value of the last setting `name` (later lines win, as in multipath-tools).
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings().filter(|s| s.name == name).last()
    }
}

/// What a section holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Setting(Setting),
    Section(Section),
}

/// `name value...` on one line.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub name: String,
    pub line: usize,
    pub col: usize,
    pub values: Vec<Word>,
}

impl Setting {
    /// The value words joined by one blank (`""` when there are none).
    pub fn value(&self) -> String {
        self.values
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Line and column of the value (of the keyword when there is none).
    pub fn value_pos(&self) -> (usize, usize) {
        self.values
            .first()
            .map_or((self.line, self.col), |w| (w.line, w.col))
    }
}

/// A word or quoted string.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub line: usize,
    pub col: usize,
    pub quoted: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(Word),
    Open(usize, usize),
    Close(usize, usize),
}

/// Splits `text` into tokens; errors (unterminated quotes) are collected.
fn tokenize(text: &str, origin: &str, errors: &mut Vec<Diagnostic>) -> Vec<Tok> {
    let mut toks = Vec::new();
    for (li, line) in text.lines().enumerate() {
        let lineno = li + 1;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let col = i + 1;
            if c.is_whitespace() {
                i += 1;
            } else if c == '#' || c == '!' {
                break;
            } else if c == '{' {
                toks.push(Tok::Open(lineno, col));
                i += 1;
            } else if c == '}' {
                toks.push(Tok::Close(lineno, col));
                i += 1;
            } else if c == '"' {
                let mut s = String::new();
                let mut j = i + 1;
                let mut closed = false;
                while j < chars.len() {
                    if chars[j] == '"' {
                        if chars.get(j + 1) == Some(&'"') {
                            s.push('"');
                            j += 2;
                            continue;
                        }
                        closed = true;
                        j += 1;
                        break;
                    }
                    s.push(chars[j]);
                    j += 1;
                }
                if !closed {
                    errors.push(Diagnostic::new(
                        origin,
                        lineno,
                        col,
                        "unterminated quoted string (a closing \" must be on the same line)",
                    ));
                    break;
                }
                toks.push(Tok::Word(Word {
                    text: s,
                    line: lineno,
                    col,
                    quoted: true,
                }));
                i = j;
            } else {
                let mut j = i;
                while j < chars.len()
                    && !chars[j].is_whitespace()
                    && !matches!(chars[j], '{' | '}' | '"')
                {
                    j += 1;
                }
                toks.push(Tok::Word(Word {
                    text: chars[i..j].iter().collect(),
                    line: lineno,
                    col,
                    quoted: false,
                }));
                i = j;
            }
        }
    }
    toks
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    origin: &'a str,
    errors: Vec<Diagnostic>,
    aborted: bool,
}

impl Parser<'_> {
    fn err(&mut self, (line, col): (usize, usize), msg: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors
                .push(Diagnostic::new(self.origin, line, col, msg));
        } else {
            self.aborted = true;
        }
    }

    /// Items until the matching `}` (consumed) or, at top level, the end.
    fn items(&mut self, depth: usize, opened_at: Option<(usize, usize)>) -> Vec<Item> {
        let mut items = Vec::new();
        while !self.aborted {
            let Some(tok) = self.toks.get(self.pos).cloned() else {
                if let Some(at) = opened_at {
                    self.err(
                        at,
                        "unbalanced braces: this section is never closed (missing \"}\")",
                    );
                }
                return items;
            };
            self.pos += 1;
            match tok {
                Tok::Close(l, c) => {
                    if opened_at.is_some() {
                        return items;
                    }
                    self.err((l, c), "unbalanced braces: \"}\" without a matching \"{\"");
                }
                Tok::Open(l, c) => {
                    self.err((l, c), "\"{\" without a section name before it");
                    // Parse and drop its contents so the braces stay balanced.
                    if depth + 1 >= MAX_DEPTH {
                        self.err((l, c), format!("sections nested deeper than {MAX_DEPTH}"));
                        self.aborted = true;
                        return items;
                    }
                    let _ = self.items(depth + 1, Some((l, c)));
                }
                Tok::Word(w) => {
                    if let Some(Tok::Open(l, c)) = self.toks.get(self.pos).cloned() {
                        self.pos += 1;
                        if depth + 1 >= MAX_DEPTH {
                            self.err((l, c), format!("sections nested deeper than {MAX_DEPTH}"));
                            self.aborted = true;
                            return items;
                        }
                        if depth == 0 && w.quoted {
                            self.err((w.line, w.col), "a section name cannot be quoted");
                        }
                        let sub = self.items(depth + 1, Some((w.line, w.col)));
                        items.push(Item::Section(Section {
                            name: w.text,
                            line: w.line,
                            col: w.col,
                            items: sub,
                        }));
                        continue;
                    }
                    let mut values = Vec::new();
                    while let Some(Tok::Word(v)) = self.toks.get(self.pos) {
                        if v.line != w.line {
                            break;
                        }
                        values.push(v.clone());
                        self.pos += 1;
                    }
                    if let Some(Tok::Open(l, c)) = self.toks.get(self.pos).cloned()
                        && l == w.line
                    {
                        self.err(
                            (l, c),
                            format!(
                                "\"{{\" after the value of \"{}\": a section name is one word",
                                shorten(&w.text, 40)
                            ),
                        );
                    }
                    if depth == 0 {
                        self.err(
                            (w.line, w.col),
                            format!(
                                "\"{}\" outside any section (expected a section such as defaults {{ ... }})",
                                shorten(&w.text, 40)
                            ),
                        );
                        continue;
                    }
                    items.push(Item::Setting(Setting {
                        name: w.text,
                        line: w.line,
                        col: w.col,
                        values,
                    }));
                }
            }
        }
        items
    }
}

/// Parses a multipath.conf. Syntax errors (unterminated quotes, unbalanced braces,
/// settings outside a section) are all reported, each with its line and column.
/// Unknown keywords are not errors here: [`import`] reports them.
pub fn parse(text: &str, origin: &str) -> Result<ConfFile, ConfigErrors> {
    let mut errors = Vec::new();
    let toks = tokenize(text, origin, &mut errors);
    let mut p = Parser {
        toks,
        pos: 0,
        origin,
        errors,
        aborted: false,
    };
    let items = p.items(0, None);
    if !p.errors.is_empty() {
        let mut errors = p.errors;
        errors.sort_by_key(|d| (d.line, d.col));
        return Err(ConfigErrors(errors));
    }
    let sections = items
        .into_iter()
        .filter_map(|i| match i {
            Item::Section(s) => Some(s),
            Item::Setting(_) => None,
        })
        .collect();
    Ok(ConfFile { sections })
}

/// The result of [`import`].
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// mpathd's TOML config (accepted by [`Config::from_toml_str`]).
    pub config_toml: String,
    /// One per setting not carried over (or carried over only approximately): where it
    /// is, why, and what mpathd does instead.
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
        entries: Vec::new(),
        blacklist: FilterOut::default(),
        exceptions: FilterOut::default(),
    };
    // defaults first, overrides on top (multipath-tools: overrides beat devices and
    // defaults; with no device table, they become our defaults).
    for s in conf.sections("defaults") {
        im.defaults_section(s);
    }
    for s in &conf.sections {
        match s.name.as_str() {
            "defaults" => {}
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

/// A TOML key and its rendered value, with where it came from.
#[derive(Debug, Clone)]
struct KeyOut {
    key: String,
    value: String,
    from: (usize, usize),
}

/// A device rule: vendor and product regexes, and where it came from.
type DeviceOut = (Option<String>, Option<String>, (usize, usize));

#[derive(Debug, Clone, Default)]
struct FilterOut {
    devnode: Vec<(String, (usize, usize))>,
    wwid: Vec<(String, (usize, usize))>,
    device: Vec<DeviceOut>,
}

impl FilterOut {
    fn is_empty(&self) -> bool {
        self.devnode.is_empty() && self.wwid.is_empty() && self.device.is_empty()
    }
}

#[derive(Debug, Clone)]
struct EntryOut {
    wwid: String,
    from: (usize, usize),
    keys: Vec<KeyOut>,
}

struct Importer<'a> {
    origin: &'a str,
    notes: Vec<Diagnostic>,
    defaults: Vec<KeyOut>,
    entries: Vec<EntryOut>,
    blacklist: FilterOut,
    exceptions: FilterOut,
}

/// Sets `key` in `keys`, replacing an earlier value (later lines win).
fn set_key(keys: &mut Vec<KeyOut>, key: &str, value: String, from: (usize, usize)) {
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

/// Why a multipath.conf setting has no mpathd equivalent.
fn reason(name: &str) -> &'static str {
    match name {
        "path_checker"
        | "checker"
        | "polling_interval"
        | "max_polling_interval"
        | "checker_timeout"
        | "detect_checker"
        | "log_checker_err"
        | "delay_watch_checks"
        | "delay_wait_checks" => {
            "mpathd has one built-in path checker, set with `mpathd daemon --check-secs` \
             (default 5 s): it reinstates a failed path once its SCSI device is running and \
             its iSCSI session logged in"
        }
        "rr_weight" | "rr_min_io" | "rr_min_io_rq" => {
            "mpathd loads its path selectors without per-path repeat counts or weights (the \
             kernel's defaults apply)"
        }
        "getuid_callout" | "uid_attribute" | "uid_attrs" | "recheck_wwid" => {
            "mpathd reads each disk's WWID from sysfs, as `scsi_id -g -u` prints it"
        }
        "fast_io_fail_tmo" | "dev_loss_tmo" | "eh_deadline" => {
            "mpathd does not change transport timeouts; set them in iscsid.conf or with a \
             udev rule"
        }
        "hardware_handler"
        | "retain_attached_hw_handler"
        | "detect_prio"
        | "pg_init_retries"
        | "pg_init_delay_msecs"
        | "all_tg_pt" => {
            "mpathd leaves the kernel's SCSI device handler as it is and does not detect \
             prio; set prio = \"alua\" in [defaults] or per WWID where the target supports \
             ALUA"
        }
        "verbosity" => {
            "mpathd's logging is set with the MPATHD_LOG environment variable (e.g. debug)"
        }
        "marginal_path_err_sample_time"
        | "marginal_path_err_rate_threshold"
        | "marginal_path_err_recheck_gap_time"
        | "marginal_path_double_failed_time"
        | "marginal_pathgroups"
        | "san_path_err_threshold"
        | "san_path_err_forget_rate"
        | "san_path_err_recovery_time" => {
            "mpathd's health engine judges flaky paths from every IO's errors and latency \
             itself"
        }
        "find_multipaths_timeout" => {
            "mpathd does not hold back single paths (find_multipaths smart acts like on)"
        }
        "user_friendly_names"
        | "alias_prefix"
        | "find_multipaths"
        | "bindings_file"
        | "wwids_file" => "mpathd only has this setting in [defaults]",
        "flush_on_last_del"
        | "queue_without_daemon"
        | "deferred_remove"
        | "skip_kpartx"
        | "max_sectors_kb"
        | "ghost_delay"
        | "auto_resize"
        | "reservation_key"
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
        | "prkeys_file"
        | "ignore_new_boot_devs"
        | "detect_pgpolicy"
        | "detect_pgpolicy_use_tpg" => "a multipathd daemon setting with no mpathd equivalent",
        _ => "mpathd has no such setting",
    }
}

/// The prio settings of one section, resolved when the section ends.
#[derive(Default)]
struct PrioSeen {
    prio: Option<(String, (usize, usize))>,
    args: Option<(String, (usize, usize))>,
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

impl Importer<'_> {
    fn note(&mut self, (line, col): (usize, usize), message: String) {
        self.notes
            .push(Diagnostic::new(self.origin, line, col, message));
    }

    fn not_carried(&mut self, s: &Setting, place: &str, why: &str) {
        self.note(
            (s.line, s.col),
            format!("{}{place} not carried over: {why}", shorten(&s.name, 60)),
        );
    }

    /// Translates a policy setting into `keys`; false if `s` is not a policy setting.
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
                         group_by_prio); the default applies"
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
                             queue-length and service-time); the default applies"
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
                             seconds above 0; the default applies"
                        ),
                    ),
                },
            },
            "no_path_retry" => match v.as_str() {
                "fail" | "queue" => set_key(keys, "no_path_retry", toml_string(&v), pos),
                n => match n.parse::<u32>() {
                    Ok(n) if n > 0 => set_key(keys, "no_path_retry", n.to_string(), pos),
                    _ => self.not_carried(
                        s,
                        place,
                        &format!(
                            "\"{vq}\" is not fail, queue or a number of retries above 0; the \
                             default applies"
                        ),
                    ),
                },
            },
            "features" => {
                let words: Vec<&str> = v.split_whitespace().collect();
                let mut queue = false;
                for (i, w) in words.iter().enumerate() {
                    if i == 0 && w.parse::<u32>().is_ok() {
                        continue;
                    }
                    if *w == "queue_if_no_path" {
                        queue = true;
                    } else {
                        self.note(
                            pos,
                            format!(
                                "features{place}: feature \"{}\" not carried over: mpathd \
                                 only sets queue_if_no_path (from no_path_retry and \
                                 queue_if_no_path)",
                                shorten(w, 40)
                            ),
                        );
                    }
                }
                set_key(keys, "queue_if_no_path", queue.to_string(), pos);
            }
            "prio" => prio.prio = Some((v, pos)),
            "prio_args" => prio.args = Some((v, pos)),
            _ => return false,
        }
        true
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
                if let Some((_, apos)) = prio.args {
                    self.note(
                        apos,
                        format!(
                            "prio_args{place} not carried over: prio {name} takes no arguments"
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
                             the default prio applies"
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
                             the default prio applies",
                            shorten(&args, 60)
                        ),
                    ),
                }
            }
            other => self.note(
                pos,
                format!(
                    "prio{place} \"{}\" not carried over: mpathd has const, alua and \
                     weighted (weightedpath); the default prio applies",
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
            super::compile_anchored(&full)
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
        let mut keys = std::mem::take(&mut self.defaults);
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
                        "section \"{}\" in overrides not carried over: mpathd has no per-protocol \
                         settings (it multipaths SCSI disks, iSCSI in particular)",
                        shorten(&sub.name, 40)
                    ),
                ),
            }
        }
        self.finish_prio(prio, place, &mut keys);
        self.defaults = keys;
    }

    fn regex_rule(&mut self, s: &Setting, section: &str) -> Option<String> {
        let v = s.value();
        match ere::translate(&v) {
            Ok(re) => match super::compile_search(&re) {
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
                            shorten(&v, 60)
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
                        shorten(&v, 60)
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
                        if let Some(re) = self.regex_rule(s, &name) {
                            out.wwid.push((re, s.value_pos()));
                        }
                    }
                    "property" => self.not_carried(
                        s,
                        &format!(" ({name})"),
                        "mpathd does not filter on udev properties; it multipaths the SCSI \
                         disks it finds in sysfs (use devnode, wwid or device rules)",
                    ),
                    "protocol" => self.not_carried(
                        s,
                        &format!(" ({name})"),
                        "mpathd does not filter by protocol; it multipaths SCSI disks (use \
                         devnode, wwid or device rules)",
                    ),
                    _ => self.not_carried(s, &format!(" ({name})"), "not a blacklist rule"),
                },
                Item::Section(sub) if sub.name == "device" => {
                    let mut vendor = None;
                    let mut product = None;
                    let mut ok = true;
                    for it in &sub.items {
                        match it {
                            Item::Setting(s) if s.name == "vendor" || s.name == "product" => {
                                match self.regex_rule(s, &format!("{name} device")) {
                                    Some(re) if s.name == "vendor" => vendor = Some(re),
                                    Some(re) => product = Some(re),
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
                    if vendor.is_none() && product.is_none() {
                        self.note(
                            (sub.line, sub.col),
                            format!(
                                "{name} device not carried over: it has neither vendor nor \
                                 product"
                            ),
                        );
                        continue;
                    }
                    out.device.push((vendor, product, (sub.line, sub.col)));
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
        let wwid = ws.value();
        if let Some(why) = wwid_problem(&wwid) {
            self.note(
                ws.value_pos(),
                format!("multipath section not carried over: its wwid {why}"),
            );
            return;
        }
        if self.entries.iter().any(|e| e.wwid == wwid) {
            self.note(
                (m.line, m.col),
                format!(
                    "multipath section for wwid {} not carried over: an earlier multipath \
                     section has the same wwid",
                    shorten(&wwid, 80)
                ),
            );
            return;
        }
        let place = format!(" (multipath {})", shorten(&wwid, 40));
        let mut keys = Vec::new();
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
            if s.name == "wwid" || self.policy(s, &place, &mut keys, &mut prio) {
                continue;
            }
            if s.name == "alias" {
                let a = s.value();
                if let Some(why) = dm_name_problem(&a) {
                    self.not_carried(s, &place, &format!("\"{}\" {why}", shorten(&a, 60)));
                } else if self.entries.iter().any(|e| {
                    e.keys
                        .iter()
                        .any(|k| k.key == "alias" && k.value == toml_string(&a))
                }) {
                    self.not_carried(
                        s,
                        &place,
                        &format!("alias \"{a}\" is already used by an earlier multipath section"),
                    );
                } else {
                    set_key(&mut keys, "alias", toml_string(&a), s.value_pos());
                }
                continue;
            }
            self.not_carried(s, &place, reason(&s.name));
        }
        self.finish_prio(prio, &place, &mut keys);
        // The alias first, as people read it.
        keys.sort_by_key(|k| k.key != "alias");
        self.entries.push(EntryOut {
            wwid,
            from: (m.line, m.col),
            keys,
        });
    }

    fn devices_section(&mut self, sec: &Section) {
        for item in &sec.items {
            match item {
                Item::Section(d) if d.name == "device" => {
                    let ident = |k: &str| d.get(k).map(|s| s.value()).unwrap_or_default();
                    let place = format!(
                        " (device \"{}\" \"{}\")",
                        shorten(&ident("vendor"), 20),
                        shorten(&ident("product"), 30)
                    );
                    for s in d.settings() {
                        if s.name == "vendor" || s.name == "product" {
                            continue;
                        }
                        self.not_carried(
                            s,
                            &place,
                            "mpathd has no per-hardware device table; put the policy in \
                             [defaults], or in a [[multipaths]] entry per WWID",
                        );
                    }
                    for ss in d.subsections() {
                        self.note(
                            (ss.line, ss.col),
                            format!(
                                "section \"{}\"{place} not carried over: mpathd has no device \
                                 table",
                                shorten(&ss.name, 40)
                            ),
                        );
                    }
                }
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

    fn render(&self) -> String {
        // The origin goes into comments: no line breaks.
        let o: String = self
            .origin
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let mut t = String::new();
        t.push_str(&format!(
            "# mpathd config converted from {o} by `mpathd import`.\n\
             # Settings not carried over were listed by the import; see docs/config.md.\n"
        ));
        if !self.defaults.is_empty() {
            t.push_str("\n[defaults]\n");
            for k in &self.defaults {
                t.push_str(&format!(
                    "{} = {}  # {o}:{}:{}\n",
                    k.key, k.value, k.from.0, k.from.1
                ));
            }
        }
        for (name, f) in [
            ("blacklist", &self.blacklist),
            ("blacklist_exceptions", &self.exceptions),
        ] {
            if f.is_empty() {
                continue;
            }
            t.push_str(&format!("\n[{name}]\n"));
            for (key, list) in [("devnode", &f.devnode), ("wwid", &f.wwid)] {
                if list.is_empty() {
                    continue;
                }
                t.push_str(&format!("{key} = [\n"));
                for (re, (l, c)) in list.iter() {
                    t.push_str(&format!("    {},  # {o}:{l}:{c}\n", toml_str_pretty(re)));
                }
                t.push_str("]\n");
            }
            if !f.device.is_empty() {
                t.push_str("device = [\n");
                for (v, p, (l, c)) in &f.device {
                    let mut parts = Vec::new();
                    if let Some(v) = v {
                        parts.push(format!("vendor = {}", toml_str_pretty(v)));
                    }
                    if let Some(p) = p {
                        parts.push(format!("product = {}", toml_str_pretty(p)));
                    }
                    t.push_str(&format!("    {{ {} }},  # {o}:{l}:{c}\n", parts.join(", ")));
                }
                t.push_str("]\n");
            }
        }
        for e in &self.entries {
            t.push_str(&format!(
                "\n[[multipaths]]  # {o}:{}:{}\nwwid = {}\n",
                e.from.0,
                e.from.1,
                toml_string(&e.wwid)
            ));
            for k in &e.keys {
                t.push_str(&format!("{} = {}\n", k.key, k.value));
            }
        }
        t
    }
}

/// Names this module's import carries over, for docs and tests.
pub fn carried_over_defaults() -> HashSet<&'static str> {
    [
        "path_grouping_policy",
        "path_selector",
        "failback",
        "no_path_retry",
        "features",
        "prio",
        "prio_args",
        "user_friendly_names",
        "alias_prefix",
        "find_multipaths",
        "bindings_file",
        "wwids_file",
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        DeviceId, Failback, GroupingPolicy, NoPathRetry, PrioSource, SelectorKind, WeightKey,
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
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn errs(text: &str) -> Vec<(usize, usize, String)> {
        match parse(text, "m.conf") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => {
                e.0.into_iter()
                    .map(|d| (d.line, d.col, d.message))
                    .collect()
            }
        }
    }

    #[test]
    fn tokenizer_words_quotes_comments_braces() {
        let c = parse(
            "# comment\n! also a comment\ndefaults{\n  path_selector \"service-time 0\" # trailing\n  \
             features \"1 \"\"q\"\"\"\n  x cciss!c0d0 !not\n}\nblacklist { }\n",
            "m.conf",
        )
        .unwrap();
        assert_eq!(c.sections.len(), 2);
        let d = &c.sections[0];
        assert_eq!((d.name.as_str(), d.line, d.col), ("defaults", 3, 1));
        let ps = d.get("path_selector").unwrap();
        assert_eq!(ps.value(), "service-time 0");
        assert_eq!((ps.line, ps.col), (4, 3));
        assert_eq!(ps.value_pos(), (4, 17));
        assert!(ps.values[0].quoted);
        assert_eq!(d.get("features").unwrap().value(), "1 \"q\"");
        // '!' inside a word is part of it; at the start of a word it starts a comment.
        assert_eq!(d.get("x").unwrap().value(), "cciss!c0d0");
        assert_eq!(c.sections[1].name, "blacklist");
        assert!(c.sections[1].items.is_empty());
    }

    #[test]
    fn one_line_sections_and_brace_on_next_line() {
        let c = parse(
            "blacklist {\n device { vendor \"X\" }\n device {\n product \"Y\" }\n}\nmultipaths\n{\n multipath\n {\n  wwid 1\n }\n}\n",
            "m.conf",
        )
        .unwrap();
        let mut devs = c.sections[0].subsections();
        assert_eq!(devs.next().unwrap().get("vendor").unwrap().value(), "X");
        assert_eq!(devs.next().unwrap().get("product").unwrap().value(), "Y");
        let m = c.sections[1].subsections().next().unwrap();
        assert_eq!(m.get("wwid").unwrap().value(), "1");
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_eq!(
            errs("defaults {\n  alias \"abc\n}\n"),
            vec![(
                2,
                9,
                "unterminated quoted string (a closing \" must be on the same line)".into()
            )]
        );
        let e = errs("defaults {\n  x 1\n");
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert!(e[0].2.contains("never closed"), "{e:?}");
        let e = errs("defaults {\n}\n}\n");
        assert_eq!((e[0].0, e[0].1), (3, 1));
        assert!(e[0].2.contains("without a matching"));
        let e = errs("user_friendly_names yes\n");
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert!(e[0].2.contains("outside any section"));
        let e = errs("{\n}\n");
        assert!(e[0].2.contains("without a section name"));
        let e = errs("defaults {\n  device x {\n  }\n}\n");
        assert_eq!((e[0].0, e[0].1), (2, 12));
        // Several errors at once.
        let e = errs("defaults {\n a \"b\n}\n}\nx\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), vec![2, 4, 5]);
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion_blowup() {
        let text = "a {\n".repeat(100_000);
        let e = errs(&text);
        assert!(e.iter().any(|e| e.2.contains("nested deeper")), "{e:?}");
        let text = "{".repeat(100_000);
        let _ = parse(&text, "m.conf");
        let text = "}".repeat(100_000);
        assert!(errs(&text).len() <= MAX_ERRORS);
    }

    #[test]
    fn import_seed() {
        let im = import(SEED, "/etc/multipath.conf").unwrap();
        assert!(im.notes.is_empty(), "{:?}", im.notes);
        let c = Config::from_toml_str(&im.config_toml, "imported.toml").unwrap();
        assert!(c.defaults.user_friendly_names);
        assert_eq!(c.defaults.find_multipaths, FindMultipaths::On);
        let s = c.settings_for("360014056001405f00dcafe0123456789");
        assert_eq!(s.alias.as_deref(), Some("sanvol1"));
        // The seed file in fixtures is the same.
        assert_eq!(fixture("seed-multipath.conf"), SEED);
    }

    #[test]
    fn import_debian_sample() {
        let text = fixture("debian-multipath.conf");
        let im = import(&text, "multipath.conf").unwrap();
        let c = Config::from_toml_str(&im.config_toml, "imported.toml")
            .unwrap_or_else(|e| panic!("{e}\n{}", im.config_toml));
        let d = &c.defaults;
        assert!(d.user_friendly_names);
        assert_eq!(d.find_multipaths, FindMultipaths::Smart);
        assert_eq!(d.path_selector, SelectorKind::RoundRobin);
        assert_eq!(d.path_grouping_policy, GroupingPolicy::Multibus);
        assert_eq!(d.failback, Failback::Immediate);
        // overrides' no_path_retry queue beats defaults' fail.
        assert_eq!(d.no_path_retry, NoPathRetry::Queue);

        // Blacklist: the usual devnode rules, the untranslatable wwid noted.
        let dev = |devnode, wwid, vendor, product| DeviceId {
            devnode,
            wwid,
            vendor,
            product,
        };
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
        assert_eq!(c.blacklist_exceptions.wwid.len(), 1);

        let y = c.settings_for("3600508b4000156d700012000000b0000");
        assert_eq!(y.alias.as_deref(), Some("yellow"));
        assert_eq!(y.path_grouping_policy, GroupingPolicy::Multibus);
        assert_eq!(y.path_selector, SelectorKind::ServiceTime);
        assert_eq!(y.failback, Failback::Manual);
        assert_eq!(y.no_path_retry, NoPathRetry::Retries(5));
        let PrioSource::Weighted(ws) = &y.prio else {
            panic!("{:?}", y.prio)
        };
        assert_eq!(ws.len(), 2);
        assert_eq!((ws[0].key, ws[0].prio), (WeightKey::Hbtl, 2));
        assert!(ws[0].matches("sda", "1:0:0:3", None));
        assert!(!ws[0].matches("sda", "2:0:0:3", None));
        assert!(ws[1].matches("sda", "4:0:0:0", None));
        assert_eq!(
            c.settings_for("1DEC_____321816758474").alias.as_deref(),
            Some("red")
        );
        assert_eq!(c.multipaths.len(), 2);

        let notes: Vec<String> = im.notes.iter().map(|d| d.to_string()).collect();
        let has = |needle: &str| notes.iter().any(|n| n.contains(needle));
        for needle in [
            "multipath.conf:5:2: polling_interval not carried over: mpathd has one built-in path checker",
            "multipath.conf:6:2: path_checker not carried over",
            "multipath.conf:11:2: rr_min_io not carried over",
            "multipath.conf:12:2: getuid_callout not carried over: mpathd reads each disk's WWID from sysfs",
            "multipath.conf:19:7: blacklist wwid \"(a)\\1\" not carried over: the POSIX regex back-reference",
            "multipath.conf:20:2: property (blacklist) not carried over",
            "multipath.conf:35:3: path_grouping_policy (device \"NETAPP\" \"LUN.*\") not carried over: mpathd has no per-hardware device table",
            "prio (device \"NETAPP\" \"LUN.*\") not carried over",
            "rr_weight (multipath 3600508b4000156d700012000000b0000) not carried over",
            "mode (multipath 1DEC_____321816758474) not carried over",
            "multipath.conf:61:2: multipath section not carried over: it has no wwid",
            "multipath.conf:68:2: dev_loss_tmo (overrides) not carried over: mpathd does not change transport timeouts",
        ] {
            assert!(has(needle), "no note {needle:?} in:\n{}", notes.join("\n"));
        }
        // Every note has a position and says "not carried over".
        for n in &im.notes {
            assert!(n.line > 0 && n.col > 0, "{n}");
            assert!(n.message.contains("not carried over"), "{n}");
        }
        // The converted text points back to the source lines.
        assert!(
            im.config_toml.contains("# multipath.conf:16:10"),
            "{}",
            im.config_toml
        );
    }

    #[test]
    fn import_notes_features_and_prio() {
        let im = import(
            "defaults {\n features \"2 queue_if_no_path retain_attached_hw_handler\"\n prio emc\n \
             path_grouping_policy group_by_serial\n failback 0\n no_path_retry 0\n}\n\
             multipaths {\n multipath {\n  wwid a\n  prio weightedpath\n  prio_args \"wwn .* 3\"\n }\n \
             multipath {\n  wwid b\n  prio sysfs\n }\n multipath {\n  wwid a\n }\n}\nfoo {\n}\n",
            "m.conf",
        )
        .unwrap();
        let c = Config::from_toml_str(&im.config_toml, "x").unwrap();
        assert!(c.defaults.queue_if_no_path);
        assert_eq!(c.defaults.no_path_retry, NoPathRetry::Queue);
        assert_eq!(c.defaults.prio, PrioSource::Const);
        assert_eq!(c.settings_for("a").prio, PrioSource::Const);
        assert_eq!(c.settings_for("b").prio, PrioSource::Alua);
        let text: Vec<String> = im.notes.iter().map(|d| d.to_string()).collect();
        let all = text.join("\n");
        for needle in [
            "m.conf:2:11: features: feature \"retain_attached_hw_handler\" not carried over",
            "m.conf:3:7: prio \"emc\" not carried over",
            "m.conf:4:2: path_grouping_policy not carried over: \"group_by_serial\"",
            "m.conf:5:2: failback not carried over",
            "m.conf:6:2: no_path_retry not carried over",
            "m.conf:12:13: prio (multipath a) weightedpath not carried over: prio_args \"wwn .* 3\" weights by wwn",
            "m.conf:16:8: prio (multipath b) \"sysfs\" carried over as \"alua\"",
            "m.conf:18:2: multipath section for wwid a not carried over: an earlier multipath section has the same wwid",
            "m.conf:22:1: section \"foo\" not carried over",
        ] {
            assert!(all.contains(needle), "no {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn import_regex_translation() {
        let im = import(
            "blacklist {\n devnode \"^sd[[:digit:]\\]\"\n wwid \"[[.a.]]\"\n device {\n  vendor \"A&&B\"\n }\n}\n",
            "m.conf",
        )
        .unwrap();
        let c = Config::from_toml_str(&im.config_toml, "x").unwrap();
        assert_eq!(c.blacklist.devnode.len(), 1);
        let dev = |devnode| DeviceId {
            devnode,
            wwid: None,
            vendor: "A&&B",
            product: "",
        };
        assert!(!c.filter(&dev("sd\\")).is_allowed());
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
        let im = import("", "m.conf").unwrap();
        assert_eq!(
            Config::from_toml_str(&im.config_toml, "x").unwrap(),
            Config::default()
        );
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
        assert_eq!(c.settings_for("w'\"").alias.as_deref(), Some("x\\y"));
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
        let base: Vec<char> = fixture("debian-multipath.conf").chars().collect();
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
            "wwid",
            "prio_args",
        ];
        let mut st = 11u64;
        for _ in 0..400 {
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
