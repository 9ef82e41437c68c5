//! multipath-tools' multipath.conf: the parser and the import into mpathd's TOML never
//! panic, and whenever the import succeeds, the TOML it writes is a config mpathd
//! accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpathd::config::{Config, multipath_conf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = multipath_conf::parse(text, "fuzz") {
        let _ = errors.to_string();
    }
    match multipath_conf::import(text, "fuzz") {
        Ok(import) => {
            for note in &import.notes {
                let _ = note.to_string();
            }
            if let Err(errors) = Config::from_toml_str(&import.config_toml, "fuzz-import") {
                panic!(
                    "the import of\n{text}\nwrote a config mpathd refuses:\n{}\n{errors}",
                    import.config_toml
                );
            }
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
