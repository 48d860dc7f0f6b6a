//! Attempt records in the same encoding as task records: every start and
//! every end writes one, so JSON's field names and 13-digit times were most
//! of their bytes and of the CPU a turn spends on them. Times are written
//! as differences from `started_at`.

use super::{Reader, VARINT, Writer, json_bytes, narrow, zigzag_of};
use crate::store::records::{AttemptRecord, LogRecord, LogSource};

/// First byte of a binary attempt record (JSON starts with `{`; a task
/// record with [`super::MARKER`]).
const MARKER: u8 = 0xB2;

/// Whether `bytes` is an attempt record in this encoding rather than JSON.
pub(in crate::store) fn is_compact(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MARKER)
}

pub(in crate::store) fn encode(attempt: &AttemptRecord) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(48));
    w.0.push(MARKER);
    let base = attempt.started_at;
    w.uint(1, u64::from(attempt.attempt));
    w.uint(2, base);
    w.some_time(3, attempt.ended_at, base);
    w.some_text(4, attempt.outcome.as_deref());
    w.some_uint(5, attempt.status.map(u64::from));
    w.some_uint(6, attempt.latency_ms);
    w.some_text(7, attempt.error.as_deref());
    w.some_text(8, attempt.response.as_deref());
    match attempt
        .token_hash
        .as_deref()
        .map(|hash| (hash, digest_of(hash)))
    {
        Some((_, Some(digest))) => w.bytes(15, &digest),
        Some((hash, None)) => w.some_text(9, Some(hash)),
        None => {}
    }
    w.some_time(10, attempt.lease_until, base);
    w.some_uint(11, attempt.lease_ms);
    if let Some(progress) = &attempt.progress {
        w.bytes(12, &json_bytes(progress));
    }
    for line in &attempt.logs {
        w.message(13, |w| {
            if line.source == LogSource::Host {
                w.key(1, VARINT);
                w.varint(1);
            }
            w.text(2, &line.level);
            w.text(3, &line.message);
        });
    }
    w.some_time(14, attempt.heartbeat_at, base);
    w.0
}

pub(in crate::store) fn decode(bytes: &[u8]) -> Result<AttemptRecord, String> {
    let body = bytes
        .strip_prefix(&[MARKER])
        .ok_or("not a binary attempt record")?;
    // Times are relative to `started_at`, which may come after them.
    let mut times = [None::<i64>; 3];
    let mut attempt = AttemptRecord::started(0, 0);
    let mut r = Reader(body);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => attempt.attempt = narrow(value.uint()?)?,
            2 => attempt.started_at = value.uint()?,
            3 => times[0] = Some(zigzag_of(value.uint()?)),
            4 => attempt.outcome = Some(value.text()?),
            5 => attempt.status = Some(narrow(value.uint()?)?),
            6 => attempt.latency_ms = Some(value.uint()?),
            7 => attempt.error = Some(value.text()?),
            8 => attempt.response = Some(value.text()?),
            9 => attempt.token_hash = Some(value.text()?),
            15 => attempt.token_hash = Some(hex_of(value.bytes()?)),
            10 => times[1] = Some(zigzag_of(value.uint()?)),
            11 => attempt.lease_ms = Some(value.uint()?),
            12 => {
                let progress =
                    serde_json::from_slice(value.bytes()?).map_err(|e| format!("progress: {e}"))?;
                attempt.progress = Some(progress);
            }
            13 => attempt.logs.push(line_from(value.bytes()?)?),
            14 => times[2] = Some(zigzag_of(value.uint()?)),
            _ => {}
        }
    }
    let base = attempt.started_at;
    let [ended, lease, heartbeat] = times.map(|t| t.map(|delta| base.wrapping_add(delta as u64)));
    attempt.ended_at = ended;
    attempt.lease_until = lease;
    attempt.heartbeat_at = heartbeat;
    Ok(attempt)
}

/// A SHA-256 in lowercase hex (what the engine writes) as its 32 bytes.
fn digest_of(hash: &str) -> Option<[u8; 32]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let hex = hash.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(digest)
}

