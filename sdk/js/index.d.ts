// Types for the Sluice JavaScript SDK (index.js). See README.md.

/** What the host tells a plugin about the attempt it runs. */
export interface Context {
  /** The task's id, as in `GET /v1/tasks/{id}`. */
  readonly taskId: string;
  /** The gate the task runs in; every request takes a token from it. */
  readonly gate: string;
  /** 1 for the first attempt, 2 for the first retry, and so on. */
  readonly attempt: number;
  /** When the task was due (for a schedule's occurrence, its scheduled time). */
  readonly scheduledAt: Date;
  /** When the host ends this attempt (counted as timed out) if it still runs. */
  readonly deadline: Date;
  /** The task id, or `schedule:<name>:<time>`: the same across retries. */
  readonly idempotencyKey: string;
  /** The schedule that made this task, if one did. */
  readonly schedule: string | null;
  /** Milliseconds left until `deadline`, 0 once it has passed. */
  remaining(): number;
  /**
   * A task to create in the same commit as this attempt's success (the JSON
   * body of `POST /v1/tasks`); dropped with any other outcome.
   */
  next(task: Record<string, unknown>): void;
}

/** What the component exports as `handler` (the world's `sluice:task/handler`). */
export interface Handler {
  run(ctx: WitContext, input: string): Promise<WitOutcome>;
}

/** The world's context record, as componentize-js passes it. */
export interface WitContext {
  taskId: string;
  gate: string;
  attempt: number;
  scheduledAtMs: bigint;
  deadlineMs: bigint;
  idempotencyKey: string;
  schedule?: string;
}

/** The world's outcome variant, as componentize-js expects it. */
export type WitOutcome =
  | { tag: 'success'; val: { output: string; next: string[] } }
  | { tag: 'retry'; val: { afterMs: bigint | undefined; reason: string } }
  | { tag: 'fail'; val: string };

/**
 * Makes `fn` the component's entry point: `export const handler = plugin(fn)`.
 * `input` is the task's `plugin.input` (null when none); what `fn` returns is
 * the output, as JSON. A thrown (or returned) `Retry` or `Fail` ends the
 * attempt so; any other throw is decided by `decide`.
 */
export function plugin<I = any, O = unknown>(
  fn: (ctx: Context, input: I) => O | Retry | Fail | Promise<O | Retry | Fail>,
): Handler;

/** Try the attempt again later (after `after` milliseconds, or the task's backoff). */
export class Retry extends Error {
  constructor(reason: string, options?: { after?: number });
  readonly name: 'Retry';
  /** The earliest time to try again, in milliseconds from now. */
  after: number | undefined;
  readonly reason: string;
}

/** Fail the task now, whatever attempts it has left. */
export class Fail extends Error {
  constructor(reason: string);
  readonly name: 'Fail';
  readonly reason: string;
}

/** `throw retry('busy', { after: 5000 })` */
export function retry(reason: string, options?: { after?: number }): Retry;
/** `throw fail('customer deleted')` */
export function fail(reason: string): Fail;

/**
 * What a thrown value means for the attempt, as Sluice decides for a
 * webhook's answer: timeouts, connection errors, 408, 429 and 5xx retry
 * (after `Retry-After`); other statuses, bad JSON, too large a body and a
 * `SyntaxError` fail; any other error retries.
 */
export function decide(err: unknown): Retry | Fail;

export type HttpErrorKind = 'timeout' | 'transport' | 'status' | 'body-too-large' | 'json' | 'invalid-request';

/** Why an HTTP request did not give the answer asked for. */
export class HttpError extends Error {
  readonly name: 'HttpError';
  readonly kind: HttpErrorKind;
  /** The URL asked for. */
  readonly url: string;
  /** The status code, for `kind === 'status'`. */
  readonly status: number | undefined;
  /** The answer's `Retry-After` in milliseconds, if it had one. */
  readonly retryAfter: number | undefined;
  /** The start of the answer's body (up to 512 characters), for `kind === 'status'`. */
  readonly body: string | undefined;
  readonly detail: string | undefined;
}

