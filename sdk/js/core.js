// The pure part of the Sluice JavaScript SDK: everything but the world's
// imports, so that it runs (and is tested) under plain Node as well as inside
// a component. `index.js` wires it to the host's `log` and to `fetch`.
//
// Nothing here reads a clock, logs or fetches by itself: each factory takes
// what it needs (`log`, `fetch`, `now`), and the tests pass fakes.

/** The largest response body read into memory, unless a request says otherwise. */
export const MAX_BODY_BYTES = 8 << 20;

/** How much of an error answer's body an `HttpError` keeps. */
const ERROR_BODY_CHARS_MAX = 512;

/** The largest `after-ms` the host takes (u64::MAX). */
const U64_MAX = (1n << 64n) - 1n;

const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'];

// ---------------------------------------------------------------------------
// How an attempt ends

/**
 * Try the attempt again later. Throw it (or return it) from the task
 * function: `throw retry('busy', { after: 5000 })`.
 */
export class Retry extends Error {
  /**
   * @param {string} reason why, for the attempt's history
   * @param {{after?: number}} [options] the earliest time to try again, in
   *   milliseconds from now; without it the task's backoff decides
   */
  constructor(reason, { after } = {}) {
    super(String(reason));
    this.name = 'Retry';
    if (after !== undefined && after !== null && !(typeof after === 'number' && after >= 0)) {
      throw new TypeError(`retry after must be a number of milliseconds >= 0, not ${String(after)}`);
    }
    /** @type {number | undefined} */
    this.after = after ?? undefined;
  }

  /** The reason, as the attempt's history shows it. */
  get reason() {
    return this.message;
  }
}

/** Fail the task now, whatever attempts it has left: `throw fail('customer deleted')`. */
export class Fail extends Error {
  /** @param {string} reason why, for the attempt's history */
  constructor(reason) {
    super(String(reason));
    this.name = 'Fail';
  }

  /** The reason, as the attempt's history shows it. */
  get reason() {
    return this.message;
  }
}

/** A `Retry` to throw: `throw retry('inventory is restarting', { after: 30_000 })`. */
export function retry(reason, options) {
  return new Retry(reason, options);
}

/** A `Fail` to throw: `throw fail('customer deleted')`. */
export function fail(reason) {
  return new Fail(reason);
}

/**
 * Why an HTTP request did not give the answer asked for. `kind` is one of
 * `timeout`, `transport`, `status`, `body-too-large`, `json`,
 * `invalid-request`; `decide` turns it into a retry or a failure the way
 * Sluice treats a webhook's answer.
 */
export class HttpError extends Error {
  constructor(kind, url, { status, retryAfter, body, detail, limit } = {}) {
    super(httpErrorMessage(kind, url, { status, body, detail, limit }));
    this.name = 'HttpError';
    this.kind = kind;
    this.url = url;
    /** The status code, for `kind === 'status'`. */
    this.status = status;
    /** The answer's `Retry-After`, in milliseconds, if it had one. */
    this.retryAfter = retryAfter;
    /** The start of the answer's body (up to 512 characters), for `kind === 'status'`. */
    this.body = body;
    this.detail = detail;
  }
}

function httpErrorMessage(kind, url, { status, body, detail, limit }) {
  switch (kind) {
    case 'timeout':
      return `request to ${url} timed out`;
    case 'transport':
      return `request to ${url} failed: ${detail}`;
    case 'status': {
      const text = (body ?? '').trim();
      return `${url} answered ${status}${text ? `: ${text}` : ''}`;
    }
    case 'body-too-large':
      return `answer from ${url} is larger than ${limit} bytes`;
    case 'json':
      return `answer from ${url} is not the JSON expected: ${detail}`;
    case 'invalid-request':
      return `invalid request to ${url}: ${detail}`;
    default:
      return `request to ${url}: ${detail ?? kind}`;
  }
}

