// The dashboard's shell: hash routes, polling, sign-in, actions, shortcuts.
// Each view is {title, load(route, signal), render(data, route, ctx),
// announce(data), controls?(route)}; controls (a filter form) are drawn once
// per route, the rest again on every refresh.

import { ApiError, setToken, token } from './api.js';
import { confirm, focusByKey, h, swap } from './dom.js';
import { clock } from './format.js';
import { gateDetail, overview } from './gates.js';
import { pluginDetail, plugins } from './plugins.js';
import { scheduleDetail, scheduleList } from './schedules.js';
import { taskDetail, taskList } from './tasks.js';

// Route name → [list view, detail view].
const ROUTES = {
  gates: [overview, gateDetail],
  tasks: [taskList, taskDetail],
  schedules: [scheduleList, scheduleDetail],
  plugins: [plugins, pluginDetail],
};

const INTERVALS = [1, 2, 5, 10, 30];

const byId = (id) => document.getElementById(id);
const ui = {
  main: byId('main'),
  controls: byId('controls'),
  view: byId('view'),
  notice: byId('notice'),
  status: byId('status'),
  updated: byId('updated'),
  interval: byId('interval'),
  pause: byId('pause'),
  signOut: byId('sign-out'),
  keys: byId('keys'),
};

const settings = {
  interval: INTERVALS.includes(Number(localStorage.getItem('sluice.interval')))
    ? Number(localStorage.getItem('sluice.interval')) : 2,
  paused: localStorage.getItem('sluice.paused') === 'yes',
};

let route;
let view;
let timer;
let loading;
let signingIn = false;
let pendingFocus = null;
let pendingAnnouncement = null;
let lastUpdate = null;
let keepNotice = false;

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/** `#/tasks/ID?state=failed` → {name: 'tasks', arg: 'ID', query}. */
function parseRoute() {
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, ...rest] = path.split('/');
  const known = name in ROUTES ? name : 'gates';
  return { name: known, arg: rest.length ? decode(rest.join('/')) : undefined, query: new URLSearchParams(query) };
}

function pickView(r) {
  const [list, detail] = ROUTES[r.name];
  return r.arg !== undefined && detail ? detail : list;
}

/** A message above the view (`tone` is ok, warn or error); none clears it. */
function notify(text, tone) {
  if (!text) {
    ui.notice.replaceChildren();
    return null;
  }
  const close = h('button', { type: 'button', class: 'ghost', 'aria-label': 'Dismiss', onclick: () => notify(null) }, '×');
  const note = h('div', { class: `notice ${tone}`, role: tone === 'error' ? 'alert' : null }, h('span', {}, text), close);
  ui.notice.replaceChildren(note);
  return note;
}

/** "Updated hh:mm:ss", from the last refresh that drew figures. */
function showUpdated() {
  if (!lastUpdate) return;
  const iso = lastUpdate.toISOString();
  ui.updated.replaceChildren(settings.paused ? 'Paused · updated ' : 'Updated ',
    h('time', { datetime: iso, title: iso }, clock(lastUpdate)));
}

function schedule() {
  clearTimeout(timer);
  if (settings.paused || document.hidden || signingIn) return;
  timer = setTimeout(refresh, settings.interval * 1000);
}

/** Loads the current view's data and draws it; one announcement per refresh. */
async function refresh() {
  clearTimeout(timer);
  if (signingIn) return;
  loading?.abort();
  const mine = new AbortController();
  loading = mine;
  try {
    const data = await view.load(route, mine.signal);
    if (loading !== mine) return;
    swap(ui.view, view.render(data, route, { act }));
    if (ui.notice.querySelector('[data-stale]')) notify(null);
    lastUpdate = new Date();
    showUpdated();
    ui.status.textContent = pendingAnnouncement ?? view.announce(data);
    pendingAnnouncement = null;
    placeFocus();
  } catch (e) {
    if (loading !== mine || e.name === 'AbortError') return;
    failed(e);
  } finally {
    if (loading === mine) schedule();
  }
}

/** After a route change: back to the element the user was on, or the page. */
function placeFocus() {
  if (pendingFocus === null) return;
  const key = pendingFocus;
  pendingFocus = null;
  if (key && focusByKey(ui.main, key)) return;
  ui.main.focus({ preventScroll: true });
}

function failed(e) {
  if (!(e instanceof ApiError)) {
    notify(`The dashboard hit a bug: ${e.message}`, 'error');
    throw e;
  }
  if (e.status === 401) {
    signIn();
  } else if (e.status === 0) {
    notify('Cannot reach the server; showing the last figures and trying again.', 'warn').dataset.stale = 'yes';
  } else {
    // A filter form already heads a view that has one.
    const heading = view.controls ? [] : [h('h1', {}, view.title)];
    swap(ui.view, [...heading, h('p', { class: 'empty error' }, e.message)]);
    ui.status.textContent = e.message;
  }
}

