// Drives the dashboard in Debian's headless Chromium against a live server
// that tests/all/dashboard.rs has filled, and saves screenshots.
//
// Environment: SLUICE_URL (the server, on loopback), SLUICE_TOKEN (admin),
// SLUICE_READER_TOKEN (a reader's), SLUICE_ARTIFACTS (where screenshots go), SLUICE_FAILED_TASK (a task that
// failed after several attempts), SLUICE_PLUGIN_TASK (a hibernate-idle task
// that succeeded, with a log), SLUICE_SECRET (a secret header value that
// must never appear on the page). The server holds the plugins hibernate-idle
// (in use) and cleanup-stray (unused). Exits 0 when every check passes.
//
// With SLUICE_NODES (the ids of a cluster's nodes, comma-separated) it checks
// only the overview's nodes section against them and /v1/cluster, and needs
// only SLUICE_URL, SLUICE_TOKEN and SLUICE_ARTIFACTS.

import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const base = env('SLUICE_URL');
const token = env('SLUICE_TOKEN');
const out = env('SLUICE_ARTIFACTS');
const nodeIds = process.env.SLUICE_NODES?.split(',');
const full = (name) => (nodeIds ? '' : env(name));
const readerToken = full('SLUICE_READER_TOKEN');
const failedTask = full('SLUICE_FAILED_TASK');
const pluginTask = full('SLUICE_PLUGIN_TASK');
const secret = full('SLUICE_SECRET');

const STEP_MS = 10_000;
const WHOLE_MS = 60_000;

// House rule: no packet leaves loopback. Every name resolves to nothing but
// 127.0.0.1, and Chromium's own background traffic is switched off.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-default-apps',
  '--no-pings',
  '--disable-domain-reliability',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];

const started = Date.now();
const watchdog = setTimeout(() => {
  console.error(`dashboard.mjs: still running after ${WHOLE_MS / 1000}s, giving up`);
  process.exit(3);
}, WHOLE_MS);
watchdog.unref();

function step(text) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

async function api(path) {
  const response = await fetch(base + path, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5_000),
  });
  check(response.ok, `GET ${path}: ${response.status}`);
  return response.json();
}

/** Just the status of GET path. */
async function apiStatus(path) {
  const response = await fetch(base + path, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5_000),
  });
  return response.status;
}

/** A link in the header's section navigation. */
const section = (page, name) => page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name });
const byName = (list) => Object.fromEntries(list.gates.map((g) => [g.name, g]));
const digits = (text) => Number(text.replace(/[^\d]/g, ''));

async function shot(page, name) {
  await page.mouse.move(1279, 799); // no hover effect in the picture
  await page.screenshot({ path: join(out, `${name}.png`), animations: 'disabled' });
  step(`screenshot ${name}.png`);
}

/** The gates table as shown: name → {state, backlog, inFlight, concurrency}. */
async function shownGates(page) {
  const rows = await page.$$eval('table.gates tbody tr', (trs) => trs.map((tr) => ({
    name: tr.dataset.gate,
    state: tr.querySelector('[data-col=state]').textContent.trim(),
    backlog: tr.querySelector('[data-col=backlog] .value').textContent,
    inFlight: tr.querySelector('[data-col=in_flight] .value').textContent,
  })));
  return Object.fromEntries(rows.map((r) => {
    const [inFlight, concurrency] = r.inFlight.split('/').map(digits);
    return [r.name, { state: r.state, backlog: digits(r.backlog), inFlight, concurrency }];
  }));
}

