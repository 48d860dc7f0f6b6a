//! Reading the quota an endpoint states in its response headers.
//!
//! Families, the first present wins:
//! 1. `RateLimit` with `RateLimit-Policy`, the IETF HTTPAPI draft: the
//!    structured-field lists of the current drafts (`"default";r=50;t=30`
//!    and `"default";q=100;w=60`), or the dictionary of draft 07
//!    (`limit=100, remaining=50, reset=30` and `100;w=60`). With several
//!    policies the one that allows the slowest pace (remaining ÷ reset) wins.
//! 2. `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (the early
//!    drafts): the reset in seconds from now.
//! 3. `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`. The
//!    reset is read as most clients do: below 10⁹ it is seconds from now;
//!    from 10⁹ (2001 as a Unix time, 31 years as a delay) a Unix time in
//!    seconds; from 10¹² one in milliseconds. Fractions are allowed.
//!
//! Headers that are there but cannot be trusted (not numbers, negative,
//! remaining above the limit, a reset more than a day away) are ignored, and
//! the reason is written into the attempt's history.

use std::time::Duration;

use crate::core::{Quota, Timestamp};

/// A stated reset further away than this is not believed.
pub const MAX_RESET: Duration = Duration::from_secs(86_400);

/// The quota the headers state: `Ok(None)` when they state none, `Err` with
/// the reason when they state one that cannot be trusted. `header` gives a
/// header's value by lowercase name; `now` is the wall clock, for resets
/// given as a Unix time.
pub fn read_quota(
    header: impl Fn(&str) -> Option<String>,
    now: Timestamp,
) -> Result<Option<Quota>, String> {
    if let Some(value) = header("ratelimit") {
        let policy = header("ratelimit-policy");
        return ietf(&value, policy.as_deref())
            .map(Some)
            .map_err(|why| format!("RateLimit header ignored: {why}"));
    }
    // Each family's names written out: this runs on every answer.
    let families = [
        (
            ["ratelimit-remaining", "ratelimit-reset", "ratelimit-limit"],
            "RateLimit-*",
            false,
        ),
        (
            [
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "x-ratelimit-limit",
            ],
            "X-RateLimit-*",
            true,
        ),
    ];
    for ([remaining, reset, limit], family, x_prefixed) in families {
        let (remaining, reset) = (header(remaining), header(reset));
        if remaining.is_none() && reset.is_none() {
            continue;
        }
        let limit = header(limit);
        return trio(remaining, reset, limit, x_prefixed, now)
            .map(Some)
            .map_err(|why| format!("{family} headers ignored: {why}"));
    }
    Ok(None)
}

/// One member of a structured-field list or dictionary: its bare value and
/// its parameters, both as text (quotes removed).
struct Member<'a> {
    value: String,
    params: Vec<(&'a str, String)>,
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .map_or_else(|| text.to_string(), |t| t.replace("\\\"", "\""))
}

/// Splits on `sep` outside quoted strings.
fn split_outside_quotes(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn members(text: &str) -> Vec<Member<'_>> {
    split_outside_quotes(text, ',')
        .into_iter()
        .filter(|m| !m.trim().is_empty())
        .map(|m| {
            let mut pieces = split_outside_quotes(m, ';').into_iter();
            let value = unquote(pieces.next().unwrap_or_default());
            let params = pieces
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, "?1"));
                    (k.trim(), unquote(v))
                })
                .collect();
            Member { value, params }
        })
        .collect()
}

