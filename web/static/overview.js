// Fleet overview: one tile per service, Hystrix style. Every text comes from the server and
// is escaped (html`…`, setHTML).
import { F, recent, roles, latestVerdict, signalsTitle } from './stream.js';
import { rate, pct, secs, html, setHTML, stateClass } from './format.js';
import { badge as verdictBadge, verdictView } from './verdict.js';

const RESORT_MS = 5000;

// health ranks a service: lower is worse and sorts first.
function health(svc) {
  const v = latestVerdict(svc);
  const state = v ? verdictView(v).cls : stateClass(svc.groups.size > 1 ? 'pending' : 'healthy');
  const rank = { rollback: 0, undelivered: 0, inconclusive: 1, pending: 2, pass: 3, healthy: 4 }[state] ?? 4;
  return { state, rank };
}

export function mount(el, app) {
  app.stream.subscribe('', 60000);
  setHTML(el, html`
    <div class="toolbar">
      <h1 style="margin:0">Fleet</h1>
      <input id="filter" type="search" placeholder="filter services" aria-label="filter services">
      <span id="count" class="muted"></span>
    </div>
    <div id="tiles" class="tiles"></div>`);
  const filter = el.querySelector('#filter');
  filter.value = app.param('q') || '';
  filter.addEventListener('input', () => { app.setParam('q', filter.value); app.invalidate(); });
  const tilesEl = el.querySelector('#tiles');
  const empty = document.createElement('div');
  empty.className = 'empty';
  empty.textContent = 'No services yet — waiting for windows.';
  el.appendChild(empty);
  const tiles = new Map();
  let order = [];
  let orderAt = 0;
  let orderHealth = '';

  function render() {
    const stream = app.stream;
    const now = Date.now();
    const f = filter.value.trim().toLowerCase();
    const infos = [];
    for (const svc of stream.services.values()) {
      if (f && !svc.name.includes(f)) continue;
      infos.push(tileInfo(svc, stream.windowMs));
    }
    // Sort by health, then volume in coarse bands, then name; re-sort only every few seconds
    // (or when a health changes) so tiles do not jump around.
    const healthKey = infos.map(i => i.name + ':' + i.health.rank).sort().join(',');
    if (now - orderAt > RESORT_MS || healthKey !== orderHealth || order.length !== infos.length) {
      infos.sort((a, b) => a.health.rank - b.health.rank || b.band - a.band || a.name.localeCompare(b.name));
      order = infos.map(i => i.name);
      orderAt = now;
      orderHealth = healthKey;
    }
    const byName = new Map(infos.map(i => [i.name, i]));
    // Keep one element per service so that clicks and focus survive re-rendering.
    const wanted = order.filter(n => byName.has(n));
    for (const [name, a] of tiles) if (!byName.has(name)) { a.remove(); tiles.delete(name); }
    let prev = null;
    for (const name of wanted) {
      const info = byName.get(name);
      let a = tiles.get(name);
      if (!a) {
        a = document.createElement('a');
        a.setAttribute('data-nav', '');
        a.dataset.service = name;
        tiles.set(name, a);
      }
      a.className = `tile h-${info.health.state}`;
      a.href = `/services/${encodeURIComponent(name)}${location.search}`;
      setHTML(a, tileHTML(info));
      const want = prev ? prev.nextSibling : tilesEl.firstChild;
      if (want !== a) tilesEl.insertBefore(a, want);
      prev = a;
      drawSpark(a.querySelector('canvas.spark'), info);
    }
    empty.hidden = wanted.length > 0;
    el.querySelector('#count').textContent = `${infos.length} service${infos.length === 1 ? '' : 's'}`;
  }
  return { render, unmount() {} };
}

