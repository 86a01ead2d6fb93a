//! The geo-router's config loading from TOML text: defaults, then the file, as
//! `RouterConfig::load` layers them (without the environment); never a panic. An accepted
//! config also yields its zone and name-server names.
#![no_main]

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use geo_router::config::RouterConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let figment =
        Figment::from(Serialized::defaults(RouterConfig::default())).merge(Toml::string(text));
    if let Ok(config) = RouterConfig::from_figment(figment) {
        assert!(config.validate().is_ok());
        let _ = config.zone_name();
        let _ = config.name_server_names();
        let _ = config.validate_against(&["eu-central", "us-east"]);
    }
});
