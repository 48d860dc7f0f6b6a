// Tasks: search with filters kept in the URL, and one task with every attempt.

import { enc, get, post, remove, withQuery } from './api.js';
import { badge, collapsed, collapsedLines, facts, h, icon, link, section, table, targetLine, time } from './dom.js';
import { bytes, count, duration, millis, target } from './format.js';

const STATES = ['scheduled', 'running', 'succeeded', 'failed', 'expired', 'cancelled', 'superseded'];
const FILTERS = ['gate', 'state', 'label', 'limit'];

/** The list's query from the route: filters plus the page cursor. */
function listQuery(route) {
  const q = Object.fromEntries(FILTERS.map((f) => [f, route.query.get(f) ?? '']));
  return { ...q, cursor: route.query.get('cursor') ?? '' };
}

function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

function select(name, value, options) {
  return h('select', { name }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
}

/** Gate names for the filter's suggestions; the form works without them. */
async function fillGateNames(datalist) {
  const { gates } = await get('/v1/gates').catch(() => ({ gates: [] }));
  datalist.replaceChildren(...gates.map((g) => h('option', { value: g.name })));
}

function filterForm(route) {
  const q = listQuery(route);
  const gates = h('datalist', { id: 'gate-names' });
  fillGateNames(gates);
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Find tasks' },
    field('Task id', h('input', { name: 'id', type: 'search', id: 'task-search', dataset: { key: 'search' }, placeholder: 'e.g. 0193…', autocomplete: 'off', spellcheck: 'false' })),
    field('Gate', h('input', { name: 'gate', value: q.gate, list: 'gate-names', autocomplete: 'off' })), gates,
    field('State', select('state', q.state, [['', 'any'], ...STATES.map((s) => [s, s])])),
    field('Label', h('input', { name: 'label', value: q.label, placeholder: 'key:value', autocomplete: 'off' })),
    field('Per page', select('limit', q.limit || '50', [['25', '25'], ['50', '50'], ['100', '100'], ['500', '500']])),
    h('div', { class: 'buttons' },
      h('button', { type: 'submit', class: 'primary', dataset: { key: 'find' } }, icon('search'), 'Find'),
      h('a', { href: '#/tasks', class: 'button' }, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const id = String(data.get('id')).trim();
    if (id) {
      location.hash = `#/tasks/${enc(id)}`;
      return;
    }
    const filters = Object.fromEntries(FILTERS.map((f) => [f, String(data.get(f)).trim()]));
    if (filters.limit === '50') filters.limit = '';
    location.hash = withQuery('#/tasks', filters);
  });
  return [h('h1', {}, 'Tasks'), form];
}

const when = (t) => (t.finished_at ? time(t.finished_at) : time(t.due_at));

/** A scheduled task that has run before is waiting to retry: shown apart. */
function taskBadge(t) {
  return t.state === 'scheduled' && t.attempt_count > 0
    ? badge('retrying', `scheduled: attempt ${t.attempt_count + 1} waits for its backoff and the gate`)
    : badge(t.state);
}

function taskRow(t) {
  return h('tr', { dataset: { task: t.id } },
    h('td', { class: 'mono' }, link(`#/tasks/${enc(t.id)}`, t.id, `task-${t.id}`)),
    h('td', {}, link(`#/gates/${enc(t.gate)}`, t.gate, `gate-${t.id}`)),
    h('td', { class: 'target-cell', title: target(t, true), dataset: { col: 'target' } }, target(t)),
    h('td', {}, taskBadge(t)),
    h('td', {}, when(t)),
    h('td', { class: 'num' }, `${t.attempt_count} / ${t.max_attempts}`),
    h('td', {}, time(t.created_at)),
    h('td', { class: 'error clip', title: t.last_error }, t.last_error ?? ''));
}

function pager(route, list) {
  const q = listQuery(route);
  const first = q.cursor ? link(withQuery('#/tasks', { ...q, cursor: '' }), '← First page', 'page-first') : null;
  const next = list.next_cursor ? link(withQuery('#/tasks', { ...q, cursor: list.next_cursor }), 'Next page →', 'page-next') : null;
  return h('nav', { class: 'pager', 'aria-label': 'Pages' }, first, next);
}

export const taskList = {
  title: 'Tasks',
  controls: filterForm,
  load: (route, signal) => get(withQuery('/v1/tasks', listQuery(route)), signal),
  announce: (list) => `${count(list.tasks.length)} tasks shown${list.next_cursor ? ', more on the next page' : ''}.`,
  render(list, route) {
    if (!list.tasks.length) return [h('p', { class: 'empty' }, 'No task matches.')];
    const columns = [['Task'], ['Gate'], ['Target'], ['State'], ['Due or ended'], ['Attempts', 'num'], ['Created'], ['Last error']];
    return [
      h('p', { class: 'summary' }, `${count(list.tasks.length)} tasks, newest first`),
      table(columns, list.tasks.map(taskRow), 'Tasks, newest first'),
      pager(route, list),
    ];
  },
};

/** A header value as shown: a secret one is only ever called secret. */
function headerValue(value) {
  return typeof value === 'string' ? h('code', {}, value)
    : h('span', { class: 'badge idle secret' }, icon('slash'), 'secret');
}

/** Input shown as it is when short, collapsed when long. */
function input(value) {
  const text = JSON.stringify(value, null, 2) ?? 'null';
  if (text.length <= 600 && text.split('\n').length <= 12) {
    return h('div', { class: 'input' }, h('h3', {}, 'Input'), h('pre', {}, text));
  }
  return collapsed(`Input (${bytes(text.length)})`, text, 'input');
}

/** The plugin the task runs, and its input. */
function plugin(t) {
  return [targetLine(t), input(t.plugin.input)];
}

function webhook(t) {
  const w = t.webhook;
  if (!w) return [targetLine(t)];
  const headers = Object.entries(w.headers ?? {});
  return [
    targetLine(t),
    headers.length
      ? table([['Header'], ['Value']], headers.map(([name, value]) => h('tr', {}, h('td', {}, h('code', {}, name)), h('td', {}, headerValue(value)))), 'Request headers')
      : null,
    w.body !== undefined ? collapsed('Body', w.body, 'body') : null,
  ];
}

function labels(t) {
  const entries = Object.entries(t.labels);
  if (!entries.length) return null;
  return h('span', { class: 'chips' }, entries.map(([k, v]) =>
    link(withQuery('#/tasks', { label: `${k}:${v}` }), `${k}: ${v}`, `label-${k}`)));
}

/** Time between when the task was asked to run and its first attempt. */
function waited(t) {
  const first = t.attempts?.[0];
  if (!first) return null;
  return duration((Date.parse(first.started_at) - Date.parse(t.scheduled_at)) / 1000);
}

function summary(t) {
  const b = t.backoff;
  return facts([
    ['Gate', link(`#/gates/${enc(t.gate)}`, t.gate, 'gate')],
    ['State', taskBadge(t)],
    ['Attempts', `${t.attempt_count} of at most ${t.max_attempts}`],
    ['Scheduled for', time(t.scheduled_at)],
    ['Next due', t.state === 'scheduled' ? time(t.due_at) : null],
    ['Waited for the gate', waited(t)],
    ['Created', time(t.created_at)],
    ['Finished', t.finished_at ? time(t.finished_at) : null],
    ['Expires', t.expires_at ? time(t.expires_at) : null],
    ['Timeout', t.timeout],
    ['Backoff', `${b.initial} → ${b.max} ×${b.multiplier}${b.jitter ? ' with jitter' : ''}`],
    ['Retry window', t.max_retry_duration],
    ['Idempotency key', t.idempotency_key ? h('code', {}, t.idempotency_key) : null],
    ['Key', t.key ? h('code', {}, t.key) : null],
    ['Coalesce key', t.coalesce_key ? h('code', {}, t.coalesce_key) : null],
    ['Replaced', t.supersedes ? link(`#/tasks/${enc(t.supersedes)}`, t.supersedes, 'superseded') : null],
    ['Labels', labels(t)],
    ['Schedule', t.schedule ? link(`#/schedules/${enc(t.schedule)}`, t.schedule, 'schedule') : null],
    ['Created by', t.parent ? link(`#/tasks/${enc(t.parent)}`, t.parent, 'parent') : null],
    ['Lineage', t.depth > 0 ? h('span', {}, link(`#/tasks/${enc(t.root)}`, t.root, 'root'), ` (depth ${t.depth})`) : null],
    ['Last error', t.last_error ? h('span', { class: 'error' }, t.last_error) : null],
  ]);
}

/** Whether attempts are a plugin's: their payload is its output, and they have logs. */
const ranPlugin = (t) => t.plugin !== undefined || t.attempts?.some((a) => a.logs?.length);

function attemptRow(a, isPlugin) {
  const extra = [
    a.lease_until ? h('div', {}, 'lease until ', time(a.lease_until)) : null,
    a.heartbeat_at ? h('div', {}, 'heartbeat ', time(a.heartbeat_at)) : null,
    a.progress !== undefined ? collapsed('Progress', a.progress, `progress-${a.attempt}`) : null,
  ];
  return h('tr', { dataset: { attempt: a.attempt } },
    h('td', { class: 'num' }, a.attempt),
    h('td', {}, time(a.started_at)),
    h('td', {}, a.ended_at ? time(a.ended_at) : '—'),
    h('td', { class: 'num' }, millis(a.latency_ms)),
    h('td', { dataset: { col: 'outcome' } }, badge(a.outcome)),
    h('td', { class: 'num', dataset: { col: 'status' } }, a.status ?? '—'),
    h('td', { class: 'error' }, a.error ?? '', extra),
    h('td', {}, a.response ? collapsed(`${isPlugin ? 'Output' : 'Response'} (${bytes(a.response.length)})`, a.response, `response-${a.attempt}`) : '—'),
    isPlugin ? h('td', { dataset: { col: 'logs' } }, a.logs?.length
      ? collapsedLines(`Log (${count(a.logs.length)} ${a.logs.length === 1 ? 'line' : 'lines'})`, a.logs, `logs-${a.attempt}`)
      : '—') : null);
}

function attempts(t) {
  if (!t.attempts?.length) return h('p', { class: 'empty' }, 'No attempt yet.');
  const isPlugin = ranPlugin(t);
  const columns = [['#', 'num'], ['Started'], ['Ended'], ['Took', 'num'], ['Outcome'], ['Status', 'num'], ['Error'],
    [isPlugin ? 'Output' : 'Response'], ...(isPlugin ? [['Log']] : [])];
  return table(columns, t.attempts.map((a) => attemptRow(a, isPlugin)), 'Attempts, first to last');
}

function actions(t, ctx) {
  const path = `/v1/tasks/${enc(t.id)}`;
  const buttons = [];
  if (t.state === 'scheduled') {
    buttons.push(h('button', {
      type: 'button', class: 'danger', dataset: { key: 'task-cancel' },
      onclick: () => ctx.act({
        question: 'Cancel this task?', detail: `Task ${t.id} will not run. This cannot be undone.`,
        action: 'Cancel task', run: () => remove(path), done: `Task ${t.id} cancelled.`,
      }),
    }, icon('slash'), 'Cancel task'));
  }
  if (t.state === 'failed' || t.state === 'expired' || t.state === 'superseded') {
    buttons.push(h('button', {
      type: 'button', class: 'primary', dataset: { key: 'task-retry' },
      onclick: () => ctx.act({
        question: 'Retry this task?', detail: `Task ${t.id} runs again through gate ${t.gate}, with ${t.max_attempts} fresh attempts.`,
        action: 'Retry task', run: () => post(`${path}/retry`), done: `Task ${t.id} scheduled again.`,
      }),
    }, icon('retry'), 'Retry task'));
  }
  return h('div', { class: 'actions' }, buttons);
}

export const taskDetail = {
  title: 'Task',
  load: (route, signal) => get(`/v1/tasks/${enc(route.arg)}`, signal),
  announce: (t) => `Task ${t.state}, ${t.attempt_count} attempts.`,
  render(t, route, ctx) {
    return [
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, link('#/tasks', 'Tasks', 'crumb'), ' / ', t.id),
      h('div', { class: 'title' }, h('h1', { class: 'mono' }, t.id), taskBadge(t), actions(t, ctx)),
      h('div', { class: 'grid-2' },
        section('Task', summary(t)),
        t.plugin ? section('Plugin', ...plugin(t)) : section('Webhook', ...webhook(t))),
      section('Attempts', attempts(t)),
    ];
  },
};
