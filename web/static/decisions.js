// Decisions page: each rollback or promotion with its evidence and webhook delivery log.
// Every text comes from the server and is escaped (html`…`, setHTML).
import { num, time, ago, html, setHTML } from './format.js';
import { verdictView, decisionDelivery, decidedAfter } from './verdict.js';

export function mount(el, app) {
  app.stream.subscribe('', 0);
  setHTML(el, html`<h1>Decisions</h1><div id="list"><div class="empty">Loading…</div></div>`);
  const list = el.querySelector('#list');
  let decisions = null;
  let error = '';
  let stopped = false;

  async function load() {
    try {
      const body = await app.fetchJSON('/api/v1/dashboard/decisions');
      decisions = body.decisions;
      error = '';
    } catch (e) {
      error = String(e.message || e);
    }
    app.invalidate();
  }
  load();
  const poll = setInterval(load, 2000);
  // A verdict may have created a decision: reload at once.
  const off = app.stream.on((kind) => { if (kind === 'verdict' && !stopped) load(); });

  function render() {
    if (decisions === null) { setHTML(list, html`<div class="empty">${error || 'Loading…'}</div>`); return; }
    if (!decisions.length) { setHTML(list, html`<div class="empty">No decisions yet: herd acts when a canary is judged (rollback or pass).</div>`); return; }
    setHTML(list, html`${decisions.map(card)}`);
  }
  return { render, unmount() { stopped = true; clearInterval(poll); off(); } };
}

function card(d) {
  const v = d.verdict || {};
  const e = v.evidence || {};
  // The decision's own state: its delivery, not the watch that may have followed a pass.
  const view = verdictView(Object.assign({}, v, { delivery: decisionDelivery(d), watch: null }));
  const state = view.cls;
  const rows = (d.deliveries || []).map(x => html`<tr><td>${time(x.unix_ms)}</td><td>${x.target}</td>
    <td class="num">${x.attempt}</td><td class="num">${x.status || '–'}</td><td>${x.outcome}</td>
    <td class="num">${x.duration_ms} ms</td><td>${x.error || ''}</td></tr>`);
  return html`<div class="panel decision ${state}" data-decision="${d.id}">
    <div class="toolbar" style="margin-bottom:.3rem"><span class="badge ${state}">${view.text}</span>
      <a href="/services/${encodeURIComponent(v.service)}${location.search}" data-nav><b>${v.service}</b></a>
      <span>${v.canary} vs ${v.baseline}</span>
      <span class="muted">${time(d.created_unix_ms)} · ${ago(Date.now() - d.created_unix_ms)} ago · delivery <b>${d.status}</b></span></div>
    <div class="sentence"><b>${v.sentence || ''}</b></div>
    <div class="muted">decided after ${decidedAfter(v)}</div>
    <div class="muted">e-value ${num(e.e_value)} vs threshold ${num(e.threshold)}${e.decisive ? html` · decided by ${e.decisive}` : ''} ·
      ${e.windows || 0} window pairs · decision <code>${d.id}</code></div>
    ${rows.length ? html`<table style="margin-top:.5rem"><tr><th>time</th><th>target</th><th class="num">attempt</th><th class="num">HTTP</th>
      <th>outcome</th><th class="num">took</th><th>error</th></tr>${rows}</table>` : html`<div class="muted">No delivery targets.</div>`}
  </div>`;
}
