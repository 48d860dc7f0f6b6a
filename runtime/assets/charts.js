// Small inline SVG charts: a row sparkline, a line chart over time, a bar
// chart. Each carries a text description for screen readers.

import { h, s } from './dom.js';

function scale(max, height, pad) {
  return (v) => height - pad - (Math.max(0, v) / max) * (height - 2 * pad);
}

function path(values, x, y) {
  return values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)} ${y(v).toFixed(1)}`).join('');
}

function frame(width, height, label, cls, ...content) {
  return s('svg', {
    class: cls, viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': label,
  }, s('title', {}, label), ...content);
}

/**
 * A sparkline of `values`, with a dashed line at `limit` when given.
 * Nothing (null) when there are fewer than two points.
 */
export function sparkline(values, label, limit) {
  if (!values || values.length < 2) return null;
  const [width, height, pad] = [96, 24, 2];
  const max = Math.max(limit ?? 0, ...values) || 1;
  const x = (i) => (i / (values.length - 1)) * width;
  const y = scale(max, height, pad);
  const line = path(values, x, y);
  return frame(width, height, label, 'spark',
    s('path', { class: 'area', d: `${line}L${width} ${height}L0 ${height}Z` }),
    limit ? s('path', { class: 'limit', d: `M0 ${y(limit)}H${width}` }) : null,
    s('path', { class: 'line', d: line }));
}

const PLOT = { width: 720, height: 200, left: 52, right: 12, top: 12, bottom: 24 };

/** Round steps (1, 2, 2.5 or 5 × 10^k) from 0 to at least `peak`, about four of them. */
function ticks(peak) {
  const rough = Math.max(peak, 1e-9) / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((n) => n >= rough);
  return Array.from({ length: Math.ceil(peak / step - 1e-9) + 1 }, (_, i) => i * step);
}

function axes(peak, format, xLabels) {
  const { width, height, left, right, top, bottom } = PLOT;
  const marks = ticks(peak);
  const max = marks[marks.length - 1] || 1;
  const y = (v) => height - bottom - (v / max) * (height - top - bottom);
  const grid = marks.map((v) => s('g', { class: 'tick' },
    s('path', { d: `M${left} ${y(v)}H${width - right}` }),
    s('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v))));
  const labels = xLabels.map(([at, text], i) => s('text', {
    class: 'x-label', x: left + at * (width - left - right), y: height - 4,
    'text-anchor': i === 0 ? 'start' : i === xLabels.length - 1 ? 'end' : 'middle',
  }, text));
  return { y, max, nodes: [...grid, ...labels] };
}

/**
 * Lines over time: `lines` are {name, cls, values}, one value per step, oldest
 * first; `limit` draws a dashed line. Returns the chart and its legend.
 */
export function lineChart({ lines, limit, spanLabel, format, label }) {
  const n = Math.max(...lines.map((l) => l.values.length));
  if (n < 2) return null;
  const peak = Math.max(limit ?? 0, ...lines.flatMap((l) => l.values));
  const { width, left, right } = PLOT;
  const x = (i) => left + (i / (n - 1)) * (width - left - right);
  const { y, nodes } = axes(peak, format, [[0, spanLabel], [1, 'now']]);
  const chart = frame(width, PLOT.height, label, 'chart', ...nodes,
    limit ? s('path', { class: 'limit', d: `M${left} ${y(limit)}H${width - right}` }) : null,
    lines.map((l) => s('path', { class: `line ${l.cls}`, d: path(l.values, x, y) })));
  const legend = [...lines.map((l) => [l.cls, l.name]), ...(limit ? [['limit', `limit ${format(limit)}`]] : [])];
  return h('figure', { class: 'figure' }, chart, h('figcaption', { class: 'legend' },
    legend.map(([cls, name]) => h('span', {}, h('i', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), name))));
}

/**
 * One bar per value (tasks falling due per minute, from now), with a dashed
 * line at what the gate can start per minute when that is within view.
 */
export function barChart({ values, capacity, label }) {
  if (!values?.length) return null;
  const peak = Math.max(...values);
  const { width, left, right } = PLOT;
  const slot = (width - left - right) / values.length;
  const { y, nodes, max } = axes(Math.max(peak, 1), (v) => String(Math.round(v)),
    [[0, 'now'], [0.25, '+15m'], [0.5, '+30m'], [0.75, '+45m'], [1, '+60m']]);
  const bars = values.map((v, i) => s('rect', {
    class: capacity !== undefined && v > capacity ? 'bar over' : 'bar',
    x: (left + i * slot + 1).toFixed(1), width: Math.max(slot - 2, 1).toFixed(1),
    y: y(v).toFixed(1), height: (y(0) - y(v)).toFixed(1),
  }, s('title', {}, `+${i}–${i + 1} min: ${v} tasks`)));
  const over = capacity !== undefined && peak > capacity;
  const showCapacity = capacity !== undefined && capacity <= max;
  const chart = frame(width, PLOT.height, label, 'chart', ...nodes, bars,
    showCapacity ? s('path', { class: 'limit', d: `M${left} ${y(capacity)}H${width - right}` }) : null);
  const key = (cls, text) => h('span', {}, h('i', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), text);
  return h('figure', { class: 'figure' }, chart, h('figcaption', { class: 'legend' },
    key('bar', `falling due per minute (peak ${peak})`),
    over ? key('bar over', 'more than the gate starts in a minute') : null,
    capacity === undefined ? null
      : showCapacity ? key('limit', `the gate starts at most ${Math.round(capacity)} a minute`)
        : h('span', {}, `the gate starts up to ${Math.round(capacity)} a minute, above every bar`)));
}