fn param<'a>(member: &'a Member<'_>, key: &str) -> Option<&'a str> {
    member
        .params
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

fn count(what: &str, text: &str) -> Result<u64, String> {
    let text = text.trim();
    text.parse::<u64>().map_err(|_| {
        if text.starts_with('-') {
            format!("{what} {text:?} is negative")
        } else {
            format!("{what} {text:?} is not a whole number")
        }
    })
}

fn seconds(what: &str, text: &str) -> Result<Duration, String> {
    let secs = count(what, text)?;
    let reset = Duration::from_secs(secs);
    if reset > MAX_RESET {
        return Err(format!("{what} of {secs} s is more than a day away"));
    }
    Ok(reset)
}

fn checked(quota: Quota) -> Result<Quota, String> {
    if let Some(limit) = quota.limit
        && quota.remaining > limit
    {
        return Err(format!(
            "remaining {} is above the limit {limit}",
            quota.remaining
        ));
    }
    Ok(quota)
}

/// The slower pace of two: less per second until the reset.
fn slower(a: Quota, b: Quota) -> Quota {
    let pace = |q: &Quota| q.remaining as f64 / q.reset_in.as_secs_f64().max(0.001);
    if pace(&b) < pace(&a) { b } else { a }
}

fn ietf(value: &str, policy: Option<&str>) -> Result<Quota, String> {
    let policies = policy.map(members).unwrap_or_default();
    let items = members(value);
    if items.is_empty() {
        return Err("it is empty".into());
    }
    // Draft 07: a dictionary with `remaining` and `reset`.
    let key = |name: &str| {
        items
            .iter()
            .find(|m| {
                m.value
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == name)
            })
            .and_then(|m| m.value.split_once('=').map(|(_, v)| v.trim().to_string()))
    };
    if let (Some(remaining), Some(reset)) = (key("remaining"), key("reset")) {
        let limit = key("limit").map(|l| count("limit", &l)).transpose()?;
        // Its policy: `100;w=60`, the first one whose quota is the limit.
        let window = policies
            .iter()
            .find(|p| limit.is_none_or(|l| p.value.trim() == l.to_string()))
            .and_then(|p| param(p, "w"))
            .map(|w| seconds("window", w))
            .transpose()?;
        return checked(Quota {
            remaining: count("remaining", &remaining)?,
            reset_in: seconds("reset", &reset)?,
            limit,
            window,
        });
    }
    // The structured lists: `"name";r=…;t=…`, policies `"name";q=…;w=…`.
    let mut found: Option<Quota> = None;
    for item in &items {
        let remaining = param(item, "r").ok_or("an item has no r (remaining)")?;
        let reset = param(item, "t").map_or(Ok(Duration::ZERO), |t| seconds("t (reset)", t))?;
        let policy = policies.iter().find(|p| p.value == item.value);
        let limit = policy
            .and_then(|p| param(p, "q"))
            .map(|q| count("q (quota)", q))
            .transpose()?;
        let window = policy
            .and_then(|p| param(p, "w"))
            .map(|w| seconds("w (window)", w))
            .transpose()?;
        let quota = checked(Quota {
            remaining: count("r (remaining)", remaining)?,
            reset_in: reset,
            limit,
            window,
        })?;
        found = Some(found.map_or(quota, |f| slower(f, quota)));
    }
    found.ok_or_else(|| "no quota in it".into())
}

fn trio(
    remaining: Option<String>,
    reset: Option<String>,
    limit: Option<String>,
    unix_times: bool,
    now: Timestamp,
) -> Result<Quota, String> {
    let remaining = remaining.ok_or("a reset without a remaining count")?;
    let reset = reset.ok_or("a remaining count without a reset")?;
    // Early drafts allow `100, 100;w=60, 1000;w=3600` in the limit: the first
    // number is the limit, a `w` on a member with it the window.
    let limits = limit.as_deref().map(members).unwrap_or_default();
    let limit_value = limits
        .first()
        .map(|m| count("limit", &m.value))
        .transpose()?;
    let window = limits
        .iter()
        .find(|m| param(m, "w").is_some())
        .and_then(|m| param(m, "w"))
        .map(|w| seconds("window", w))
        .transpose()?;
    let reset_in = if unix_times {
        reset_from(&reset, now)?
    } else {
        seconds("reset", &reset)?
    };
    checked(Quota {
        remaining: count("remaining", &remaining)?,
        reset_in,
        limit: limit_value,
        window,
    })
}