/**
 * Decides what a thrown value means for the attempt, as Sluice decides for a
 * webhook's answer, and returns a `Retry` or a `Fail`:
 *
 * | thrown | gives |
 * |---|---|
 * | `Retry`, `Fail` | itself |
 * | `HttpError` timeout, transport (connection) error | retry after the backoff |
 * | `HttpError` status 408, 429, 5xx | retry, after its `Retry-After` if it had one |
 * | `HttpError` any other status (3xx: redirects are not followed) | fail |
 * | `HttpError` body too large, not the JSON expected, invalid request | fail |
 * | `SyntaxError` (such as from `JSON.parse`) | fail: the same text will not parse better next time |
 * | anything else | retry after the backoff (like a crash of the webhook's receiver) |
 */
export function decide(err) {
  if (err instanceof Retry || err instanceof Fail) {
    return err;
  }
  if (err instanceof HttpError) {
    switch (err.kind) {
      case 'timeout':
      case 'transport':
        return new Retry(err.message);
      case 'status':
        if (err.status === 408 || err.status === 429 || (err.status >= 500 && err.status <= 599)) {
          return new Retry(err.message, { after: err.retryAfter });
        }
        return new Fail(err.message);
      default:
        return new Fail(err.message);
    }
  }
  if (err instanceof SyntaxError) {
    return new Fail(describeError(err));
  }
  return new Retry(describeError(err));
}

