// The JSON API, with the bearer token kept for this browser tab only.

const TOKEN_KEY = 'sluice.token';
const TIMEOUT_MS = 10_000;

/** An answer other than 2xx: `status`, and the API's error `code` and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Sends one request; resolves to the parsed JSON body, throws ApiError otherwise. */
async function call(method, path, signal, payload) {
  const headers = { accept: 'application/json' };
  if (payload !== undefined) headers['content-type'] = 'application/json';
  const bearer = token();
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  const timeout = AbortSignal.timeout(TIMEOUT_MS);
  const response = await fetch(path, {
    method,
    headers,
    cache: 'no-store',
    body: payload === undefined ? undefined : JSON.stringify(payload),
    signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
  }).catch((e) => {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', 'cannot reach the server');
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new ApiError(response.status, error.code ?? 'error', error.message ?? response.statusText);
  }
  return body;
}

export const get = (path, signal) => call('GET', path, signal);
export const post = (path, body) => call('POST', path, undefined, body);
export const remove = (path) => call('DELETE', path);

/** `/v1/tasks?...` from a filter object, leaving out empty values. */
export function withQuery(path, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== ''));
  return query.size ? `${path}?${query}` : path;
}

export const enc = encodeURIComponent;
