# lab: the Debian package (cargo xtask package) installs with dpkg in the guest; its unit verifies; the installed daemon starts as the unit says, logs to a real systemd-journald with its fields, makes the map and serves metrics
# lab-timeout: 400
. "$LAB_LIB"

LAB_SOCK=/run/mpathd/mpathd.sock
LAB_MPATHD_PID=
deb=$(ls -t "$MPATHD_ROOT"/target/debian/mpathd_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || lab_fail "no $MPATHD_ROOT/target/debian/mpathd_*.deb: run cargo xtask package first"

lab_step "dpkg -i ${deb##*/} into an overlay over /usr"
# /usr is the host's, read-only: a tmpfs overlay takes the package's files (/lib and /sbin
# are links into /usr). dpkg's database is in /var, already an overlay.
mount -t tmpfs tmpfs /mnt || lab_fail "mounting a tmpfs on /mnt"
mkdir -p /mnt/u /mnt/w
mount -t overlay overlay -o lowerdir=/usr,upperdir=/mnt/u,workdir=/mnt/w /usr || lab_fail "overlay on /usr"
lab_do dpkg -i "$deb"
lab_event info "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' mpathd)"
dpkg-query -W -f='${Status}' mpathd | grep -q "install ok installed" || lab_fail "dpkg says mpathd is not installed"
for f in /usr/sbin/mpathd /usr/lib/systemd/system/mpathd.service /etc/mpathd/mpathd.toml \
	/usr/share/man/man8/mpathd.8.gz /usr/share/bash-completion/completions/mpathd \
	/usr/share/mpathd/grafana/mpathd.json /usr/share/mpathd/grafana/mpathd-fleet.json \
	/usr/share/mpathd/prometheus/alerts.yml /usr/share/mpathd/prometheus/rules.yml; do
	[ -e "$f" ] || lab_fail "the package did not install $f"
done
zcat /usr/share/man/man8/mpathd.8.gz | grep -q '^\.TH' || lab_fail "the man page is not a man page"
# The postinst enables the unit (no systemd runs here: it starts nothing).
[ -L /etc/systemd/system/sysinit.target.wants/mpathd.service ] || lab_fail "the postinst did not enable mpathd.service"
out=$(systemd-analyze verify --man=no /usr/lib/systemd/system/mpathd.service 2>&1) || lab_fail "systemd-analyze verify: $out"
[ -z "$out" ] || lab_fail "systemd-analyze verify warned: $out"
promtool check rules /usr/share/mpathd/prometheus/alerts.yml /usr/share/mpathd/prometheus/rules.yml >/dev/null ||
	lab_fail "the packaged rules do not check"

lab_setup
lab_step "systemd-journald, as under systemd"
# No systemd runs here: journald alone makes its sockets and a volatile journal in /run.
mkdir -p /run/systemd/journal /run/log/journal
/lib/systemd/systemd-journald >"$LAB_OUT/journald.log" 2>&1 &
LAB_JOURNALD_PID=$!
lab_wait 10 "journald's socket" test -S /run/systemd/journal/socket
lab__journal() { journalctl --no-pager -q "$@" SYSLOG_IDENTIFIER=mpathd; }

lab_step "start the installed daemon as the unit does"
wwid=$(/lib/udev/scsi_id -g -u "/dev/${LAB_DEV[1]}")
# The packaged config (a conffile), with the lab LUN named sanvol1 unless it is already
# (the example entry in packaging/mpathd.toml is the lab's LUN).
grep -q "^wwid = \"$wwid\"" /etc/mpathd/mpathd.toml ||
	printf '\n[[multipaths]]\nwwid = "%s"\nalias = "sanvol1"\n' "$wwid" >>/etc/mpathd/mpathd.toml
/usr/sbin/mpathd check-config /etc/mpathd/mpathd.toml || lab_fail "the packaged config with the lab LUN does not check"
start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/mpathd.service)
[ -n "$start" ] || lab_fail "no ExecStart in the installed unit"
lab_event mpathd "starting: $start"
# systemd names the stream it gave the service's standard error in JOURNAL_STREAM
# (device:inode); mpathd logs natively to the journal only when its standard error is
# that stream. Here standard error is a file, named the same way.
: >"$LAB_OUT/mpathd.log"
export JOURNAL_STREAM
JOURNAL_STREAM=$(stat -c '%d:%i' "$LAB_OUT/mpathd.log")
# shellcheck disable=SC2086 # the unit's command line, word-split as systemd does here
$start >>"$LAB_OUT/mpathd.log" 2>&1 &
LAB_MPATHD_PID=$!
unset JOURNAL_STREAM
lab__ready() {
	kill -0 "$LAB_MPATHD_PID" 2>/dev/null || lab_fail "mpathd exited: $(tail -3 "$LAB_OUT/mpathd.log")"
	lab__journal -o cat | grep -q 'ready maps=1'
}
lab__exited() { ! kill -0 "$1" 2>/dev/null; }
lab_wait 60 "the installed mpathd's ready line with one map, in the journal" lab__ready
lab_event mpathd "$(lab__journal -o cat | grep 'ready maps=' | tail -1)"
lab__journal -o json | grep '"MESSAGE":"ready maps=1' | grep -q '"PRIORITY":"5"' ||
	lab_fail "the ready line is not in the journal at priority 5 (notice, from INFO): $(lab__journal -o json | grep ready)"
