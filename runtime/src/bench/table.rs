//! The result table, each row with the share of the machine's CPU time the
//! hypervisor took while it was measured ("steal", from `/proc/stat`). On
//! this shared virtual machine it swings from 0 to a third within a
//! minute, and the figures with it: a row read beside a high steal is the
//! machine's, not the build's. (Steal at 0 does not make a quiet machine:
//! the server's CPU time per task still varies by half again between
//! hours, which a fixed piece of CPU work timed beside it did not show.)

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::clock;

/// One row: workload, result, target.
pub(super) type Row = (String, String, String);

pub(super) struct Table {
    rows: Vec<(Row, Option<f64>)>,
    /// The CPU times at the last row, and when.
    since: Option<CpuTimes>,
    at: Instant,
    /// The steal share given to the last row (`None` where `/proc/stat`
    /// cannot be read): rows pushed together (one workload's) share it.
    last: Option<f64>,
}

/// Rows pushed within this of the one before belong to the same
/// measurement.
const TOGETHER: Duration = Duration::from_millis(200);

impl Table {
    pub(super) fn new() -> Table {
        Table {
            rows: Vec::new(),
            since: CpuTimes::read(),
            at: clock::instant(),
            last: None,
        }
    }

    /// Adds a row measured since the last one.
    pub(super) fn push(&mut self, row: Row) {
        let now = CpuTimes::read();
        if clock::instant().saturating_duration_since(self.at) >= TOGETHER || self.rows.is_empty() {
            self.last = match (&self.since, &now) {
                (Some(before), Some(after)) => after.steal_share_since(before),
                _ => None,
            };
            self.since = now;
        }
        self.at = clock::instant();
        self.rows.push((row, self.last));
    }

    /// Adds the rows of one workload, measured since the last row.
    pub(super) fn append(&mut self, rows: &mut Vec<Row>) {
        for row in rows.drain(..) {
            self.push(row);
        }
    }

    /// Each row's steal share in per cent, by workload, for the JSON.
    pub(super) fn steal(&self) -> Value {
        let shares: serde_json::Map<String, Value> = (self.rows.iter())
            .map(|((name, _, _), share)| (name.clone(), json!(share.map(|s| s * 100.0))))
            .collect();
        Value::Object(shares)
    }

    pub(super) fn print(&self) {
        println!("{:<36} {:<44} {:>5}  TARGET", "WORKLOAD", "RESULT", "STEAL");
        for ((w, r, t), share) in &self.rows {
            let steal = share.map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0));
            println!("{w:<36} {r:<44} {steal:>5}  {t}");
        }
        println!(
            "\nSTEAL: the share of the CPU time the hypervisor took while the row was measured."
        );
    }
}

/// The machine's CPU times, all CPUs, in clock ticks: (steal, all).
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    steal: u64,
    all: u64,
}

impl CpuTimes {
    fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        CpuTimes::parse(stat.lines().next()?)
    }

    /// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
    /// (guest time is counted in user already).
    fn parse(line: &str) -> Option<CpuTimes> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let steal = *ticks.get(7)?;
        Some(CpuTimes {
            steal,
            all: ticks.iter().sum(),
        })
    }

    fn steal_share_since(&self, before: &CpuTimes) -> Option<f64> {
        let all = self.all.checked_sub(before.all).filter(|&a| a > 0)?;
        let steal = self.steal.checked_sub(before.steal)?;
        Some(steal as f64 / all as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let before = CpuTimes::parse("cpu  100 0 50 800 10 0 5 35 0 0").expect("parses");
        let after = CpuTimes::parse("cpu  160 0 70 880 10 0 5 75 0 0").expect("parses");
        assert_eq!(
            before,
            CpuTimes {
                steal: 35,
                all: 1000
            }
        );
        assert_eq!(after.steal_share_since(&before), Some(40.0 / 200.0));
        assert_eq!(before.steal_share_since(&before), None, "no time passed");
        assert_eq!(
            CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8"),
            None,
            "one CPU's line"
        );
        assert_eq!(CpuTimes::parse("cpu  1 2 3"), None, "an old kernel's line");
    }
}
