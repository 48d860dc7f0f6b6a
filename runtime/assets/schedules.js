// Schedules: the list, and one schedule with its next and last runs.

import { enc, get, post } from './api.js';
import { badge, collapsed, facts, h, icon, link, section, table, targetLine, time } from './dom.js';
import { count, target } from './format.js';

const rule = (sc) => (sc.cron ? `cron ${sc.cron} (${sc.timezone})` : `every ${sc.every}`);
const status = (sc) => badge(sc.paused ? 'paused' : 'active');

/** The last runs as a strip of outcome marks, newest on the right. */
function strip(runs) {
  return h('span', { class: 'strip', role: 'img', 'aria-label': `last ${runs.length} runs: ${runs.map((r) => r.state).join(', ') || 'none'}` },
    [...runs].reverse().map((r) => h('i', { class: `mark ${r.state}`, title: `${r.scheduled_at}: ${r.state}` })));
}

function row(sc) {
  const last = sc.last_runs[0];
  return h('tr', { dataset: { schedule: sc.name } },
    h('td', { class: 'nowrap' }, link(`#/schedules/${enc(sc.name)}`, sc.name, `schedule-${sc.name}`)),
    h('td', {}, h('code', {}, rule(sc))),
    h('td', {}, link(`#/gates/${enc(sc.task.gate)}`, sc.task.gate, `gate-${sc.name}`)),
    h('td', { class: 'target-cell', title: target(sc.task, true), dataset: { col: 'target' } }, target(sc.task)),
    h('td', {}, status(sc)),
    h('td', {}, time(sc.next_runs[0])),
    h('td', {}, last ? h('span', { class: 'pair' }, time(last.scheduled_at), badge(last.state)) : '—'),
    h('td', {}, sc.last_runs.length ? strip(sc.last_runs) : '—'),
    h('td', { class: 'num' }, count(sc.missed)),
    h('td', { class: 'num' }, count(sc.skipped)));
}

export const scheduleList = {
  title: 'Schedules',
  load: (route, signal) => get('/v1/schedules', signal),
  announce: ({ schedules }) => `${count(schedules.length)} schedules.`,
  render({ schedules }) {
    if (!schedules.length) {
      return [h('h1', {}, 'Schedules'), h('p', { class: 'empty' }, 'No schedules yet.')];
    }
    const columns = [['Schedule'], ['Rule'], ['Gate'], ['Target'], ['State'], ['Next run'], ['Last run'], ['Recent'], ['Missed', 'num'], ['Skipped', 'num']];
    return [h('h1', {}, 'Schedules'), table(columns, schedules.map(row), 'Every schedule')];
  },
};

function toggle(sc, ctx) {
  const verb = sc.paused ? 'Resume' : 'Pause';
  const detail = sc.paused
    ? `The next occurrence is planned from now on; missed ones follow its misfire policy (${sc.misfire}).`
    : 'No new occurrence is created until it is resumed; one already running finishes.';
  return h('button', {
    type: 'button', class: sc.paused ? 'primary' : 'danger', dataset: { key: 'schedule-toggle' },
    onclick: () => ctx.act({
      question: `${verb} schedule ${sc.name}?`, detail, action: `${verb} schedule`,
      run: () => post(`/v1/schedules/${enc(sc.name)}/${verb.toLowerCase()}`),
      done: `Schedule ${sc.name} ${sc.paused ? 'resumed' : 'paused'}.`,
    }),
  }, icon(sc.paused ? 'play' : 'pause'), `${verb} schedule`);
}

function lastRuns(sc) {
  if (!sc.last_runs.length) return h('p', { class: 'empty' }, 'No run has ended yet.');
  return table([['Scheduled for'], ['Task'], ['Outcome']], sc.last_runs.map((r) => h('tr', {},
    h('td', {}, time(r.scheduled_at)),
    h('td', { class: 'mono' }, link(`#/tasks/${enc(r.task)}`, r.task, `run-${r.task}`)),
    h('td', {}, badge(r.state)))), 'Last runs, newest first');
}

function nextRuns(sc) {
  if (!sc.next_runs.length) return h('p', { class: 'empty' }, sc.paused ? 'Paused: nothing planned.' : 'Nothing planned.');
  return h('ol', { class: 'runs' }, sc.next_runs.map((t) => h('li', {}, time(t), h('span', { class: 'muted' }, t))));
}

export const scheduleDetail = {
  title: 'Schedule',
  load: (route, signal) => get(`/v1/schedules/${enc(route.arg)}`, signal),
  announce: (sc) => `Schedule ${sc.name} ${sc.paused ? 'paused' : 'active'}.`,
  render(sc, route, ctx) {
    const t = sc.task;
    return [
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, link('#/schedules', 'Schedules', 'crumb'), ' / ', sc.name),
      h('div', { class: 'title' }, h('h1', {}, sc.name), status(sc), h('div', { class: 'actions' }, toggle(sc, ctx))),
      h('div', { class: 'grid-2' },
        section('Schedule', facts([
          ['Rule', h('code', {}, rule(sc))],
          ['Misfire', `${sc.misfire} (catch up at most ${sc.catchup_limit})`],
          ['Jitter', sc.jitter],
          ['Missed', count(sc.missed)],
          ['Skipped', count(sc.skipped)],
          ['Running now', sc.current_task ? link(`#/tasks/${enc(sc.current_task)}`, sc.current_task, 'current') : null],
          ['Last error', sc.last_error ? h('span', { class: 'error' }, sc.last_error) : null],
          ['Gate', link(`#/gates/${enc(t.gate)}`, t.gate, 'gate')],
          ['Target', targetLine(t)],
          ['Input', t.plugin ? collapsed('Input', t.plugin.input, 'input') : null],
          ['Created', time(sc.created_at)],
          ['Updated', time(sc.updated_at)],
        ])),
        section('Next runs', nextRuns(sc))),
      section('Last runs', sc.last_runs.length ? strip(sc.last_runs) : null, lastRuns(sc)),
    ];
  },
};
