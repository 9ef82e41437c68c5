//! The multipath target's status parser: never panics, and whatever it accepts prints
//! back (Display) as a status that parses to the same value and prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpathd::dm::{MultipathStatus, TargetLine};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(status) = text.parse::<MultipathStatus>() {
        let printed = status.to_string();
        let again: MultipathStatus = printed
            .parse()
            .unwrap_or_else(|e| panic!("printed status {printed:?} does not parse: {e}"));
        assert_eq!(again, status, "round trip of {printed:?}");
        assert_eq!(again.to_string(), printed, "second print of {printed:?}");
    }
    // A whole `dmsetup status` line: its params go through the same parser.
    if let Ok(line) = text.parse::<TargetLine>() {
        let printed = line.to_string();
        let again: TargetLine = printed
            .parse()
            .unwrap_or_else(|e| panic!("printed line {printed:?} does not parse: {e}"));
        assert_eq!(again, line, "round trip of {printed:?}");
        let _ = line.params.parse::<MultipathStatus>();
    }
});
