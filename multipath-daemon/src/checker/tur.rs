//! `tur`: SCSI TEST UNIT READY through SG_IO, read as multipath-tools' tur checker reads
//! it. Cheap (no data moves), answered by the target itself, and the only checker that
//! sees ALUA standby (a path that is up but passive).
//!
//! [`decode_tur`] turns what the kernel hands back (SCSI status, host and driver bytes,
//! sense data) into a verdict; it is pure so it is tested with recorded byte patterns.

use std::{
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant},
};

use super::{CheckOutcome, Checker, CheckerKind, not_a_block_device, open_failed, open_node};

pub struct Tur;

/// UNIT ATTENTIONs queue up (power-on reset, then ALUA state changed, then LUN inventory
/// changed...) and each command clears one, so one retry is not always enough. Transient
/// host and driver errors are retried as well; all within the one timeout.
const MAX_ATTEMPTS: u32 = 4;

impl Checker for Tur {
    fn kind(&self) -> CheckerKind {
        CheckerKind::Tur
    }

    fn check(&self, node: &Path, timeout: Duration) -> CheckOutcome {
        if let Some(out) = not_a_block_device(node) {
            return out;
        }
        let f = match open_node(node, 0) {
            Ok(f) => f,
            Err(e) => return open_failed(node, &e),
        };
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return CheckOutcome::Timeout;
            }
            let r = match test_unit_ready(&f, left) {
                Ok(r) => r,
                // ENOTTY: the driver has no SG_IO (loop, nvme, virtio-blk without SCSI);
                // EINVAL: it has the ioctl but not for this device.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                    return CheckOutcome::Unsupported {
                        why: format!(
                            "TUR: {} takes no SCSI commands (SG_IO: {e}); use the directio checker",
                            node.display()
                        ),
                    };
                }
                Err(e) => {
                    return CheckOutcome::Down {
                        why: format!("TUR: SG_IO on {}: {e}", node.display()),
                        ambiguous: false,
                    };
                }
            };
            match decode_tur(r.status, r.host, r.driver, &r.sense) {
                TurVerdict::Up => return CheckOutcome::Up,
                TurVerdict::Ghost => return CheckOutcome::Ghost,
                TurVerdict::Transitioning => return CheckOutcome::Pending,
                TurVerdict::Timeout => return CheckOutcome::Timeout,
                TurVerdict::Down(why) => {
                    return CheckOutcome::Down {
                        why,
                        ambiguous: false,
                    };
                }
                TurVerdict::DeviceDown(why) => {
                    return CheckOutcome::Down {
                        why,
                        ambiguous: true,
                    };
                }
                TurVerdict::Retry(why) if attempt >= MAX_ATTEMPTS => {
                    return CheckOutcome::Down {
                        why: format!("{why}, {attempt} times in a row"),
                        ambiguous: false,
                    };
                }
                TurVerdict::Retry(_) => {}
            }
        }
    }
}

/// What the kernel handed back for one TEST UNIT READY.
struct TurReply {
    status: u8,
    host: u16,
    driver: u16,
    sense: Vec<u8>,
}

/// `struct sg_io_hdr` from <scsi/sg.h>.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *const libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);

const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;

