// HTTP helpers over a fake fetch: what each answer or failure becomes, and
// how Retry-After is read.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Fail, HttpError, Retry, createHttp, decide, expectOk, parseHttpDate, parseRetryAfter } from '../core.js';

const NOW = Date.UTC(2023, 10, 14, 22, 13, 20); // 1_700_000_000_000

/** A fake fetch that records requests and answers with `reply(url, init)`. */
function fakeFetch(reply) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, init, body: init.body });
    return reply(url, init);
  };
  return { fetch, requests };
}

const json = (status, value, headers = {}) =>
  new Response(JSON.stringify(value), { status, headers: { 'content-type': 'application/json', ...headers } });

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected a rejection');
}

test('getJson asks for JSON and returns the parsed body of a 2xx', async () => {
  const { fetch, requests } = fakeFetch(() => json(200, [{ id: 'a1' }]));
  const http = createHttp({ fetch, now: () => NOW });
  assert.deepEqual(await http.getJson('http://api.test/apps'), [{ id: 'a1' }]);
  assert.equal(requests[0].init.method, 'GET');
  assert.equal(requests[0].init.headers.get('accept'), 'application/json');
  assert.equal(requests[0].init.redirect, 'manual', 'redirects are not followed');
});

test('a 5xx with Retry-After retries after it, a 404 fails', async () => {
  const answers = {
    '/busy': () => new Response('maintenance', { status: 503, headers: { 'retry-after': '7' } }),
    '/missing': () => new Response('no such app', { status: 404 }),
    '/boom': () => new Response('', { status: 500 }),
  };
  const { fetch } = fakeFetch((url) => answers[new URL(url).pathname]());
  const http = createHttp({ fetch, now: () => NOW });

  const busy = await rejection(http.getJson('http://api.test/busy'));
  assert.ok(busy instanceof HttpError);
  assert.equal(busy.kind, 'status');
  assert.equal(busy.status, 503);
  assert.equal(busy.retryAfter, 7_000);
  assert.equal(busy.message, 'http://api.test/busy answered 503: maintenance');
  const decided = decide(busy);
  assert.ok(decided instanceof Retry);
  assert.equal(decided.after, 7_000);

  const missing = await rejection(http.del('http://api.test/missing'));
  assert.equal(missing.status, 404);
  assert.ok(decide(missing) instanceof Fail);

  const boom = await rejection(http.getJson('http://api.test/boom'));
  assert.equal(boom.message, 'http://api.test/boom answered 500', 'an empty body adds nothing');
  assert.ok(decide(boom) instanceof Retry);
});

test('send returns any status; expectOk keeps the start of an error body', async () => {
  const { fetch } = fakeFetch(() => new Response('x'.repeat(2000), { status: 429, headers: { 'retry-after': 'Tue, 14 Nov 2023 22:14:50 GMT' } }));
  const http = createHttp({ fetch, now: () => NOW });
  const response = await http.send('http://api.test/x', { method: 'POST', body: 'hello' });
  assert.equal(response.status, 429);
  assert.equal(response.ok, false);
  assert.equal(response.header('Retry-After'), 'Tue, 14 Nov 2023 22:14:50 GMT');
  assert.equal(response.retryAfter(), 90_000, 'an HTTP date, from now');
  const err = (() => {
    try {
      expectOk(response);
    } catch (e) {
      return e;
    }
  })();
  assert.equal(err.body.length, 512);
  assert.ok(err.message.startsWith('http://api.test/x answered 429: xxx'));
  assert.equal(err.retryAfter, 90_000);
});

test('postJson and putJson send JSON with its content type, and headers as given', async () => {
  const { fetch, requests } = fakeFetch(() => json(201, { id: 'ch_1' }));
  const http = createHttp({ fetch });
  const response = await http.postJson('http://api.test/charges', { invoice: 'inv_42' }, { headers: { 'Idempotency-Key': 'k1' } });
  assert.deepEqual(response.json(), { id: 'ch_1' });
  assert.equal(requests[0].init.method, 'POST');
  assert.equal(requests[0].body, '{"invoice":"inv_42"}');
  assert.equal(requests[0].init.headers.get('content-type'), 'application/json');
  assert.equal(requests[0].init.headers.get('idempotency-key'), 'k1');
  await http.putJson('http://api.test/flags/beta', true);
  assert.equal(requests[1].init.method, 'PUT');
  assert.equal(requests[1].body, 'true');
});

