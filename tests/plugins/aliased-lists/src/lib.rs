//! Hands the host lists whose elements all point at the same bytes: cheap for
//! the plugin (one buffer in its own memory), but a host that copies each
//! element copies the buffer once per element. The host must refuse to copy
//! more out of one attempt than its memory could hold. Chosen by the input's
//! `mode`, each with `count` elements over one buffer of `bytes`:
//!
//! - `next`: succeeds asking for `count` next tasks, each the whole buffer.
//! - `fields`: builds one header list of `count` values, each the whole
//!   buffer, and fails saying how the host answered (when it did).
//!
//! Built on the SDK's raw bindings, not `sluice_sdk::export!`: the SDK never
//! aliases. Only ever run it under the host's tests.

use std::mem::ManuallyDrop;

use serde::Deserialize;
use sluice_sdk::wit::exports::sluice::task::handler::{Context, Guest, Outcome, Success};
use wasip2::http::types::Fields;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Next,
    Fields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    mode: Mode,
    count: usize,
    bytes: usize,
}

struct Task;

impl Guest for Task {
    fn run(_ctx: Context, input: String) -> Outcome {
        let input: Input = match serde_json::from_str(&input) {
            Ok(input) => input,
            Err(e) => return Outcome::Fail(format!("invalid input: {e}")),
        };
        // Never freed: the aliases below would free it once each.
        let mut buffer = ManuallyDrop::new(vec![b'x'; input.bytes]);
        let (ptr, len) = (buffer.as_mut_ptr(), buffer.len());
        match input.mode {
            Mode::Next => {
                let next = (0..input.count)
                    // SAFETY: not sound, on purpose: every element claims the
                    // one buffer. They are only lowered for the host to read;
                    // the host is expected to refuse them before the guest's
                    // post-return would free them.
                    .map(|_| unsafe { String::from_raw_parts(ptr, len, len) })
                    .collect();
                Outcome::Success(Success {
                    output: String::new(),
                    next,
                })
            }
            Mode::Fields => {
                let entries = ManuallyDrop::new(
                    (0..input.count)
                        .map(|i| {
                            // SAFETY: as above; the list is never dropped.
                            let value = unsafe { Vec::from_raw_parts(ptr, len, len) };
                            (format!("x-{i}"), value)
                        })
                        .collect::<Vec<_>>(),
                );
                match Fields::from_list(&entries) {
                    Ok(_) => Outcome::Fail("the host took the whole list".into()),
                    Err(e) => Outcome::Fail(format!("the host refused the list: {e:?}")),
                }
            }
        }
    }
}

sluice_sdk::wit::__export_task!(Task with_types_in sluice_sdk::wit);
