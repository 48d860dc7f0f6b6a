// Building the page: elements, state badges, times, dialogs. Text always goes
// in as text, never as HTML, so nothing from the API can become markup.

import { bothZones, pluginRef, relative } from './format.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(node, props, children) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return node;
}

/** An HTML element: h('a', {href: '#/gates'}, 'Gates'). */
export function h(tag, props, ...children) {
  return fill(document.createElement(tag), props, children);
}

/** An SVG element. */
export function s(tag, props, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), props, children);
}

// 16×16 outline icons, one per state; the state's name is always written next to it.
const ICONS = {
  dot: 'M8 4.5a3.5 3.5 0 1 0 0 7a3.5 3.5 0 1 0 0-7z',
  pause: 'M5.5 3.5v9M10.5 3.5v9',
  cross: 'M4.5 4.5l7 7M11.5 4.5l-7 7',
  bolt: 'M9 1.5L3.5 9H8l-1 5.5L12.5 7H8z',
  half: 'M8 2.5a5.5 5.5 0 1 0 0 11zM8 2.5a5.5 5.5 0 1 1 0 11',
  ramp: 'M2.5 12.5L13.5 3.5M8.5 3.5h5v5',
  retry: 'M13 8a5 5 0 1 1-1.6-3.7M11.8 1.8v2.8H9',
  slow: 'M3 5h10M3 8h7M3 11h4',
  clock: 'M8 2.5a5.5 5.5 0 1 0 0 11a5.5 5.5 0 1 0 0-11zM8 5v3.2l2.2 1.6',
  play: 'M5 3.5l7 4.5l-7 4.5z',
  check: 'M3 8.5l3.2 3L13 4.5',
  glass: 'M4 2.5h8M4 13.5h8M5 2.5c0 3 6 3 6 5.5s-6 2.5-6 5.5M11 2.5c0 3-6 3-6 5.5s6 2.5 6 5.5',
  up: 'M8 13V3.5M4.5 7L8 3.5L11.5 7',
  down: 'M8 3v9.5M4.5 9L8 12.5L11.5 9',
  search: 'M7 2.5a4.5 4.5 0 1 0 0 9a4.5 4.5 0 1 0 0-9zM10.3 10.3l3.2 3.2',
  sort: 'M5 6.5L8 3.5l3 3M5 9.5l3 3l3-3',
  slash: 'M8 2.5a5.5 5.5 0 1 0 0 11a5.5 5.5 0 1 0 0-11zM4.2 11.8l7.6-7.6',
};

const STATES = {
  // gates
  open: ['ok', 'dot'],
  paused: ['idle', 'pause'],
  tripped: ['bad', 'bolt'],
  probing: ['busy', 'half'],
  recovering: ['busy', 'ramp'],
  throttled: ['warn', 'slow'],
  unreachable: ['warn', 'slash'],
  // tasks, and attempt outcomes
  scheduled: ['idle', 'clock'],
  retrying: ['warn', 'retry'],
  running: ['busy', 'play'],
  leased: ['busy', 'play'],
  succeeded: ['ok', 'check'],
  failed: ['bad', 'cross'],
  rejected: ['bad', 'cross'],
  denied: ['bad', 'slash'],
  timeout: ['bad', 'glass'],
  lease_expired: ['bad', 'glass'],
  interrupted: ['warn', 'bolt'],
  withdrawn: ['idle', 'retry'],
  expired: ['warn', 'glass'],
  cancelled: ['idle', 'slash'],
  superseded: ['idle', 'retry'],
  // schedules
  active: ['ok', 'dot'],
};

export function icon(name) {
  return s('svg', { class: 'icon', viewBox: '0 0 16 16', 'aria-hidden': 'true', focusable: 'false' },
    s('path', { d: ICONS[name] ?? ICONS.dot }));
}

/** A state as colour, icon and its name: never colour alone. */
export function badge(state, title) {
  const [tone, shape] = STATES[state] ?? ['idle', 'dot'];
  return h('span', { class: `badge ${tone}`, dataset: { state }, title }, icon(shape), state.replaceAll('_', ' '));
}

