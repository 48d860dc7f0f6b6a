//! Time as the core sees it: a `Timestamp` in milliseconds since the Unix epoch,
//! and the human spellings of durations (`"90s"`, `"1h30m"`) and rates (`"100/s"`).
//!
//! Nothing here reads a clock; the shell passes `now` in.

use std::fmt;
use std::time::Duration;

/// Milliseconds since the Unix epoch: the only notion of time in the core.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// RFC 3339 in UTC with milliseconds where there are any
    /// (`2026-12-02T06:31:57.123Z`); empty past the year 9999.
    pub fn rfc3339(self) -> String {
        jiff::Timestamp::from_millisecond(self.0 as i64)
            .map(|ts| ts.to_string())
            .unwrap_or_default()
    }

    pub const ZERO: Timestamp = Timestamp(0);
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    pub fn from_ms(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn as_ms(self) -> u64 {
        self.0
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// How long after `earlier` this is; zero when it is not later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Whole milliseconds of a duration, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty value")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected a number with a unit, like \"500ms\", \"90s\", \"10m\", \"2h\" or \"1d\""
    )]
    Duration(String),
    #[error(
        "invalid rate {0:?}: expected a positive count per unit, like \"100/s\", \"30/m\" or \"2/h\""
    )]
    Rate(String),
    #[error("value out of range: {0}")]
    Range(String),
}

/// The longest duration accepted: about 31,700 years.
const MAX_DURATION_MS: u128 = 1_000_000_000_000_000;

/// Parses `"500ms"`, `"90s"`, `"10m"`, `"2h"`, `"1d"`, and sums of them such as `"1h30m"`.
/// A bare number is not accepted: the unit is where mistakes hide.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(ParseError::Empty);
    }
    let bad = || ParseError::Duration(text.to_string());
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ms: f64 = match &rest[..unit_len] {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        let ms = number * unit_ms;
        if !ms.is_finite() || ms > MAX_DURATION_MS as f64 {
            return Err(ParseError::Range(format!("{text:?} is too long")));
        }
        total_ms += ms.round() as u128;
        // The sum has the same bound as each term, so what parses also prints
        // back to text that parses (found by the `duration` fuzz target).
        if total_ms > MAX_DURATION_MS {
            return Err(ParseError::Range(format!("{text:?} is too long")));
        }
    }
    let total = u64::try_from(total_ms).map_err(|_| ParseError::Range(text.to_string()))?;
    Ok(Duration::from_millis(total))
}

/// The shortest exact spelling of a duration that `parse_duration` reads back.
pub fn format_duration(d: Duration) -> String {
    let ms = duration_ms(d);
    if ms == 0 {
        return "0s".to_string();
    }
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut out = String::new();
    let mut rest = ms;
    for (size, name) in units {
        if rest >= size {
            out.push_str(&format!("{}{}", rest / size, name));
            rest %= size;
        }
    }
    out
}

/// A sustained rate, in dispatches per second. Always finite and positive.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Rate {
    per_second: f64,
}

impl Rate {
    /// Rates above this are treated as "no effective limit" and stay exact in nanoseconds.
    pub const MAX_PER_SECOND: f64 = 1e9;

    pub fn per_second(per_second: f64) -> Result<Rate, ParseError> {
        if !per_second.is_finite() || per_second <= 0.0 || per_second > Self::MAX_PER_SECOND {
            return Err(ParseError::Range(format!(
                "rate must be above 0 and at most {} per second",
                Self::MAX_PER_SECOND
            )));
        }
        Ok(Rate { per_second })
    }

    pub fn as_per_second(self) -> f64 {
        self.per_second
    }

    /// Nanoseconds between two dispatches at this rate, at least 1.
    pub fn interval_ns(self) -> u64 {
        ((1e9 / self.per_second).round() as u64).max(1)
    }

    /// Parses `"100/s"`, `"30/m"`, `"2/h"`, `"5/d"`, or a plain number per second.
    pub fn parse(text: &str) -> Result<Rate, ParseError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(ParseError::Empty);
        }
        let bad = || ParseError::Rate(text.to_string());
        let (count, unit) = match s.split_once('/') {
            Some((c, u)) => (c.trim(), u.trim()),
            None => (s, "s"),
        };
        let count: f64 = count.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3_600.0,
            "d" | "day" => 86_400.0,
            _ => return Err(bad()),
        };
        if !count.is_finite() || count <= 0.0 {
            return Err(bad());
        }
        Rate::per_second(count / seconds)
    }
}

