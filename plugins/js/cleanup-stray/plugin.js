// Deletes stray instances: those without an owner tag, or past their expiry.
//
// Input: `{"api": "http://cloud.internal:8080"}`, optionally with
// `"owner_tag": "owner"` (the tag that names an owner), `"retry_delay": "60s"`
// (how long to wait before retrying after the API failed) and
// `"dry_run": true` (list, delete nothing).
//
// `GET {api}/instances` lists instances as
// `{"id": "i-1", "tags": {"owner": "team-a"}, "expires_at": "2026-12-01T00:00:00Z"}`
// (`tags` and `expires_at` may be absent). Each stray gets
// `DELETE {api}/instances/{id}`; a 404 means it is already gone, which is as
// good. A 5xx or a timeout from the API retries the task after `retry_delay`
// (or the API's `Retry-After`): deleting is idempotent, so the next attempt
// lists again and deletes what is left.
//
// Output: `{"instances": 40, "strays": 3, "deleted": 2, "already_gone": 1, "dry_run": false}`.
//
// The same job, contract and log lines as plugins/cleanup-stray (Rust).

import { HttpError, Retry, check, decide, del, fail, getJson, log, parseDuration, parseTimestamp, plugin } from '../../../sdk/js/index.js';

export const handler = plugin(async (_ctx, input) => {
  check(input, { api: 'string', 'owner_tag?': 'string', 'retry_delay?': 'duration', 'dry_run?': 'boolean' });
  const ownerTag = input.owner_tag ?? 'owner';
  const retryDelay = parseDuration(input.retry_delay ?? '60s');
  const dryRun = input.dry_run ?? false;
  if (retryDelay < 0) {
    throw fail('invalid input: retry_delay must not be negative');
  }
  // The API's trouble retries after `retry_delay`, unless it said how long.
  const apiError = (err) => {
    const decided = decide(err);
    if (decided instanceof Retry && decided.after === undefined) {
      decided.after = retryDelay;
    }
    return decided;
  };

  const api = input.api.replace(/\/+$/, '');
  const url = `${api}/instances`;
  let instances;
  try {
    instances = await getJson(url);
  } catch (err) {
    throw apiError(err);
  }
  check(instances, [{ id: 'string', 'tags?': { '*': 'string' }, 'expires_at?': 'timestamp' }], {
    what: `answer from ${url} is not the JSON expected`,
    allowUnknown: true,
  });
  const now = Date.now();
  const strays = instances.filter((instance) => isStray(instance, ownerTag, now));
  log.info(`${strays.length} of ${instances.length} instances are strays`);

  let deleted = 0;
  let alreadyGone = 0;
  for (const stray of strays) {
    if (dryRun) {
      log.info(`would delete ${stray.id}`);
      continue;
    }
    try {
      await del(`${api}/instances/${stray.id}`);
      log.info(`deleted ${stray.id}`);
      deleted += 1;
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) {
        log.info(`${stray.id} was already gone`);
        alreadyGone += 1;
      } else {
        throw apiError(err);
      }
    }
  }
  return { instances: instances.length, strays: strays.length, deleted, already_gone: alreadyGone, dry_run: dryRun };
});

/** No owner to ask, or its owner's lease on it has run out. */
function isStray(instance, ownerTag, now) {
  const owner = instance.tags && Object.hasOwn(instance.tags, ownerTag) ? instance.tags[ownerTag] : undefined;
  const owned = typeof owner === 'string' && owner.trim() !== '';
  const expired = instance.expires_at != null && parseTimestamp(instance.expires_at).getTime() <= now;
  return !owned || expired;
}
