// A hostile JavaScript plugin for the host's sandbox tests: one abuse per
// input, like the Rust ones in tests/plugins/.
//
// | input | what it does | what the host must do |
// |---|---|---|
// | `{"do": "loop"}` | spins forever, never calling the host | stop it at the deadline (epoch interruption); the attempt times out |
// | `{"do": "memory"}` | allocates and fills 1 MiB after 1 MiB, keeping all of it, logging `holding N MiB` every 8 MiB | hold it to the memory limit; it traps, and that attempt fails |
// | `{"do": "flood", "url": "http://127.0.0.1:9000/", "count": 100}` | `count` (default 100) concurrent GETs to `url` | pace them through the gate, never more than its concurrency in flight |
//
// `flood` succeeds with `{"count": 100, "ok": 100, "failed": 0, "elapsed_ms": 9800,
// "first_error": null}`, as `request-burst` does; non-2xx answers count as failed.
//
// Never run it outside the host's test suite.

import { check, expectOk, fail, log, plugin, send } from '../../../../sdk/js/index.js';

const CHUNK_BYTES = 1 << 20;

export const handler = plugin(async (_ctx, input) => {
  check(input, { do: 'string', 'url?': 'string', 'count?': 'uint' });
  switch (input.do) {
    case 'loop': {
      let spins = 0;
      for (;;) {
        spins = (spins + 1) | 0;
      }
    }
    case 'memory': {
      const hoard = [];
      for (;;) {
        // Filled, so that every page is really touched.
        hoard.push(new Uint8Array(CHUNK_BYTES).fill(0xa5));
        if (hoard.length % 8 === 0) {
          log.info(`holding ${hoard.length} MiB`);
        }
      }
    }
    case 'flood':
      return flood(input.url, input.count ?? 100);
    default:
      throw fail(`invalid input: do: unknown mode ${JSON.stringify(input.do)}, expected \`loop\`, \`memory\` or \`flood\``);
  }
});

async function flood(url, count) {
  if (url === undefined || url === null) {
    throw fail('invalid input: flood needs `url`');
  }
  const started = Date.now();
  // All of them at once, so that all of them wait on the gate together.
  const requests = Array.from({ length: count }, (_, n) =>
    send(url, { headers: { 'x-burst-request': String(n) } }).then(expectOk),
  );
  let ok = 0;
  let failed = 0;
  let firstError = null;
  for (const result of await Promise.allSettled(requests)) {
    if (result.status === 'fulfilled') {
      ok += 1;
    } else {
      failed += 1;
      firstError ??= result.reason instanceof Error ? result.reason.message : String(result.reason);
    }
  }
  return { count, ok, failed, elapsed_ms: Date.now() - started, first_error: firstError };
}
