//! The region catalogue parser (`regions/*.toml`): `Region::parse` must never panic. The path
//! is made to match the file's `name` when it has one, so the fuzzer gets past the file-name
//! check to the checks behind it.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use meridian_catalogue::Region;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let stem = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|table| table.get("name")?.as_str().map(str::to_owned))
        .filter(|name| !name.is_empty() && !name.contains(['/', '\0', '.']))
        .unwrap_or_else(|| "fuzz".to_owned());
    let path = PathBuf::from(format!("regions/{stem}.toml"));
    if let Ok(region) = Region::parse(text, &path) {
        assert_eq!(region.name, stem);
        assert!(region.capacity >= 1);
        assert!(!region.ingress.addresses.is_empty());
        assert!(region.ingress.ws_url.bytes().all(|b| b.is_ascii_graphic()));
    }
});
