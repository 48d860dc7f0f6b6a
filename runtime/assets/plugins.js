// Plugins: the WebAssembly components the server holds, once it has any.

import { ApiError, get } from './api.js';
import { h, table, time } from './dom.js';
import { bytes, count, label } from './format.js';

/** Any plugin field besides name and version, shown as it comes. */
function shown(key, value) {
  if (value === undefined || value === null) return '—';
  if (key === 'size' && typeof value === 'number') return bytes(value);
  if (typeof value === 'number') return count(value);
  if (key.endsWith('_at')) return time(value);
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

export const plugins = {
  title: 'Plugins',
  async load(route, signal) {
    try {
      return await get('/v1/plugins', signal);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return { unsupported: true };
      throw e;
    }
  },
  announce: (data) => (data.unsupported ? 'No plugin support.' : `${count(data.plugins.length)} plugins.`),
  render(data) {
    const title = h('h1', {}, 'Plugins');
    if (data.unsupported) return [title, h('p', { class: 'empty' }, 'No plugin support in this server yet.')];
    if (!data.plugins.length) return [title, h('p', { class: 'empty' }, 'No plugins uploaded.')];
    const others = [...new Set(data.plugins.flatMap((p) => Object.keys(p)))]
      .filter((k) => k !== 'name' && k !== 'version');
    const rows = data.plugins.map((p) => h('tr', {},
      h('td', {}, p.name), h('td', {}, h('code', {}, p.version)),
      others.map((k) => h('td', {}, shown(k, p[k])))));
    return [title, table([['Name'], ['Version'], ...others.map((k) => [label(k)])], rows, 'Plugins')];
  },
};
