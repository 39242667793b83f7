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