/** A <time> with the ISO time as its title and relative text. */
export function time(iso) {
  if (!iso) return '—';
  return h('time', { datetime: iso, title: bothZones(iso) }, relative(iso));
}

/** A link within the dashboard; `key` lets focus survive a refresh. */
export function link(hash, text, key) {
  return h('a', { href: hash, dataset: { key: key ?? hash } }, text);
}

/** A definition list from [label, value] pairs; pairs with no value are left out. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .map(([label, value]) => h('div', {}, h('dt', {}, label), h('dd', {}, value))));
}

/** A table with a header row; `columns` are [label, class] pairs. */
export function table(columns, rows, caption) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      caption ? h('caption', { class: 'visually-hidden' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map(([label, cls]) => h('th', { scope: 'col', class: cls }, label)))),
      h('tbody', {}, rows)));
}

export function section(title, ...content) {
  return h('section', { class: 'panel', 'aria-label': title }, h('h2', {}, title), ...content);
}

/** A collapsed block of text, JSON shown indented. */
export function collapsed(summary, value, key) {
  const text = typeof value === 'string' ? value : JSON.stringify(value, null, 2);
  return h('details', { dataset: { key } }, h('summary', {}, summary), h('pre', {}, text));
}

/** A collapsed list of log lines ({source, level, message}), such as a plugin
 * attempt's log: the plugin's lines marked with their level, the host's notes
 * with a "sluice" tag. */
export function collapsedLines(summary, lines, key) {
  return h('details', { dataset: { key } }, h('summary', {}, summary),
    h('ol', { class: 'lines' }, lines.map((line) => line.source === 'host'
      // The host's notes are marked by the API's field, never by their text.
      ? h('li', { dataset: { source: 'host' } }, h('span', { class: 'source' }, 'sluice'), ' ', line.message)
      : h('li', { dataset: { level: line.level, source: 'plugin' } }, `${line.level}: ${line.message}`))));
}

/** A task's or template's target on one line: the webhook's method and URL,
 * or "plugin" and the plugin's name@version (a link to it). */
export function targetLine(t) {
  if (t.plugin) {
    const ref = pluginRef(t.plugin);
    return h('p', { class: 'target' }, h('span', { class: 'method' }, 'plugin'), ' ',
      h('code', {}, link(`#/plugins/${encodeURIComponent(t.plugin.name)}/${encodeURIComponent(t.plugin.version)}`, ref, 'plugin')));
  }
  if (t.webhook) {
    return h('p', { class: 'target' }, h('span', { class: 'method' }, t.webhook.method), ' ', h('code', { class: 'url' }, t.webhook.url));
  }
  return h('p', { class: 'target muted' }, 'No target shown by this server.');
}

/**
 * Replaces a container's children, keeping keyboard focus and open <details>
 * on the elements with the same `data-key`, so a refresh never moves the user.
 */
export function swap(container, nodes) {
  const active = document.activeElement;
  const focusKey = container.contains(active) ? active?.dataset?.key : undefined;
  const open = new Set([...container.querySelectorAll('details[open][data-key]')].map((d) => d.dataset.key));
  container.replaceChildren(...nodes);
  for (const details of container.querySelectorAll('details[data-key]')) {
    if (open.has(details.dataset.key)) details.open = true;
  }
  if (focusKey) focusByKey(container, focusKey);
}

/** Focuses the element with this `data-key`; false when there is none. */
export function focusByKey(container, key) {
  const target = [...container.querySelectorAll('[data-key]')].find((n) => n.dataset.key === key);
  target?.focus();
  return target !== undefined;
}

const dialog = document.getElementById('confirm');

/** Asks before an action; resolves true when the user confirms. */
export function confirm(question, detail, action) {
  dialog.querySelector('h2').textContent = question;
  dialog.querySelector('p').textContent = detail;
  dialog.querySelector('[value=confirm]').textContent = action;
  dialog.returnValue = '';
  dialog.showModal();
  dialog.querySelector('[value=cancel]').focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
  });
}