/// One TEST UNIT READY; the kernel aborts it after `timeout`.
fn test_unit_ready(f: &std::fs::File, timeout: Duration) -> std::io::Result<TurReply> {
    let cdb = [0u8; 6]; // opcode 0x00 TEST UNIT READY
    let mut sense = [0u8; 32];
    let mut h = SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: SG_DXFER_NONE,
        cmd_len: cdb.len() as u8,
        mx_sb_len: sense.len() as u8,
        iovec_count: 0,
        dxfer_len: 0,
        dxferp: std::ptr::null_mut(),
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: the header points at cdb and sense, which outlive the call; no data moves.
    if unsafe { libc::ioctl(f.as_raw_fd(), SG_IO as _, &mut h) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = (h.sb_len_wr as usize).min(sense.len());
    Ok(TurReply {
        status: h.status,
        host: h.host_status,
        driver: h.driver_status,
        sense: sense[..n].to_vec(),
    })
}

/// The meaning of one TEST UNIT READY reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TurVerdict {
    Up,
    /// ALUA standby or unavailable.
    Ghost,
    /// ALUA state transition: no verdict yet (multipath-tools says "pending" here too).
    Transitioning,
    /// The command timed out in the kernel.
    Timeout,
    /// The transport or the target port is gone (a host byte): the path is down.
    Down(String),
    /// The LUN itself answered with an error (sense, status): it may say the same on
    /// every path, so this alone does not show the path is at fault.
    DeviceDown(String),
    /// Worth asking again at once (UNIT ATTENTION, a transient host or driver error);
    /// the reason is what to report if the retries run out.
    Retry(String),
}

// SCSI status (SAM), with the vendor bits masked off as multipath-tools does.
const STATUS_MASK: u8 = 0x7e;
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const CONDITION_MET: u8 = 0x04;
const BUSY: u8 = 0x08;
const RESERVATION_CONFLICT: u8 = 0x18;
const TASK_SET_FULL: u8 = 0x28;

// Host bytes (include/scsi/scsi_status.h).
const DID_OK: u16 = 0x00;
const DID_NO_CONNECT: u16 = 0x01;
const DID_TIME_OUT: u16 = 0x03;
const DID_BAD_TARGET: u16 = 0x04;
const DID_ABORT: u16 = 0x05;
const DID_TRANSPORT_FAILFAST: u16 = 0x0f;

const HOST_BYTES: [&str; 21] = [
    "DID_OK",
    "DID_NO_CONNECT",
    "DID_BUS_BUSY",
    "DID_TIME_OUT",
    "DID_BAD_TARGET",
    "DID_ABORT",
    "DID_PARITY",
    "DID_ERROR",
    "DID_RESET",
    "DID_BAD_INTR",
    "DID_PASSTHROUGH",
    "DID_SOFT_ERROR",
    "DID_IMM_RETRY",
    "DID_REQUEUE",
    "DID_TRANSPORT_DISRUPTED",
    "DID_TRANSPORT_FAILFAST",
    "DID_TARGET_FAILURE",
    "DID_NEXUS_FAILURE",
    "DID_ALLOC_FAILURE",
    "DID_MEDIUM_ERROR",
    "DID_TRANSPORT_MARGINAL",
];

// Driver bytes (low nibble of driver_status).
const DRIVER_SENSE: u16 = 0x08;
const DRIVER_TIMEOUT: u16 = 0x06;
const DRIVER_BYTES: [&str; 9] = [
    "DRIVER_OK",
    "DRIVER_BUSY",
    "DRIVER_SOFT",
    "DRIVER_MEDIA",
    "DRIVER_ERROR",
    "DRIVER_INVALID",
    "DRIVER_TIMEOUT",
    "DRIVER_HARD",
    "DRIVER_SENSE",
];

const SENSE_KEYS: [&str; 16] = [
    "NO SENSE",
    "RECOVERED ERROR",
    "NOT READY",
    "MEDIUM ERROR",
    "HARDWARE ERROR",
    "ILLEGAL REQUEST",
    "UNIT ATTENTION",
    "DATA PROTECT",
    "BLANK CHECK",
    "VENDOR SPECIFIC",
    "COPY ABORTED",
    "ABORTED COMMAND",
    "sense key 0xc",
    "VOLUME OVERFLOW",
    "MISCOMPARE",
    "COMPLETED",
];

const NOT_READY: u8 = 0x2;
const UNIT_ATTENTION: u8 = 0x6;
const RECOVERED_ERROR: u8 = 0x1;

