//! The multipath target's table parser: never panics, and whatever it accepts prints
//! back (Display) as a table that parses to the same value and prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpathd::dm::{MultipathTable, TargetLine};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(table) = text.parse::<MultipathTable>() {
        let printed = table.to_string();
        let again: MultipathTable = printed
            .parse()
            .unwrap_or_else(|e| panic!("printed table {printed:?} does not parse: {e}"));
        assert_eq!(again, table, "round trip of {printed:?}");
        assert_eq!(again.to_string(), printed, "second print of {printed:?}");
    }
    // A whole `dmsetup table` line: its params go through the same parser.
    if let Ok(line) = text.parse::<TargetLine>() {
        let printed = line.to_string();
        let again: TargetLine = printed
            .parse()
            .unwrap_or_else(|e| panic!("printed line {printed:?} does not parse: {e}"));
        assert_eq!(again, line, "round trip of {printed:?}");
        let _ = line.params.parse::<MultipathTable>();
    }
});
