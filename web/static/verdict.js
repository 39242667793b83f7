// The verdict panel: a verdict's state with whether and where its decision was delivered,
// its age, and its evidence in the metrics' own units (effect and interval), live while the
// comparison is pending or watching. Every text comes from the server and is escaped
// (html`…`, setHTML); class names come from fixed sets, never from the server.
import { pct, secs, ago, num, time, html, setHTML, stateClass } from './format.js';

// deliveryState says whether and where a verdict's decision was delivered:
// {word, failing, targets}. A verdict without a delivery state (none joined yet, or no
// delivery at hand) is "delivery unknown": never shown as delivered.
export function deliveryState(v) {
  const d = v && v.delivery;
  if (!d || typeof d !== 'object') return { word: 'delivery unknown', failing: true, targets: [] };
  const targets = Array.isArray(d.targets) ? d.targets.filter(t => t && typeof t === 'object') : [];
  const retrying = targets.some(t => t.outcome === 'retry' || t.outcome === 'failed');
  switch (d.status) {
    case 'delivered': return { word: 'delivered', failing: false, targets };
    case 'none': return { word: 'not delivered (no target)', failing: true, targets };
    case 'failed': return { word: 'delivery failed', failing: true, targets };
    case 'escalated': return { word: 'delivery failing', failing: true, targets };
    case 'delivering': return { word: retrying ? 'delivery failing' : 'delivering', failing: true, targets };
  }
  return { word: 'delivery unknown', failing: true, targets };
}

// verdictView says how a verdict shows: {text, cls}. A rollback is red only once delivered.
export function verdictView(v) {
  const state = stateClass(v && v.state);
  const w = v && v.watch && typeof v.watch === 'object' ? v.watch : null;
  if (state === 'pass') return { text: w ? (w.active ? 'promoted, watching' : 'promoted') : 'pass', cls: 'pass' };
  if (state !== 'rollback') return { text: String(v && v.state ? v.state : ''), cls: state };
  const d = deliveryState(v);
  return d.failing ? { text: 'rollback — ' + d.word, cls: 'undelivered' } : { text: 'rollback', cls: 'rollback' };
}

// badge is the verdict's badge.
export function badge(v, id = '') {
  const view = verdictView(v);
  return id ? html`<span class="badge ${view.cls}" id="${id}">${view.text}</span>`
    : html`<span class="badge ${view.cls}">${view.text}</span>`;
}

// inUnit formats a value of an effect's unit.
function inUnit(x, unit) {
  if (typeof x !== 'number' || !isFinite(x)) return '–';
  if (unit === 'seconds') return secs(x);
  if (unit === 'ratio') return pct(x);
  return num(x);
}

function times(x) {
  return typeof x === 'number' && isFinite(x) && x > 0 ? '×' + (x >= 10 ? x.toFixed(0) : x.toFixed(1)) : '–';
}

// decidedAfter is the one "decided after" figure: decided_after_ms, as the sentence says it.
export function decidedAfter(v) {
  const ms = typeof v.decided_after_ms === 'number' ? v.decided_after_ms : v.unix_ms - v.started_unix_ms;
  return (Math.max(0, ms) / 1000).toFixed(1) + ' s';
}

// targetsText says where a decision went: "webhook:… (HTTP 204, done), argo:… (done)".
function targetsText(targets) {
  return targets.map(t => `${t.target} (${t.http_status ? 'HTTP ' + t.http_status + ', ' : ''}${t.outcome || 'pending'}` +
    `${t.attempts > 1 ? ', ' + t.attempts + ' attempts' : ''}${t.error ? ': ' + t.error : ''})`).join(', ');
}

