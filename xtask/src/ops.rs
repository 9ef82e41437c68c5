//! The operations checks of `cargo xtask test`: Prometheus rules and their tests, the
//! Grafana dashboards, the systemd unit. Each check is one counted item.
//!
//! - `promtool check rules` on alerts.yml and rules.yml, and `promtool test rules`;
//! - every alert and recording rule is named in a test;
//! - every PromQL expression of both dashboards parses (put in a generated rules file,
//!   since promtool has no command for bare expressions);
//! - the dashboards load with grafana-foundation-sdk (dashboards/check_dashboards.py, in
//!   the venv the bootstrap makes);
//! - `systemd-analyze verify` on the unit prints nothing (any warning fails), and
//!   `systemd-analyze security` scores its exposure, written to target/ops/.
//!
//! That every metric the dashboards and rules name is one mpathd exports is a Rust test
//! (multipath-daemon/tests/metrics_names.rs), against a live /metrics.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bootstrap;

/// The exposure `systemd-analyze security` gave the unit when it was last hardened: a
/// higher score fails the check (lower it here when the unit gets tighter).
pub const MAX_EXPOSURE: f64 = 3.7;

pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    /// What went wrong, or what was measured.
    pub detail: String,
    pub secs: f64,
}

type Check = fn(&Path) -> Result<String>;

/// Runs every check, in order.
pub fn run_all(root: &Path) -> Vec<CheckResult> {
    let checks: [(&str, Check); 7] = [
        ("promtool check rules", check_rules),
        ("promtool test rules", test_rules),
        (
            "rules: every alert and recording rule is tested",
            rules_covered,
        ),
        (
            "dashboards: every PromQL expression parses",
            dashboard_exprs,
        ),
        (
            "dashboards: load with grafana-foundation-sdk",
            dashboards_load,
        ),
        ("systemd-analyze verify mpathd.service", systemd_verify),
        ("systemd-analyze security mpathd.service", systemd_security),
    ];
    checks
        .iter()
        .map(|(name, f)| {
            let t = Instant::now();
            let r = f(root);
            CheckResult {
                name: (*name).to_owned(),
                ok: r.is_ok(),
                detail: match r {
                    Ok(s) => s,
                    Err(e) => format!("{e:#}"),
                },
                secs: t.elapsed().as_secs_f64(),
            }
        })
        .collect()
}

fn prom_dir(root: &Path) -> PathBuf {
    root.join("dashboards/prometheus")
}

fn dashboards(root: &Path) -> Vec<PathBuf> {
    ["mpathd.json", "mpathd-fleet.json"]
        .iter()
        .map(|f| root.join("dashboards/grafana").join(f))
        .collect()
}

