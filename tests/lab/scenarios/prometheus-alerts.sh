# lab: a real Prometheus scrapes mpathd with the shipped rules: a portal cut during IO fires MpathdPathDown and MpathdMapLastPath, both clear once the portal is back
# lab-timeout: 600
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"

# mpathd serves /metrics here unless the config moves it.
: "${LAB_METRICS:=127.0.0.1:9977}"
LAB_PROM=127.0.0.1:9090
LAB_PROM_DIR=/tmp/prometheus
LAB_PROM_PID=

# lab_prom_start: Debian's prometheus (the host's, seen in the guest) scraping mpathd every
# 2 s, evaluating dashboards/prometheus/{alerts,rules}.yml as shipped every second.
# Not every second: a scrape's timeout cannot exceed its interval, and Prometheus itself,
# on two emulated CPUs beside the IO and the target, took up to 1.01 s to scrape mpathd
# (which answers curl in 40-80 ms meanwhile); a failed scrape starts every alert's `for`
# again, and in CI's run at 0c3496e MpathdPathDown never fired in 100 s.
lab_prom_start() {
	mkdir -p "$LAB_PROM_DIR/data"
	cat >"$LAB_PROM_DIR/prometheus.yml" <<-EOF
		global:
		  scrape_interval: 2s
		  scrape_timeout: 2s
		  evaluation_interval: 1s
		rule_files:
		  - $MPATHD_ROOT/dashboards/prometheus/alerts.yml
		  - $MPATHD_ROOT/dashboards/prometheus/rules.yml
		scrape_configs:
		  - job_name: mpathd
		    static_configs:
		      - targets: ['$LAB_METRICS']
	EOF
	cp "$LAB_PROM_DIR/prometheus.yml" "$LAB_OUT/prometheus.yml"
	prometheus --config.file="$LAB_PROM_DIR/prometheus.yml" --storage.tsdb.path="$LAB_PROM_DIR/data" \
		--web.listen-address="$LAB_PROM" --log.level=warn >>"$LAB_OUT/prometheus.log" 2>&1 &
	LAB_PROM_PID=$!
	lab_event prometheus "started (pid $LAB_PROM_PID), scraping $LAB_METRICS every 2 s with the shipped rules"
	lab_wait 90 "Prometheus to be ready" lab__prom_ready
	lab_event prometheus "ready"
}
lab__prom_ready() {
	kill -0 "$LAB_PROM_PID" 2>/dev/null || lab_fail "prometheus exited (see prometheus.log): $(tail -3 "$LAB_OUT/prometheus.log")"
	curl -sf "http://$LAB_PROM/-/ready" >/dev/null
}

# Waits on Prometheus poll it once a second (LAB_WAIT_POLL=1): a python process every
# 0.1 s loads the guest's two emulated CPUs enough to slow the scrapes they wait on.

# lab_prom STATE ALERTNAME [LABEL=VALUE...]: true when Prometheus's HTTP API lists the
# alert with those labels in STATE (firing or pending), or lists none (STATE none).
lab_prom() {
	python3 - "http://$LAB_PROM/api/v1/alerts" "$@" <<-'PY'
		import json, sys, urllib.request
		url, want, name = sys.argv[1:4]
		labels = dict(a.split("=", 1) for a in sys.argv[4:])
		data = json.load(urllib.request.urlopen(url, timeout=5))["data"]["alerts"]
		found = [a for a in data if a["labels"].get("alertname") == name
		         and all(a["labels"].get(k) == v for k, v in labels.items())]
		if want == "none":
		    sys.exit(0 if not found else 1)
		sys.exit(0 if any(a["state"] == want for a in found) else 1)
	PY
}

