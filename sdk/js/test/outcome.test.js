// How an attempt ends: the task function's result or throw, as the world's
// outcome, with the host's context turned into JavaScript's terms.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  Fail,
  HttpError,
  Retry,
  afterMs,
  createLog,
  createPlugin,
  decide,
  fail,
  retry,
} from '../core.js';

/** A fake of the world's `log` import that keeps the lines. */
function fakeLog() {
  const lines = [];
  const write = (level, message) => lines.push([level, message]);
  return { lines, write };
}

const witContext = {
  taskId: 't1',
  gate: 'billing',
  attempt: 2,
  scheduledAtMs: 1_000n,
  deadlineMs: 31_000n,
  idempotencyKey: 'schedule:nightly:2026-11-27T02:30:00Z',
  schedule: 'nightly',
};

function run(fn, input = 'null', { now = () => 11_000 } = {}) {
  const log = fakeLog();
  const handler = createPlugin({ log: log.write, now })(fn);
  return handler.run(witContext, input).then((outcome) => ({ outcome, lines: log.lines }));
}

test('the context carries the host facts, with BigInts as Dates and milliseconds', async () => {
  let seen;
  await run(async (ctx) => {
    seen = ctx;
  });
  assert.equal(seen.taskId, 't1');
  assert.equal(seen.gate, 'billing');
  assert.equal(seen.attempt, 2);
  assert.ok(seen.scheduledAt instanceof Date);
  assert.equal(seen.scheduledAt.getTime(), 1_000);
  assert.equal(seen.deadline.getTime(), 31_000);
  assert.equal(seen.remaining(), 20_000);
  assert.equal(seen.idempotencyKey, 'schedule:nightly:2026-11-27T02:30:00Z');
  assert.equal(seen.schedule, 'nightly');
  assert.ok(Object.isFrozen(seen));

  const outcome = await createPlugin({ log: () => {}, now: () => 40_000 })(async (ctx) => ({
    schedule: ctx.schedule,
    remaining: ctx.remaining(),
  })).run({ ...witContext, schedule: undefined }, 'null');
  assert.equal(outcome.val.output, '{"schedule":null,"remaining":0}', 'no schedule is null; a passed deadline leaves 0');
});

test('a result is the output as JSON, with the next tasks asked for', async () => {
  const { outcome } = await run(async (ctx, input) => {
    ctx.next({ gate: 'mail', webhook: { url: 'https://mail.internal/r' } });
    return { got: input, n: 1 };
  }, '{"a": [1, 2]}');
  assert.deepEqual(outcome, {
    tag: 'success',
    val: { output: '{"got":{"a":[1,2]},"n":1}', next: ['{"gate":"mail","webhook":{"url":"https://mail.internal/r"}}'] },
  });
  const nothing = await run(async () => {});
  assert.deepEqual(nothing.outcome, { tag: 'success', val: { output: 'null', next: [] } });
  const text = await run(async () => 'done');
  assert.equal(text.outcome.val.output, '"done"');
});

test('ctx.next takes a task object only', async () => {
  const { outcome } = await run(async (ctx) => {
    ctx.next('{"gate": "mail"}');
  });
  assert.equal(outcome.tag, 'retry');
  assert.match(outcome.val.reason, /^TypeError: ctx.next\(\) takes a task/);
});

test('next tasks are dropped unless the attempt succeeds', async () => {
  const { outcome } = await run(async (ctx) => {
    ctx.next({ gate: 'mail' });
    throw fail('declined');
  });
  assert.deepEqual(outcome, { tag: 'fail', val: 'declined' });
});

test('thrown or returned Retry and Fail become those outcomes', async () => {
  assert.deepEqual((await run(async () => { throw retry('busy', { after: 1500 }); })).outcome, {
    tag: 'retry',
    val: { afterMs: 1500n, reason: 'busy' },
  });
  assert.deepEqual((await run(async () => { throw retry('later'); })).outcome, {
    tag: 'retry',
    val: { afterMs: undefined, reason: 'later' },
  });
  assert.deepEqual((await run(async () => fail('no'))).outcome, { tag: 'fail', val: 'no' });
  assert.deepEqual((await run(async () => new Retry('again', { after: 0 }))).outcome, {
    tag: 'retry',
    val: { afterMs: 0n, reason: 'again' },
  });
  const { lines } = await run(async () => { throw new Fail('expected'); });
  assert.deepEqual(lines, [], 'an outcome the task chose is not logged as a crash');
});

test('retry delays become u64 milliseconds, rounded up and bounded', () => {
  assert.equal(afterMs(undefined), undefined);
  assert.equal(afterMs(null), undefined);
  assert.equal(afterMs(Number.NaN), undefined);
  assert.equal(afterMs(0), 0n);
  assert.equal(afterMs(-5), 0n);
  assert.equal(afterMs(1.2), 2n);
  assert.equal(afterMs(5_000), 5_000n);
  assert.equal(afterMs(Number.POSITIVE_INFINITY), (1n << 64n) - 1n);
  assert.equal(afterMs(1e30), (1n << 64n) - 1n);
  assert.throws(() => retry('x', { after: -1 }), TypeError);
  assert.throws(() => retry('x', { after: '5s' }), TypeError);
});

