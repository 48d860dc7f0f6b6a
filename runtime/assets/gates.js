// Gates: the overview table and one gate's detail.

import { enc, get, post, withQuery } from './api.js';
import { barChart, lineChart, sparkline } from './charts.js';
import { badge, facts, h, icon, link, section, table, time } from './dom.js';
import { count, decimal, duration, inUnitOf, label, rate, rateUnit, unitSeconds } from './format.js';

/** Figures from the server's recent-activity window, when it sends them. */
const recent = (g, window = '1m') => g.recent?.[window];

/** Attempts started per second at each step of the series, oldest first. */
function startedPerSecond(g, field = 'started') {
  const series = g.series;
  if (!series?.points?.length || !series.step_s) return [];
  return series.points.map((p) => (p[field] ?? 0) / series.step_s);
}

const backlogTrend = (g) => g.series?.points?.map((p) => p.backlog ?? 0) ?? [];

/** A per-second figure in the unit of the gate's configured rate: "15/m". */
function inGateUnit(g, perSecond) {
  return typeof perSecond === 'number' ? `${inUnitOf(perSecond, g.rate)}/${rateUnit(g.rate)}` : '—';
}

/** "0.8/s of 1/s": the effective rate against the configured one. */
const rateVsLimit = (g) => `${inGateUnit(g, g.effective_rate)} of ${g.rate}`;

function drainEta(g) {
  if (g.eta_drain_s === null || g.eta_drain_s === undefined) return g.paused ? 'paused' : '—';
  return g.due === 0 ? '—' : duration(g.eta_drain_s);
}

const oldest = (g) => (g.oldest_due_age_s > 0 ? duration(g.oldest_due_age_s) : '—');

/** A figure, and its sparkline when there is one. */
function cell(key, value, spark) {
  return h('td', { class: 'num', dataset: { col: key } },
    h('span', { class: 'cell' }, h('span', { class: 'value' }, value), spark));
}

// The overview's columns: key (for sorting and tests), header, sort value, cell.
const COLUMNS = [
  ['name', 'Gate', (g) => g.name,
    (g) => h('td', { dataset: { col: 'name' } }, link(`#/gates/${enc(g.name)}`, g.name, `gate-${g.name}`))],
  ['state', 'State', (g) => g.state, (g) => h('td', { dataset: { col: 'state' } }, badge(g.state))],
  ['backlog', 'Backlog', (g) => g.backlog,
    (g) => cell('backlog', count(g.backlog), sparkline(backlogTrend(g), `Backlog over the last ${seriesSpan(g)}`))],
  ['due', 'Due', (g) => g.due, (g) => cell('due', count(g.due))],
  ['oldest', 'Oldest overdue', (g) => g.oldest_due_age_s, (g) => cell('oldest', oldest(g))],
  ['in_flight', 'In flight', (g) => g.in_flight,
    (g) => cell('in_flight', `${count(g.in_flight)} / ${count(g.concurrency)}`)],
  ['rate', 'Rate / limit', (g) => g.effective_rate,
    (g) => cell('rate', rateVsLimit(g),
      sparkline(startedPerSecond(g), `Rate achieved over the last ${seriesSpan(g)}, limit ${g.rate}`, g.rate_per_s))],
  ['ok', 'OK (1m)', (g) => recent(g)?.success_per_s, (g) => cell('ok', inGateUnit(g, recent(g)?.success_per_s))],
  ['errors', 'Errors (1m)', (g) => recent(g)?.error_per_s,
    (g) => cell('errors', inGateUnit(g, recent(g)?.error_per_s))],
  ['eta', 'Drain ETA', (g) => g.eta_drain_s ?? Infinity, (g) => cell('eta', drainEta(g))],
];

/** How far back the series reaches: its points times its step. */
function seriesSpan(g) {
  return duration((g.series?.points?.length ?? 0) * (g.series?.step_s ?? 0));
}

function sortRows(gates, key, dir) {
  const value = COLUMNS.find(([k]) => k === key)?.[2] ?? ((g) => g.name);
  const sign = dir === 'desc' ? -1 : 1;
  return [...gates].sort((a, b) => {
    const [x, y] = [value(a), value(b)];
    if (x === y) return a.name.localeCompare(b.name);
    if (x === undefined) return 1;
    if (y === undefined) return -1;
    return (typeof x === 'string' ? x.localeCompare(y) : x - y) * sign;
  });
}

