//! The region node's config loading from TOML text (the file layer of `NodeConfig::load`,
//! without the environment): parse, extract and validate must never panic.
#![no_main]

use figment::providers::{Format, Toml};
use figment::Figment;
use libfuzzer_sys::fuzz_target;
use region_node::NodeConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = NodeConfig::from_figment(Figment::from(Toml::string(text))) {
        // What validated once validates again (nothing depends on hidden state).
        assert!(config.validate().is_ok());
    }
});
