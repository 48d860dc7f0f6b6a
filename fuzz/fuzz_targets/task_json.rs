//! The API's JSON bodies: the same bytes as a task, a batch, a gate and a
//! schedule. Whatever comes in, the answer is a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::api::wire::{BatchBody, GateBody, ScheduleBody, TaskBody};
use sluice::core::Timestamp;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp::from_ms(1_774_742_400_000);
    if let Ok(task) = serde_json::from_slice::<TaskBody>(data) {
        let _ = task.validate(now, "");
    }
    if let Ok(batch) = serde_json::from_slice::<BatchBody>(data) {
        for task in batch.tasks {
            let _ = task.validate(now, "");
        }
    }
    if let Ok(gate) = serde_json::from_slice::<GateBody>(data) {
        let _ = gate.validate();
    }
    if let Ok(schedule) = serde_json::from_slice::<ScheduleBody>(data) {
        let _ = schedule.validate(now);
    }
});
