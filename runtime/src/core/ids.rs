//! Identifiers that cross module boundaries. No bare integers or strings.

use std::fmt;
use std::str::FromStr;

/// A task's identity: the millisecond it was created in the high 48 bits and a
/// sequence number in the low 16, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TaskId(pub u64);

/// A gate's internal number: pending-task keys carry it instead of the name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GateId(pub u32);

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl fmt::Display for TaskId {
    /// Crockford base32, 13 characters, lower case, sortable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 13];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 60 - 5 * i as i32;
            let bits = if shift >= 0 {
                (self.0 >> shift) & 0x1f
            } else {
                (self.0 << -shift) & 0x1f
            };
            *slot = ALPHABET[bits as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task id {0:?}")]
pub struct BadTaskId(pub String);

impl FromStr for TaskId {
    type Err = BadTaskId;

    fn from_str(s: &str) -> Result<TaskId, BadTaskId> {
        let bad = || BadTaskId(s.chars().take(64).collect());
        if s.len() != 13 {
            return Err(bad());
        }
        let mut value: u64 = 0;
        for (i, c) in s.bytes().enumerate() {
            let c = c.to_ascii_lowercase();
            let digit = ALPHABET.iter().position(|&a| a == c).ok_or_else(bad)? as u64;
            if i == 0 {
                // The first character carries only the top 4 bits.
                if digit > 0xf {
                    return Err(bad());
                }
                value = digit;
            } else {
                value = (value << 5) | digit;
            }
        }
        Ok(TaskId(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_and_sort() {
        let ids = [0, 1, 0x1f, 1 << 63, u64::MAX, 0x0123_4567_89ab_cdef];
        let mut texts = Vec::new();
        for raw in ids {
            let text = TaskId(raw).to_string();
            assert_eq!(text.len(), 13);
            assert_eq!(text.parse::<TaskId>().unwrap(), TaskId(raw));
            texts.push((raw, text));
        }
        texts.sort();
        let mut by_text = texts.clone();
        by_text.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(texts, by_text, "text order is numeric order");
        for bad in [
            "",
            "zzzzzzzzzzzzz",
            "0000000000000!",
            "000000000000u",
            "g000000000000",
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad:?}");
        }
    }
}
