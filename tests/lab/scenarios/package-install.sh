# lab: the Debian package (cargo xtask package) installs with dpkg in the guest; its unit verifies; the installed daemon starts as the unit says, makes the map and serves metrics
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
# shellcheck disable=SC2086 # the unit's command line, word-split as systemd does here
$start >>"$LAB_OUT/mpathd.log" 2>&1 &
LAB_MPATHD_PID=$!
lab__ready() {
	kill -0 "$LAB_MPATHD_PID" 2>/dev/null || lab_fail "mpathd exited: $(tail -3 "$LAB_OUT/mpathd.log")"
	grep -q 'ready maps=1' "$LAB_OUT/mpathd.log"
}
lab__exited() { ! kill -0 "$1" 2>/dev/null; }
lab_wait 60 "the installed mpathd's ready line with one map" lab__ready
lab_event mpathd "$(grep 'ready maps=' "$LAB_OUT/mpathd.log" | tail -1 | sed 's/.*ready/ready/')"
lab_wait 10 "/dev/mapper/sanvol1" test -b /dev/mapper/sanvol1
/usr/sbin/mpathd --socket "$LAB_SOCK" show maps | tee "$LAB_OUT/show-maps.txt" | grep -q sanvol1 ||
	lab_fail "mpathd show maps does not list sanvol1"
lab_wait 20 "metrics on 127.0.0.1:9977" curl -sf http://127.0.0.1:9977/metrics -o "$LAB_OUT/metrics.txt"
grep -q '^mpathd_map_usable_paths{map="sanvol1"' "$LAB_OUT/metrics.txt" || lab_fail "the metrics do not show map sanvol1"
grep -q "^mpathd_build_info{" "$LAB_OUT/metrics.txt" || lab_fail "no mpathd_build_info"
lab_event info "$(grep '^mpathd_build_info' "$LAB_OUT/metrics.txt")"
kill -TERM "$LAB_MPATHD_PID"
lab_wait 20 "mpathd to exit on SIGTERM" lab__exited "$LAB_MPATHD_PID"
LAB_MPATHD_PID=
lab_event mpathd "stopped"
lab_do dpkg -r mpathd
[ ! -e /usr/sbin/mpathd ] || lab_fail "dpkg -r left /usr/sbin/mpathd"
lab_event info "removed; the conffile stays until purge: $(ls /etc/mpathd/mpathd.toml)"
lab_done
