// Checking input (and answers) against a shape, and reading durations and
// timestamps as the Rust examples (jiff) read them.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Fail, check, parseDuration, parseTimestamp } from '../core.js';

function reason(fn) {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof Fail, `a Fail, not ${err}`);
    return err.reason;
  }
  assert.fail('expected a Fail');
}

const INPUT = {
  api: 'string',
  apps: [{ id: 'string' }],
  'owner_tag?': 'string',
  'receipt?': { gate: 'string', url: 'string' },
};

test('bad input fails naming the field, like serde in the Rust SDK', () => {
  assert.equal(
    reason(() => check({ api: 'http://a', apps: [{ id: '1' }, { id: 7 }] }, INPUT)),
    'invalid input: apps[1].id: invalid type: integer `7`, expected a string',
  );
  assert.equal(reason(() => check(null, INPUT)), 'invalid input: invalid type: null, expected an object');
  assert.equal(reason(() => check({ apps: [] }, INPUT)), 'invalid input: missing field `api`');
  assert.equal(
    reason(() => check({ api: 'x', apps: [], extra: 1 }, INPUT)),
    'invalid input: unknown field `extra`, expected one of `api`, `apps`, `owner_tag`, `receipt`',
  );
  assert.equal(
    reason(() => check({ api: 'x', apps: [], receipt: { gate: 'mail', url: 7 } }, INPUT)),
    'invalid input: receipt.url: invalid type: integer `7`, expected a string',
  );
  assert.equal(
    reason(() => check({ api: 'x', apps: [], receipt: { gate: 'mail' } }, INPUT)),
    'invalid input: receipt: missing field `url`',
  );
  assert.equal(reason(() => check({ api: null, apps: [] }, INPUT)), 'invalid input: api: invalid type: null, expected a string');
  assert.equal(reason(() => check({ api: 'x', apps: {} }, INPUT)), 'invalid input: apps: invalid type: map, expected an array');
  assert.equal(reason(() => check({ a: 1, b: 2 }, { a: 'any' })), 'invalid input: unknown field `b`, expected `a`');
  assert.equal(reason(() => check({ b: 2 }, { 'a?': 'any', 'c?': 'any' })), 'invalid input: unknown field `b`, expected `a` or `c`');
  assert.equal(reason(() => check({ b: 2 }, {})), 'invalid input: unknown field `b`, there are no fields');
});

test('good input passes and is returned as it is', () => {
  const input = { api: 'x', apps: [{ id: 'a' }], owner_tag: null };
  assert.equal(check(input, INPUT), input, 'optional fields may be null or absent');
  assert.deepEqual(check({ api: 'x', apps: [] }, INPUT), { api: 'x', apps: [] });
});

test('each type name', () => {
  const ok = (value, shape) => assert.doesNotThrow(() => check(value, shape), `${JSON.stringify(value)} is ${JSON.stringify(shape)}`);
  const bad = (value, shape, expected) => assert.equal(reason(() => check(value, shape)), `invalid input: ${expected}`);
  ok(true, 'boolean');
  bad('true', 'boolean', 'invalid type: string "true", expected a boolean');
  ok(1.5, 'number');
  bad(1.5, 'integer', 'invalid type: floating point `1.5`, expected an integer');
  ok(-3, 'integer');
  ok(1999, 'uint');
  bad(-1, 'uint', 'invalid value: integer `-1`, expected a non-negative integer');
  ok({}, 'object');
  bad([], 'object', 'invalid type: sequence, expected an object');
  ok([1, 'a'], 'array');
  ok(null, 'any');
  ok('2026-12-01T00:00:00Z', 'timestamp');
  bad('2026-12-01', 'timestamp', 'invalid timestamp "2026-12-01": expected RFC 3339 with an offset, such as "2026-12-01T00:00:00Z"');
  ok('24h', 'duration');
  bad('1 day', 'duration', 'invalid duration "1 day": calendar units (day) vary in length: use hours or smaller units');
  bad(60, 'duration', 'invalid type: integer `60`, expected a duration such as "90s" or "24h"');
  ok({ owner: 'team-a', env: 'prod' }, { '*': 'string' });
  bad({ owner: 7 }, { '*': 'string' }, 'owner: invalid type: integer `7`, expected a string');
  assert.throws(() => check(1, 'str'), TypeError, 'a typo in the shape is the author\'s bug');
});

test('answers may carry fields the shape does not name', () => {
  const apps = [{ id: 'a1', last_active: '2026-12-01T00:00:00Z', owner: 'x' }];
  assert.equal(check(apps, [{ id: 'string', last_active: 'timestamp' }], { allowUnknown: true }), apps);
  assert.equal(
    reason(() => check([{ id: 1 }], [{ id: 'string' }], { what: 'answer from http://a.test/apps is not the JSON expected', allowUnknown: true })),
    'answer from http://a.test/apps is not the JSON expected: [0].id: invalid type: integer `1`, expected a string',
  );
});

test('durations: friendly and ISO 8601, hours or smaller', () => {
  const cases = {
    '24h': 86_400_000,
    '90m': 5_400_000,
    '168h': 604_800_000,
    '60s': 60_000,
    '200ms': 200,
    '1h30m': 5_400_000,
    '1h 30m': 5_400_000,
    '10 hours, 30 minutes': 37_800_000,
    '10hrs 30mins': 37_800_000,
    '10.5 hours': 37_800_000,
    '1.5s': 1_500,
    '3 mins 34,123s': 214_123,
    '1500us': 1.5,
    '0s': 0,
    '10:30:00': 37_800_000,
    '-90s': -90_000,
    '90s ago': -90_000,
    PT24H: 86_400_000,
    PT1H30M: 5_400_000,
    'PT0.2S': 200,
    pt1m: 60_000,
    '-PT1H': -3_600_000,
  };
  for (const [text, ms] of Object.entries(cases)) {
    assert.equal(parseDuration(text), ms, text);
  }
  for (const text of ['', '24', 'h', '1d', '2 days', '1w', 'P1D', 'PT', 'P', '1.5h 30m', '30m 1h', '1h 1h', '5 parsecs', '-5s ago', 'PT1.5H30M']) {
    assert.throws(() => parseDuration(text), RangeError, text);
  }
  assert.throws(() => parseDuration(60), TypeError);
});

test('timestamps: RFC 3339 with an offset', () => {
  assert.equal(parseTimestamp('2026-12-01T00:00:00Z').getTime(), Date.UTC(2026, 11, 1));
  assert.equal(parseTimestamp('2026-12-01T01:00:00+01:00').getTime(), Date.UTC(2026, 11, 1));
  assert.equal(parseTimestamp('2026-11-30T19:00:00-0500').getTime(), Date.UTC(2026, 11, 1));
  assert.equal(parseTimestamp('2026-12-01t00:00:00.123456789z').getTime(), Date.UTC(2026, 11, 1) + 123);
  assert.equal(parseTimestamp('2026-12-01 00:00Z').getTime(), Date.UTC(2026, 11, 1));
  for (const text of ['2026-12-01', '2026-12-01T00:00:00', '2026-02-30T00:00:00Z', '2026-12-01T24:00:00Z', 'yesterday', '2026-12-01T00:00:00+25:00']) {
    assert.throws(() => parseTimestamp(text), RangeError, text);
  }
});