function tileInfo(svc, windowMs) {
  const { baseline, canary } = roles(svc);
  const groups = [...svc.groups.values()].map(g => ({ version: g.version, g, r: recent(g, windowMs) }))
    .filter(x => x.g.points.length > 0);
  let rps = 0, req = 0, err = 0;
  for (const x of groups) { rps += x.r.rps; req += x.r.req; err += x.r.err; }
  // Latency: never average percentiles; show the busiest group's.
  const main = groups.slice().sort((a, b) => b.r.rps - a.r.rps)[0];
  return {
    name: svc.name, svc, groups, rps, errRatio: req > 0 ? err / req : 0,
    p50: main ? main.r.p50 : 0, p99: main ? main.r.p99 : 0, mainVersion: main ? main.version : '',
    baseline, canary, health: health(svc), band: Math.floor(Math.log2(rps + 1)), windowMs,
  };
}

function color(info, version) {
  if (version === info.canary) return 'var(--canary)';
  if (version === info.baseline) return 'var(--baseline)';
  return 'var(--other)';
}

function tileHTML(info) {
  const v = latestVerdict(info.svc);
  const badge = v ? verdictBadge(v) : html`<span class="badge ${info.health.state}">${info.health.state}</span>`;
  const total = info.groups.reduce((s, x) => s + x.r.rps, 0) || 1;
  const split = info.groups.map(x =>
    html`<i style="width:${(100 * x.r.rps / total).toFixed(1)}%;background:${color(info, x.version)}" title="${x.version}"></i>`);
  const rows = info.groups.map(x => html`<tr>
      <td><span class="sw" style="background:${color(info, x.version)}"></span>${x.version}${x.version === info.canary ? html` <span class="muted">canary</span>` : ''}</td>
      <td class="num">${x.r.inst}</td><td class="num">${rate(x.r.rps)}</td><td class="num">${pct(x.r.errRatio)}</td>
      <td class="num">${secs(x.r.p99)}</td><td class="num">${(100 * x.r.rps / total).toFixed(0)} %</td></tr>`);
  const sig = info.svc.signals;
  const profile = sig ? html`<span class="profile" title="${signalsTitle(sig)}">${sig.profile}</span>` : '';
  return html`<div class="head"><span><span class="name">${info.name}</span> ${profile}</span>${badge}</div>
    <div class="big">
      <div><b>${rate(info.rps)}</b><span>req/s</span></div>
      <div><b>${pct(info.errRatio)}</b><span>errors</span></div>
      <div><b>${secs(info.p50)}</b><span>p50</span></div>
      <div><b>${secs(info.p99)}</b><span>p99</span></div>
    </div>
    <canvas class="spark"></canvas>
    <div class="split">${split}</div>
    <table><tr><th>version</th><th class="num">inst</th><th class="num">req/s</th><th class="num">err</th><th class="num">p99</th><th class="num">split</th></tr>${rows}</table>
    ${v && v.sentence ? html`<div class="muted" style="margin-top:.3rem">${v.sentence}</div>` : ''}`;
}

// drawSpark draws the last minute of request rate per version.
function drawSpark(c, info) {
  if (!info) return;
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  c.width = w * dpr; c.height = h * dpr;
  const ctx = c.getContext('2d');
  ctx.scale(dpr, dpr);
  const now = Date.now(), span = 60000;
  let maxR = 0;
  for (const x of info.groups) for (const p of x.g.points) maxR = Math.max(maxR, p[F.req]);
  if (maxR <= 0) return;
  const css = getComputedStyle(document.documentElement);
  for (const x of info.groups) {
    const col = x.version === info.canary ? css.getPropertyValue('--canary') :
      x.version === info.baseline ? css.getPropertyValue('--baseline') : css.getPropertyValue('--other');
    ctx.strokeStyle = col.trim();
    ctx.lineWidth = 1.2;
    ctx.beginPath();
    let first = true;
    for (const p of x.g.points) {
      const t = p[F.end];
      if (t < now - span) continue;
      const px = w - (now - t) / span * w, py = h - 2 - (p[F.req] / maxR) * (h - 4);
      if (first) { ctx.moveTo(px, py); first = false; } else ctx.lineTo(px, py);
    }
    ctx.stroke();
  }
}
