//! The binary encoding of task records, the one record every pending task has
//! (and, in `attempt.rs`, of attempt records).
//!
//! JSON spelled every field name and every 13-digit time in every record
//! (about 400 bytes for a plain webhook); this writes a marker byte and then
//! fields as protocol buffers do: a varint key (field number × 8 + wire
//! type) and a varint, eight bytes, or a length and bytes. Fields at their
//! default are left out, times are written as the (zigzag) difference from
//! `created_at` (`due_at` from `scheduled_at`), and a nested record is a
//! length-prefixed message of its own. A plain webhook task takes under 90
//! bytes.
//!
//! Compatibility: a reader skips the fields it does not know (by their wire
//! type), so a field added later needs only a new number and a default. The
//! marker is never the first byte of a JSON text, so records written as JSON
//! by earlier versions still read; they are rewritten in this form the next
//! time their task changes.

use std::collections::BTreeMap;

use super::records::{
    BodyRecord, JsonText, PluginCallRecord, RetryRecord, TaskRecord, TaskState, WebhookRecord,
};
use crate::core::DEFAULT_PRIORITY;

pub(super) mod attempt;

/// First byte of a binary task record (a JSON record starts with `{`).
const MARKER: u8 = 0xB1;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const BYTES: u8 = 2;

/// Whether `bytes` is a record in this encoding rather than JSON.
pub(super) fn is_compact(bytes: &[u8]) -> bool {
    bytes.first() == Some(&MARKER)
}

pub(super) fn encode_task(task: &TaskRecord) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128));
    w.0.push(MARKER);
    let base = task.created_at;
    w.uint(1, task.id);
    w.text(2, &task.gate);
    w.uint(3, u64::from(task.gate_id));
    w.uint(4, state_number(task.state));
    if let Some(webhook) = &task.webhook {
        w.message(5, |w| webhook_fields(w, webhook));
    }
    if let Some(plugin) = &task.plugin {
        w.message(6, |w| {
            w.text(1, &plugin.name);
            w.text(2, &plugin.version);
            w.bytes(3, &json_bytes(&plugin.input));
            if let Some(sha256) = &plugin.sha256 {
                w.text(4, sha256);
            }
        });
    }
    w.uint(7, task.created_at);
    w.time(8, task.scheduled_at, base);
    // Due when scheduled, until a retry moves it.
    w.time(9, task.due_at, task.scheduled_at);
    w.some_time(10, task.order_at, base);
    w.uint(11, task.timeout_ms);
    w.message(12, |w| retry_fields(w, &task.retry));
    w.some_time(13, task.expires_at, base);
    w.some_text(14, task.idempotency_key.as_deref());
    for (name, value) in &task.labels {
        w.pair(15, name, value);
    }
    w.some_text(16, task.key.as_deref());
    w.some_text(17, task.coalesce_key.as_deref());
    if task.priority != DEFAULT_PRIORITY {
        w.key(18, VARINT);
        w.varint(u64::from(task.priority));
    }
    w.some_uint(19, task.supersedes);
    w.uint(20, u64::from(task.attempts));
    w.uint(21, u64::from(task.attempt_offset));
    w.some_time(22, task.first_attempt_at, base);
    w.some_text(23, task.last_error.as_deref());
    w.some_time(24, task.finished_at, base);
    w.some_text(25, task.schedule.as_deref());
    w.some_uint(26, task.parent);
    w.some_uint(27, task.root);
    w.uint(28, u64::from(task.depth));
    w.some_uint(29, task.expires_after_ms);
    w.0
}

fn webhook_fields(w: &mut Writer, webhook: &WebhookRecord) {
    w.text(1, &webhook.url);
    if webhook.method != "POST" {
        w.key(2, BYTES);
        w.slice(webhook.method.as_bytes());
    }
    for (name, value) in &webhook.headers {
        w.pair(3, name, value);
    }
    match &webhook.body {
        None => {}
        Some(BodyRecord::Json(text)) => w.message(4, |w| w.bytes(1, text.as_str().as_bytes())),
        Some(BodyRecord::Text(text)) => w.message(4, |w| {
            w.key(2, BYTES);
            w.slice(text.as_bytes());
        }),
    }
    for name in &webhook.secret_headers {
        w.key(5, BYTES);
        w.slice(name.as_bytes());
    }
}

