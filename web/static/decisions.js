// Decisions page: each rollback or promotion with its evidence and webhook delivery log.
import { num, time, esc, ago } from './format.js';

export function mount(el, app) {
  app.stream.subscribe('', 0);
  el.innerHTML = `<h1>Decisions</h1><div id="list"><div class="empty">Loading…</div></div>`;
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
    if (decisions === null) { list.innerHTML = `<div class="empty">${error ? esc(error) : 'Loading…'}</div>`; return; }
    if (!decisions.length) { list.innerHTML = `<div class="empty">No decisions yet: herd acts when a canary is judged (rollback or pass).</div>`; return; }
    list.innerHTML = decisions.map(card).join('');
  }
  return { render, unmount() { stopped = true; clearInterval(poll); off(); } };
}

function card(d) {
  const v = d.verdict || {};
  const e = v.evidence || {};
  const rows = (d.deliveries || []).map(x => `<tr><td>${esc(time(x.unix_ms))}</td><td>${esc(x.target)}</td>
    <td class="num">${x.attempt}</td><td class="num">${x.status || '–'}</td><td>${esc(x.outcome)}</td>
    <td class="num">${x.duration_ms} ms</td><td>${esc(x.error || '')}</td></tr>`).join('');
  return `<div class="panel decision ${esc(v.state)}" data-decision="${esc(d.id)}">
    <div class="toolbar" style="margin-bottom:.3rem"><span class="badge ${esc(v.state)}">${esc(v.state)}</span>
      <a href="/services/${encodeURIComponent(v.service)}${location.search}" data-nav><b>${esc(v.service)}</b></a>
      <span>${esc(v.canary)} vs ${esc(v.baseline)}</span>
      <span class="muted">${esc(time(d.created_unix_ms))} · ${ago(Date.now() - d.created_unix_ms)} ago · delivery <b>${esc(d.status)}</b></span></div>
    <div class="sentence"><b>${esc(v.sentence || '')}</b></div>
    <div class="muted">e-value ${num(e.e_value)} vs threshold ${num(e.threshold)}${e.decisive ? ' · decided by ' + esc(e.decisive) : ''} ·
      ${e.windows || 0} window pairs · decision <code>${esc(d.id)}</code></div>
    ${rows ? `<table style="margin-top:.5rem"><tr><th>time</th><th>target</th><th class="num">attempt</th><th class="num">HTTP</th>
      <th>outcome</th><th class="num">took</th><th>error</th></tr>${rows}</table>` : '<div class="muted">No delivery targets.</div>'}
  </div>`;
}
