//! `NMState.spec.selfSignConfiguration`: how long the webhook's CA and serving certificate
//! live, and how long each overlaps its successor. Go duration strings, as upstream.

use std::time::Duration;

pub const DEFAULT_CA_ROTATE_INTERVAL: &str = "8760h0m0s";
pub const DEFAULT_CA_OVERLAP_INTERVAL: &str = "24h0m0s";
pub const DEFAULT_CERT_ROTATE_INTERVAL: &str = "4380h0m0s";
pub const DEFAULT_CERT_OVERLAP_INTERVAL: &str = "24h0m0s";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationConfigError {
    #[error(
        "selfSignConfiguration.{field}: {value:?} is not a duration; use Go's form, e.g. \"8760h\", \"90m\" or \"1h30m0s\""
    )]
    Duration { field: &'static str, value: String },
    #[error(
        "selfSignConfiguration.{overlap} ({overlap_value:?}) must be shorter than {rotate} ({rotate_value:?}): \
         an overlap as long as the lifetime leaves no time between rotations"
    )]
    OverlapTooLong {
        overlap: &'static str,
        overlap_value: String,
        rotate: &'static str,
        rotate_value: String,
    },
}

/// Lifetimes and overlaps of the webhook's certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationConfig {
    /// How long a CA is valid.
    pub ca_rotate: Duration,
    /// How long before a CA expires its successor is made; both are trusted in between.
    pub ca_overlap: Duration,
    /// How long a serving certificate is valid (never past its CA).
    pub cert_rotate: Duration,
    /// How long before a serving certificate expires it is replaced.
    pub cert_overlap: Duration,
}

impl RotationConfig {
    /// From the four optional settings; a missing or empty one takes its default (upstream
    /// requires all four once any is set), a missing overlap at most half its lifetime.
    pub fn from_settings(
        ca_rotate: Option<&str>,
        ca_overlap: Option<&str>,
        cert_rotate: Option<&str>,
        cert_overlap: Option<&str>,
    ) -> Result<Self, RotationConfigError> {
        let read = |field: &'static str, value: Option<&str>, default: &'static str| {
            let value = value
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .unwrap_or(default);
            parse_go_duration(value)
                .filter(|duration| !duration.is_zero())
                .map(|duration| (duration, value.to_string()))
                .ok_or_else(|| RotationConfigError::Duration {
                    field,
                    value: value.to_string(),
                })
        };
        let (ca_rotate, ca_rotate_text) = read("caRotateInterval", ca_rotate, DEFAULT_CA_ROTATE_INTERVAL)?;
        let (cert_rotate, cert_rotate_text) =
            read("certRotateInterval", cert_rotate, DEFAULT_CERT_ROTATE_INTERVAL)?;
        // A missing overlap takes its default, or half the lifetime when that is shorter, so
        // setting only a short lifetime works.
        let overlap = |field, value: Option<&str>, default, rotate: Duration| {
            let (overlap, text) = read(field, value, default)?;
            let given = value.is_some_and(|value| !value.trim().is_empty());
            if given || overlap < rotate {
                return Ok((overlap, text));
            }
            let half = rotate / 2;
            Ok((half, format!("{}s", half.as_secs_f64())))
        };
        let (ca_overlap, ca_overlap_text) = overlap(
            "caOverlapInterval",
            ca_overlap,
            DEFAULT_CA_OVERLAP_INTERVAL,
            ca_rotate,
        )?;
        let (cert_overlap, cert_overlap_text) = overlap(
            "certOverlapInterval",
            cert_overlap,
            DEFAULT_CERT_OVERLAP_INTERVAL,
            cert_rotate,
        )?;
        let shorter = |overlap: (Duration, String, &'static str),
                       rotate: (Duration, String, &'static str)| {
            if overlap.0 < rotate.0 {
                return Ok(());
            }
            Err(RotationConfigError::OverlapTooLong {
                overlap: overlap.2,
                overlap_value: overlap.1,
                rotate: rotate.2,
                rotate_value: rotate.1,
            })
        };
        shorter(
            (ca_overlap, ca_overlap_text, "caOverlapInterval"),
            (ca_rotate, ca_rotate_text, "caRotateInterval"),
        )?;
        shorter(
            (cert_overlap, cert_overlap_text, "certOverlapInterval"),
            (cert_rotate, cert_rotate_text, "certRotateInterval"),
        )?;
        Ok(RotationConfig {
            ca_rotate,
            ca_overlap,
            cert_rotate,
            cert_overlap,
        })
    }

    /// How long a new CA is published before serving certificates signed by it are used, so
    /// every API server sees it in the caBundle first.
    pub fn ca_propagation(&self) -> Duration {
        (self.ca_overlap / 4).min(Duration::from_secs(60))
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            ca_rotate: Duration::from_secs(8760 * 3600),
            ca_overlap: Duration::from_secs(24 * 3600),
            cert_rotate: Duration::from_secs(4380 * 3600),
            cert_overlap: Duration::from_secs(24 * 3600),
        }
    }
}

/// Go's `time.ParseDuration` for non-negative values: `300ms`, `1.5h`, `2h45m`, `0`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = after;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        let cases = [
            ("8760h0m0s", 8760 * 3_600_000),
            ("24h", 86_400_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("90s", 90_000),
            ("500ms", 500),
            ("0", 0),
            ("2m3s", 123_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                parse_go_duration(text),
                Some(Duration::from_millis(millis)),
                "{text}"
            );
        }
        for invalid in ["", "10", "h", "1d", "-1h", "1..5h", "1h 30m", "one hour"] {
            assert_eq!(parse_go_duration(invalid), None, "{invalid}");
        }
    }

    #[test]
    fn missing_settings_take_defaults() {
        assert_eq!(
            RotationConfig::from_settings(None, None, None, None),
            Ok(RotationConfig::default())
        );
        // Upstream breaks on a partial configuration; here the rest is defaulted.
        let partial = RotationConfig::from_settings(None, None, Some("48h"), Some("")).unwrap();
        assert_eq!(partial.cert_rotate, Duration::from_secs(48 * 3600));
        assert_eq!(partial.cert_overlap, Duration::from_secs(24 * 3600));
        assert_eq!(partial.ca_rotate, RotationConfig::default().ca_rotate);
        let short = RotationConfig::from_settings(Some("1h"), None, Some("6s"), None).unwrap();
        assert_eq!(
            short.ca_overlap,
            Duration::from_secs(1800),
            "half of 1h, not the 24h default"
        );
        assert_eq!(short.cert_overlap, Duration::from_secs(3));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        assert_eq!(
            RotationConfig::from_settings(Some("1 year"), None, None, None)
                .unwrap_err()
                .to_string(),
            "selfSignConfiguration.caRotateInterval: \"1 year\" is not a duration; use Go's form, e.g. \
             \"8760h\", \"90m\" or \"1h30m0s\""
        );
        let error = RotationConfig::from_settings(None, None, Some("1h"), Some("2h")).unwrap_err();
        assert!(error.to_string().starts_with(
            "selfSignConfiguration.certOverlapInterval (\"2h\") must be shorter than certRotateInterval (\"1h\")"
        ));
        assert!(RotationConfig::from_settings(Some("0s"), None, None, None).is_err());
    }

    #[test]
    fn a_new_ca_is_published_before_it_signs() {
        assert_eq!(
            RotationConfig::default().ca_propagation(),
            Duration::from_secs(60)
        );
        let short = RotationConfig::from_settings(Some("20s"), Some("8s"), Some("6s"), Some("2s")).unwrap();
        assert_eq!(short.ca_propagation(), Duration::from_secs(2));
    }
}