fn retry_fields(w: &mut Writer, retry: &RetryRecord) {
    w.uint(1, u64::from(retry.max_attempts));
    w.uint(2, retry.initial_ms);
    w.uint(3, retry.max_ms);
    // Byte-swapped, so a round number (2.0, 1.5) is a one- or two-byte varint.
    w.key(4, VARINT);
    w.varint(retry.multiplier.to_bits().swap_bytes());
    w.uint(5, u64::from(retry.jitter));
    w.some_uint(6, retry.max_retry_duration_ms);
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

fn state_number(state: TaskState) -> u64 {
    match state {
        TaskState::Scheduled => 0,
        TaskState::Running => 1,
        TaskState::Succeeded => 2,
        TaskState::Failed => 3,
        TaskState::Expired => 4,
        TaskState::Cancelled => 5,
        TaskState::Superseded => 6,
    }
}

fn state_of(n: u64) -> Result<TaskState, String> {
    Ok(match n {
        0 => TaskState::Scheduled,
        1 => TaskState::Running,
        2 => TaskState::Succeeded,
        3 => TaskState::Failed,
        4 => TaskState::Expired,
        5 => TaskState::Cancelled,
        6 => TaskState::Superseded,
        other => return Err(format!("unknown task state {other}")),
    })
}

pub(super) fn decode_task(bytes: &[u8]) -> Result<TaskRecord, String> {
    let body = bytes
        .strip_prefix(&[MARKER])
        .ok_or("not a binary task record")?;
    // Times are stored relative to `created_at`, which may come after them.
    let mut times = [None::<i64>; 6];
    let mut task = blank();
    let mut r = Reader(body);
    while let Some((number, value)) = r.field()? {
        let slot = match number {
            8 => Some(0),
            9 => Some(1),
            10 => Some(2),
            13 => Some(3),
            22 => Some(4),
            24 => Some(5),
            _ => None,
        };
        if let Some(slot) = slot {
            times[slot] = Some(zigzag_of(value.uint()?));
            continue;
        }
        match number {
            1 => task.id = value.uint()?,
            2 => task.gate = value.text()?,
            3 => task.gate_id = narrow(value.uint()?)?,
            4 => task.state = state_of(value.uint()?)?,
            5 => task.webhook = Some(webhook_from(value.bytes()?)?),
            6 => task.plugin = Some(plugin_from(value.bytes()?)?),
            7 => task.created_at = value.uint()?,
            11 => task.timeout_ms = value.uint()?,
            12 => task.retry = retry_from(value.bytes()?)?,
            14 => task.idempotency_key = Some(value.text()?),
            15 => {
                let (name, text) = pair_from(value.bytes()?)?;
                task.labels.insert(name, text);
            }
            16 => task.key = Some(value.text()?),
            17 => task.coalesce_key = Some(value.text()?),
            18 => task.priority = narrow(value.uint()?)?,
            19 => task.supersedes = Some(value.uint()?),
            20 => task.attempts = narrow(value.uint()?)?,
            21 => task.attempt_offset = narrow(value.uint()?)?,
            23 => task.last_error = Some(value.text()?),
            25 => task.schedule = Some(value.text()?),
            26 => task.parent = Some(value.uint()?),
            27 => task.root = Some(value.uint()?),
            28 => task.depth = narrow(value.uint()?)?,
            29 => task.expires_after_ms = Some(value.uint()?),
            _ => {}
        }
    }
    let base = task.created_at;
    let at = |slot: usize| times[slot].map(|delta| base.wrapping_add(delta as u64));
    task.scheduled_at = at(0).unwrap_or(base);
    task.due_at = times[1].map_or(task.scheduled_at, |delta| {
        task.scheduled_at.wrapping_add(delta as u64)
    });
    task.order_at = at(2);
    task.expires_at = at(3);
    task.first_attempt_at = at(4);
    task.finished_at = at(5);
    Ok(task)
}

/// A record with every field at what a missing field reads as.
fn blank() -> TaskRecord {
    TaskRecord {
        id: 0,
        gate: String::new(),
        gate_id: 0,
        state: TaskState::Scheduled,
        webhook: None,
        plugin: None,
        created_at: 0,
        scheduled_at: 0,
        due_at: 0,
        order_at: None,
        timeout_ms: 0,
        retry: RetryRecord {
            max_attempts: 0,
            initial_ms: 0,
            max_ms: 0,
            multiplier: 0.0,
            jitter: false,
            max_retry_duration_ms: None,
        },
        expires_at: None,
        expires_after_ms: None,
        idempotency_key: None,
        labels: BTreeMap::new(),
        key: None,
        coalesce_key: None,
        priority: DEFAULT_PRIORITY,
        supersedes: None,
        attempts: 0,
        attempt_offset: 0,
        first_attempt_at: None,
        last_error: None,
        finished_at: None,
        schedule: None,
        parent: None,
        root: None,
        depth: 0,
    }
}

fn webhook_from(bytes: &[u8]) -> Result<WebhookRecord, String> {
    // Every field left out reads as this: POST, no headers, no body.
    let mut webhook = WebhookRecord::empty();
    let mut r = Reader(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => webhook.url = value.text()?,
            2 => webhook.method = value.text()?,
            3 => {
                let (name, text) = pair_from(value.bytes()?)?;
                webhook.headers.insert(name, text);
            }
            4 => {
                let mut body = Reader(value.bytes()?);
                while let Some((number, value)) = body.field()? {
                    match number {
                        1 => {
                            let json =
                                JsonText::parse(value.text()?).map_err(|e| format!("body: {e}"))?;
                            webhook.body = Some(BodyRecord::Json(json));
                        }
                        2 => webhook.body = Some(BodyRecord::Text(value.text()?)),
                        _ => {}
                    }
                }
            }
            5 => {
                webhook.secret_headers.insert(value.text()?);
            }
            _ => {}
        }
    }
    Ok(webhook)
}

