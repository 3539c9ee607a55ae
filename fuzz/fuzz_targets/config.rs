//! The config loader: any text gives a config or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = lb::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        // Every error names where it is.
        assert!(!errors.to_string().is_empty());
    }
});