/** An HTTP answer, its body read in full. */
export class HttpResponse {
  readonly url: string;
  readonly status: number;
  readonly headers: Headers;
  readonly bytes: Uint8Array;
  /** Whether the status is 2xx. */
  readonly ok: boolean;
  /** The body as text. */
  readonly text: string;
  /** A header's value, or null; names are case-insensitive. */
  header(name: string): string | null;
  /** The body parsed as JSON; throws an `HttpError` of kind `json` otherwise. */
  json<T = any>(): T;
  /** `Retry-After` in milliseconds, if the answer had one. */
  retryAfter(): number | undefined;
}

export interface RequestOptions {
  /** Default `GET` for `send`. */
  method?: string;
  headers?: HeadersInit;
  body?: string | Uint8Array | ArrayBuffer;
  /** A value to send as JSON, with `content-type: application/json`. */
  json?: unknown;
  /** Give up after this many milliseconds (an `HttpError` of kind `timeout`, which retries). */
  timeout?: number;
  /** The largest body to read; default 8 MiB (`MAX_BODY_BYTES`). */
  maxBodyBytes?: number;
}

/** Sends a request through the task's gate; any status is returned. */
export function send(url: string, options?: RequestOptions): Promise<HttpResponse>;
/** `GET url` expecting a 2xx JSON answer; returns the parsed body. */
export function getJson<T = any>(url: string, options?: Omit<RequestOptions, 'method' | 'body' | 'json'>): Promise<T>;
/** `POST url` with `body` as JSON, expecting a 2xx answer. */
export function postJson(url: string, body: unknown, options?: Omit<RequestOptions, 'method' | 'body' | 'json'>): Promise<HttpResponse>;
/** `PUT url` with `body` as JSON, expecting a 2xx answer. */
export function putJson(url: string, body: unknown, options?: Omit<RequestOptions, 'method' | 'body' | 'json'>): Promise<HttpResponse>;
/** `DELETE url`, expecting a 2xx answer (a 404 throws an `HttpError` with `status === 404`). */
export function del(url: string, options?: Omit<RequestOptions, 'method' | 'body' | 'json'>): Promise<HttpResponse>;
/** The response if 2xx; else throws an `HttpError` of kind `status`. */
export function expectOk(response: HttpResponse): HttpResponse;

/** The largest response body read by default: 8 MiB. */
export const MAX_BODY_BYTES: number;

/** Lines for the attempt's history; arguments are joined by spaces. */
export const log: {
  readonly trace: (...args: unknown[]) => void;
  readonly debug: (...args: unknown[]) => void;
  readonly info: (...args: unknown[]) => void;
  readonly warn: (...args: unknown[]) => void;
  readonly error: (...args: unknown[]) => void;
};

/**
 * A shape for `check`: a type name, an object of field shapes (a key ending
 * in `?` is optional, `'*'` shapes every other key), or `[shape]` for an array.
 */
export type Shape =
  | 'string'
  | 'boolean'
  | 'number'
  | 'integer'
  | 'uint'
  | 'timestamp'
  | 'duration'
  | 'object'
  | 'array'
  | 'any'
  | { [field: string]: Shape }
  | [Shape];

/** Returns `value` if it has `shape`; else throws a `Fail` naming the field. */
export function check<T = any>(value: unknown, shape: Shape, options?: { what?: string; allowUnknown?: boolean }): T;

/** `"90s"`, `"24h"`, `"1h 30m"`, `"PT1H30M"`... in milliseconds; throws a `RangeError` otherwise. */
export function parseDuration(text: string): number;
/** An RFC 3339 timestamp with its offset, as a Date; throws a `RangeError` otherwise. */
export function parseTimestamp(text: string): Date;
/** `Retry-After` (seconds or an HTTP date) in milliseconds from `now`, or undefined. */
export function parseRetryAfter(value: string, now?: number): number | undefined;