/** `TypeError: x is undefined` for an error, the value as text otherwise. */
function describeError(err) {
  if (err instanceof Error) {
    return err.message ? `${err.name}: ${err.message}` : err.name;
  }
  if (typeof err === 'string') {
    return err;
  }
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

/** Whether a thrown value is something the task meant (not a bug or a crash). */
function expected(err) {
  return err instanceof Retry || err instanceof Fail || err instanceof HttpError;
}

// ---------------------------------------------------------------------------
// The world's `handler.run`: context in, outcome out

/**
 * Makes `plugin(fn)`, which turns `async (ctx, input) => output` into the
 * object the component exports as `handler`.
 *
 * @param {{log: (level: string, message: string) => void, now?: () => number}} deps
 *   the host's `log` import and the wall clock in milliseconds
 */
export function createPlugin({ log, now = Date.now }) {
  return function plugin(fn) {
    if (typeof fn !== 'function') {
      throw new TypeError('plugin() takes the task function: plugin(async (ctx, input) => output)');
    }
    return {
      run(ctx, input) {
        return runAttempt(fn, ctx, input, { log, now });
      },
    };
  };
}

/**
 * Runs one attempt: decodes the input, awaits the task function and encodes
 * how it ended as the world's `outcome`. Throws (which traps) only when the
 * plugin ran out of memory, as a Rust plugin would; never otherwise.
 */
export async function runAttempt(fn, witCtx, inputText, { log, now = Date.now }) {
  let trap;
  try {
    const next = [];
    const ctx = makeContext(witCtx, next, now);
    let input;
    try {
      input = decodeInput(inputText);
    } catch (err) {
      return encode(err instanceof Fail ? err : new Fail(`invalid input: ${describeError(err)}`));
    }
    let result;
    try {
      result = await fn(ctx, input);
    } catch (err) {
      if (outOfMemory(err)) {
        // Like a Rust plugin's: running out of memory traps, and the host
        // ends the attempt as an error.
        writeLog(log, 'error', 'out of memory');
        trap = { err };
        throw err;
      }
      if (!expected(err)) {
        writeLog(log, 'error', `uncaught ${err instanceof Error && err.stack ? `${describeError(err)}\n${err.stack}` : describeError(err)}`);
      }
      return encode(decide(err));
    }
    if (result instanceof Retry || result instanceof Fail) {
      return encode(result);
    }
    return encodeSuccess(result, next);
  } catch (err) {
    if (trap) {
      throw trap.err;
    }
    return { tag: 'fail', val: `the plugin's SDK failed: ${describeError(err)}` };
  }
}

/** SpiderMonkey throws `"out of memory"` (a string) when an allocation fails. */
function outOfMemory(err) {
  return (
    err === 'out of memory' ||
    (err instanceof Error && err.name === 'InternalError' && /^(out of memory|allocation size overflow)$/.test(err.message))
  );
}

/** The host's facts about the attempt, in JavaScript's terms (Dates, milliseconds). */
export function makeContext(w, next = [], now = Date.now) {
  const deadlineMs = Number(w.deadlineMs);
  return Object.freeze({
    taskId: w.taskId,
    gate: w.gate,
    attempt: w.attempt,
    scheduledAt: new Date(Number(w.scheduledAtMs)),
    deadline: new Date(deadlineMs),
    idempotencyKey: w.idempotencyKey,
    schedule: w.schedule ?? null,
    remaining() {
      return Math.max(0, deadlineMs - now());
    },
    next(task) {
      if (task === null || typeof task !== 'object' || Array.isArray(task)) {
        throw new TypeError('ctx.next() takes a task: an object, the JSON body of POST /v1/tasks');
      }
      next.push(JSON.stringify(task));
    },
  });
}

/** The task's `plugin.input` as a value; `null` when the task gave none. */
export function decodeInput(text) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Fail(`invalid input: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/** A `Retry` or `Fail` as the world's outcome variant. */
export function encode(decision) {
  if (decision instanceof Retry) {
    return { tag: 'retry', val: { afterMs: afterMs(decision.after), reason: decision.reason } };
  }
  return { tag: 'fail', val: decision.reason };
}

/** A task function's result as the world's success, with its next tasks. */
export function encodeSuccess(result, next = []) {
  let output;
  try {
    output = JSON.stringify(result === undefined ? null : result);
  } catch (err) {
    return { tag: 'fail', val: `output is not JSON: ${describeError(err)}` };
  }
  return { tag: 'success', val: { output: output ?? 'null', next: [...next] } };
}

/** Milliseconds as the world's `option<u64>`: a BigInt, rounded up, or undefined. */
export function afterMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) {
    return undefined;
  }
  if (ms <= 0) {
    return 0n;
  }
  if (ms >= Number(U64_MAX)) {
    return U64_MAX;
  }
  return BigInt(Math.ceil(ms));
}

// ---------------------------------------------------------------------------
// Logging

function writeLog(log, level, message) {
  try {
    log(level, message);
  } catch {
    // Logging never fails the attempt.
  }
}

/** One log argument as text: strings as they are, errors as `Name: message`, the rest as JSON. */
function formatArg(arg) {
  if (typeof arg === 'string') {
    return arg;
  }
  if (arg instanceof Error) {
    return describeError(arg);
  }
  if (arg instanceof Date) {
    return Number.isNaN(arg.getTime()) ? 'Invalid Date' : arg.toISOString();
  }
  if (typeof arg === 'object' && arg !== null) {
    try {
      return JSON.stringify(arg);
    } catch {
      return String(arg);
    }
  }
  return String(arg);
}

/**
 * `log.info('hibernated', id)` and friends: one line per call, its arguments
 * joined by spaces, through the host's `log(level, message)`.
 */
export function createLog(write) {
  const log = {};
  for (const level of LEVELS) {
    log[level] = (...args) => writeLog(write, level, args.map(formatArg).join(' '));
  }
  return Object.freeze(log);
}

// ---------------------------------------------------------------------------
// HTTP through the task's gate

/** An HTTP answer, its body read in full. */
export class HttpResponse {
  constructor({ url, status, headers, bytes }, now = Date.now) {
    /** The URL asked for. */
    this.url = url;
    /** The status code, such as 200. */
    this.status = status;
    /** The answer's headers (a `Headers`: `get` is case-insensitive). */
    this.headers = headers;
    /** The body's bytes. */
    this.bytes = bytes;
    Object.defineProperty(this, 'now', { value: now });
  }

  /** Whether the status is 2xx. */
  get ok() {
    return this.status >= 200 && this.status <= 299;
  }

  /** The body as text (invalid UTF-8 becomes U+FFFD). */
  get text() {
    return new TextDecoder().decode(this.bytes);
  }

  /** A header's value, or null; names are case-insensitive. */
  header(name) {
    return this.headers.get(name);
  }

  /** The body parsed as JSON; otherwise an `HttpError` of kind `json` (which fails the task). */
  json() {
    try {
      return JSON.parse(this.text);
    } catch (err) {
      throw new HttpError('json', this.url, { detail: err instanceof Error ? err.message : String(err) });
    }
  }

  /** How long the server asked to wait (`Retry-After`), in milliseconds, if it did. */
  retryAfter() {
    const value = this.headers.get('retry-after');
    return value === null ? undefined : parseRetryAfter(value, this.now());
  }
}

/** The response itself if its status is 2xx; else throws an `HttpError` of kind `status`. */
export function expectOk(response) {
  if (response.ok) {
    return response;
  }
  throw new HttpError('status', response.url, {
    status: response.status,
    retryAfter: response.retryAfter(),
    body: Array.from(response.text.slice(0, 2 * ERROR_BODY_CHARS_MAX)).slice(0, ERROR_BODY_CHARS_MAX).join(''),
  });
}

/**
 * Makes the HTTP helpers, over a `fetch` (the component's, which goes
 * through the task's gate, or a fake).
 */
export function createHttp({ fetch, now = Date.now }) {
  /**
   * Sends a request and returns the answer whatever its status; only failing
   * to get an answer throws (an `HttpError`).
   */
  async function send(url, options = {}) {
    const { method = 'GET', headers, body, json, timeout, maxBodyBytes = MAX_BODY_BYTES } = options;
    let target;
    try {
      target = new URL(url);
    } catch (err) {
      throw new HttpError('invalid-request', String(url), { detail: 'needs an absolute http or https URL' });
    }
    if (target.protocol !== 'http:' && target.protocol !== 'https:') {
      throw new HttpError('invalid-request', url, { detail: 'needs an absolute http or https URL' });
    }
    let requestHeaders;
    try {
      requestHeaders = new Headers(headers ?? {});
    } catch (err) {
      throw new HttpError('invalid-request', url, { detail: describeError(err) });
    }
    let requestBody = body;
    if (json !== undefined) {
      try {
        requestBody = JSON.stringify(json);
      } catch (err) {
        throw new HttpError('invalid-request', url, { detail: `body is not JSON: ${describeError(err)}` });
      }
      if (!requestHeaders.has('content-type')) {
        requestHeaders.set('content-type', 'application/json');
      }
    }
    const init = { method, headers: requestHeaders, redirect: 'manual' };
    if (requestBody !== undefined) {
      init.body = requestBody;
    }
    let signal;
    if (timeout !== undefined) {
      signal = AbortSignal.timeout(timeout);
      init.signal = signal;
    }
    const failed = (err) => {
      if (err instanceof HttpError) {
        return err;
      }
      if ((signal && signal.aborted) || (err && err.name === 'TimeoutError')) {
        return new HttpError('timeout', url);
      }
      return new HttpError('transport', url, { detail: err instanceof Error ? err.message : String(err) });
    };
    let answer;
    try {
      answer = await fetch(url, init);
    } catch (err) {
      throw failed(err);
    }
    const announced = Number(answer.headers.get('content-length'));
    if (announced > maxBodyBytes) {
      throw new HttpError('body-too-large', url, { limit: maxBodyBytes });
    }
    let bytes;
    try {
      bytes = new Uint8Array(await answer.arrayBuffer());
    } catch (err) {
      throw failed(err);
    }
    if (bytes.byteLength > maxBodyBytes) {
      throw new HttpError('body-too-large', url, { limit: maxBodyBytes });
    }
    return new HttpResponse({ url, status: answer.status, headers: answer.headers, bytes }, now);
  }

  /** `GET url`, expecting a 2xx answer with a JSON body; returns the parsed body. */
  async function getJson(url, options = {}) {
    const headers = new Headers(options.headers ?? {});
    if (!headers.has('accept')) {
      headers.set('accept', 'application/json');
    }
    const response = await send(url, { ...options, method: 'GET', headers });
    return expectOk(response).json();
  }

  /** `POST url` with `body` as JSON, expecting a 2xx answer; returns the `HttpResponse`. */
  async function postJson(url, body, options = {}) {
    return expectOk(await send(url, { ...options, method: 'POST', json: body }));
  }

  /** `PUT url` with `body` as JSON, expecting a 2xx answer; returns the `HttpResponse`. */
  async function putJson(url, body, options = {}) {
    return expectOk(await send(url, { ...options, method: 'PUT', json: body }));
  }

  /** `DELETE url`, expecting a 2xx answer (a 404 throws: check `err.status === 404` for "already gone"). */
  async function del(url, options = {}) {
    return expectOk(await send(url, { ...options, method: 'DELETE' }));
  }

  return { send, getJson, postJson, putJson, del };
}

// ---------------------------------------------------------------------------
// Parsing: Retry-After, HTTP dates, durations, timestamps

const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const LONG_DAY_NAMES = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

function civil(year, month, day, hour, minute, second) {
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 60) {
    return undefined;
  }
  const daysInMonth = new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (day < 1 || day > daysInMonth) {
    return undefined;
  }
  const date = new Date(Date.UTC(year, month - 1, day, hour, minute, Math.min(second, 59)));
  // Date.UTC maps years 0 to 99 to 1900 to 1999.
  date.setUTCFullYear(year);
  return date.getTime();
}

/**
 * An HTTP date (RFC 9110: IMF-fixdate, or the obsolete RFC 850 and asctime
 * forms) in milliseconds since the epoch, or undefined.
 */
export function parseHttpDate(value) {
  const text = value.trim();
  const time = '(\\d{2}):(\\d{2}):(\\d{2})';
  const month = `(${MONTHS.join('|')})`;
  let m = new RegExp(`^(?:${DAY_NAMES.join('|')}), (\\d{2}) ${month} (\\d{4}) ${time} GMT$`).exec(text);
  if (m) {
    return civil(+m[3], MONTHS.indexOf(m[2]) + 1, +m[1], +m[4], +m[5], +m[6]);
  }
  m = new RegExp(`^(?:${LONG_DAY_NAMES.join('|')}), (\\d{2})-${month}-(\\d{2}) ${time} GMT$`).exec(text);
  if (m) {
    const yy = +m[3];
    return civil(yy < 70 ? 2000 + yy : 1900 + yy, MONTHS.indexOf(m[2]) + 1, +m[1], +m[4], +m[5], +m[6]);
  }
  m = new RegExp(`^(?:${DAY_NAMES.join('|')}) ${month} ([ \\d]\\d) ${time} (\\d{4})$`).exec(text);
  if (m) {
    return civil(+m[6], MONTHS.indexOf(m[1]) + 1, +m[2].trim(), +m[3], +m[4], +m[5]);
  }
  return undefined;
}

/**
 * `Retry-After` in milliseconds from `now`: whole seconds, or an HTTP date (a
 * date in the past means 0). Anything else is undefined: ignored.
 */
export function parseRetryAfter(value, now = Date.now()) {
  const text = String(value).trim();
  if (/^\d+$/.test(text)) {
    return Number(text) * 1000;
  }
  const at = parseHttpDate(text);
  return at === undefined ? undefined : Math.max(0, at - now);
}

const DURATION_UNITS = [
  // [milliseconds per unit, labels (longest first)]
  [3_600_000, ['hours', 'hour', 'hrs', 'hr', 'h']],
  [60_000, ['minutes', 'minute', 'mins', 'min', 'm']],
  [1_000, ['seconds', 'second', 'secs', 'sec', 's']],
  [1, ['milliseconds', 'millisecond', 'millis', 'milli', 'msecs', 'msec', 'ms']],
  [1e-3, ['microseconds', 'microsecond', 'micros', 'micro', 'usecs', 'usec', 'µsecs', 'µsec', 'us', 'µs']],
  [1e-6, ['nanoseconds', 'nanosecond', 'nanos', 'nano', 'nsecs', 'nsec', 'ns']],
];
const CALENDAR_UNITS = ['years', 'year', 'yrs', 'yr', 'y', 'months', 'month', 'mos', 'mo', 'weeks', 'week', 'wks', 'wk', 'w', 'days', 'day', 'd'];

/**
 * A duration in milliseconds, written as Sluice and the Rust examples take
 * it: `"90s"`, `"24h"`, `"1h 30m"`, `"2 hours, 5 minutes"`, `"1.5s"`,
 * `"01:30:00"`, or ISO 8601 `"PT1H30M"`. Units are hours or smaller (days
 * vary in length). A leading `-` or a trailing `ago` makes it negative.
 * Throws a `RangeError` naming the problem otherwise.
 */
export function parseDuration(text) {
  if (typeof text !== 'string') {
    throw new TypeError(`a duration is a string such as "90s", not ${typeof text}`);
  }
  const bad = (why) => new RangeError(`invalid duration ${JSON.stringify(text)}: ${why}`);
  let rest = text.trim();
  if (rest === '') {
    throw bad('it is empty');
  }
  let sign = 1;
  let signed = false;
  if (rest[0] === '+' || rest[0] === '-') {
    sign = rest[0] === '-' ? -1 : 1;
    signed = true;
    rest = rest.slice(1);
  }
  if (/^p/i.test(rest)) {
    const m = /^P(?:T(?:(\d+)(?:[.,](\d{1,9}))?H)?(?:(\d+)(?:[.,](\d{1,9}))?M)?(?:(\d+)(?:[.,](\d{1,9}))?S)?)$/i.exec(rest);
    if (!m || !/T./i.test(rest)) {
      throw bad(/^P[^T]*\d/i.test(rest) ? 'units above hours (days, weeks...) vary in length: use hours' : 'not an ISO 8601 duration such as "PT1H30M"');
    }
    const parts = [[m[1], m[2], 3_600_000], [m[3], m[4], 60_000], [m[5], m[6], 1_000]];
    let ms = 0;
    let fractionSeen = false;
    for (const [whole, fraction, unit] of parts) {
      if (whole === undefined) {
        continue;
      }
      if (fractionSeen) {
        throw bad('only the smallest unit may have a fraction');
      }
      ms += Number(whole) * unit + (fraction ? Number(`0.${fraction}`) * unit : 0);
      fractionSeen = fraction !== undefined;
    }
    return sign * ms;
  }
  const hms = /^(\d+):(\d+):(\d+)(?:[.,](\d{1,9}))?$/.exec(rest);
  if (hms) {
    return sign * (Number(hms[1]) * 3_600_000 + Number(hms[2]) * 60_000 + Number(hms[3]) * 1_000 + (hms[4] ? Number(`0.${hms[4]}`) * 1_000 : 0));
  }
  const ago = /\s+ago$/.exec(rest);
  if (ago) {
    if (signed) {
      throw bad('a sign and "ago" cannot go together');
    }
    sign = -1;
    rest = rest.slice(0, ago.index);
  }
  let ms = 0;
  let lastUnit = -1;
  let units = 0;
  while (rest !== '') {
    const m = /^(\d+)(?:[.,](\d{1,9}))?\s*([a-zµ]+)(?:,\s*|\s*)/.exec(rest);
    if (!m) {
      throw bad('expected a number and a unit, such as "90s" or "24h"');
    }
    const label = m[3];
    if (CALENDAR_UNITS.includes(label)) {
      throw bad(`calendar units (${label}) vary in length: use hours or smaller units`);
    }
    const unit = DURATION_UNITS.findIndex(([, labels]) => labels.includes(label));
    if (unit < 0) {
      throw bad(`unknown unit ${JSON.stringify(label)}`);
    }
    if (unit <= lastUnit) {
      throw bad('units must go from the largest to the smallest, each once');
    }
    if (m[2] !== undefined && m[0].length < rest.length) {
      throw bad('only the last unit may have a fraction');
    }
    const perUnit = DURATION_UNITS[unit][0];
    ms += Number(m[1]) * perUnit + (m[2] !== undefined ? Number(`0.${m[2]}`) * perUnit : 0);
    lastUnit = unit;
    units += 1;
    rest = rest.slice(m[0].length);
  }
  if (units === 0) {
    throw bad('expected a number and a unit, such as "90s" or "24h"');
  }
  return sign * ms;
}

/**
 * An RFC 3339 timestamp, such as `"2026-12-01T00:00:00Z"` or
 * `"2026-12-01T01:00:00.5+01:00"` (the offset is required), as a `Date`.
 * Throws a `RangeError` naming the problem otherwise.
 */
export function parseTimestamp(text) {
  if (typeof text !== 'string') {
    throw new TypeError(`a timestamp is a string such as "2026-12-01T00:00:00Z", not ${typeof text}`);
  }
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)$/.exec(text);
  if (!m) {
    throw new RangeError(`invalid timestamp ${JSON.stringify(text)}: expected RFC 3339 with an offset, such as "2026-12-01T00:00:00Z"`);
  }
  const at = civil(+m[1], +m[2], +m[3], +m[4], +m[5], +(m[6] ?? 0));
  const offsetMinutes = m[8] ? 0 : (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11] ?? 0));
  if (at === undefined || Number(m[10] ?? 0) > 23 || Number(m[11] ?? 0) > 59) {
    throw new RangeError(`invalid timestamp ${JSON.stringify(text)}: no such date or time`);
  }
  const fraction = m[7] ? Math.floor(Number(`0.${m[7]}`) * 1000) : 0;
  return new Date(at + fraction - offsetMinutes * 60_000);
}

// ---------------------------------------------------------------------------
// Checking the shape of input (and of answers)

const EXPECTED = {
  string: 'a string',
  boolean: 'a boolean',
  number: 'a number',
  integer: 'an integer',
  uint: 'a non-negative integer',
  timestamp: 'an RFC 3339 timestamp such as "2026-12-01T00:00:00Z"',
  duration: 'a duration such as "90s" or "24h"',
  object: 'an object',
  array: 'an array',
  any: 'any value',
};

function describeValue(value) {
  if (value === null) {
    return 'null';
  }
  if (Array.isArray(value)) {
    return 'sequence';
  }
  switch (typeof value) {
    case 'boolean':
      return `boolean \`${value}\``;
    case 'number':
      return Number.isInteger(value) ? `integer \`${value}\`` : `floating point \`${value}\``;
    case 'string':
      return `string ${JSON.stringify(value)}`;
    case 'object':
      return 'map';
    default:
      return typeof value;
  }
}