/** Runs an operator action after the user confirms it, then refreshes, or
 * on success goes to `next` (a hash) when the current page is gone. */
async function act({ question, detail, action, run, done, next }) {
  const opener = document.activeElement?.dataset?.key ?? null;
  if (!(await confirm(question, detail, action))) return;
  try {
    await run();
    notify(done, 'ok');
    pendingAnnouncement = done;
    if (next) {
      keepNotice = true;
      pendingFocus = '';
      location.hash = next;
      return;
    }
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    if (e.status === 401) return signIn();
    const message = e.status === 403 ? `Your role is too low for this (${e.message}).` : `${action} failed: ${e.message}`;
    notify(message, 'error');
    pendingAnnouncement = message;
  }
  pendingFocus = opener;
  await refresh();
}

/** The token form, shown whenever the API answers 401. */
function signIn() {
  const refused = token() !== null;
  setToken(null);
  signingIn = true;
  clearTimeout(timer);
  // A refresh on its way would draw its view over the form when it lands.
  loading?.abort();
  loading = null;
  ui.signOut.hidden = true;
  ui.updated.textContent = 'Not signed in';
  ui.controls.replaceChildren();
  const input = h('input', { id: 'token', name: 'token', type: 'password', required: true, autocomplete: 'off', spellcheck: 'false' });
  const form = h('form', { class: 'panel signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', {}, 'This server asks for an API token. A reader token shows everything; cancelling and retrying tasks needs writer, pausing gates and deleting plugins needs admin.'),
    refused ? h('p', { class: 'error', role: 'alert' }, 'The server did not accept that token.') : null,
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p', { class: 'muted' }, 'Kept in this browser tab only, and sent as Authorization: Bearer.'),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    signingIn = false;
    ui.signOut.hidden = false;
    pendingFocus = '';
    open();
  });
  swap(ui.view, [form]);
  ui.status.textContent = 'Sign-in needed.';
  input.focus();
}

function markNav() {
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === route.name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

/** Draws the route in the address bar. Within one view (a new sort or
 * filter) the old figures stay until the new ones arrive. */
function open() {
  const previous = route;
  route = parseRoute();
  view = pickView(route);
  document.title = `${route.arg ?? view.title} · Sluice`;
  markNav();
  if (signingIn) return;
  ui.controls.replaceChildren(...(view.controls?.(route) ?? []));
  if (previous?.name !== route.name || previous?.arg !== route.arg) {
    ui.view.replaceChildren(h('p', { class: 'empty' }, 'Loading…'));
    if (!keepNotice) notify(null);
  }
  keepNotice = false;
  refresh();
}

function showPaused() {
  ui.pause.setAttribute('aria-pressed', String(settings.paused));
  ui.pause.querySelector('span').textContent = settings.paused ? 'Resume' : 'Pause';
}

function setPaused(paused) {
  settings.paused = paused;
  localStorage.setItem('sluice.paused', paused ? 'yes' : 'no');
  showPaused();
  showUpdated();
  if (paused) {
    clearTimeout(timer);
    ui.status.textContent = 'Live updates paused.';
  } else {
    refresh();
  }
}

function searchTasks() {
  pendingFocus = 'search';
  if (route.name === 'tasks' && route.arg === undefined) placeFocus();
  else location.hash = '#/tasks';
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest('input, select, textarea, dialog')) return;
  const actions = {
    '/': searchTasks,
    '?': () => ui.keys.showModal(),
    r: refresh,
    p: () => setPaused(!settings.paused),
  };
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
}

function start() {
  ui.interval.replaceChildren(...INTERVALS.map((s) => h('option', { value: s, selected: s === settings.interval }, `${s}s`)));
  ui.interval.addEventListener('change', () => {
    settings.interval = Number(ui.interval.value);
    localStorage.setItem('sluice.interval', String(settings.interval));
    schedule();
  });
  ui.pause.addEventListener('click', () => setPaused(!settings.paused));
  ui.signOut.addEventListener('click', () => {
    setToken(null);
    signIn();
  });
  ui.signOut.hidden = token() === null;
  byId('show-keys').addEventListener('click', () => ui.keys.showModal());
  document.addEventListener('keydown', onKey);
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) clearTimeout(timer);
    else if (!settings.paused) refresh();
  });
  window.addEventListener('hashchange', () => {
    pendingFocus ??= document.activeElement?.dataset?.key ?? '';
    open();
  });
  showPaused();
  open();
}

start();