test('any other throw retries, and is logged with its stack', async () => {
  const { outcome, lines } = await run(async () => {
    const app = undefined;
    return app.id;
  });
  assert.equal(outcome.tag, 'retry');
  assert.equal(outcome.val.afterMs, undefined);
  assert.match(outcome.val.reason, /^TypeError: /);
  assert.equal(lines.length, 1);
  assert.equal(lines[0][0], 'error');
  assert.match(lines[0][1], /^uncaught TypeError: .*\n/s);

  const thrownText = await run(async () => { throw 'odd'; });
  assert.deepEqual(thrownText.outcome, { tag: 'retry', val: { afterMs: undefined, reason: 'odd' } });
});

test('running out of memory traps, as in a Rust plugin', async () => {
  const log = fakeLog();
  const handler = createPlugin({ log: log.write })(async () => {
    throw 'out of memory'; // what SpiderMonkey throws when an allocation fails
  });
  await assert.rejects(handler.run(witContext, 'null'), (err) => err === 'out of memory');
  assert.deepEqual(log.lines, [['error', 'out of memory']]);
});

test('a SyntaxError (JSON that does not parse) fails', async () => {
  const { outcome } = await run(async () => JSON.parse('{'));
  assert.equal(outcome.tag, 'fail');
  assert.match(outcome.val, /^SyntaxError: /);
});

test('input that is not JSON fails at once, naming the problem', async () => {
  let called = false;
  const { outcome } = await run(async () => {
    called = true;
  }, '{"api": ');
  assert.equal(called, false);
  assert.equal(outcome.tag, 'fail');
  assert.match(outcome.val, /^invalid input: /);
  const { outcome: none } = await run(async (_ctx, input) => ({ input }), 'null');
  assert.equal(none.val.output, '{"input":null}', 'no input is null');
});

test('output that has no JSON form fails', async () => {
  const cyclic = {};
  cyclic.self = cyclic;
  const { outcome } = await run(async () => cyclic);
  assert.equal(outcome.tag, 'fail');
  assert.match(outcome.val, /^output is not JSON: /);
  const big = await run(async () => ({ n: 1n }));
  assert.match(big.outcome.val, /^output is not JSON: /);
});

test('the handler never throws, whatever the context', async () => {
  const handler = createPlugin({ log: () => { throw new Error('log broke'); } })(async () => {
    throw new Error('boom');
  });
  const outcome = await handler.run(witContext, 'null');
  assert.equal(outcome.tag, 'retry', 'a broken log does not change the outcome');
  const odd = await createPlugin({ log: () => {} })(async () => 1).run(null, 'null');
  assert.equal(odd.tag, 'fail');
  assert.match(odd.val, /SDK failed/);
  assert.throws(() => createPlugin({ log: () => {} })('not a function'), TypeError);
});

test('decide mirrors how Sluice treats a webhook answer', () => {
  const status = (code, retryAfter) => new HttpError('status', 'http://api.test/x', { status: code, retryAfter, body: '' });
  for (const code of [408, 429, 500, 502, 503, 599]) {
    const d = decide(status(code));
    assert.ok(d instanceof Retry, `${code} retries`);
    assert.equal(d.after, undefined);
  }
  assert.equal(decide(status(503, 60_000)).after, 60_000, 'Retry-After is kept');
  for (const code of [301, 400, 401, 402, 403, 404, 409, 422]) {
    assert.ok(decide(status(code, 60_000)) instanceof Fail, `${code} fails`);
  }
  assert.equal(decide(status(500)).reason, 'http://api.test/x answered 500');
  assert.ok(decide(new HttpError('timeout', 'http://a.test/')) instanceof Retry);
  const transport = decide(new HttpError('transport', 'http://a.test/', { detail: 'NetworkError' }));
  assert.ok(transport instanceof Retry);
  assert.equal(transport.reason, 'request to http://a.test/ failed: NetworkError');
  for (const kind of ['json', 'body-too-large', 'invalid-request']) {
    assert.ok(decide(new HttpError(kind, 'http://a.test/', { detail: 'x', limit: 1 })) instanceof Fail, kind);
  }
  const own = retry('mine', { after: 1 });
  assert.equal(decide(own), own);
  assert.ok(decide(new RangeError('x')) instanceof Retry);
  assert.ok(decide(new SyntaxError('x')) instanceof Fail);
});

test('log lines go to the host with their level, arguments joined', () => {
  const { lines, write } = fakeLog();
  const log = createLog(write);
  log.info('hibernated', 'a1');
  log.warn('count', 3, { a: 1 }, [1], null, undefined);
  log.error(new TypeError('bad'));
  log.trace(new Date(0));
  log.debug();
  assert.deepEqual(lines, [
    ['info', 'hibernated a1'],
    ['warn', 'count 3 {"a":1} [1] null undefined'],
    ['error', 'TypeError: bad'],
    ['trace', '1970-01-01T00:00:00.000Z'],
    ['debug', ''],
  ]);
  assert.doesNotThrow(() => createLog(() => { throw new Error('x'); }).info('never fails'));
});
