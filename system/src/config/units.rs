//! Durations like `500ms` and sizes like `10MiB`: parsed exactly, printed so
//! that they parse back to the same value.

use std::time::Duration;

/// Duration units, largest first, with their length in milliseconds.
const DURATION_UNITS: [(&str, u64); 4] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Size units with their length in bytes; binary units are printed, decimal ones accepted.
const SIZE_UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses a whole number followed by one unit. Returns a message on failure.
fn parse_with_units(
    text: &str,
    units: &[(&str, u64)],
    what: &str,
    example: &str,
) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let names = units.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if digits.is_empty() {
        return Err(format!(
            "invalid {what} `{text}`: expected a whole number and a unit ({names}), like `{example}`"
        ));
    }
    let Some((_, scale)) = units.iter().find(|(n, _)| *n == unit) else {
        let hint = if unit.is_empty() {
            "missing unit".to_owned()
        } else {
            format!("unknown unit `{unit}`")
        };
        return Err(format!(
            "invalid {what} `{text}`: {hint}; expected one of {names}, like `{example}`"
        ));
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(*scale))
        .ok_or_else(|| format!("{what} `{text}` is too large"))
}

/// Parses `500ms`, `20s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_with_units(text, &DURATION_UNITS, "duration", "500ms").map(Duration::from_millis)
}

/// Parses `512B`, `64KiB`, `10MiB`, `1GB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_with_units(text, &SIZE_UNITS, "size", "10MiB")
}

/// Prints a duration in the largest unit that divides it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    DURATION_UNITS
        .iter()
        .find(|(_, scale)| ms != 0 && ms.is_multiple_of(*scale))
        .map_or_else(
            || format!("{ms}ms"),
            |(unit, scale)| format!("{}{unit}", ms / scale),
        )
}

/// Prints a size in the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    SIZE_UNITS
        .iter()
        .filter(|(unit, _)| unit.ends_with("iB") || *unit == "B")
        .find(|(_, scale)| bytes != 0 && bytes.is_multiple_of(*scale))
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, scale)| format!("{}{unit}", bytes / scale),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, ms, printed) in [
            ("500ms", 500, "500ms"),
            ("20s", 20_000, "20s"),
            ("90s", 90_000, "90s"),
            ("120s", 120_000, "2m"),
            ("1h", 3_600_000, "1h"),
            ("0s", 0, "0ms"),
        ] {
            let d = parse_duration(text).expect(text);
            assert_eq!(d, Duration::from_millis(ms), "{text}");
            assert_eq!(format_duration(d), printed, "{text}");
            assert_eq!(parse_duration(printed), Ok(d), "{printed}");
        }
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("20").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("1.5s")
                .unwrap_err()
                .contains("unknown unit `.5s`")
        );
        assert!(
            parse_duration("fast")
                .unwrap_err()
                .contains("expected a whole number")
        );
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_parse_and_print_back() {
        for (text, bytes, printed) in [
            ("10MiB", 10 << 20, "10MiB"),
            ("1KB", 1000, "1000B"),
            ("2048KiB", 2 << 20, "2MiB"),
            ("7B", 7, "7B"),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
            assert_eq!(format_size(bytes), printed, "{text}");
        }
        assert!(parse_size("10 MiB").unwrap_err().contains("unknown unit"));
        assert!(
            parse_size("10mb")
                .unwrap_err()
                .contains("unknown unit `mb`")
        );
    }
}