test('a failed connection retries; a timeout retries; both name the URL', async () => {
  const refused = createHttp({
    fetch: async () => {
      throw new TypeError('NetworkError when attempting to fetch resource');
    },
  });
  const err = await rejection(refused.getJson('http://api.test/apps'));
  assert.equal(err.kind, 'transport');
  assert.equal(err.message, 'request to http://api.test/apps failed: NetworkError when attempting to fetch resource');
  assert.ok(decide(err) instanceof Retry);

  const hanging = createHttp({
    fetch: (_url, init) =>
      new Promise((_resolve, reject) => {
        init.signal.addEventListener('abort', () => reject(init.signal.reason));
      }),
  });
  // Node's AbortSignal.timeout does not keep the process alive by itself.
  const alive = setTimeout(() => {}, 5_000);
  const late = await rejection(hanging.send('http://api.test/slow', { timeout: 20 }));
  clearTimeout(alive);
  assert.equal(late.kind, 'timeout');
  assert.equal(late.message, 'request to http://api.test/slow timed out');
  assert.ok(decide(late) instanceof Retry);
});

test('bad URLs and bodies fail before anything is sent', async () => {
  const { fetch, requests } = fakeFetch(() => json(200, {}));
  const http = createHttp({ fetch });
  for (const url of ['/apps', 'ftp://a.test/x', 'http//a.test', '']) {
    const err = await rejection(http.send(url));
    assert.equal(err.kind, 'invalid-request', url);
    assert.ok(decide(err) instanceof Fail);
  }
  const cyclic = {};
  cyclic.self = cyclic;
  assert.equal((await rejection(http.postJson('http://a.test/', cyclic))).kind, 'invalid-request');
  assert.equal(requests.length, 0);
});

test('an answer that is not the JSON expected, or too large, fails', async () => {
  const http = createHttp({ fetch: async () => new Response('<html>', { status: 200 }) });
  const err = await rejection(http.getJson('http://api.test/apps'));
  assert.equal(err.kind, 'json');
  assert.ok(err.message.startsWith('answer from http://api.test/apps is not the JSON expected: '));
  assert.ok(decide(err) instanceof Fail);

  const big = createHttp({ fetch: async () => new Response('x'.repeat(100), { status: 200 }) });
  const tooLarge = await rejection(big.send('http://api.test/big', { maxBodyBytes: 10 }));
  assert.equal(tooLarge.kind, 'body-too-large');
  assert.equal(tooLarge.message, 'answer from http://api.test/big is larger than 10 bytes');
  assert.ok(decide(tooLarge) instanceof Fail);
  const announced = createHttp({ fetch: async () => new Response('', { status: 200, headers: { 'content-length': String(9 << 20) } }) });
  assert.equal((await rejection(announced.send('http://api.test/big'))).kind, 'body-too-large');
});

test('Retry-After takes whole seconds or an HTTP date; anything else is ignored', () => {
  assert.equal(parseRetryAfter('120', NOW), 120_000);
  assert.equal(parseRetryAfter(' 0 ', NOW), 0);
  assert.equal(parseRetryAfter('Tue, 14 Nov 2023 22:14:50 GMT', NOW), 90_000);
  assert.equal(parseRetryAfter('Tue, 14 Nov 2023 22:11:50 GMT', NOW), 0, 'a date in the past is now');
  assert.equal(parseRetryAfter('Tuesday, 14-Nov-23 22:14:50 GMT', NOW), 90_000, 'RFC 850');
  assert.equal(parseRetryAfter('Tue Nov 14 22:14:50 2023', NOW), 90_000, 'asctime');
  for (const junk of ['soon', '-5', '1.5', '', '5s', '2023-11-14T22:14:50Z', 'Tue, 31 Nov 2023 22:14:50 GMT']) {
    assert.equal(parseRetryAfter(junk, NOW), undefined, junk);
  }
  assert.equal(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT'), Date.UTC(1994, 10, 6, 8, 49, 37));
  assert.equal(parseHttpDate('Sun Nov  6 08:49:37 1994'), Date.UTC(1994, 10, 6, 8, 49, 37));
});