grep -q 'ready maps=' "$LAB_OUT/mpathd.log" && lab_fail "mpathd logged to standard error, not natively to the journal"
lab_wait 10 "/dev/mapper/sanvol1" test -b /dev/mapper/sanvol1
/usr/sbin/mpathd --socket "$LAB_SOCK" show maps | tee "$LAB_OUT/show-maps.txt" | grep -q sanvol1 ||
	lab_fail "mpathd show maps does not list sanvol1"
lab_wait 20 "metrics on 127.0.0.1:9977" curl -sf http://127.0.0.1:9977/metrics -o "$LAB_OUT/metrics.txt"
grep -q '^mpathd_map_usable_paths{map="sanvol1"' "$LAB_OUT/metrics.txt" || lab_fail "the metrics do not show map sanvol1"
grep -q "^mpathd_build_info{" "$LAB_OUT/metrics.txt" || lab_fail "no mpathd_build_info"
lab_event info "$(grep '^mpathd_build_info' "$LAB_OUT/metrics.txt")"

lab_step "a decision in the journal carries its fields"
dev=${LAB_DEV[1]}
/usr/sbin/mpathd --socket "$LAB_SOCK" fail "$dev" || lab_fail "mpathd fail $dev"
lab__failed() { lab__journal -o json MPATHD_MAP=sanvol1 "MPATHD_PATH=$dev" | grep -q '"MESSAGE":"path failed by admin"'; }
lab_wait 10 "journalctl MPATHD_MAP=sanvol1 MPATHD_PATH=$dev: the admin fail" lab__failed
lab__journal -o json MPATHD_MAP=sanvol1 "MPATHD_PATH=$dev" >"$LAB_OUT/journal-fail.json"
lab_event info "journal: $(grep -o '"MESSAGE":"path failed by admin"\|"MPATHD_[A-Z_]*":"[^"]*"\|"PRIORITY":"[0-9]"' "$LAB_OUT/journal-fail.json" | sort -u | tr '\n' ' ')"
/usr/sbin/mpathd --socket "$LAB_SOCK" reinstate "$dev" || lab_fail "mpathd reinstate $dev"
kill -TERM "$LAB_MPATHD_PID"
lab_wait 20 "mpathd to exit on SIGTERM" lab__exited "$LAB_MPATHD_PID"
LAB_MPATHD_PID=
lab_event mpathd "stopped"
kill -TERM "$LAB_JOURNALD_PID"
lab_wait 10 "journald to exit" lab__exited "$LAB_JOURNALD_PID"
lab_do dpkg -r mpathd
[ ! -e /usr/sbin/mpathd ] || lab_fail "dpkg -r left /usr/sbin/mpathd"
lab_event info "removed; the conffile stays until purge: $(ls /etc/mpathd/mpathd.toml)"
lab_done