impl fmt::Display for Rate {
    /// The rate as it was most likely written, so that a view read back and
    /// sent again sets the same rate: per second when that is a number of
    /// at most three decimals of 1 or more (`"100/s"`, `"2.5/s"`), else in
    /// the first unit that makes it a whole number (`"100/m"`, not
    /// `"1.667/s"`), else per second as exactly as the number goes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.per_second;
        // Whole but for the rounding of a division and a product (a few
        // units in the last place), so showing it changes the rate by no more.
        let whole = |count: f64| {
            count >= 1.0 && (count - count.round()).abs() <= count * 8.0 * f64::EPSILON
        };
        if r >= 1.0 && whole(r * 1_000.0) {
            return write!(f, "{}/s", (r * 1_000.0).round() / 1_000.0);
        }
        let units = [(1.0, "s"), (60.0, "m"), (3_600.0, "h"), (86_400.0, "d")];
        match (units.iter())
            .map(|&(seconds, unit)| (r * seconds, unit))
            .find(|&(count, _)| whole(count))
        {
            Some((count, unit)) => write!(f, "{}/{unit}", count.round()),
            None => write!(f, "{r}/s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("500ms", 500),
            ("90s", 90_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("1.5s", 1_500),
        ];
        for (text, ms) in cases {
            let d = parse_duration(text).unwrap();
            assert_eq!(duration_ms(d), ms, "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        // The last one is a sum past the bound whose terms are each within it,
        // found by the fuzzer.
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-1s",
            "1s2",
            "1e99d",
            "ms",
            "1..2s",
            "3800006d6d83d6d8000003d4d4d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("100/s").unwrap().as_per_second(), 100.0);
        assert_eq!(Rate::parse("30/m").unwrap().as_per_second(), 0.5);
        assert_eq!(Rate::parse("2/h").unwrap().to_string(), "2/h");
        assert_eq!(Rate::parse("1/m").unwrap().to_string(), "1/m");
        // Shown as written, so a view sent back sets the same rate.
        for (written, shown) in [
            ("100/m", "100/m"),
            ("2.5/s", "2.5/s"),
            ("1.667/s", "1.667/s"),
            ("90/m", "1.5/s"),
            ("0.5/s", "30/m"),
            ("7/h", "7/h"),
            ("1000/d", "1000/d"),
            ("7200/h", "2/s"),
            ("1e9", "1000000000/s"),
        ] {
            let rate = Rate::parse(written).unwrap();
            assert_eq!(rate.to_string(), shown, "{written}");
            assert_eq!(Rate::parse(shown).unwrap(), rate, "{written}");
        }
        // A rate no unit states as a whole number: per second, exactly.
        for (written, shown) in [
            ("7000.1234567", "7000.1234567/s"),
            ("0.000001", "0.000001/s"),
            ("0.14285714285714285", "0.14285714285714285/s"),
        ] {
            assert_eq!(Rate::parse(written).unwrap().to_string(), shown);
        }
        // Whatever the rate, what is shown reads back as it.
        let mut rng = crate::core::rng::Rng::new(7);
        for _ in 0..10_000 {
            let seconds = [1.0, 60.0, 3_600.0, 86_400.0][rng.below(4) as usize];
            let per_second = match rng.below(4) {
                0 => (1 + rng.below(100_000)) as f64 / seconds,
                // A hair off a whole count: not shown as one.
                1 => {
                    ((1 + rng.below(100_000)) as f64 + 1e-9 * (1 + rng.below(1_000)) as f64)
                        / seconds
                }
                2 => (1 + rng.below(1 << 40)) as f64 / (1u64 << 30) as f64,
                _ => (1 + rng.below(1_000_000_000)) as f64 / 1_000.0,
            };
            let rate = Rate::per_second(per_second).unwrap();
            let back = Rate::parse(&rate.to_string()).unwrap().as_per_second();
            assert!(
                (back - per_second).abs() <= per_second * 1e-12,
                "{per_second} shown as {rate} reads back as {back}"
            );
        }
        assert_eq!(Rate::parse("7.5").unwrap().as_per_second(), 7.5);
        assert_eq!(Rate::parse("50/s").unwrap().interval_ns(), 20_000_000);
        for bad in ["", "0/s", "-1/s", "x/s", "10/y", "inf", "NaN", "1e12/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