const TEXT_COLUMNS = ['name', 'state'];

/** A column header: a button that sorts by it, and `aria-sort` when it does. */
function header([key, title], sort, dir) {
  const active = key === sort;
  const text = TEXT_COLUMNS.includes(key);
  // A first click sorts names A to Z and figures largest first; a second reverses.
  const next = active ? (dir === 'asc' ? 'desc' : 'asc') : (text ? 'asc' : 'desc');
  const ariaSort = active ? (dir === 'asc' ? 'ascending' : 'descending') : undefined;
  return h('th', { scope: 'col', 'aria-sort': ariaSort, class: text ? '' : 'num' },
    h('button', {
      type: 'button', class: 'sort', dataset: { key: `sort-${key}` },
      onclick: () => { location.hash = withQuery('#/gates', { sort: key, dir: next }); },
    }, title, icon(active ? (dir === 'asc' ? 'up' : 'down') : 'sort')));
}

function totals(gates) {
  const sum = (f) => gates.reduce((n, g) => n + (f(g) ?? 0), 0);
  const withRecent = gates.filter((g) => recent(g));
  const parts = [
    `${count(gates.length)} gates`,
    `${count(sum((g) => g.backlog))} waiting`,
    `${count(sum((g) => g.due))} due`,
    `${count(sum((g) => g.in_flight))} in flight`,
    `${count(gates.filter((g) => g.paused).length)} paused`,
    `${count(gates.filter((g) => g.state === 'tripped').length)} tripped`,
  ];
  if (withRecent.length) {
    parts.push(`${rate(sum((g) => recent(g)?.success_per_s))} ok`, `${rate(sum((g) => recent(g)?.error_per_s))} errors`);
  }
  return parts;
}