async function signIn(page, as) {
  await page.getByLabel('API token').fill(as);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function overviewMatchesApi(page) {
  const before = byName(await api('/v1/gates'));
  const shown = await shownGates(page);
  const after = byName(await api('/v1/gates'));
  check(Object.keys(shown).length === Object.keys(after).length,
    `the table shows ${Object.keys(shown).length} gates, the API has ${Object.keys(after).length}`);
  for (const [name, ui] of Object.entries(shown)) {
    const [a, b] = [before[name], after[name]];
    check(a && b, `gate ${name} is shown but not in the API`);
    check([a.state, b.state].includes(ui.state), `${name}: state ${ui.state}, API ${a.state}/${b.state}`);
    if (b.adaptive) {
      // The limit its search has reached, which moves between reads: the
      // UI's must be one the search can reach.
      check(ui.concurrency >= b.adaptive.min && ui.concurrency <= b.adaptive.max,
        `${name}: concurrency ${ui.concurrency}, outside the API's range ${b.adaptive.min}–${b.adaptive.max}`);
    } else {
      check(ui.concurrency === b.concurrency, `${name}: concurrency ${ui.concurrency}, API ${b.concurrency}`);
    }
    if (b.paused) {
      // A paused gate's figures cannot move: they must match exactly.
      check(ui.backlog === b.backlog && b.backlog === a.backlog, `${name}: backlog ${ui.backlog}, API ${b.backlog}`);
      check(ui.inFlight === 0 && b.in_flight === 0, `${name}: in flight ${ui.inFlight}, API ${b.in_flight}`);
    } else {
      // The UI read a moment earlier: allow for a few seconds of draining.
      const slack = Math.ceil(b.rate_per_s * 5) + b.concurrency;
      const [low, high] = [Math.min(a.backlog, b.backlog) - slack, Math.max(a.backlog, b.backlog) + slack];
      check(ui.backlog >= low && ui.backlog <= high, `${name}: backlog ${ui.backlog}, API ${a.backlog}→${b.backlog}`);
      check(ui.inFlight <= b.concurrency, `${name}: in flight ${ui.inFlight} over ${b.concurrency}`);
    }
  }
  check(Object.values(after).some((g) => g.paused), 'the fixture has a paused gate');
  step(`overview matches the API for ${Object.keys(shown).join(', ')}`);
}

async function sortsByBacklog(page) {
  await page.getByRole('button', { name: 'Backlog' }).click();
  const header = page.locator('th', { has: page.getByRole('button', { name: 'Backlog' }) });
  await header.and(page.locator('[aria-sort=descending]')).waitFor();
  const backlogs = Object.values(await shownGates(page)).map((g) => g.backlog);
  check(backlogs.every((n, i) => i === 0 || backlogs[i - 1] >= n), `not sorted by backlog: ${backlogs}`);
  step('sorted by backlog, aria-sort says so');
}

async function pauseGate(page, name) {
  await page.locator(`tr[data-gate="${name}"] [data-col=name] a`).click();
  await page.getByRole('heading', { level: 1, name }).waitFor();
  await shot(page, 'gate-detail');
  await page.getByRole('button', { name: 'Pause gate' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  await dialog.getByRole('button', { name: 'Pause gate' }).click();
  await page.locator('.title .badge', { hasText: 'paused' }).waitFor();
  const gate = await api(`/v1/gates/${name}`);
  check(gate.paused && gate.state === 'paused', `after pausing in the UI the API says ${gate.state}`);
  step(`paused gate ${name} through the UI; the API agrees`);
}

async function taskHistory(page) {
  const task = await api(`/v1/tasks/${failedTask}`);
  await page.goto(`${base}/#/tasks/${failedTask}`);
  const rows = page.locator('tr[data-attempt]');
  await rows.nth(task.attempts.length - 1).waitFor();
  const shown = await rows.evaluateAll((trs) => trs.map((tr) => ({
    outcome: tr.querySelector('[data-col=outcome]').textContent.trim(),
    status: tr.querySelector('[data-col=status]').textContent.trim(),
  })));
  check(shown.length === task.attempts.length, `${shown.length} attempts shown, ${task.attempts.length} in the API`);
  task.attempts.forEach((a, i) => {
    check(shown[i].outcome === a.outcome && shown[i].status === String(a.status ?? '—'),
      `attempt ${i + 1}: shown ${JSON.stringify(shown[i])}, API ${a.outcome} ${a.status}`);
  });
  await page.getByText('secret', { exact: true }).first().waitFor();
  check(!(await page.content()).includes(secret), 'a secret header value is on the page');
  check(await page.locator('details[open]').count() === 0, 'payloads start collapsed');
  step(`task ${failedTask}: ${shown.length} attempts shown as in the API, secret hidden`);
  await shot(page, 'task-detail');
}

async function pluginTaskHistory(page) {
  const task = await api(`/v1/tasks/${pluginTask}`);
  const logs = task.attempts.flatMap((a) => a.logs ?? []);
  check(logs.some((l) => l.source === 'plugin' && l.level === 'info' && l.message.startsWith('hibernated web-1')),
    `the fixture's log: ${JSON.stringify(logs)}`);
  await page.goto(`${base}/#/tasks/${pluginTask}`);
  await page.locator('.target', { hasText: 'plugin hibernate-idle@0.1.0' }).waitFor();
  const target = (await page.locator('.target').first().textContent()).replace(/\s+/g, ' ').trim();
  check(target === 'plugin hibernate-idle@0.1.0', `the target reads ${JSON.stringify(target)}`);
  await page.locator('.input pre', { hasText: task.plugin.input.api }).waitFor();
  check(await page.locator('details[open]').count() === 0, 'logs and output start collapsed');
  const row = page.locator('tr[data-attempt="1"]');
  await row.locator('[data-col=logs] summary').click();
  const shown = await row.locator('[data-col=logs] li').allTextContents();
  // The plugin's lines read "level: message"; the host's notes carry a tag of
  // their own, from the API's `source`, never from their text.
  const expected = task.attempts[0].logs.map((l) => (l.source === 'host' ? `sluice ${l.message}` : `${l.level}: ${l.message}`));
  check(JSON.stringify(shown) === JSON.stringify(expected),
    `log shown ${JSON.stringify(shown)}, API ${JSON.stringify(task.attempts[0].logs)}`);
  await row.getByText('info: hibernated web-1').waitFor();
  await row.getByText('Output', { exact: false }).first().click();
  step(`plugin task ${pluginTask}: target plugin hibernate-idle@0.1.0, input, ${shown.length} log lines shown as in the API`);
  await shot(page, 'plugin-task');

  // The target in search results too.
  await page.goto(`${base}/#/tasks?gate=apps`);
  await page.locator(`tr[data-task="${pluginTask}"] [data-col=target]`, { hasText: 'plugin hibernate-idle@0.1.0' }).waitFor();
  const webhookTarget = await api(`/v1/tasks/${failedTask}`);
  await page.goto(`${base}/#/tasks?gate=webhooks`);
  await page.locator(`tr[data-task="${failedTask}"] [data-col=target]`, { hasText: webhookTarget.webhook.url }).waitFor();
  step('task rows show the target: plugin name@version, or the URL');
}

async function schedules(page) {
  await section(page, 'Schedules').click();
  await page.locator('tr[data-schedule]').first().waitFor();
  const { schedules: list } = await api('/v1/schedules');
  check(await page.locator('tr[data-schedule]').count() === list.length, 'every schedule is listed');
  await page.locator('tr[data-schedule="hibernate-apps"] [data-col=target]', { hasText: 'plugin hibernate-idle@0.1.0' }).waitFor();
  step(`${list.length} schedules listed, the plugin one with its target`);
  await shot(page, 'schedules');
}

async function adaptiveGate(page) {
  await page.goto(`${base}/#/gates/search`);
  await page.getByRole('heading', { level: 1, name: 'search' }).waitFor();
  const chart = page.locator('section', { has: page.getByRole('heading', { name: 'Concurrency (adaptive)' }) }).locator('svg');
  await chart.waitFor();
  await page.getByText(/\d+ now, searching 1–20/).waitFor();
  const gate = await api('/v1/gates/search');
  check(gate.adaptive?.min === 1 && gate.concurrency >= 1 && gate.concurrency <= 20, `the API's search: ${JSON.stringify(gate.adaptive)}`);
  await shot(page, 'gate-adaptive');
  step('adaptive gate: the limit found, its range and its chart are shown');
}

async function gateWithKeys(page) {
  await page.goto(`${base}/#/gates/tenants`);
  await page.getByRole('heading', { level: 1, name: 'tenants' }).waitFor();
  const keys = page.locator('section', { has: page.getByRole('heading', { name: 'Keys' }) });
  await keys.getByText('1/s (burst 1), the gate\'s concurrency').waitFor();
  await keys.getByText('2/s (burst 1), the gate\'s concurrency, weight 3').waitFor();
  await keys.getByText('a key\'s 429s and failures hold back that key only').waitFor();
  await keys.locator('tr[data-key="busy-key"]').first().waitFor();
  const shown = await keys.locator('tr[data-key="busy-key"] code').allTextContents();
  const gate = await api('/v1/gates/tenants');
  const listed = gate.busiest_keys.map((k) => k.key);
  check(shown.length > 0 && shown.every((k) => ['acme', 'globex', 'initech'].includes(k)), `keys shown: ${shown}`);
  check(gate.active_keys >= shown.length && listed.length > 0, `the API's keys: ${JSON.stringify(gate.busiest_keys)}`);
  await shot(page, 'gate-keys');
  step(`gate with keys: limits, isolation and ${shown.length} busy keys shown, as the API lists them`);
}

async function replayFailures(page) {
  await page.goto(`${base}/#/gates/webhooks`);
  await page.getByRole('heading', { level: 1, name: 'webhooks' }).waitFor();
  await page.getByRole('button', { name: 'Replay failed tasks' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByText('Replay 2 failed tasks of webhooks?').waitFor();
  await dialog.getByText('paced like any task').waitFor();
  await dialog.getByRole('button', { name: 'Replay tasks' }).click();
  await page.getByText('Replaying 2 tasks of webhooks.').first().waitFor();
  const deadline = Date.now() + STEP_MS;
  let task = await api(`/v1/tasks/${failedTask}`);
  while (task.state === 'failed' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    task = await api(`/v1/tasks/${failedTask}`);
  }
  check(task.state !== 'failed', `after the replay the task is still ${task.state}`);
  step('replayed a gate\'s failed tasks from its page: the dry run\'s count asked first, the API agrees');
}

/** Signing out while a refresh is on its way: its answer must not draw the
 * view over the token form (it did, and the page then stayed so, with no
 * form and no more refreshes). */
async function signOutDuringRefresh(page) {
  const api = `${base}/v1/**`;
  let release;
  const held = new Promise((r) => { release = r; });
  await page.route(api, async (route) => {
    await held;
    // The page may have given up on it meanwhile.
    await route.continue().catch(() => {});
  });
  const asked = page.waitForRequest((r) => r.url().startsWith(`${base}/v1/`));
  // `r` refreshes, from anywhere but a field or a dialog.
  await page.locator('#main').focus();
  await page.keyboard.press('r');
  const request = await asked;
  const given = page.waitForEvent('requestfailed', (r) => r === request).then(() => 'given up');
  const answered = page.waitForEvent('requestfinished', (r) => r === request).then(() => 'answered');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  release();
  const fate = await Promise.race([given, answered]);
  await page.unroute(api);
  check(fate === 'given up', `the refresh on its way at sign-out was ${fate}, not given up`);
  check(await page.getByRole('button', { name: 'Sign in' }).isVisible(),
    'a refresh that landed after sign-out drew its view over the token form');
  step('signed out while a refresh was on its way: it is given up, the token form stays');
}

async function readerIsRefused(page) {
  await signIn(page, readerToken);
  await page.goto(`${base}/#/gates/billing`);
  await page.getByText('this gate and pings', { exact: true }).waitFor();
  await page.getByRole('button', { name: 'Pause gate' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Pause gate' }).click();
  await page.getByRole('alert').filter({ hasText: 'role is too low' }).waitFor();
  const gate = await api('/v1/gates/billing');
  check(!gate.paused, 'a reader paused a gate');
  step('signed in again as a reader: the gate shows whose next tasks it accepts; pausing is refused, and the UI says the role is too low');
}

async function plugins(page) {
  await section(page, 'Plugins').click();
  const { plugins: list } = await api('/v1/plugins');
  const rows = page.locator('tr[data-plugin]');
  await rows.nth(list.length - 1).waitFor();
  check(await rows.count() === list.length, `${await rows.count()} plugins shown, ${list.length} in the API`);
  for (const p of list) {
    const row = page.locator(`tr[data-plugin="${p.name}@${p.version}"]`);
    const cells = {
      name: await row.locator('[data-col=name]').textContent(),
      version: await row.locator('[data-col=version]').textContent(),
      references: await row.locator('[data-col=references]').textContent(),
    };
    check(cells.name === p.name && cells.version === p.version, `${p.name}: shown ${JSON.stringify(cells)}`);
    check(digits(cells.references) === p.references, `${p.name}: ${cells.references} shown, ${p.references} in the API`);
    await row.getByText(p.sha256.slice(0, 12)).waitFor();
  }
  const hibernate = list.find((p) => p.name === 'hibernate-idle');
  // A waiting task and a schedule, and the schedule's next occurrence (a task
  // created ahead of its time) as well: at least two.
  check(hibernate?.references >= 2, `hibernate-idle has a waiting task and a schedule: ${JSON.stringify(hibernate)}`);
  const row = page.locator('tr[data-plugin="hibernate-idle@0.1.0"]');
  await row.getByText(/^\d+ imports?$/).click();
  for (const i of hibernate.imports) await row.getByText(i, { exact: true }).waitFor();
  step(`plugins: ${list.length} listed as in the API, with references and imports`);
  await shot(page, 'plugins');

  // In use: the server refuses with 409, and the UI says why.
  await row.getByRole('button', { name: 'Delete plugin hibernate-idle@0.1.0' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete plugin' }).click();
  await page.getByRole('alert').filter({ hasText: 'Delete plugin failed: plugin hibernate-idle@0.1.0 is used by' }).waitFor();
  check(await apiStatus('/v1/plugins/hibernate-idle/0.1.0') === 200, 'a plugin in use was deleted');
  await page.getByRole('button', { name: 'Dismiss' }).click();

  // Unused: deleted, and gone from the list.
  await page.getByRole('button', { name: 'Delete plugin cleanup-stray@0.1.0' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete plugin' }).click();
  await page.locator('.notice.ok', { hasText: 'Plugin cleanup-stray@0.1.0 deleted.' }).waitFor();
  await page.locator('tr[data-plugin="cleanup-stray@0.1.0"]').waitFor({ state: 'detached' });
  check(await apiStatus('/v1/plugins/cleanup-stray/0.1.0') === 404, 'the UI said deleted, the API still has it');
  step('delete: refused for the plugin in use (409 shown), done for the unused one');

  // One version in full.
  await row.locator('[data-col=name] a').click();
  await page.getByRole('heading', { level: 1, name: 'hibernate-idle@0.1.0' }).waitFor();
  await page.getByText(hibernate.sha256, { exact: true }).waitFor();
  step('plugin detail: full SHA-256 and imports');
}

/**
 * The stats contract (`recent`, `series`, `forecast` on each gate), filled in
 * with made-up figures of the right shape, so the charts are checked whatever
 * the server sends yet.
 */
function withStats(gate) {
  const step = 10;
  const now = Date.now();
  const points = Array.from({ length: 60 }, (_, i) => {
    const started = Math.round(gate.rate_per_s * step * (0.55 + 0.45 * Math.sin(i / 7) ** 2));
    const failed = i % 13 === 0 ? Math.ceil(started / 10) : 0;
    return {
      t: new Date(now - (59 - i) * step * 1000).toISOString(),
      started, succeeded: started - failed, failed, backlog: gate.backlog + (59 - i) * 4,
    };
  });
  const window = (seconds) => {
    const last = points.slice(-seconds / step);
    const sum = (f) => last.reduce((n, p) => n + p[f], 0);
    return {
      started: sum('started'), succeeded: sum('succeeded'), failed: sum('failed'),
      success_per_s: sum('succeeded') / seconds, error_per_s: sum('failed') / seconds,
    };
  };
  const perMinute = Array.from({ length: 60 }, (_, i) => (i === 20 ? 120 : 3 + (i % 5)));
  return {
    ...gate,
    recent: { '1m': window(60), '5m': window(300) },
    series: { step_s: step, points },
    forecast: { from: new Date(now).toISOString(), per_minute: perMinute },
  };
}

async function statsContract(page) {
  await page.route(`${base}/v1/gates**`, async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    const json = body.gates ? { gates: body.gates.map(withStats) } : withStats(body);
    await route.fulfill({ response, json });
  });
  await section(page, 'Gates').click();
  const rows = page.locator('table.gates tbody tr');
  await rows.first().locator('svg.spark').nth(1).waitFor();
  await shot(page, 'overview-stats');
  const sparks = await rows.evaluateAll((trs) => trs.map((tr) => tr.querySelectorAll('svg.spark').length));
  check(sparks.every((n) => n === 2), `sparklines per row: ${sparks}`);
  await page.locator('tr[data-gate=billing] [data-col=name] a').click();
  await page.locator('.chart .line.started').waitFor();
  const bars = await page.locator('.chart rect.bar').count();
  check(bars === 60, `the forecast has ${bars} bars, not 60`);
  await shot(page, 'gate-detail-stats');
  await page.unroute(`${base}/v1/gates**`);
  step('the stats contract renders: sparklines, rate chart, 60-minute forecast');
}

/** A cluster's overview lists every node started, with the units and gates
 * each owns as /v1/cluster says, and marks the node that answered. */
async function clusterNodes(page, expected) {
  const rows = page.locator('[data-section=nodes] table.nodes tbody tr');
  await rows.nth(expected.length - 1).waitFor();
  const cluster = await api('/v1/cluster');
  const shown = await rows.evaluateAll((trs) => trs.map((tr) => ({
    id: tr.dataset.node,
    units: tr.children[3].textContent.trim(),
    gates: tr.children[4].textContent.trim(),
    role: tr.lastElementChild.textContent.trim(),
  })));
  for (const node of cluster.nodes) {
    const row = shown.find((r) => r.id === node.id);
    check(row && digits(row.gates) === node.gates_owned,
      `${node.id} owns ${node.gates_owned} gates, the page says ${row?.gates}`);
    check(row && digits(row.units) === node.units.length,
      `${node.id} holds ${node.units.length} units, the page says ${row?.units}`);
  }
  const ids = shown.map((r) => r.id).sort();
  check(JSON.stringify(ids) === JSON.stringify([...expected].sort()),
    `the nodes shown are ${ids}, the test started ${expected}`);
  const answered = shown.filter((r) => r.role === 'this node').map((r) => r.id);
  check(answered.length === 1 && answered[0] === cluster.node,
    `marked as this node: ${answered}; /v1/cluster: ${cluster.node}`);
  const summary = await page.locator('[data-section=nodes] .summary').textContent();
  check(summary.includes(`${expected.length} nodes`) && summary.includes('every unit'), `summary: ${summary}`);
  await shot(page, 'nodes');
  step(`the nodes section lists ${ids.join(', ')} with the units and gates each owns`);
}

/** The whole tour, on the server tests/all/dashboard.rs filled. */
async function everything(page) {
  await page.locator('table.gates tbody tr').first().waitFor();
  step('signed in through the token form');
  await overviewMatchesApi(page);
  await shot(page, 'overview');
  await sortsByBacklog(page);
  await pauseGate(page, 'email');
  await taskHistory(page);
  await pluginTaskHistory(page);
  await schedules(page);
  await plugins(page);
  await adaptiveGate(page);
  await gateWithKeys(page);
  await replayFailures(page);
  await signOutDuringRefresh(page);
  await readerIsRefused(page);
  await statsContract(page);
}

async function main() {
  await mkdir(out, { recursive: true });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS, timeout: STEP_MS * 2 });
  const problems = [];
  try {
    const context = await browser.newContext({
      viewport: { width: 1280, height: 800 }, colorScheme: 'light', locale: 'en-US', timezoneId: 'UTC',
    });
    context.setDefaultTimeout(STEP_MS);
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(`${base}/`)) return route.continue();
      problems.push(`request off the server: ${url}`);
      return route.abort();
    });
    const page = await context.newPage();
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      // Answers like the 401 before sign-in are logged as resource errors; anything else is a fault.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
    });
    try {
      await page.goto(`${base}/`);
      await signIn(page, token);
      await (nodeIds ? clusterNodes(page, nodeIds) : everything(page));
    } catch (e) {
      await page.screenshot({ path: join(out, 'failure.png') }).catch(() => {});
      throw e;
    }
    check(problems.length === 0, problems.join('\n'));
  } finally {
    await browser.close();
  }
  step('all checks passed');
}

main().then(() => process.exit(0), (e) => {
  console.error(`dashboard.mjs: ${e.stack ?? e}`);
  process.exit(1);
});