fn plugin_from(bytes: &[u8]) -> Result<PluginCallRecord, String> {
    let mut plugin = PluginCallRecord {
        name: String::new(),
        version: String::new(),
        input: serde_json::Value::Null,
        sha256: None,
    };
    let mut r = Reader(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => plugin.name = value.text()?,
            2 => plugin.version = value.text()?,
            4 => plugin.sha256 = Some(value.text()?),
            3 => {
                plugin.input =
                    serde_json::from_slice(value.bytes()?).map_err(|e| format!("input: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(plugin)
}

fn retry_from(bytes: &[u8]) -> Result<RetryRecord, String> {
    let mut retry = blank().retry;
    let mut r = Reader(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => retry.max_attempts = narrow(value.uint()?)?,
            2 => retry.initial_ms = value.uint()?,
            3 => retry.max_ms = value.uint()?,
            4 => retry.multiplier = f64::from_bits(value.uint()?.swap_bytes()),
            5 => retry.jitter = value.uint()? != 0,
            6 => retry.max_retry_duration_ms = Some(value.uint()?),
            _ => {}
        }
    }
    Ok(retry)
}

fn pair_from(bytes: &[u8]) -> Result<(String, String), String> {
    let (mut name, mut text) = (String::new(), String::new());
    let mut r = Reader(bytes);
    while let Some((number, value)) = r.field()? {
        match number {
            1 => name = value.text()?,
            2 => text = value.text()?,
            _ => {}
        }
    }
    Ok((name, text))
}

fn narrow<T: TryFrom<u64>>(n: u64) -> Result<T, String> {
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)) as u64
}

fn zigzag_of(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn key(&mut self, number: u64, wire: u8) {
        self.varint(number << 3 | u64::from(wire));
    }

    fn slice(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A number, left out when zero.
    fn uint(&mut self, number: u64, n: u64) {
        if n != 0 {
            self.key(number, VARINT);
            self.varint(n);
        }
    }

    /// An optional number: present even when zero.
    fn some_uint(&mut self, number: u64, n: Option<u64>) {
        if let Some(n) = n {
            self.key(number, VARINT);
            self.varint(n);
        }
    }

    /// A time as its difference from `base`, left out when equal to it.
    fn time(&mut self, number: u64, at: u64, base: u64) {
        if at != base {
            self.some_time(number, Some(at), base);
        }
    }

    fn some_time(&mut self, number: u64, at: Option<u64>, base: u64) {
        if let Some(at) = at {
            // Wrapping, so every pair of times round-trips; near ones are small.
            self.key(number, VARINT);
            self.varint(zigzag(at.wrapping_sub(base) as i64));
        }
    }

    /// Text, left out when empty.
    fn text(&mut self, number: u64, text: &str) {
        if !text.is_empty() {
            self.key(number, BYTES);
            self.slice(text.as_bytes());
        }
    }

    fn some_text(&mut self, number: u64, text: Option<&str>) {
        if let Some(text) = text {
            self.key(number, BYTES);
            self.slice(text.as_bytes());
        }
    }

    fn bytes(&mut self, number: u64, bytes: &[u8]) {
        self.key(number, BYTES);
        self.slice(bytes);
    }

    fn pair(&mut self, number: u64, name: &str, value: &str) {
        self.message(number, |w| {
            w.text(1, name);
            w.text(2, value);
        });
    }

    fn message(&mut self, number: u64, fields: impl FnOnce(&mut Writer)) {
        let mut inner = Writer(Vec::new());
        fields(&mut inner);
        self.bytes(number, &inner.0);
    }
}

enum Value<'a> {
    Varint(u64),
    /// Eight bytes (no field of this version has them; a later one may).
    Fixed,
    Bytes(&'a [u8]),
}

impl<'a> Value<'a> {
    fn uint(&self) -> Result<u64, String> {
        match self {
            Value::Varint(n) => Ok(*n),
            _ => Err("a number was expected".into()),
        }
    }

    fn bytes(&self) -> Result<&'a [u8], String> {
        match self {
            Value::Bytes(b) => Ok(b),
            _ => Err("bytes were expected".into()),
        }
    }

    fn text(&self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|e| e.to_string())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("the record ends early")?;
            self.0 = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(n);
            }
        }
        Err("a number is too long".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.0.len() {
            return Err("the record ends early".into());
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// The next field's number and value, `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Value::Fixed
            }
            BYTES => {
                let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Value::Bytes(self.take(len)?)
            }
            other => return Err(format!("unknown wire type {other}")),
        };
        Ok(Some((key >> 3, value)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::core::rng::Rng;

    /// A webhook task as the API makes it from `{"gate", "webhook": {"url",
    /// "body"}}`.
    fn plain() -> TaskRecord {
        let now = 1_764_892_800_000;
        TaskRecord {
            id: 1_234_567,
            gate: "billing".into(),
            gate_id: 3,
            state: TaskState::Scheduled,
            webhook: Some(WebhookRecord {
                url: "http://127.0.0.1:38111/w5".into(),
                method: "POST".into(),
                headers: BTreeMap::new(),
                body: Some(BodyRecord::Json(JsonText::of(
                    &serde_json::json!({ "n": 1 }),
                ))),
                secret_headers: BTreeSet::new(),
            }),
            plugin: None,
            created_at: now,
            scheduled_at: now + 3_600_000,
            due_at: now + 3_600_000,
            timeout_ms: 30_000,
            retry: RetryRecord {
                max_attempts: 5,
                initial_ms: 1_000,
                max_ms: 300_000,
                multiplier: 2.0,
                jitter: true,
                max_retry_duration_ms: None,
            },
            ..blank()
        }
    }

    pub(super) fn text(rng: &mut Rng) -> String {
        let pool = ["", "a", "invoice", "ü", "x y", "日本", "\"{}\"", "0"];
        (0..rng.below(4))
            .map(|_| pool[rng.below(pool.len() as u64) as usize])
            .collect()
    }

    pub(super) fn maybe<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
        (rng.below(2) == 0).then(|| f(rng))
    }

    pub(super) fn time(rng: &mut Rng, base: u64) -> u64 {
        match rng.below(4) {
            0 => base,
            1 => base.saturating_sub(rng.below(1 << 40)),
            2 => base + rng.below(1 << 40),
            _ => rng.next_u64(),
        }
    }

    pub(super) fn number(rng: &mut Rng) -> u64 {
        match rng.below(3) {
            0 => 0,
            1 => rng.below(300),
            _ => rng.next_u64(),
        }
    }

    fn random(rng: &mut Rng) -> TaskRecord {
        let mut task = plain();
        let base = number(rng);
        task.id = number(rng);
        task.gate = text(rng);
        task.gate_id = number(rng) as u32;
        task.state = state_of(rng.below(7)).expect("state");
        let json = |rng: &mut Rng| serde_json::json!({ "k": text(rng), "n": rng.below(9) });
        task.webhook = maybe(rng, |rng| WebhookRecord {
            url: text(rng),
            method: ["POST", "GET", "PUT", ""][rng.below(4) as usize].into(),
            headers: (0..rng.below(3)).map(|_| (text(rng), text(rng))).collect(),
            body: match rng.below(3) {
                0 => None,
                1 => Some(BodyRecord::Json(JsonText::of(&json(rng)))),
                _ => Some(BodyRecord::Text(text(rng))),
            },
            secret_headers: (0..rng.below(3)).map(|_| text(rng)).collect(),
        });
        task.plugin = maybe(rng, |rng| PluginCallRecord {
            name: text(rng),
            version: text(rng),
            input: json(rng),
            // Never empty: a hex digest.
            sha256: maybe(rng, |rng| format!("{:064x}", rng.below(1 << 60))),
        });
        task.created_at = base;
        task.scheduled_at = time(rng, base);
        task.due_at = time(rng, base);
        task.order_at = maybe(rng, |rng| time(rng, base));
        task.timeout_ms = number(rng);
        task.retry = RetryRecord {
            max_attempts: number(rng) as u32,
            initial_ms: number(rng),
            max_ms: number(rng),
            multiplier: [0.0, 1.5, 2.0, -3.25, f64::MAX][rng.below(5) as usize],
            jitter: rng.below(2) == 0,
            max_retry_duration_ms: maybe(rng, number),
        };
        task.expires_at = maybe(rng, |rng| time(rng, base));
        task.expires_after_ms = maybe(rng, number);
        task.idempotency_key = maybe(rng, text);
        task.labels = (0..rng.below(3)).map(|_| (text(rng), text(rng))).collect();
        task.key = maybe(rng, text);
        task.coalesce_key = maybe(rng, text);
        task.priority = rng.below(10) as u8;
        task.supersedes = maybe(rng, number);
        task.attempts = number(rng) as u32;
        task.attempt_offset = number(rng) as u32;
        task.first_attempt_at = maybe(rng, |rng| time(rng, base));
        task.last_error = maybe(rng, text);
        task.finished_at = maybe(rng, |rng| time(rng, base));
        task.schedule = maybe(rng, text);
        task.parent = maybe(rng, number);
        task.root = maybe(rng, number);
        task.depth = number(rng) as u32;
        task
    }

    #[test]
    fn every_record_reads_back_as_written() {
        let mut rng = Rng::new(0x5eed);
        for _ in 0..20_000 {
            let task = random(&mut rng);
            let bytes = encode_task(&task);
            assert!(is_compact(&bytes));
            assert_eq!(decode_task(&bytes), Ok(task));
        }
    }

    #[test]
    fn a_plain_webhook_task_is_a_fifth_of_its_json() {
        let task = plain();
        let bytes = encode_task(&task);
        let json = serde_json::to_vec(&task).expect("json");
        assert!(bytes.len() <= 90, "{} bytes", bytes.len());
        assert!(
            bytes.len() * 5 <= json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert!(!is_compact(&json), "JSON never starts with the marker");
    }

    #[test]
    fn json_records_of_earlier_versions_still_read() {
        let mut rng = Rng::new(0x0150);
        for _ in 0..2_000 {
            let task = random(&mut rng);
            let json = serde_json::to_vec(&task).expect("json");
            let read = crate::store::decode_task(&json).expect("JSON reads");
            assert_eq!(read, task);
        }
        // A body as earlier versions wrote it, with a value of every kind.
        let mut task = plain();
        let body = r#"{"a":[1,2.5,"x",null,true],"b":{"c":{}}}"#;
        let mut json = serde_json::to_value(&task).expect("json");
        json["webhook"]["body"] = serde_json::json!({ "json": serde_json::from_str::<serde_json::Value>(body).expect("body") });
        let read =
            crate::store::decode_task(&serde_json::to_vec(&json).expect("json")).expect("reads");
        let text = JsonText::parse(body.to_string()).expect("body");
        task.webhook.as_mut().expect("webhook").body = Some(BodyRecord::Json(text));
        assert_eq!(read, task);
    }

    #[test]
    fn damaged_records_are_refused_not_misread() {
        let bytes = encode_task(&plain());
        for cut in 1..bytes.len() {
            // Every prefix either fails or reads as a record with fields
            // left out; none panics.
            let _ = decode_task(&bytes[..cut]);
        }
        assert!(decode_task(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode_task(&[MARKER, 0x27]).is_err(), "wire type 7");
        assert!(decode_task(&[MARKER, 4 << 3, 9]).is_err(), "state 9");
        assert!(decode_task(b"{}").is_err(), "JSON is not this encoding");
    }

    #[test]
    fn fields_this_build_does_not_know_are_skipped() {
        let mut bytes = encode_task(&plain());
        let mut w = Writer(Vec::new());
        w.uint(99, 7);
        w.text(100, "later");
        w.key(101, FIXED64);
        w.0.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&w.0);
        assert_eq!(decode_task(&bytes), Ok(plain()));
    }
}
