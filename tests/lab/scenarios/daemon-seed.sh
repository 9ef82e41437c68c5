# lab: mpathd builds the seed's map (alias sanvol1 by WWID) with udevd running; blacklist, reconfigure, show topology, a filesystem, admin fail/reinstate/switchgroup, remove refused while mounted
# lab-timeout: 300
. "$LAB_LIB"
. "${LAB_LIB%/*}/daemon.sh"
LAB_MAP=sanvol1

lab_udev_start
lab_setup
W=$(lab_wwid)

lab_step "a blacklisted path is left alone"
# failover (two groups, for switchgroup below) and no queueing in [overrides]: the
# built-in LIO entry (group_by_prio, no_path_retry 12) beats [defaults].
lab_mpathd_config "find_multipaths = \"strict\"
[overrides]
path_grouping_policy = \"failover\"
no_path_retry = \"fail\"
[blacklist]
devnode = [\"^${LAB_DEV[2]}\$\"]"
lab_mpathd_start
lab_wait_map_paths sanvol1 1 10
[ "$(lab_map_paths sanvol1)" = "${LAB_DEVT[1]}" ] || lab_fail "map has $(lab_map_paths sanvol1), expected only ${LAB_DEVT[1]}"
lab_mpathd show paths | tee "$LAB_OUT/paths-blacklist.txt"
lab_mpathd show paths --json | python3 -c "
import json,sys
paths=json.load(sys.stdin)
p={x['name']:x for x in paths}
b=p['${LAB_DEV[2]}']
assert b['map'] is None and 'blacklisted' in (b['note'] or ''), b
assert p['${LAB_DEV[1]}']['map']=='sanvol1', p
print('blacklisted ${LAB_DEV[2]} is in no map:', b['note'])
" || lab_fail "show paths does not show the blacklisted path"

lab_step "reconfigure without the blacklist: the second path joins"
lab_mpathd_config 'find_multipaths = "strict"
[overrides]
path_grouping_policy = "failover"
no_path_retry = "fail"'
lab_mpathd reconfigure
lab_wait_map_paths sanvol1 2 10
lab_expect_log "reloaded map.*paths added: ${LAB_DEVT[2]}"

lab_step "show topology"
# After a reload no group is in use until IO picks one (dm's status says E for every
# group), and the reload's own status poll comes before udev's blkid reads the map: read
# it once, and mpathd's next poll (every second) shows the group that took the read.
lab_wait 10 "/dev/mapper/sanvol1" test -b /dev/mapper/sanvol1
lab_do dd if=/dev/mapper/sanvol1 of=/dev/null bs=4096 count=1 iflag=direct
lab__group_active() { lab_mpathd show topology | grep -q "status=active"; }
lab_wait 10 "mpathd to show the group that took the read as active" lab__group_active
lab_mpathd show topology | tee "$LAB_OUT/topology.txt"
lab_mpathd show topology --json >"$LAB_OUT/topology.json"
LAB_OUT=$LAB_OUT python3 - "$W" "${LAB_DEV[1]}" "${LAB_DEV[2]}" "${LAB_DEVT[1]}" "${LAB_DEVT[2]}" <<'PY' || lab_fail "show topology is wrong"
import json, re, sys
w, d1, d2, t1, t2 = sys.argv[1:]
text = open(__import__("os").environ["LAB_OUT"] + "/topology.txt").read()
lines = text.splitlines()
assert re.match(r"sanvol1 \(%s\) dm-\d+ LIO-ORG,FILEIO$" % w, lines[0]), lines[0]
assert lines[1].startswith("size=256M features='0' hwhandler="), lines[1]
for d, t in ((d1, t1), (d2, t2)):
    assert any(re.search(r"- \d+:\d+:\d+:\d+ %s %s active ready running$" % (d, t), l) for l in lines), (d, text)
topo = json.load(open(__import__("os").environ["LAB_OUT"] + "/topology.json"))
m = topo["maps"][0]
assert m["name"] == "sanvol1" and m["wwid"] == w, m
assert sorted(p["name"] for g in m["groups"] for p in g["paths"]) == sorted([d1, d2])
assert m["groups"][0]["status"] == "active"
print("show topology: sanvol1 with both paths, as multipath -ll prints it")
PY
lab_mpathd show maps

lab_step "a filesystem on /dev/mapper/sanvol1"
lab_wait 10 "/dev/mapper/sanvol1" test -b /dev/mapper/sanvol1
lab_do mkfs.ext4 -q -F /dev/mapper/sanvol1
mkdir -p /tmp/mnt/sanvol1
lab_do mount /dev/mapper/sanvol1 /tmp/mnt/sanvol1
head -c 8M /dev/urandom >/tmp/mnt/sanvol1/data
SUM=$(sha256sum </tmp/mnt/sanvol1/data)
sync
lab_event info "ext4 mounted, 8 MiB written"

lab_step "admin fail and reinstate"
lab_mpathd fail "${LAB_DEV[1]}"
lab_expect_dm 1 F
sleep 2.5 # the checker runs every second: it must not undo an admin's fail
lab_expect_dm 1 F
lab_mpathd show topology | grep -E "${LAB_DEV[1]} ${LAB_DEVT[1]} failed admin-failed running" || lab_fail "show topology does not show the admin fail"
head -c 4M /dev/urandom >/tmp/mnt/sanvol1/more && sync || lab_fail "writing with one path failed"
lab_mpathd reinstate "${LAB_DEV[1]}"
lab_expect_dm 1 A
lab_mpathd show topology | grep -E "${LAB_DEV[1]} ${LAB_DEVT[1]} active ready running" || lab_fail "show topology does not show the reinstate"

lab_step "switchgroup"
lab_mpathd switchgroup sanvol1 2
dmsetup status sanvol1
lab_mpathd switchgroup sanvol1 9 && lab_fail "switchgroup to a group that does not exist was accepted"
dd if=/tmp/mnt/sanvol1/data of=/dev/null bs=1M iflag=direct status=none || lab_fail "reading after switchgroup"
# The switch took: group 2 is the one I/O goes to, and it is active after the reads.
st=$(dmsetup status sanvol1)
python3 -c '
import sys
w = sys.argv[1].split()[3:]
i = 0; nf = int(w[i]); i += 1 + nf
nh = int(w[i]); i += 1 + nh
ng, nxt = int(w[i]), int(w[i + 1]); i += 2
states = []
for _ in range(ng):
    states.append(w[i]); i += 1
    ns = int(w[i]); i += 1 + ns
    np_, na = int(w[i]), int(w[i + 1]); i += 2 + np_ * (3 + na)
sys.exit(0 if nxt == 2 and states[1] == "A" else 1)' "$st" || lab_fail "switchgroup 2 did not switch: $st"

lab_step "remove is refused while mounted"
lab_mpathd remove sanvol1 && lab_fail "a mounted map was removed"
lab_do umount /tmp/mnt/sanvol1
lab_do mount /dev/mapper/sanvol1 /tmp/mnt/sanvol1
[ "$(sha256sum </tmp/mnt/sanvol1/data)" = "$SUM" ] || lab_fail "data changed across fail/reinstate/switchgroup"
lab_do umount /tmp/mnt/sanvol1
lab_mpathd_stop
[ -b /dev/mapper/sanvol1 ] || lab_fail "stopping the daemon took the map down"
lab_done