fn out_dir(root: &Path) -> Result<PathBuf> {
    let d = root.join("target/ops");
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// Runs a command; its output when it succeeds, an error with its output otherwise.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| {
        format!("cannot start `{what}`: is it installed? (cargo xtask bootstrap)")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{what}` failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

fn check_rules(root: &Path) -> Result<String> {
    let d = prom_dir(root);
    run(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(d.join("alerts.yml"))
            .arg(d.join("rules.yml")),
        "promtool check rules alerts.yml rules.yml",
    )
}

fn test_rules(root: &Path) -> Result<String> {
    // rule_files in tests.yml are relative to it.
    run(
        Command::new("promtool")
            .args(["test", "rules", "tests.yml"])
            .current_dir(prom_dir(root)),
        "promtool test rules dashboards/prometheus/tests.yml",
    )
}

/// Names after `- alert:` / `- record:` in a rules file (one rule per line, as ours are
/// written; promtool check rules has already parsed them).
fn rule_names(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- ")?
                .strip_prefix(key)?
                .strip_prefix(':')
        })
        .map(|n| n.trim().trim_matches(['"', '\'']).to_owned())
        .collect()
}

fn rules_covered(root: &Path) -> Result<String> {
    let d = prom_dir(root);
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .with_context(|| format!("reading dashboards/prometheus/{f}"))
    };
    let (alerts, rules, tests) = (read("alerts.yml")?, read("rules.yml")?, read("tests.yml")?);
    let alert_names = rule_names(&alerts, "alert");
    let records = rule_names(&rules, "record");
    if alert_names.is_empty() || records.is_empty() {
        bail!("found no alerts or no recording rules: the files' layout changed");
    }
    let tested_alerts: BTreeSet<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname:"))
        .map(str::trim)
        .collect();
    // A recording rule is tested when a promql_expr_test queries it by name.
    let exprs: Vec<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- expr:"))
        .collect();
    let mut missing = Vec::new();
    for a in &alert_names {
        if !tested_alerts.contains(a.as_str()) {
            missing.push(format!("alert {a}"));
        }
    }
    for r in &records {
        let named = |e: &&str| {
            e.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .any(|w| w == r)
        };
        if !exprs.iter().any(named) {
            missing.push(format!("recording rule {r}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "no test in dashboards/prometheus/tests.yml for: {}",
            missing.join(", ")
        );
    }
    Ok(format!(
        "{} alerts and {} recording rules, each tested",
        alert_names.len(),
        records.len()
    ))
}

/// Every PromQL expression of a dashboard: panel targets (rows' panels too), annotation
/// queries and query variables, with where each comes from.
pub fn dashboard_expressions(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    let r = t["refId"].as_str().unwrap_or("?");
                    out.push((format!("panel {title:?} query {r}"), e.to_owned()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    panels(&dash["panels"], &mut out);
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), e.to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        // Grafana's own label_values(SELECTOR, LABEL): the selector is PromQL.
        let e = match q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
        {
            Some((sel, _)) => sel.to_owned(),
            None => q.to_owned(),
        };
        out.push((format!("variable {:?}", v["name"]), e));
    }
    out
}

/// Grafana's variables replaced by values PromQL accepts: durations for the interval
/// variables, a plain word for the dashboard's own (`$instance`, `${map:regex}`).
pub fn substitute_variables(expr: &str) -> String {
    let mut s = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        s.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(b) = after.strip_prefix('{') {
            let end = b.find('}').map(|e| e + 2).unwrap_or(after.len());
            (
                b[..end.saturating_sub(2)].split(':').next().unwrap_or(""),
                end,
            )
        } else {
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        s.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => "5m",
            _ => "x",
        });
        rest = &after[len..];
    }
    s.push_str(rest);
    s
}

fn dashboard_exprs(root: &Path) -> Result<String> {
    let mut rules = Vec::new();
    let mut names = Vec::new();
    for f in dashboards(root) {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let dash: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
        let file = f
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for (i, (what, e)) in dashboard_expressions(&dash).into_iter().enumerate() {
            names.push(format!("{file}: {what}: {e}"));
            rules.push(json!({
                "record": format!("dashboard_expr_{}_{i}", rules.len()),
                "expr": substitute_variables(&e),
                "labels": { "source": format!("{file}: {what}") },
            }));
        }
    }
    if rules.is_empty() {
        bail!("the dashboards have no expressions: are they the right files?");
    }
    let n = rules.len();
    // JSON is YAML: promtool reads this as a rules file and parses every expression.
    let file = out_dir(root)?.join("dashboard-expressions.rules.json");
    let doc = json!({ "groups": [{ "name": "dashboard-expressions", "rules": rules }] });
    std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
    run(
        Command::new("promtool").args(["check", "rules"]).arg(&file),
        &format!("promtool check rules {}", file.display()),
    )
    .with_context(|| {
        format!(
            "a dashboard expression does not parse; each rule's `source` label says which (see {})",
            file.display()
        )
    })?;
    Ok(format!("{n} expressions parse"))
}

fn dashboards_load(root: &Path) -> Result<String> {
    let python = bootstrap::grafana_venv_python(root);
    if !python.exists() {
        bail!(
            "{} is missing: run `cargo xtask bootstrap` (it makes the grafana-foundation-sdk venv)",
            python.display()
        );
    }
    run(
        Command::new(&python)
            .arg(root.join("dashboards/check_dashboards.py"))
            .args(dashboards(root)),
        "dashboards/check_dashboards.py",
    )
}

/// A throwaway root with the unit where systemd looks and the programs it runs, so
/// `systemd-analyze verify --root` checks them without installing anything.
fn systemd_root(root: &Path) -> Result<PathBuf> {
    let r = out_dir(root)?.join("systemd-root");
    let _ = std::fs::remove_dir_all(&r);
    let unit_dir = r.join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir)?;
    std::fs::copy(
        root.join("packaging/mpathd.service"),
        unit_dir.join("mpathd.service"),
    )
    .context("copying packaging/mpathd.service")?;
    let mpathd = root.join("target/debug/mpathd");
    if !mpathd.exists() {
        bail!(
            "{} is missing: build it first (cargo build -p multipath-daemon)",
            mpathd.display()
        );
    }
    for (from, to) in [
        (mpathd.as_path(), "usr/sbin/mpathd"),
        (Path::new("/bin/kill"), "bin/kill"),
        (Path::new("/sbin/modprobe"), "sbin/modprobe"),
    ] {
        let dst = r.join(to);
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        let src = std::fs::canonicalize(from)
            .with_context(|| format!("{} (the unit runs it) is missing", from.display()))?;
        // A hard link where possible: the daemon binary is large.
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(r)
}

fn systemd_verify(root: &Path) -> Result<String> {
    let r = systemd_root(root)?;
    // The man page is checked in the package (cargo xtask package), not on this host.
    let out = run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", r.display()))
            .arg("/etc/systemd/system/mpathd.service"),
        "systemd-analyze verify packaging/mpathd.service",
    )?;
    if !out.trim().is_empty() {
        bail!("systemd-analyze verify warned about packaging/mpathd.service:\n{out}");
    }
    Ok("no warnings".into())
}

/// The overall exposure from `systemd-analyze security`'s last line.
pub fn parse_exposure(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("Overall exposure level"))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn systemd_security(root: &Path) -> Result<String> {
    let unit = root.join("packaging/mpathd.service");
    let out = run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
        "systemd-analyze security --offline=true packaging/mpathd.service",
    )?;
    let file = out_dir(root)?.join("systemd-security.txt");
    std::fs::write(&file, &out)?;
    let score = parse_exposure(&out).with_context(|| {
        format!(
            "no overall exposure in systemd-analyze's output (kept in {})",
            file.display()
        )
    })?;
    if score > MAX_EXPOSURE {
        bail!(
            "exposure {score} is above the {MAX_EXPOSURE} the unit had: a hardening setting \
             was lost (the full report is in {})",
            file.display()
        );
    }
    Ok(format!(
        "exposure {score} (at most {MAX_EXPOSURE}); report in {}",
        file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real checks, outside `cargo xtask test`:
    /// `cargo test -p xtask ops_checks -- --ignored --nocapture`.
    #[test]
    #[ignore = "runs promtool, the SDK venv and systemd-analyze; part of cargo xtask test"]
    fn ops_checks() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let results = run_all(root);
        for c in &results {
            eprintln!(
                "{}: {} ({:.1} s) {}",
                c.name,
                if c.ok { "ok" } else { "FAILED" },
                c.secs,
                c.detail.trim_end()
            );
        }
        assert!(results.iter().all(|c| c.ok));
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            substitute_variables(
                r#"rate(x{instance="$instance", map=~"${map:regex}"}[$__rate_interval])"#
            ),
            r#"rate(x{instance="x", map=~"x"}[5m])"#
        );
        assert_eq!(substitute_variables("a[$__range]"), "a[5m]");
    }

    #[test]
    fn expressions_come_from_panels_rows_annotations_and_variables() {
        let d = json!({
            "panels": [
                {"title": "t", "targets": [{"refId": "A", "expr": "up"}]},
                {"title": "row", "type": "row", "panels": [
                    {"title": "inner", "targets": [{"refId": "B", "expr": "sum(up)"}]}]}
            ],
            "annotations": {"list": [{"name": "f", "expr": "changes(up[1m]) > 0"}]},
            "templating": {"list": [
                {"type": "datasource", "name": "ds", "query": "prometheus"},
                {"type": "query", "name": "instance",
                 "query": {"query": "label_values(mpathd_build_info{job=\"x\"}, instance)"}}
            ]}
        });
        let exprs: Vec<String> = dashboard_expressions(&d)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(
            exprs,
            [
                "up",
                "sum(up)",
                "changes(up[1m]) > 0",
                "mpathd_build_info{job=\"x\"}"
            ]
        );
    }

    #[test]
    fn rule_names_and_exposure_are_read() {
        let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up\n      - record: a:b:c\n";
        assert_eq!(rule_names(rules, "alert"), ["A"]);
        assert_eq!(rule_names(rules, "record"), ["a:b:c"]);
        assert_eq!(
            parse_exposure("...\n→ Overall exposure level for mpathd.service: 3.7 OK :-)\n"),
            Some(3.7)
        );
        assert_eq!(parse_exposure("nothing"), None);
    }
}