// render fills el with the verdict panel of v and badgeEl with its badge; nowMs is the
// server's clock as the page estimates it.
export function render(el, badgeEl, v, nowMs) {
  setHTML(badgeEl, badge(v, 'verdict-state'));
  const e = v.evidence || {};
  const state = stateClass(v.state);
  const final = state === 'rollback' || state === 'pass';
  const live = state === 'pending' || (v.watch && v.watch.active);
  const age = ago(nowMs - v.unix_ms);
  const label = state === 'pending' ? 'pending since' : 'verdict';
  let delivery = '';
  if (v.decision_id) {
    const d = deliveryState(v);
    delivery = html` · <span id="verdict-delivery" class="delivery ${d.failing ? 'failing' : 'ok'}">${d.word}${d.targets.length ? ': ' + targetsText(d.targets) : ''}</span>`;
  }
  // A pending verdict's age is how long the comparison has run; a final one says when it decided.
  const timing = final ? html` · decided after <b id="verdict-decided-after">${decidedAfter(v)}</b> (at ${time(v.unix_ms)})`
    : state === 'pending' ? '' : html` · started ${ago(nowMs - v.started_unix_ms)} ago`;
  const evidenceAge = live && e.last_unix_ms > 0
    ? html` · <span id="verdict-evidence-age" class="live-dot">● evidence as of ${ago(nowMs - e.last_unix_ms)} ago</span>` : '';
  const effects = (Array.isArray(e.effects) ? e.effects : []).filter(x => x && typeof x === 'object');
  const rows = effects.map(x => html`<tr data-test="${x.test}"><td>${x.metric}</td>
    <td class="num">${inUnit(x.canary, x.unit)}</td><td class="num">${inUnit(x.baseline, x.unit)}</td>
    <td class="num">${times(x.ratio)}</td><td class="num">${times(x.ratio_since_start)}</td>
    <td class="num">${x.high > 0 ? html`${inUnit(x.low, x.unit)} – ${inUnit(x.high, x.unit)}` : '–'}</td></tr>`);
  const recentS = effects.length ? Math.round((effects[0].recent_ms || 0) / 1000) : 0;
  const p = e.progress && typeof e.progress === 'object' ? e.progress : null;
  const share = p && typeof p.rollback === 'number' && isFinite(p.rollback) ? Math.min(1, Math.max(0, p.rollback)) : 0;
  const tests = (e.tests || []).map(t => html`<tr${t.name === e.decisive ? html` style="font-weight:600"` : ''}>
      <td>${t.name}</td><td class="num">${num(t.e_value)}</td><td class="num">${num(t.weight)}</td>
      <td class="num">${t.threshold_seconds ? secs(t.threshold_seconds) : ''}</td>
      <td class="num">${t.baseline_e}/${t.baseline_n}</td><td class="num">${t.canary_e}/${t.canary_n}</td>
      <td class="num">${num(t.effect)}×</td><td class="num">[${num(t.cs_low)}, ${num(t.cs_high)}]</td></tr>`);
  setHTML(el, html`
    <div class="sentence" id="verdict-sentence">${v.sentence || v.state}</div>
    <div class="muted verdict-meta"><span id="verdict-age" data-unix-ms="${v.unix_ms}">${label} ${age} ago</span>${delivery}${timing}${evidenceAge}</div>
    ${rows.length ? html`<table id="verdict-effects" style="margin-top:.5rem"><tr><th>metric</th><th class="num">canary</th>
      <th class="num">baseline</th><th class="num">ratio, last ${recentS} s</th><th class="num">ratio, since start</th>
      <th class="num">canary ${num(100 * (effects[0].level || 0), 0)} % interval</th></tr>${rows}</table>` : ''}
    ${p ? html`<div id="verdict-progress" class="progress"><div class="bar"><i style="width:${(100 * share).toFixed(1)}%"></i></div>
      <span class="muted">${p.text || ''}</span></div>` : ''}
    <div class="muted" style="margin-top:.4rem">${v.canary} (canary) vs ${v.baseline} (baseline) ·
        e-value <b>${num(e.e_value)}</b> vs threshold <b>${num(e.threshold)}</b> (α = ${num(e.alpha, 3)})
        ${e.decisive ? html` · decided by <b>${e.decisive}</b>` : ''} ·
        ${e.windows || 0} window pairs · instances ${e.canary_instances ?? '–'} canary / ${e.baseline_instances ?? '–'} baseline
        ${v.decision_id ? html` · decision <code>${v.decision_id}</code> (<a href="/decisions${location.search}" data-nav>deliveries</a>)` : ''}</div>
      ${tests.length ? html`<table style="margin-top:.5rem"><tr><th>test</th><th class="num">e-value</th><th class="num">weight</th><th class="num">τ</th>
        <th class="num">baseline events/n</th><th class="num">canary events/n</th><th class="num">effect ψ</th><th class="num">confidence sequence</th></tr>${tests}</table>` : ''}`);
}

// decisionDelivery is the delivery state of a decision from the decisions API, in the form
// verdicts carry it: its status and each target's latest answer.
export function decisionDelivery(d) {
  const at = new Map();
  for (const x of Array.isArray(d.deliveries) ? d.deliveries : []) {
    if (!x || typeof x !== 'object') continue;
    const t = at.get(x.target) || { target: x.target, attempts: 0 };
    Object.assign(t, { outcome: x.outcome, http_status: x.status, error: x.error, unix_ms: x.unix_ms });
    t.attempts = Math.max(t.attempts + 1, x.attempt || 0);
    at.set(x.target, t);
  }
  return { status: d.status, targets: [...at.values()] };
}
