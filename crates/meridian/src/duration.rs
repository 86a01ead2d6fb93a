//! The CLI's durations (`--ttl`, `--duration`, `--relay-grace`, …), parsed by `humantime`.

use std::time::Duration;

/// The units the CLI documents; `humantime` knows more (days, weeks, …), which the CLI's
/// flags do not take.
const UNITS: [&str; 4] = ["ms", "s", "m", "h"];

/// Parses `500ms`, `30s`, `2m`, `1h`, a compound such as `1m30s`, or a plain number of
/// seconds (`90`, `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let hint = || format!("{text:?} is not a duration; write e.g. 500ms, 30s, 2m or 1h");
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = text.parse().map_err(|_| hint())?;
        return Duration::try_from_secs_f64(secs).map_err(|_| hint());
    }
    if let Some(unit) = text
        .split(|c: char| c.is_ascii_digit() || c.is_whitespace())
        .find(|unit| !unit.is_empty() && !UNITS.contains(unit))
    {
        return Err(format!(
            "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
        ));
    }
    humantime::parse_duration(text).map_err(|e| format!("{}: {e}", hint()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