# lab_prom_value EXPR: the value of an instant query (empty if no result).
lab_prom_value() {
	python3 - "http://$LAB_PROM/api/v1/query" "$1" <<-'PY'
		import json, sys, urllib.parse, urllib.request
		q = urllib.parse.urlencode({"query": sys.argv[2]})
		r = json.load(urllib.request.urlopen(sys.argv[1] + "?" + q, timeout=5))["data"]["result"]
		print(r[0]["value"][1] if r else "")
	PY
}
# lab_prom_history: what Prometheus saw over the last 3 minutes, for a failure: each failed
# scrape (an alert's `for` starts again after one), the slowest scrapes, every time the
# MpathdPathDown alert became active (ALERTS_FOR_STATE's value is when), and the failed
# or probation series of the paths with the labels they had.
lab_prom_history() {
	python3 - "http://$LAB_PROM/api/v1/query_range" <<-'PY'
		import json, sys, time, urllib.parse, urllib.request
		end = time.time(); start = end - 180
		def rng(q):
		    u = sys.argv[1] + "?" + urllib.parse.urlencode(
		        {"query": q, "start": start, "end": end, "step": "1s"})
		    return json.load(urllib.request.urlopen(u, timeout=10))["data"]["result"]
		def ago(t): return "%.0fs ago" % max(0.0, end - float(t))
		for r in rng('up{job="mpathd"}'):
		    bad = [ago(t) for t, v in r["values"] if v != "1"]
		    print("prometheus: %d scrapes seen, failed at: %s" % (len(r["values"]), " ".join(bad) or "none"))
		for r in rng('scrape_duration_seconds{job="mpathd"}'):
		    slow = sorted(r["values"], key=lambda x: -float(x[1]))[:5]
		    print("prometheus: slowest scrapes: " + " ".join("%s at %s" % (v, ago(t)) for t, v in slow))
		for r in rng('ALERTS_FOR_STATE{alertname="MpathdPathDown"}'):
		    since = sorted({v for _, v in r["values"]})
		    l = {k: v for k, v in r["metric"].items() if k not in ("__name__", "alertname")}
		    print("prometheus: MpathdPathDown %s active since: %s" % (l, " ".join(ago(s) for s in since)))
		for r in rng('mpathd_path_state{state=~"failed|probation"} == 1'):
		    v = r["values"]
		    l = {k: v for k, v in r["metric"].items() if k not in ("__name__", "job", "instance", "wwid")}
		    print("prometheus: %s: %d samples, %s .. %s" % (l, len(v), ago(v[0][0]), ago(v[-1][0])))
	PY
}

# Prometheus's view goes to the console as well as mpathd's when a step fails.
eval "$(declare -f lab__on_fail | sed '1s/lab__on_fail/lab__on_fail_mpathd/')"
lab__on_fail() {
	[ -n "$LAB_PROM_PID" ] && lab_prom_history
	lab__on_fail_mpathd
}

lab__watching() { [ "$(grep -c 'watching iSCSI connection' "$LAB_OUT/mpathd.log")" -ge "$1" ]; }
lab__prom_is() { [ "$(lab_prom_value "$1")" = "$2" ]; }

lab__finish_prom() {
	local rc=$?
	if [ -n "$LAB_PROM_PID" ]; then
		# What Prometheus saw, for the report: the alerts' states at the end.
		curl -s "http://$LAB_PROM/api/v1/alerts" >"$LAB_OUT/prometheus-alerts.json" 2>/dev/null
		kill "$LAB_PROM_PID" 2>/dev/null
	fi
	[ -n "$LAB_MPATHD_PID" ] && kill "$LAB_MPATHD_PID" 2>/dev/null
	(exit "$rc")
	lab__finish
}
trap lab__finish_prom EXIT

lab_setup
lab_step "mpathd makes the map, Prometheus scrapes it"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "multibus"
no_path_retry = "queue"'
lab_mpathd_start
LAB_MAP=sanvol1
lab_wait_map_paths sanvol1 2 10
lab_dm_watch_start
lab_wait 20 "mpathd to answer on $LAB_METRICS" curl -sf "http://$LAB_METRICS/metrics" -o /dev/null
curl -s "http://$LAB_METRICS/metrics" >"$LAB_OUT/metrics-before.txt"
lab_prom_start
LAB_WAIT_POLL=1 lab_wait 30 "Prometheus to scrape mpathd (up == 1)" lab__prom_is 'up{job="mpathd"}' 1
LAB_WAIT_POLL=1 lab_wait 30 "both paths usable in Prometheus" lab__prom_is 'mpathd_map_usable_paths{map="sanvol1"}' 2
lab_prom none MpathdPathDown || lab_fail "MpathdPathDown is listed before any fault"
lab_prom none MpathdMapLastPath || lab_fail "MpathdMapLastPath is listed before any fault"
# The probes watch both connections before the fault, so the cut is seen from the kernel.
lab_wait 90 "the probes on both connections" lab__watching 2

