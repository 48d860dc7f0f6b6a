// Text for numbers, rates, durations and times. Pure functions, no DOM.

const grouped = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

/** 1234 → "1,234" (in the reader's locale). */
export function count(n) {
  return typeof n === 'number' ? grouped.format(n) : '—';
}

/** A number with at most `digits` decimals, trailing zeros dropped. */
export function decimal(n, digits = 2) {
  return Number(n.toFixed(digits)).toString();
}

const UNITS = { s: 1, m: 60, h: 3600, d: 86400 };

/** Per-second figure in the unit that keeps it at or above 1: "2.5/s", "30/m", "4/h". */
export function rate(perSecond) {
  if (typeof perSecond !== 'number') return '—';
  if (perSecond === 0) return '0/s';
  const unit = perSecond >= 1 ? 's' : perSecond * 60 >= 1 ? 'm' : 'h';
  return `${decimal(perSecond * UNITS[unit])}/${unit}`;
}

/** The unit of a configured rate such as "30/m". */
export function rateUnit(text) {
  const unit = String(text).split('/')[1];
  return unit in UNITS ? unit : 's';
}

/** Seconds in the unit of a configured rate: "30/m" → 60. */
export function unitSeconds(text) {
  return UNITS[rateUnit(text)];
}

/** A per-second figure in the unit of a configured rate: (0.25, "30/m") → "15". */
export function inUnitOf(perSecond, text) {
  return decimal(perSecond * unitSeconds(text));
}

const SPANS = [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]];

/** Seconds as "45s", "3m 12s", "2h 5m", "3d": the largest unit and the next. */
export function duration(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '—';
  let rest = Math.round(Math.abs(seconds));
  const first = SPANS.findIndex(([, size]) => rest >= size);
  if (first === -1) return '0s';
  const parts = [];
  for (const [unit, size] of SPANS.slice(first, first + 2)) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0) parts.push(`${n}${unit}`);
  }
  return parts.join(' ');
}

/** An ISO time relative to now: "in 3m", "12s ago", "now". */
export function relative(iso, now = Date.now()) {
  const seconds = (Date.parse(iso) - now) / 1000;
  if (!Number.isFinite(seconds)) return iso;
  if (Math.abs(seconds) < 1) return 'now';
  return seconds > 0 ? `in ${duration(seconds)}` : `${duration(seconds)} ago`;
}

/** An ISO time in UTC and in the reader's zone, for a tooltip. */
export function bothZones(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return `${date.toISOString()} (local ${date.toLocaleString()})`;
}

/** A field name as a label: "created_at" → "Created at". */
export function label(key) {
  return key.charAt(0).toUpperCase() + key.slice(1).replaceAll('_', ' ');
}

/** hh:mm:ss of a Date, in the reader's zone. */
export function clock(date) {
  return date.toLocaleTimeString(undefined, { hour12: false });
}

/** Bytes as "512 B", "3.2 KiB". */
export function bytes(n) {
  return n < 1024 ? `${n} B` : `${decimal(n / 1024, 1)} KiB`;
}

/** Milliseconds as "85 ms" or "2.4s". */
export function millis(ms) {
  if (typeof ms !== 'number') return '—';
  return ms < 1000 ? `${ms} ms` : `${decimal(ms / 1000, 1)}s`;
}

/** A plugin call as "name@version". */
export function pluginRef(p) {
  return `${p.name}@${p.version}`;
}

/** A task's or template's target in one line: "plugin name@version", or the
 * webhook's URL (with its method when `method` is set). */
export function target(t, method = false) {
  if (t.plugin) return `plugin ${pluginRef(t.plugin)}`;
  if (t.webhook) return method ? `${t.webhook.method} ${t.webhook.url}` : t.webhook.url;
  return '—';
}

/** A SHA-256 in hex, shortened for a table: the first 12 digits. */
export function shortHash(hex) {
  return typeof hex === 'string' ? hex.slice(0, 12) : '—';
}
