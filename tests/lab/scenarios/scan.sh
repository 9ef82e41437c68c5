# lab: mpathd scan: both paths under one WWID, as scsi_id and udev (running in the guest) name it, with their iSCSI sessions
# lab-timeout: 200
. "$LAB_LIB"
lab_udev_start
lab_setup
lab_do udevadm settle --timeout=30
"$MPATHD" scan
for i in 1 2; do
	echo "scsi_id ${LAB_DEV[i]}: $(/lib/udev/scsi_id -g -u /dev/${LAB_DEV[i]})"
	echo "udev ${LAB_DEV[i]}: $(udevadm info --query=property /dev/${LAB_DEV[i]} | grep '^ID_SERIAL=')"
done
"$MPATHD" scan --json | python3 -c "
import json,sys,subprocess
luns=json.load(sys.stdin); assert len(luns)==1, luns; l=luns[0]
assert len(l['paths'])==2, l
for p in l['paths']:
    sid=subprocess.run(['/lib/udev/scsi_id','-g','-u','/dev/'+p['name']],capture_output=True,text=True).stdout.strip()
    assert sid==l['wwid'], (sid, l['wwid'])
    props=dict(x.split('=',1) for x in subprocess.run(['udevadm','info','--query=property','/dev/'+p['name']],capture_output=True,text=True).stdout.split() if '=' in x)
    assert props.get('ID_SERIAL')==l['wwid'], (props.get('ID_SERIAL'), l['wwid'])
    assert p['iscsi']['session_state']=='LOGGED_IN' and p['iscsi']['conn'], p
print('scan matches scsi_id, udev ID_SERIAL and the iSCSI sessions')
" || lab_fail "mpathd scan disagrees with scsi_id"
lab_done
