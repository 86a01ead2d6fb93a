//! The interregion relay's config loading from TOML text (the file layer of
//! `RelayConfig::load`, without the environment): never a panic.
#![no_main]

use figment::providers::{Format, Toml};
use figment::Figment;
use interregion_relay::RelayConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = RelayConfig::from_figment(Figment::from(Toml::string(text))) {
        assert!(config.validate().is_ok());
        let _ = config.options();
    }
});