/// `X-RateLimit-Reset`: seconds from now, or a Unix time in seconds or
/// milliseconds (see the module's note).
fn reset_from(text: &str, now: Timestamp) -> Result<Duration, String> {
    let text = text.trim();
    let value: f64 = text
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| format!("reset {text:?} is not a number"))?;
    if value < 0.0 {
        return Err(format!("reset {text:?} is negative"));
    }
    let at_ms = if value >= 1e12 {
        value
    } else if value >= 1e9 {
        value * 1_000.0
    } else {
        now.as_ms() as f64 + value * 1_000.0
    };
    let reset_ms = (at_ms - now.as_ms() as f64).max(0.0).ceil();
    let reset = Duration::from_millis(reset_ms as u64);
    if reset > MAX_RESET {
        return Err(format!("reset {text:?} is more than a day away"));
    }
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_767_225_600_000); // 2026-01-01T00:00:00Z

    fn read(headers: &[(&str, &str)]) -> Result<Option<Quota>, String> {
        read_quota(
            |name| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_string())
            },
            NOW,
        )
    }

    fn quota(remaining: u64, reset_s: u64, limit: Option<u64>, window_s: Option<u64>) -> Quota {
        Quota {
            remaining,
            reset_in: Duration::from_secs(reset_s),
            limit,
            window: window_s.map(Duration::from_secs),
        }
    }

    #[test]
    fn each_family_is_read() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("Content-Type", "text/plain")]), Ok(None));
        assert_eq!(
            read(&[
                ("RateLimit", "\"default\";r=50;t=30"),
                (
                    "RateLimit-Policy",
                    "\"burst\";q=10;w=1, \"default\";q=100;w=60"
                ),
            ]),
            Ok(Some(quota(50, 30, Some(100), Some(60))))
        );
        assert_eq!(
            read(&[
                ("RateLimit", "limit=100, remaining=50, reset=30"),
                ("RateLimit-Policy", "100;w=60"),
            ]),
            Ok(Some(quota(50, 30, Some(100), Some(60))))
        );
        assert_eq!(
            read(&[
                ("RateLimit-Limit", "100, 100;w=60"),
                ("RateLimit-Remaining", "7"),
                ("RateLimit-Reset", "12"),
            ]),
            Ok(Some(quota(7, 12, Some(100), Some(60))))
        );
        assert_eq!(
            read(&[
                ("X-RateLimit-Limit", "5000"),
                ("X-RateLimit-Remaining", "4999"),
                ("X-RateLimit-Reset", "60"),
            ]),
            Ok(Some(quota(4999, 60, Some(5000), None)))
        );
    }

    #[test]
    fn x_ratelimit_reset_as_delay_or_unix_time() {
        let at = |reset: &str| {
            read(&[("X-RateLimit-Remaining", "1"), ("X-RateLimit-Reset", reset)])
                .map(|q| q.map(|q| q.reset_in))
        };
        assert_eq!(at("30"), Ok(Some(Duration::from_secs(30))));
        let unix = NOW.as_ms() / 1_000 + 30;
        assert_eq!(at(&unix.to_string()), Ok(Some(Duration::from_secs(30))));
        assert_eq!(
            at(&format!("{unix}.5")),
            Ok(Some(Duration::from_millis(30_500)))
        );
        assert_eq!(
            at(&(NOW.as_ms() + 2_000).to_string()),
            Ok(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            at(&(NOW.as_ms() / 1_000 - 5).to_string()),
            Ok(Some(Duration::ZERO)),
            "a reset in the past is now"
        );
    }

    /// The slowest of several policies paces the gate.
    #[test]
    fn the_slowest_policy_wins() {
        assert_eq!(
            read(&[
                ("RateLimit", "\"second\";r=9;t=1, \"hour\";r=20;t=3000"),
                (
                    "RateLimit-Policy",
                    "\"second\";q=10;w=1, \"hour\";q=1000;w=3600"
                ),
            ]),
            Ok(Some(quota(20, 3000, Some(1000), Some(3600))))
        );
    }

    #[test]
    fn untrustworthy_headers_are_ignored_with_a_reason() {
        let cases: &[&[(&str, &str)]] = &[
            &[("RateLimit", "\"d\";r=-1;t=3")],
            &[("RateLimit", "\"d\";r=lots;t=3")],
            &[("RateLimit", "\"d\";t=3")],
            &[("RateLimit", "\"d\";r=1;t=999999999")],
            &[("RateLimit", "")],
            &[("RateLimit", "limit=10, remaining=11, reset=3")],
            &[("X-RateLimit-Remaining", "5")],
            &[("X-RateLimit-Reset", "5")],
            &[("X-RateLimit-Remaining", "5"), ("X-RateLimit-Reset", "-4")],
            &[("X-RateLimit-Remaining", "5"), ("X-RateLimit-Reset", "NaN")],
            &[
                ("X-RateLimit-Remaining", "5"),
                ("X-RateLimit-Reset", "1e300"),
            ],
            &[
                ("X-RateLimit-Limit", "10"),
                ("X-RateLimit-Remaining", "99999999999999999999999"),
                ("X-RateLimit-Reset", "5"),
            ],
            &[
                ("X-RateLimit-Limit", "10"),
                ("X-RateLimit-Remaining", "11"),
                ("X-RateLimit-Reset", "5"),
            ],
            &[("RateLimit-Remaining", "3"), ("RateLimit-Reset", "86401")],
        ];
        for headers in cases {
            let read = read(headers);
            assert!(
                read.as_ref().is_err_and(|why| why.contains("ignored")),
                "{headers:?}: {read:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever bytes the headers hold, reading them never panics, and a
        /// quota it accepts is never beyond its own limit nor a day away.
        #[test]
        fn any_header_text_is_read_safely(
            ietf in ".{0,60}", policy in ".{0,40}", remaining in ".{0,12}", reset in ".{0,16}",
        ) {
            for headers in [
                vec![("RateLimit", ietf.as_str()), ("RateLimit-Policy", policy.as_str())],
                vec![("X-RateLimit-Remaining", remaining.as_str()), ("X-RateLimit-Reset", reset.as_str())],
            ] {
                if let Ok(Some(q)) = read(&headers) {
                    proptest::prop_assert!(q.reset_in <= MAX_RESET);
                    proptest::prop_assert!(q.limit.is_none_or(|l| q.remaining <= l));
                }
            }
        }
    }
}