/// The additional sense codes a TUR on a multipath LUN meets most, by (ASC, ASCQ) (SPC-4).
fn asc_text(asc: u8, ascq: u8) -> Option<&'static str> {
    Some(match (asc, ascq) {
        (0x04, 0x00) => "logical unit not ready, cause not reportable",
        (0x04, 0x01) => "logical unit is in process of becoming ready",
        (0x04, 0x02) => "logical unit not ready, initializing command required",
        (0x04, 0x03) => "logical unit not ready, manual intervention required",
        (0x04, 0x0a) => "asymmetric access state transition",
        (0x04, 0x0b) => "target port in standby state",
        (0x04, 0x0c) => "target port in unavailable state",
        (0x25, 0x00) => "logical unit not supported",
        (0x29, 0x00) => "power on, reset, or bus device reset occurred",
        (0x2a, 0x06) => "asymmetric access state changed",
        (0x3a, 0x00) => "medium not present",
        (0x3f, 0x03) => "inquiry data has changed",
        (0x3f, 0x0e) => "reported luns data has changed",
        _ => return None,
    })
}

/// (sense key, ASC, ASCQ) from fixed (0x70/0x71) or descriptor (0x72/0x73) sense data.
pub(crate) fn sense_key(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        _ => None,
    }
}

fn describe_sense(key: u8, asc: u8, ascq: u8) -> String {
    let what = asc_text(asc, ascq)
        .map(|t| format!(": {t}"))
        .unwrap_or_default();
    format!(
        "TUR: {} (ASC/ASCQ {asc:02x}/{ascq:02x}{what})",
        SENSE_KEYS[key as usize & 0xf]
    )
}