fn hex_of(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

fn line_from(bytes: &[u8]) -> Result<LogRecord, String> {
    let mut line = LogRecord::plugin("", "");
    let mut r = Reader(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => {
                line.source = match value.uint()? {
                    0 => LogSource::Plugin,
                    1 => LogSource::Host,
                    other => return Err(format!("unknown log source {other}")),
                }
            }
            2 => line.level = value.text()?,
            3 => line.message = value.text()?,
            _ => {}
        }
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::super::BYTES;
    use super::super::tests::{maybe, number, text, time};
    use super::*;
    use crate::core::rng::Rng;

    /// An attempt as a webhook's success leaves it.
    fn plain() -> AttemptRecord {
        let started = 1_764_892_800_000;
        AttemptRecord {
            attempt: 1,
            started_at: started,
            ended_at: Some(started + 3),
            outcome: Some("succeeded".into()),
            status: Some(200),
            latency_ms: Some(3),
            error: None,
            response: Some("ok".into()),
            token_hash: Some("9f".repeat(32)),
            lease_until: None,
            lease_ms: None,
            progress: None,
            logs: Vec::new(),
            heartbeat_at: None,
        }
    }

    fn random(rng: &mut Rng) -> AttemptRecord {
        let base = number(rng);
        AttemptRecord {
            attempt: number(rng) as u32,
            started_at: base,
            ended_at: maybe(rng, |rng| time(rng, base)),
            outcome: maybe(rng, text),
            status: maybe(rng, |rng| number(rng) as u16),
            latency_ms: maybe(rng, number),
            error: maybe(rng, text),
            response: maybe(rng, text),
            token_hash: maybe(rng, |rng| match rng.below(3) {
                0 => text(rng),
                1 => hex_of(&rng.next_u64().to_le_bytes().repeat(4)),
                // Hex, but not what the engine writes: kept as text.
                _ => hex_of(&rng.next_u64().to_le_bytes().repeat(4)).to_uppercase(),
            }),
            lease_until: maybe(rng, |rng| time(rng, base)),
            lease_ms: maybe(rng, number),
            progress: maybe(rng, |rng| match rng.below(3) {
                0 => serde_json::Value::Null,
                1 => serde_json::json!({ "done": rng.below(100), "of": text(rng) }),
                _ => serde_json::json!([text(rng)]),
            }),
            logs: (0..rng.below(4))
                .map(|_| LogRecord {
                    source: if rng.below(2) == 0 {
                        LogSource::Plugin
                    } else {
                        LogSource::Host
                    },
                    level: text(rng),
                    message: text(rng),
                })
                .collect(),
            heartbeat_at: maybe(rng, |rng| time(rng, base)),
        }
    }

    #[test]
    fn every_attempt_reads_back_as_written() {
        let mut rng = Rng::new(0xa77e);
        for _ in 0..20_000 {
            let attempt = random(&mut rng);
            let bytes = encode(&attempt);
            assert!(is_compact(&bytes));
            assert!(!super::super::is_compact(&bytes), "not a task record");
            assert_eq!(decode(&bytes), Ok(attempt));
        }
    }

    #[test]
    fn a_webhooks_success_is_a_quarter_of_its_json() {
        let attempt = plain();
        let bytes = encode(&attempt);
        let json = serde_json::to_vec(&attempt).expect("json");
        assert!(bytes.len() <= 66, "{} bytes", bytes.len());
        assert!(
            bytes.len() * 4 <= json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert!(!is_compact(&json), "JSON never starts with the marker");
    }

    #[test]
    fn damaged_attempts_are_refused_not_misread() {
        let bytes = encode(&plain());
        for cut in 1..bytes.len() {
            // Every prefix fails or reads with fields left out; none panics.
            let _ = decode(&bytes[..cut]);
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[MARKER, 0x27]).is_err(), "wire type 7");
        assert!(
            decode(&[MARKER, 5 << 3, 0xff, 0xff, 0x04]).is_err(),
            "status 65,536 + …"
        );
        let host = [MARKER, 13 << 3 | BYTES, 2, 1 << 3, 2];
        assert!(decode(&host).is_err(), "log source 2");
        assert!(decode(b"{}").is_err(), "JSON is not this encoding");
        let task = [super::super::MARKER, 1 << 3, 7];
        assert!(decode(&task).is_err(), "a task record is not an attempt");
    }

    #[test]
    fn attempts_written_as_json_still_read() {
        let mut rng = Rng::new(0x0150);
        for _ in 0..2_000 {
            let mut attempt = random(&mut rng);
            // JSON reads `"progress": null` as no progress.
            attempt.progress = attempt.progress.filter(|p| !p.is_null());
            let json = serde_json::to_vec(&attempt).expect("json");
            let read = crate::store::decode_attempt(&json).expect("JSON reads");
            assert_eq!(read, attempt);
            let bytes = crate::store::encode_attempt(&attempt);
            let read = crate::store::decode_attempt(&bytes).expect("binary reads");
            assert_eq!(read, attempt);
        }
    }

    #[test]
    fn fields_this_build_does_not_know_are_skipped() {
        let mut bytes = encode(&plain());
        let mut w = Writer(Vec::new());
        w.uint(99, 7);
        w.text(100, "later");
        bytes.extend_from_slice(&w.0);
        assert_eq!(decode(&bytes), Ok(plain()));
    }
}