function joinPath(path, key) {
  return typeof key === 'number' ? `${path}[${key}]` : path ? `${path}.${key}` : key;
}

function checkValue(value, shape, path, options, problems) {
  const mismatch = (what) => problems.push([path, `invalid type: ${describeValue(value)}, expected ${what}`]);
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) {
      return mismatch('an array');
    }
    value.forEach((item, i) => checkValue(item, shape[0] ?? 'any', joinPath(path, i), options, problems));
    return;
  }
  if (shape !== null && typeof shape === 'object') {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return mismatch('an object');
    }
    const fields = new Map();
    for (const [key, fieldShape] of Object.entries(shape)) {
      if (key !== '*') {
        const optional = key.endsWith('?');
        fields.set(optional ? key.slice(0, -1) : key, { optional, shape: fieldShape });
      }
    }
    for (const [name, field] of fields) {
      const present = Object.hasOwn(value, name);
      if (!present || value[name] === null) {
        if (!field.optional && !(present && field.shape === 'any')) {
          if (!present) {
            problems.push([path, `missing field \`${name}\``]);
          } else {
            checkValue(value[name], field.shape, joinPath(path, name), options, problems);
          }
        }
        continue;
      }
      checkValue(value[name], field.shape, joinPath(path, name), options, problems);
    }
    for (const key of Object.keys(value)) {
      if (fields.has(key)) {
        continue;
      }
      if (Object.hasOwn(shape, '*')) {
        checkValue(value[key], shape['*'], joinPath(path, key), options, problems);
      } else if (!options.allowUnknown) {
        const names = [...fields.keys()].map((n) => `\`${n}\``);
        const expectedNames =
          names.length === 0
            ? 'there are no fields'
            : names.length === 1
              ? `expected ${names[0]}`
              : names.length === 2
                ? `expected ${names[0]} or ${names[1]}`
                : `expected one of ${names.join(', ')}`;
        problems.push([path, `unknown field \`${key}\`, ${expectedNames}`]);
      }
    }
    return;
  }
  switch (shape) {
    case 'any':
      return;
    case 'string':
      return typeof value === 'string' ? undefined : mismatch(EXPECTED.string);
    case 'boolean':
      return typeof value === 'boolean' ? undefined : mismatch(EXPECTED.boolean);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value) ? undefined : mismatch(EXPECTED.number);
    case 'integer':
      return Number.isInteger(value) ? undefined : mismatch(EXPECTED.integer);
    case 'uint':
      if (Number.isInteger(value) && value < 0) {
        return problems.push([path, `invalid value: integer \`${value}\`, expected ${EXPECTED.uint}`]);
      }
      return Number.isInteger(value) ? undefined : mismatch(EXPECTED.uint);
    case 'object':
      return value !== null && typeof value === 'object' && !Array.isArray(value) ? undefined : mismatch(EXPECTED.object);
    case 'array':
      return Array.isArray(value) ? undefined : mismatch(EXPECTED.array);
    case 'timestamp':
    case 'duration':
      if (typeof value !== 'string') {
        return mismatch(EXPECTED[shape]);
      }
      try {
        (shape === 'timestamp' ? parseTimestamp : parseDuration)(value);
      } catch (err) {
        problems.push([path, err.message]);
      }
      return;
    default:
      throw new TypeError(`check(): unknown type ${JSON.stringify(shape)} at ${path || 'the top'}; use one of ${Object.keys(EXPECTED).join(', ')}, an object or [shape]`);
  }
}

/**
 * Checks that `value` has the given shape and returns it; otherwise throws a
 * `Fail` naming the first problem and where it is, such as
 * ``invalid input: receipt.url: invalid type: integer `7`, expected a string``.
 *
 * A shape is a type name (`'string'`, `'boolean'`, `'number'`, `'integer'`,
 * `'uint'`, `'timestamp'`, `'duration'`, `'object'`, `'array'`, `'any'`),
 * an object of field shapes (a key ending in `?` is optional: absent or
 * null; `'*'` gives the shape of every other key, for maps), or `[shape]`
 * for an array. Fields that the shape does not name are refused unless
 * `allowUnknown` is set.
 *
 * @param {unknown} value
 * @param {any} shape
 * @param {{what?: string, allowUnknown?: boolean}} [options] `what` starts the
 *   message (default `invalid input`)
 */
export function check(value, shape, { what = 'invalid input', allowUnknown = false } = {}) {
  const problems = [];
  checkValue(value, shape, '', { allowUnknown }, problems);
  if (problems.length > 0) {
    const [path, problem] = problems[0];
    throw new Fail(path ? `${what}: ${path}: ${problem}` : `${what}: ${problem}`);
  }
  return value;
}
