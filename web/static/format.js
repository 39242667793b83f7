// Number formatting shared by the pages.

export function rate(v) {
  if (!isFinite(v)) return '–';
  if (v >= 1e6) return (v / 1e6).toFixed(1) + 'M';
  if (v >= 1e4) return (v / 1e3).toFixed(0) + 'k';
  if (v >= 1e3) return (v / 1e3).toFixed(1) + 'k';
  return v.toFixed(v < 10 ? 1 : 0);
}

export function pct(v) {
  if (!isFinite(v)) return '–';
  if (v === 0) return '0 %';
  if (v < 0.001) return (v * 100).toFixed(3) + ' %';
  return (v * 100).toFixed(v < 0.1 ? 2 : 1) + ' %';
}

export function secs(v) {
  if (!isFinite(v) || v <= 0) return '–';
  if (v < 1e-3) return (v * 1e6).toFixed(0) + ' µs';
  if (v < 1) return (v * 1e3).toFixed(v < 0.01 ? 1 : 0) + ' ms';
  return v.toFixed(2) + ' s';
}

export function ago(ms) {
  const s = Math.max(0, ms / 1000);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
  if (s < 3600) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

export function num(v, digits = 2) {
  if (v === undefined || v === null || !isFinite(v)) return '–';
  if (Math.abs(v) >= 1e6 || (Math.abs(v) > 0 && Math.abs(v) < 1e-3)) return v.toExponential(2);
  return v.toFixed(digits);
}

export function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

export function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Markup is HTML built by html`…`: the only kind of string setHTML puts into the page.
class Markup {
  constructor(s) { this.s = s; }
  toString() { return this.s; }
}

function fragment(v) {
  if (v instanceof Markup) return v.s;
  if (Array.isArray(v)) return v.map(fragment).join('');
  return esc(v);
}

// html is a template tag that escapes every interpolated value — data never becomes markup —
// except nested html`…` fragments (and arrays of them), which are markup already.
export function html(strings, ...values) {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += fragment(values[i]) + strings[i + 1];
  return new Markup(out);
}

// setHTML replaces el's content with markup built by html`…`; anything else becomes text.
export function setHTML(el, m) {
  if (m instanceof Markup) el.innerHTML = m.s;
  else el.textContent = String(m ?? '');
}

const STATES = new Set(['pending', 'pass', 'rollback', 'inconclusive', 'healthy']);

// stateClass returns a verdict state for use in a class name, or 'unknown'.
export function stateClass(s) {
  return STATES.has(s) ? s : 'unknown';
}
