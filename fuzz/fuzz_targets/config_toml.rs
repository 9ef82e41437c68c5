//! mpathd's TOML config parser: any text gives a config or errors (each with its line
//! and column), never a panic; the errors print.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpathd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz") {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
