//! mpathd's TOML config parser: any text gives a config or errors (each with its line
//! and column), never a panic; the errors print. A config that loads also merges and
//! explains its settings for a few kinds of LUN without a panic, and what it explains
//! agrees with what it merges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpathd::config::{Config, PathIdent, format_explained};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz") {
        Ok(config) => {
            let _ = format!("{config:?}");
            for (vendor, product, tpgs) in [
                ("LIO-ORG", "FILEIO", true),
                ("NETAPP", "LUN", false),
                ("", "", false),
            ] {
                let id = PathIdent {
                    wwid: "1IET 00010001",
                    vendor,
                    product,
                    revision: "4.0",
                    tpgs,
                };
                let settings = config.settings_for(&id);
                let rows = config.explain(&id);
                let _ = format_explained(&rows);
                let row = |k: &str| {
                    rows.iter()
                        .find(|r| r.setting == k)
                        .map(|r| r.value.clone())
                };
                assert_eq!(
                    row("no_path_retry"),
                    Some(settings.no_path_retry.to_string())
                );
                assert_eq!(row("path_checker"), Some(settings.path_checker.to_string()));
            }
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
