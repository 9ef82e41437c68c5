# lab: mpathd scan: both paths grouped under one WWID, as scsi_id -g -u names it, with their iSCSI sessions
# lab-timeout: 200
. "$LAB_LIB"
lab_setup
"$MPATHD" scan
for i in 1 2; do echo "scsi_id ${LAB_DEV[i]}: $(/lib/udev/scsi_id -g -u /dev/${LAB_DEV[i]})"; done
"$MPATHD" scan --json | python3 -c "
import json,sys,subprocess
luns=json.load(sys.stdin); assert len(luns)==1, luns; l=luns[0]
assert len(l['paths'])==2, l
for p in l['paths']:
    sid=subprocess.run(['/lib/udev/scsi_id','-g','-u','/dev/'+p['name']],capture_output=True,text=True).stdout.strip()
    assert sid==l['wwid'], (sid, l['wwid'])
    assert p['iscsi']['session_state']=='LOGGED_IN' and p['iscsi']['conn'], p
print('scan matches scsi_id and iSCSI state')
" || lab_fail "mpathd scan disagrees with scsi_id"
lab_done
