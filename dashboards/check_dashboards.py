#!/usr/bin/env python3
"""Loads each Grafana dashboard with grafana-foundation-sdk and checks it survived intact.

Usage: check_dashboards.py DASHBOARD.json...

For each file: the JSON decodes into the SDK's Dashboard model (panels into their
panel types' options, targets into Prometheus queries, variables, annotations); every
panel type is one the SDK knows; every query decodes as a Prometheus query; and the
model encodes back to the same titles, panel types, expressions and variables, so no
field the dashboard relies on was dropped as unknown. Exits 1 with every problem listed.
`cargo xtask test` runs it in the venv that `cargo xtask bootstrap` makes.
"""

import json
import sys

from grafana_foundation_sdk.cog import plugins, runtime
from grafana_foundation_sdk.models import dashboard as gd
from grafana_foundation_sdk.models import prometheus


def panels_of(panel_list):
    """Every panel, rows' nested panels included."""
    for p in panel_list:
        yield p
        yield from panels_of(p.get("panels") or [])


def summary(d):
    """What must survive a decode and encode: titles, types, queries, variables."""
    out = {
        "uid": d.get("uid"),
        "title": d.get("title"),
        "variables": [(v.get("name"), v.get("type")) for v in d.get("templating", {}).get("list", [])],
        "annotations": [(a.get("name"), a.get("expr")) for a in d.get("annotations", {}).get("list", [])],
        "panels": [],
    }
    for p in panels_of(d.get("panels") or []):
        out["panels"].append(
            (p.get("type"), p.get("title"), [(t.get("refId"), t.get("expr")) for t in p.get("targets") or []])
        )
    return out


def check(path):
    problems = []
    with open(path) as f:
        raw = json.load(f)
    try:
        model = gd.Dashboard.from_json(raw)
    except Exception as e:  # the SDK raises KeyError/TypeError/ValueError on bad shapes
        return [f"{path}: grafana-foundation-sdk cannot load it: {type(e).__name__}: {e}"]
    known = set(runtime.Runtime().panelcfg_variants.keys()) | {"row"}
    for p in panels_of(raw.get("panels") or []):
        if p.get("type") not in known:
            problems.append(f"{path}: panel {p.get('title')!r} has type {p.get('type')!r}, which the SDK does not know")
        for t in p.get("targets") or []:
            if (t.get("datasource") or {}).get("type") != "prometheus":
                problems.append(f"{path}: panel {p.get('title')!r} query {t.get('refId')} is not a Prometheus query")
    decoded = [p for p in (model.panels or [])]
    for p in decoded:
        for t in getattr(p, "targets", None) or []:
            if not isinstance(t, prometheus.Dataquery):
                problems.append(f"{path}: panel {p.title!r} has a query the SDK did not read as Prometheus: {type(t).__name__}")
        for sub in getattr(p, "panels", None) or []:
            for t in getattr(sub, "targets", None) or []:
                if not isinstance(t, prometheus.Dataquery):
                    problems.append(f"{path}: panel {sub.title!r} has a query the SDK did not read as Prometheus: {type(t).__name__}")
    again = json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json()))
    before, after = summary(raw), summary(again)
    for key in before:
        if before[key] != after[key]:
            problems.append(f"{path}: {key} changed through the SDK:\n  before: {before[key]}\n  after:  {after[key]}")
    if not before["panels"]:
        problems.append(f"{path}: no panels")
    return problems


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    plugins.register_default_plugins()
    problems = []
    for path in argv[1:]:
        p = check(path)
        problems += p
        if not p:
            with open(path) as f:
                d = json.load(f)
            n = sum(1 for _ in panels_of(d.get("panels") or []))
            print(f"{path}: loads with grafana-foundation-sdk ({n} panels)")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
