//! Human durations (`90d`, `24h`, `30s`) and retention rules as they appear in the config.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

const UNITS: [(&str, u64); 6] = [
    ("y", 365 * 86_400),
    ("w", 7 * 86_400),
    ("d", 86_400),
    ("h", 3_600),
    ("m", 60),
    ("s", 1),
];

/// A whole number of seconds written with one unit: `s`, `m`, `h`, `d`, `w` or `y` (365 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    /// Builds a span of whole seconds.
    pub const fn secs(s: u64) -> Self {
        Span(Duration::from_secs(s))
    }
    /// Builds a span of whole days.
    pub const fn days(d: u64) -> Self {
        Span(Duration::from_secs(d * 86_400))
    }
    /// The span as a std duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s == "0" {
            return Ok(Span::secs(0));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{raw}` is not a duration: write a whole number and a unit, like `90d`, `24h` or `30s`")
        })?;
        let per = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, secs)| *secs)
            .ok_or_else(|| {
                format!("`{raw}` has an unknown unit `{unit}`: use s, m, h, d, w or y")
            })?;
        n.checked_mul(per)
            .map(Span::secs)
            .ok_or_else(|| format!("`{raw}` is too long"))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0");
        }
        let (unit, per) = UNITS
            .iter()
            .find(|(_, per)| secs.is_multiple_of(*per))
            .copied()
            .unwrap_or(("s", 1));
        write!(f, "{}{unit}", secs / per)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// How long records of one data class are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Kept for this long after they were written; `0` means they are not kept at all.
    For(Span),
    /// Kept while the owning account is active (erasure follows a deletion request).
    WhileActive,
    /// Kept until the person deletes them (and erased with the account).
    UntilDeleted,
    /// Kept until revoked or expired.
    UntilRevoked,
}

impl Rule {
    /// Whether the rule is `0`: records of the class are not kept at all.
    pub fn keeps_nothing(&self) -> bool {
        matches!(self, Rule::For(span) if span.get().is_zero())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::For(span) => span.fmt(f),
            Rule::WhileActive => f.write_str("while_active"),
            Rule::UntilDeleted => f.write_str("until_deleted"),
            Rule::UntilRevoked => f.write_str("until_revoked"),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "while_active" => Ok(Rule::WhileActive),
            "until_deleted" => Ok(Rule::UntilDeleted),
            "until_revoked" => Ok(Rule::UntilRevoked),
            other => other.parse().map(Rule::For).map_err(|e| {
                format!("{e}; or one of `while_active`, `until_deleted`, `until_revoked`")
            }),
        }
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print_in_their_largest_exact_unit() {
        assert_eq!(
            "90d".parse::<Span>().map(|s| s.to_string()),
            Ok("90d".into())
        );
        assert_eq!(
            "48h".parse::<Span>().map(|s| s.to_string()),
            Ok("2d".into())
        );
        assert_eq!("0".parse::<Span>(), Ok(Span::secs(0)));
        assert!("90 days".parse::<Span>().is_err());
        assert!("d".parse::<Span>().is_err());
    }

    #[test]
    fn rules_accept_keywords_and_durations() {
        assert_eq!("until_deleted".parse::<Rule>(), Ok(Rule::UntilDeleted));
        assert_eq!("7y".parse::<Rule>(), Ok(Rule::For(Span::days(7 * 365))));
        assert!("forever".parse::<Rule>().is_err());
    }
}