lab_step "cut portal 1 during IO: the alerts fire"
lab_io_start
sleep 3
lab_link_down 1
lab_wait 10 "mpathd to fail path 1" lab__dm_is 1 F
LAB_WAIT_POLL=1 lab_wait 20 "Prometheus to see path 1 failed" lab__prom_is "mpathd_path_state{path=\"${LAB_DEV[1]}\",state=\"failed\"}" 1
lab_event prometheus "scraped: ${LAB_DEV[1]} failed"
LAB_WAIT_POLL=1 lab_wait 20 "MpathdPathDown pending" lab_prom pending MpathdPathDown "path=${LAB_DEV[1]}" map=sanvol1
lab_event prometheus "MpathdPathDown pending for ${LAB_DEV[1]}"
# `for: 1m` in alerts.yml, evaluated every second here; 130 s leaves room for one failed
# scrape (the history above says so if there was one).
LAB_WAIT_POLL=1 lab_wait 130 "MpathdPathDown firing" lab_prom firing MpathdPathDown "path=${LAB_DEV[1]}" map=sanvol1 portal=10.99.1.2:3260
lab_event prometheus "MpathdPathDown firing for ${LAB_DEV[1]} (map sanvol1, portal 10.99.1.2:3260)"
LAB_WAIT_POLL=1 lab_wait 30 "MpathdMapLastPath firing" lab_prom firing MpathdMapLastPath map=sanvol1
lab_event prometheus "MpathdMapLastPath firing for sanvol1"
lab_prom none MpathdPathDown "path=${LAB_DEV[2]}" || lab_fail "the healthy path ${LAB_DEV[2]} is reported down"
curl -s "http://$LAB_METRICS/metrics" >"$LAB_OUT/metrics-fault.txt"
# mpathd's own time to answer a scrape under this load, beside what Prometheus measured
# (its scrape_duration_seconds adds its own wait for the guest's CPUs).
lab_event info "5 scrapes by curl during the fault took: $(for _ in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total} ' "http://$LAB_METRICS/metrics"; done)s"

lab_step "portal 1 back: the alerts clear"
lab_link_up 1
lab_wait_session 1 60
lab_wait 60 "mpathd to reinstate path 1" lab__dm_is 1 A
LAB_WAIT_POLL=1 lab_wait 60 "Prometheus to see path 1 usable" lab__prom_is "max(mpathd_path_state{path=\"${LAB_DEV[1]}\",state=~\"active|degraded\"})" 1
lab_event prometheus "scraped: ${LAB_DEV[1]} usable"
LAB_WAIT_POLL=1 lab_wait 60 "MpathdPathDown resolved" lab_prom none MpathdPathDown
lab_event prometheus "MpathdPathDown resolved"
LAB_WAIT_POLL=1 lab_wait 30 "MpathdMapLastPath resolved" lab_prom none MpathdMapLastPath
lab_event prometheus "MpathdMapLastPath resolved"
lab_io_stop
lab_io_check errors=0 mismatches=0
# What the rules recorded meanwhile: one path failure decided, and the host's degraded-map
# count back at 0.
LAB_WAIT_POLL=1 lab_wait 20 "the recording rule to count no degraded map" lab__prom_is 'instance:mpathd_maps_degraded:count' 0
[ "$(lab_prom_value 'max_over_time(instance:mpathd_maps_degraded:count[10m])')" = 1 ] ||
	lab_fail "instance:mpathd_maps_degraded:count never recorded the degraded map"
# How the scrapes went: a slow or failed scrape delays every alert.
lab_event info "scrapes in the last 5 min: $(lab_prom_value 'count_over_time(up{job="mpathd"}[5m])') taken, $(lab_prom_value 'count_over_time(up{job="mpathd"}[5m]) - sum_over_time(up{job="mpathd"}[5m])') failed, longest $(lab_prom_value 'max_over_time(scrape_duration_seconds{job="mpathd"}[5m])') s"
lab_mpathd_stop
lab_done
