//! Parsing of the human units the config file uses: durations ("250ms", "10s") and sizes
//! ("16KiB", 1048576).

use std::time::Duration;

/// Parses a duration written as an integer followed by `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("expected a duration with a unit such as \"250ms\" or \"10s\", got {text:?}")
    })?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "expected a duration such as \"250ms\" or \"10s\", got {text:?}"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} is too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "unknown duration unit {unit:?} in {text:?}: expected ms, s, m, h or d"
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

/// Parses a byte size: a plain integer, or an integer with `B`, `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_size(value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::Integer(n) => Err(format!("expected a size of zero or more bytes, got {n}")),
        toml::Value::String(text) => parse_size_str(text),
        other => Err(format!(
            "expected a size such as 1048576 or \"1MiB\", got a {}",
            other.type_str()
        )),
    }
}

fn parse_size_str(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("expected a size such as \"16KiB\", got {text:?}"));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: expected B, KB, MB, GB, KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&toml::Value::Integer(42)), Ok(42));
        assert_eq!(parse_size(&toml::Value::String("16KiB".into())), Ok(16384));
        assert_eq!(
            parse_size(&toml::Value::String("1MB".into())),
            Ok(1_000_000)
        );
        assert_eq!(
            parse_size(&toml::Value::String("3 MiB".into())),
            Ok(3 << 20)
        );
        assert!(parse_size(&toml::Value::Integer(-1)).is_err());
        assert!(parse_size(&toml::Value::String("12 furlongs".into())).is_err());
        assert!(parse_size(&toml::Value::Boolean(true)).is_err());
    }
}