/// Reads one TEST UNIT READY reply: SCSI `status`, `host` and `driver` bytes as SG_IO
/// returns them, and the sense data the kernel wrote (`sb_len_wr` bytes).
pub(crate) fn decode_tur(status: u8, host: u16, driver: u16, sense: &[u8]) -> TurVerdict {
    let status = status & STATUS_MASK;
    // A SCSI-3 persistent reservation held by another host: the path itself works.
    if status == RESERVATION_CONFLICT {
        return TurVerdict::Up;
    }
    if host == DID_TIME_OUT || driver & 0x0f == DRIVER_TIMEOUT {
        return TurVerdict::Timeout;
    }
    if host != DID_OK {
        let why = format!(
            "TUR: host byte {} (0x{host:02x})",
            HOST_BYTES.get(host as usize).unwrap_or(&"unknown")
        );
        // These say the target or the transport is gone; anything else may pass.
        return match host {
            DID_NO_CONNECT | DID_BAD_TARGET | DID_ABORT | DID_TRANSPORT_FAILFAST => {
                TurVerdict::Down(why)
            }
            _ => TurVerdict::Retry(why),
        };
    }
    let driver_byte = driver & 0x0f;
    if driver_byte != 0 && driver_byte != DRIVER_SENSE {
        return TurVerdict::Retry(format!(
            "TUR: driver byte {} (0x{driver:02x})",
            DRIVER_BYTES[driver_byte as usize]
        ));
    }
    match status {
        GOOD | CONDITION_MET if sense.is_empty() => TurVerdict::Up,
        GOOD | CONDITION_MET | CHECK_CONDITION => {
            let Some((key, asc, ascq)) = sense_key(sense) else {
                return TurVerdict::DeviceDown(format!(
                    "TUR: CHECK CONDITION with sense data in no known format ({} bytes, first 0x{:02x})",
                    sense.len(),
                    sense.first().copied().unwrap_or(0)
                ));
            };
            match (key, asc, ascq) {
                // Completed, after the device recovered from something on its own.
                (RECOVERED_ERROR, _, _) => TurVerdict::Up,
                (UNIT_ATTENTION, _, _) => TurVerdict::Retry(describe_sense(key, asc, ascq)),
                (NOT_READY, 0x04, 0x0b) | (NOT_READY, 0x04, 0x0c) => TurVerdict::Ghost,
                (NOT_READY, 0x04, 0x0a) => TurVerdict::Transitioning,
                // Sense that reports nothing, beside a good status.
                (0, _, _) if status != CHECK_CONDITION => TurVerdict::Up,
                _ => TurVerdict::DeviceDown(describe_sense(key, asc, ascq)),
            }
        }
        BUSY | TASK_SET_FULL => TurVerdict::Retry(format!(
            "TUR: SCSI status {} (0x{status:02x})",
            if status == BUSY {
                "BUSY"
            } else {
                "TASK SET FULL"
            }
        )),
        _ => TurVerdict::DeviceDown(format!("TUR: SCSI status 0x{status:02x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed-format sense data (SPC-4 4.5.3), 18 bytes as most targets send it.
    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10; // additional sense length
        s[12] = asc;
        s[13] = ascq;
        s
    }

    /// Descriptor-format sense data (SPC-4 4.5.2) with no descriptors.
    fn descriptor(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key, asc, ascq, 0, 0, 0, 0]
    }

    const CC: u8 = CHECK_CONDITION;

    /// Recorded in the lab (tests/lab/scenarios/checker.sh, `sg_turs -vvv`): LIO's sense
    /// for TEST UNIT READY with its port group in ALUA standby, status CHECK CONDITION.
    const LIO_STANDBY: [u8; 18] = [
        0x70, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0b, 0x00,
        0x00, 0x00, 0x00,
    ];
    /// The same in ALUA unavailable.
    const LIO_UNAVAILABLE: [u8; 18] = [
        0x70, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0c, 0x00,
        0x00, 0x00, 0x00,
    ];
    /// The same in ALUA transitioning.
    const LIO_TRANSITIONING: [u8; 18] = [
        0x70, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0a, 0x00,
        0x00, 0x00, 0x00,
    ];

    #[test]
    fn good_is_up() {
        assert_eq!(decode_tur(0, 0, 0, &[]), TurVerdict::Up);
    }

    #[test]
    fn reservation_conflict_is_up() {
        // As multipath-tools: another host's reservation, not a path problem.
        assert_eq!(decode_tur(0x18, 0, 0, &[]), TurVerdict::Up);
        // Vendor bits of the status byte are ignored.
        assert_eq!(decode_tur(0x19, 0, 0, &[]), TurVerdict::Up);
    }

    #[test]
    fn unit_attention_asks_again() {
        // LIO after a login: UNIT ATTENTION, power on / reset occurred.
        let v = decode_tur(CC, 0, DRIVER_SENSE, &fixed(0x6, 0x29, 0x00));
        assert_eq!(
            v,
            TurVerdict::Retry(
                "TUR: UNIT ATTENTION (ASC/ASCQ 29/00: power on, reset, or bus device reset occurred)"
                    .into()
            )
        );
        // ALUA state changed, in descriptor format.
        assert!(matches!(
            decode_tur(CC, 0, DRIVER_SENSE, &descriptor(0x6, 0x2a, 0x06)),
            TurVerdict::Retry(_)
        ));
    }

    #[test]
    fn alua_standby_and_unavailable_are_ghost_and_transition_is_no_verdict() {
        for sense in [LIO_STANDBY.to_vec(), descriptor(0x2, 0x04, 0x0b)] {
            assert_eq!(decode_tur(CC, 0, DRIVER_SENSE, &sense), TurVerdict::Ghost);
        }
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &LIO_UNAVAILABLE),
            TurVerdict::Ghost
        );
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &LIO_TRANSITIONING),
            TurVerdict::Transitioning
        );
    }

    #[test]
    fn other_not_ready_and_unmapped_luns_are_down_with_the_sense_spelled_out() {
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &fixed(0x2, 0x04, 0x03)),
            TurVerdict::DeviceDown(
                "TUR: NOT READY (ASC/ASCQ 04/03: logical unit not ready, manual intervention required)"
                    .into()
            )
        );
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &descriptor(0x5, 0x25, 0x00)),
            TurVerdict::DeviceDown(
                "TUR: ILLEGAL REQUEST (ASC/ASCQ 25/00: logical unit not supported)".into()
            )
        );
        // An ASC/ASCQ without a text here still names its numbers.
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &fixed(0x4, 0x44, 0x00)),
            TurVerdict::DeviceDown("TUR: HARDWARE ERROR (ASC/ASCQ 44/00)".into())
        );
    }

    #[test]
    fn sense_in_no_known_format_is_down() {
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &[0x70, 0, 6]),
            TurVerdict::DeviceDown(
                "TUR: CHECK CONDITION with sense data in no known format (3 bytes, first 0x70)"
                    .into()
            )
        );
        assert!(matches!(
            decode_tur(CC, 0, 0, &[]),
            TurVerdict::DeviceDown(_)
        ));
    }

    #[test]
    fn recovered_error_is_up() {
        assert_eq!(
            decode_tur(CC, 0, DRIVER_SENSE, &fixed(0x1, 0x5d, 0x00)),
            TurVerdict::Up
        );
    }

    #[test]
    fn a_dead_transport_is_down_and_a_disrupted_one_is_retried() {
        // What an iSCSI disk answers once its session failed and recovery timed out.
        assert_eq!(
            decode_tur(0, DID_TRANSPORT_FAILFAST, 0, &[]),
            TurVerdict::Down("TUR: host byte DID_TRANSPORT_FAILFAST (0x0f)".into())
        );
        assert_eq!(
            decode_tur(0, DID_NO_CONNECT, 0, &[]),
            TurVerdict::Down("TUR: host byte DID_NO_CONNECT (0x01)".into())
        );
        assert_eq!(
            decode_tur(0, 0x0e, 0, &[]),
            TurVerdict::Retry("TUR: host byte DID_TRANSPORT_DISRUPTED (0x0e)".into())
        );
        assert_eq!(
            decode_tur(0, 0x42, 0, &[]),
            TurVerdict::Retry("TUR: host byte unknown (0x42)".into())
        );
    }

    #[test]
    fn a_command_the_kernel_timed_out_is_timeout() {
        assert_eq!(decode_tur(0, DID_TIME_OUT, 0, &[]), TurVerdict::Timeout);
        assert_eq!(decode_tur(0, 0, DRIVER_TIMEOUT, &[]), TurVerdict::Timeout);
    }

    #[test]
    fn busy_targets_and_driver_errors_are_retried() {
        assert_eq!(
            decode_tur(BUSY, 0, 0, &[]),
            TurVerdict::Retry("TUR: SCSI status BUSY (0x08)".into())
        );
        assert!(matches!(
            decode_tur(TASK_SET_FULL, 0, 0, &[]),
            TurVerdict::Retry(_)
        ));
        assert_eq!(
            decode_tur(0, 0, 0x04, &[]),
            TurVerdict::Retry("TUR: driver byte DRIVER_ERROR (0x04)".into())
        );
        // An unknown status is down, by number.
        assert_eq!(
            decode_tur(0x40, 0, 0, &[]),
            TurVerdict::DeviceDown("TUR: SCSI status 0x40".into())
        );
    }

    #[test]
    fn sense_formats() {
        assert_eq!(sense_key(&LIO_STANDBY), Some((2, 0x04, 0x0b)));
        assert_eq!(sense_key(&fixed(0x6, 0x29, 0x01)), Some((6, 0x29, 0x01)));
        // Deferred errors (0x71, 0x73) carry the same fields.
        assert_eq!(sense_key(&[0x73, 0x02, 0x04, 0x0b]), Some((2, 0x04, 0x0b)));
        // The valid bit (0x80) of fixed sense does not change the format.
        let mut s = fixed(0x2, 0x3a, 0x00);
        s[0] = 0xf0;
        assert_eq!(sense_key(&s), Some((2, 0x3a, 0x00)));
        assert_eq!(sense_key(&[]), None);
        assert_eq!(sense_key(&[0x7f, 0, 0, 0]), None);
    }
}
