// The Sluice SDK for plugins written in JavaScript: tasks that run as
// WebAssembly components (built with componentize-js), whose only way out is
// HTTP through their task's gate.
//
//   import { plugin, getJson, log } from './sluice-sdk/index.js';
//
//   export const handler = plugin(async (ctx, input) => {
//     const apps = await getJson(`${input.api}/apps`);   // a 5xx retries, a 404 fails
//     log.info(`${apps.length} apps`);
//     return { apps: apps.length };                        // the output, as JSON
//   });
//
// This file needs the world's `sluice:task/log` import, which exists only
// inside a component; the logic is in `core.js`, which runs anywhere.

import { log as hostLog } from 'sluice:task/log@0.1.0';

import { createHttp, createLog, createPlugin } from './core.js';

export {
  Fail,
  HttpError,
  HttpResponse,
  MAX_BODY_BYTES,
  Retry,
  check,
  decide,
  expectOk,
  fail,
  parseDuration,
  parseRetryAfter,
  parseTimestamp,
  retry,
} from './core.js';

/** `export const handler = plugin(async (ctx, input) => output)`: the component's entry point. */
export const plugin = createPlugin({ log: hostLog });

/** Lines for the attempt's history: `log.info('hibernated', id)`. */
export const log = createLog(hostLog);

/** HTTP through the task's gate: every request takes a token from it. */
export const { send, getJson, postJson, putJson, del } = createHttp({
  fetch: (url, init) => fetch(url, init),
});
