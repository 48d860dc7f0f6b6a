// Hibernates the apps that have been idle too long.
//
// Input: `{"api": "http://apps.internal:8080", "idle_after": "24h"}`.
// `GET {api}/apps` lists the apps, each with its `last_active` time (RFC 3339).
// Every app idle for longer than `idle_after` and not already hibernated gets
// `POST {api}/apps/{id}/hibernate`. `idle_after` is in hours or smaller units
// (`"90m"`, `"24h"`, `"168h"`), since days vary in length. Every request goes
// through the task's gate, so a thousand idle apps are hibernated at the
// gate's pace, not in one burst.
//
// Hibernating is idempotent, so a retry simply carries on: an app hibernated by
// an earlier attempt is listed as `hibernated` and skipped. If the attempt's
// deadline comes near with apps left, it stops and asks for a retry.
//
// Output: `{"apps": 40, "idle": 12, "hibernated": 11, "skipped": 1}`.
//
// The same job, contract and log lines as plugins/hibernate-idle (Rust).

import { check, expectOk, fail, getJson, log, parseDuration, parseTimestamp, plugin, retry, send } from '../../../sdk/js/index.js';

/** Stop starting new requests this close to the deadline, in milliseconds. */
const DEADLINE_MARGIN_MS = 5_000;

export const handler = plugin(async (ctx, input) => {
  check(input, { api: 'string', idle_after: 'duration' });
  const idleAfter = parseDuration(input.idle_after);
  if (idleAfter < 0) {
    throw fail('invalid input: idle_after must not be negative');
  }
  const api = input.api.replace(/\/+$/, '');
  const url = `${api}/apps`;
  // `state`: `running`, `hibernated`, ...; absent means running.
  const apps = check(await getJson(url), [{ id: 'string', last_active: 'timestamp', 'state?': 'string' }], {
    what: `answer from ${url} is not the JSON expected`,
    allowUnknown: true,
  });
  const now = Date.now();
  const idle = apps
    .filter((app) => app.state !== 'hibernated')
    .filter((app) => now - parseTimestamp(app.last_active).getTime() > idleAfter);
  log.info(`${idle.length} of ${apps.length} apps idle for over ${isoDuration(idleAfter)}`);

  let hibernated = 0;
  let skipped = 0;
  for (const app of idle) {
    if (ctx.remaining() < DEADLINE_MARGIN_MS) {
      throw retry(`deadline near after hibernating ${hibernated} of ${idle.length} idle apps; the next attempt carries on`);
    }
    const response = await send(`${api}/apps/${app.id}/hibernate`, { method: 'POST' });
    if (response.status === 404 || response.status === 409) {
      // Deleted, or woken up or hibernated by someone else meanwhile.
      log.info(`skipped ${app.id}: the API answered ${response.status}`);
      skipped += 1;
    } else {
      expectOk(response);
      log.info(`hibernated ${app.id} (last active ${rfc3339(parseTimestamp(app.last_active))})`);
      hibernated += 1;
    }
  }
  return { apps: apps.length, idle: idle.length, hibernated, skipped };
});

/** A duration as ISO 8601, as the Rust example prints it: `PT24H`, `PT1H30M`, `PT0.2S`. */
function isoDuration(ms) {
  const sign = ms < 0 ? '-' : '';
  let rest = Math.abs(ms);
  const hours = Math.floor(rest / 3_600_000);
  rest -= hours * 3_600_000;
  const minutes = Math.floor(rest / 60_000);
  rest -= minutes * 60_000;
  const seconds = Number((rest / 1_000).toFixed(9));
  let text = 'PT';
  if (hours) text += `${hours}H`;
  if (minutes) text += `${minutes}M`;
  if (seconds || text === 'PT') text += `${seconds}S`;
  return sign + text;
}

/** A time in UTC, as the Rust example prints it: `2026-12-01T00:00:00Z`, fractions only when there are any. */
function rfc3339(date) {
  return date.toISOString().replace(/\.(\d*?)0*Z$/, (_, digits) => (digits ? `.${digits}Z` : 'Z'));
}
