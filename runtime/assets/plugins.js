// Plugins: the registry of WebAssembly components, and one version in full.

import { ApiError, enc, get, remove } from './api.js';
import { facts, h, icon, link, section, table, time } from './dom.js';
import { bytes, count, pluginRef, shortHash } from './format.js';

const detailHash = (p) => `#/plugins/${enc(p.name)}/${enc(p.version)}`;
const apiPath = (p) => `/v1/plugins/${enc(p.name)}/${enc(p.version)}`;

/** The list, or {unsupported} from a server before the registry (404). */
async function registry(signal) {
  try {
    return await get('/v1/plugins', signal);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return { unsupported: true };
    throw e;
  }
}

function references(p) {
  const text = `${count(p.references)} ${p.references === 1 ? 'user' : 'users'}`;
  return h('span', { class: p.references ? null : 'muted', title: 'Unfinished tasks and schedules that run this version' }, text);
}

function imports(p, key) {
  if (!p.imports.length) return h('span', { class: 'muted' }, 'none');
  return h('details', { dataset: { key } },
    h('summary', {}, `${count(p.imports.length)} ${p.imports.length === 1 ? 'import' : 'imports'}`),
    h('ul', { class: 'lines' }, p.imports.map((i) => h('li', {}, i))));
}

/** Delete, after confirming; the server refuses (409) while anything uses it. */
function deleteButton(p, ctx, key, next) {
  const ref = pluginRef(p);
  const detail = p.references
    ? `It has ${count(p.references)} ${p.references === 1 ? 'user' : 'users'} (unfinished tasks or schedules); the server refuses while any remain.`
    : 'Its component and compiled code are removed; no task can run this version again. This cannot be undone.';
  return h('button', {
    type: 'button', class: 'danger', dataset: { key }, 'aria-label': `Delete plugin ${ref}`,
    onclick: () => ctx.act({
      question: `Delete plugin ${ref}?`, detail, action: 'Delete plugin',
      run: () => remove(apiPath(p)), next,
      done: `Plugin ${ref} deleted.`,
    }),
  }, icon('cross'), 'Delete');
}

function row(p, ctx) {
  const ref = pluginRef(p);
  return h('tr', { dataset: { plugin: ref } },
    h('td', { dataset: { col: 'name' } }, link(detailHash(p), p.name, `plugin-${ref}`)),
    h('td', { dataset: { col: 'version' } }, h('code', {}, p.version)),
    h('td', { class: 'num' }, bytes(p.size)),
    h('td', { class: 'mono', title: p.sha256 }, shortHash(p.sha256)),
    h('td', {}, time(p.uploaded_at)),
    h('td', { class: 'num', dataset: { col: 'references' } }, references(p)),
    h('td', {}, imports(p, `imports-${ref}`)),
    h('td', { class: 'num' }, deleteButton(p, ctx, `delete-${ref}`)));
}

export const plugins = {
  title: 'Plugins',
  load: (route, signal) => registry(signal),
  announce: (data) => (data.unsupported ? 'No plugin registry on this server.' : `${count(data.plugins.length)} plugin versions.`),
  render(data, route, ctx) {
    const title = h('h1', {}, 'Plugins');
    if (data.unsupported) {
      return [title, h('p', { class: 'empty' }, 'This server has no plugin registry: it predates plugins.')];
    }
    if (!data.plugins.length) {
      return [title, h('p', { class: 'empty' }, 'No plugins uploaded yet. Upload one with sluice plugin push.')];
    }
    const names = new Set(data.plugins.map((p) => p.name)).size;
    const columns = [['Plugin'], ['Version'], ['Size', 'num'], ['SHA-256'], ['Uploaded'], ['Used by', 'num'], ['Imports'], ['', 'num']];
    return [
      title,
      h('p', { class: 'summary' }, `${count(data.plugins.length)} versions of ${count(names)} ${names === 1 ? 'plugin' : 'plugins'}, by name then version`),
      table(columns, data.plugins.map((p) => row(p, ctx)), 'Plugin versions'),
    ];
  },
};

/** `#/plugins/NAME/VERSION` → {name, version}. */
function parseArg(arg) {
  const cut = arg.lastIndexOf('/');
  return cut < 0 ? { name: arg, version: '' } : { name: arg.slice(0, cut), version: arg.slice(cut + 1) };
}

export const pluginDetail = {
  title: 'Plugin',
  load: (route, signal) => get(apiPath(parseArg(route.arg)), signal),
  announce: (p) => `Plugin ${pluginRef(p)}, ${count(p.references)} users.`,
  render(p, route, ctx) {
    const ref = pluginRef(p);
    return [
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, link('#/plugins', 'Plugins', 'crumb'), ' / ', ref),
      h('div', { class: 'title' }, h('h1', {}, ref), h('div', { class: 'actions' }, deleteButton(p, ctx, 'plugin-delete', '#/plugins'))),
      h('div', { class: 'grid-2' },
        section('Plugin', facts([
          ['Name', p.name],
          ['Version', h('code', {}, p.version)],
          ['Size', `${bytes(p.size)} (${count(p.size)} bytes)`],
          ['SHA-256', h('code', {}, p.sha256)],
          ['Uploaded', time(p.uploaded_at)],
          ['Used by', references(p)],
        ])),
        section('Imports', p.imports.length
          ? h('ul', { class: 'lines' }, p.imports.map((i) => h('li', {}, h('code', {}, i))))
          : h('p', { class: 'empty' }, 'It imports nothing.'))),
    ];
  },
};