/** In a cluster, its nodes and the units (so the gates) each dispatches. */
function nodes(cluster) {
  if (cluster?.store !== 'postgres') return null;
  const held = cluster.nodes.reduce((n, node) => n + (node.units?.length ?? 0), 0);
  const rows = cluster.nodes.map((n) => h('tr', { dataset: { node: n.id } },
    h('td', {}, h('code', {}, n.id)),
    h('td', {}, n.address ?? '—'),
    h('td', { class: 'num' }, `${decimal(n.last_heartbeat_s)} s ago`),
    h('td', { class: 'num' }, count(n.units?.length ?? 0)),
    h('td', { class: 'num' }, count(n.gates_owned)),
    h('td', {}, n.id === cluster.node ? badge('this node') : '')));
  return h('section', { class: 'nodes', dataset: { section: 'nodes' } },
    h('h2', {}, 'Nodes'),
    h('p', { class: 'summary' }, held === 64
      ? `${count(cluster.nodes.length)} nodes; every unit of gates has an owner.`
      : `${count(cluster.nodes.length)} nodes; ${count(64 - held)} of 64 units have no owner right now (a takeover is under way).`),
    h('div', { class: 'table-wrap' }, h('table', { class: 'nodes' },
      h('caption', { class: 'visually-hidden' }, 'The nodes of the cluster'),
      h('thead', {}, h('tr', {}, ['Node', 'Address', 'Heartbeat', 'Units', 'Gates', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows))));
}

export const overview = {
  title: 'Gates',
  async load(route, signal) {
    // A server from before clusters has no /v1/cluster: no nodes shown.
    const [gates, cluster] = await Promise.all([
      get('/v1/gates', signal),
      get('/v1/cluster', signal).catch(() => null),
    ]);
    return { ...gates, cluster };
  },
  announce: (data) => `${totals(data.gates).slice(0, 3).join(', ')}.`,
  render(data, route) {
    const sort = route.query.get('sort') ?? 'name';
    const dir = route.query.get('dir') === 'desc' ? 'desc' : 'asc';
    if (!data.gates.length) {
      return [h('h1', {}, 'Gates'), h('p', { class: 'empty' }, 'No gates yet. Create one with ',
        h('code', {}, 'PUT /v1/gates/{name}'), ' or ', h('code', {}, 'sluice gate set'), '.'), nodes(data.cluster)].filter(Boolean);
    }
    const rows = sortRows(data.gates, sort, dir).map((g) =>
      h('tr', { dataset: { gate: g.name } }, COLUMNS.map(([, , , render]) => render(g))));
    return [
      h('h1', {}, 'Gates'),
      h('p', { class: 'summary', dataset: { summary: 'gates' } }, totals(data.gates).map((t) => h('span', {}, t))),
      h('div', { class: 'table-wrap' }, h('table', { class: 'gates' },
        h('caption', { class: 'visually-hidden' }, 'Every gate with its live figures'),
        h('thead', {}, h('tr', {}, COLUMNS.map((c) => header(c, sort, dir)))),
        h('tbody', {}, rows))),
      nodes(data.cluster),
    ].filter(Boolean);
  },
};

function stat(key, name, value, note) {
  return h('div', { class: 'stat', dataset: { stat: key } },
    h('span', { class: 'label' }, name), h('span', { class: 'value' }, value),
    note ? h('span', { class: 'note' }, note) : null);
}

/** "limit 30/m", and how far up the ramp the gate is while it recovers. */
function limitNote(g) {
  if (g.paused || !g.rate_per_s || g.effective_rate >= g.rate_per_s) return `limit ${g.rate}`;
  return `limit ${g.rate}, at ${Math.round((g.effective_rate / g.rate_per_s) * 100)}%`;
}

function liveStats(g) {
  const [one, five] = [recent(g, '1m'), recent(g, '5m')];
  return h('div', { class: 'stats' },
    stat('backlog', 'Backlog', count(g.backlog)),
    stat('due', 'Due now', count(g.due)),
    stat('oldest', 'Oldest overdue', oldest(g)),
    stat('in_flight', 'In flight', `${count(g.in_flight)} / ${count(g.concurrency)}`),
    stat('rate', 'Rate', inGateUnit(g, g.effective_rate), limitNote(g)),
    stat('ok', 'OK rate (1m)', inGateUnit(g, one?.success_per_s), five ? `${inGateUnit(g, five.success_per_s)} over 5m` : null),
    stat('errors', 'Error rate (1m)', inGateUnit(g, one?.error_per_s), five ? `${inGateUnit(g, five.error_per_s)} over 5m` : null),
    stat('eta', 'Drain ETA', drainEta(g)));
}

function rateChart(g) {
  const [unit, per] = [rateUnit(g.rate), unitSeconds(g.rate)];
  const inUnit = (field) => startedPerSecond(g, field).map((v) => v * per);
  const chart = lineChart({
    lines: [
      { name: 'started', cls: 'started', values: inUnit('started') },
      { name: 'failed', cls: 'failed', values: inUnit('failed') },
    ],
    limit: g.rate_per_s * per,
    spanLabel: `−${seriesSpan(g)}`,
    format: (v) => `${decimal(v)}/${unit}`,
    label: `Attempts started and failed per ${unit} over the last ${seriesSpan(g)}, against the limit of ${g.rate}`,
  });
  return chart ?? h('p', { class: 'empty' }, 'No rate history from this server yet.');
}

// An adaptive gate's limit over the series, against its range.
function concurrencyChart(g) {
  const values = (g.series?.points ?? []).map((p) => p.concurrency ?? 0);
  const chart = lineChart({
    lines: [{ name: 'concurrency limit found', cls: 'started', values }],
    limit: g.adaptive.max,
    spanLabel: `−${seriesSpan(g)}`,
    format: (v) => count(Math.round(v)),
    label: `The concurrency limit gate ${g.name} found over the last ${seriesSpan(g)}, searching ${g.adaptive.min} to ${g.adaptive.max}; ${g.concurrency} now`,
  });
  return chart ?? h('p', { class: 'empty' }, 'No concurrency history from this server yet.');
}

function forecastChart(g) {
  const chart = barChart({
    values: g.forecast?.per_minute,
    capacity: g.rate_per_s * 60,
    label: `Tasks falling due per minute over the next hour in gate ${g.name}`,
  });
  return chart ?? h('p', { class: 'empty' }, 'No forecast from this server yet.');
}

function config(g) {
  const retry = g.retry;
  const backoff = retry.backoff;
  return facts([
    ['Rate', `${g.rate} (burst ${g.burst})`],
    ['Concurrency', g.adaptive ? adaptive(g) : count(g.concurrency)],
    ['Allowed hosts', g.allowed_hosts.length ? g.allowed_hosts.join(', ') : 'any public host'],
    ['Next tasks from', g.accept_next_from?.length ? `this gate and ${g.accept_next_from.join(', ')}` : 'this gate only'],
    ['Timeout', g.timeout],
    ['Retries', `up to ${retry.max_attempts} attempts, backoff ${backoff.initial} → ${backoff.max} ×${decimal(backoff.multiplier)}${backoff.jitter ? ' with jitter' : ''}`],
    ['Retry window', retry.max_retry_duration],
    ['Recovery', g.recovery.start >= 1 ? 'no ramp' : `from ${Math.round(g.recovery.start * 100)}% over ${g.recovery.over}`],
    ['Circuit', g.circuit ? `opens after ${g.circuit.failures} failures, cooldown ${g.circuit.cooldown} (max ${g.circuit.max_cooldown})` : 'off'],
    ['Circuit open until', g.circuit_open_until ? time(g.circuit_open_until) : null],
    ['Throttled until', g.throttled_until ? time(g.throttled_until) : null],
    ['Endpoint quota', g.quota_headers ? quota(g.quota) : 'ignored (quota_headers off)'],
    ['Signing secrets', count(g.signing_secrets)],
    ['Created', time(g.created_at)],
    ['Updated', time(g.updated_at)],
  ]);
}

// The adaptive search: the limit it found, its range and what it learned.
function adaptive(g) {
  const a = g.adaptive;
  const ms = (v) => (v == null ? '—' : `${decimal(v)} ms`);
  return `${count(g.concurrency)} now, searching ${count(a.min)}–${count(a.max)} (latency ${ms(a.recent_ms)}, baseline ${ms(a.baseline_ms)})`;
}

// What the endpoint's own quota headers said, less what the gate sent since.
function quota(q) {
  if (!q) return 'none stated';
  const of = q.limit != null ? ` of ${count(q.limit)}${q.window ? ` per ${q.window}` : ''}` : '';
  return `${count(q.remaining)} left${of}, resets ${time(q.reset_at)}`;
}

// One key's limits inside the gate, as a phrase.
function keyLimits(l) {
  const parts = [l.rate ? `${l.rate} (burst ${l.burst})` : 'the gate\'s rate',
    l.concurrency != null ? `${count(l.concurrency)} at once` : 'the gate\'s concurrency'];
  if (l.weight !== 1) parts.push(`weight ${l.weight}`);
  return parts.join(', ');
}

// Keys: their limits, and the busiest of those with work now.
function keys(g) {
  const limits = g.keys ? [['Each key', keyLimits(g.keys)],
    ...Object.entries(g.keys.overrides ?? {}).map(([k, l]) => [h('code', {}, k), keyLimits(l)])] : [];
  const rows = (g.busiest_keys ?? []).map((k) => h('tr', { dataset: { key: 'busy-key' } },
    h('td', {}, k.key == null ? h('em', {}, 'no key') : h('code', {}, k.key)),
    h('td', { class: 'num' }, count(k.in_flight)),
    h('td', { class: 'num' }, count(k.due)),
    h('td', {}, k.oldest_due_age_s != null ? duration(k.oldest_due_age_s) : '—'),
    h('td', {}, k.state ? badge(k.state) : '—')));
  return [
    facts([['Keys with work', count(g.active_keys)],
      ['Isolation', g.isolate === 'key' ? 'a key\'s 429s and failures hold back that key only' : 'the whole gate'],
      ...limits]),
    rows.length
      ? table([['Key'], ['In flight', 'num'], ['Due', 'num'], ['Oldest due'], ['State']], rows, 'Busiest keys')
      : h('p', { class: 'empty' }, 'No key has work now.'),
  ];
}

function counters(g) {
  return facts(Object.entries(g.counters).map(([k, v]) => [label(k), count(v)]));
}

// Replays the gate's failed tasks through it, paced, after showing what the
// dry run counted and how long starting them takes at the current rate.
function replay(g, ctx) {
  const body = { gate: g.name };
  return h('button', {
    type: 'button', class: 'primary', dataset: { key: 'gate-replay' },
    onclick: async () => {
      const run = () => post('/v1/tasks/replay', body);
      let dry;
      try {
        dry = await post('/v1/tasks/replay', { ...body, dry_run: true });
      } catch (e) {
        return ctx.act({
          question: `Replay the failed tasks of ${g.name}?`,
          detail: `They run again through the gate, paced like any task (no count: ${e.message}).`,
          action: 'Replay tasks', run, done: `Replaying the failed tasks of ${g.name}.`,
        });
      }
      const when = dry.eta_s == null ? 'not while the gate is paused'
        : dry.eta_s < 1 ? 'within a second' : `in about ${duration(dry.eta_s)} at its current rate`;
      return ctx.act({
        question: `Replay ${count(dry.count)} failed tasks of ${g.name}?`,
        detail: `They run again through the gate, paced like any task, all started ${when}.`,
        action: 'Replay tasks', run, done: `Replaying ${count(dry.count)} tasks of ${g.name}.`,
      });
    },
  }, icon('retry'), 'Replay failed tasks');
}

function failures(g, list, ctx) {
  const all = link(withQuery('#/tasks', { gate: g.name, state: 'failed' }), 'All failed tasks', 'all-failed');
  if (!list.tasks.length) return [h('p', { class: 'empty' }, 'No failed tasks.')];
  const rows = list.tasks.map((t) => h('tr', {},
    h('td', {}, link(`#/tasks/${enc(t.id)}`, t.id, `task-${t.id}`)),
    h('td', {}, time(t.finished_at)),
    h('td', { class: 'num' }, `${t.attempt_count} / ${t.max_attempts}`),
    h('td', { class: 'error clip', title: t.last_error }, t.last_error ?? '—')));
  return [table([['Task'], ['Failed'], ['Attempts', 'num'], ['Last error']], rows, 'Recent failed tasks'), h('p', { class: 'actions' }, all, replay(g, ctx))];
}

function toggle(g, ctx) {
  const path = `/v1/gates/${enc(g.name)}/${g.paused ? 'resume' : 'pause'}`;
  const ramp = g.recovery.start >= 1 ? '' : ` It ramps up from ${Math.round(g.recovery.start * 100)}% of ${g.rate} over ${g.recovery.over}.`;
  const ask = g.paused
    ? [`Resume gate ${g.name}?`, `Its ${count(g.due)} due tasks start again.${ramp}`, 'Resume gate']
    : [`Pause gate ${g.name}?`, 'No new attempt starts until the gate is resumed; attempts in flight finish. Tasks keep falling due and wait.', 'Pause gate'];
  return h('button', {
    type: 'button', class: g.paused ? 'primary' : 'danger', dataset: { key: 'gate-toggle' },
    onclick: () => ctx.act({
      question: ask[0], detail: ask[1], action: ask[2], run: () => post(path),
      done: `Gate ${g.name} ${g.paused ? 'resumed' : 'paused'}.`,
    }),
  }, icon(g.paused ? 'play' : 'pause'), ask[2]);
}

export const gateDetail = {
  title: 'Gate',
  async load(route, signal) {
    const name = route.arg;
    const [gate, failed] = await Promise.all([
      get(`/v1/gates/${enc(name)}`, signal),
      get(withQuery('/v1/tasks', { gate: name, state: 'failed', limit: 10 }), signal),
    ]);
    return { gate, failed };
  },
  announce: ({ gate }) => `Gate ${gate.name} ${gate.state}, ${count(gate.backlog)} waiting.`,
  render({ gate: g, failed }, route, ctx) {
    return [
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, link('#/gates', 'Gates', 'crumb'), ' / ', g.name),
      h('div', { class: 'title' }, h('h1', {}, g.name), badge(g.state),
        h('div', { class: 'actions' },
          link(withQuery('#/tasks', { gate: g.name }), 'Tasks', 'gate-tasks'), toggle(g, ctx))),
      section('Now', liveStats(g)),
      h('div', { class: 'grid-2' },
        section('Rate', rateChart(g)),
        section('Due in the next hour', forecastChart(g)),
        ...(g.adaptive ? [section('Concurrency (adaptive)', concurrencyChart(g))] : [])),
      ...(g.keys || g.active_keys > 0 || g.isolate === 'key' ? [section('Keys', ...keys(g))] : []),
      h('div', { class: 'grid-2' },
        section('Recent failures', ...failures(g, failed, ctx)),
        h('div', {}, section('Configuration', config(g)), section('Counters', counters(g)))),
    ];
  },
};
