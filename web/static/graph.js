// Dependency graph page (/graph): the live request flow from GET /api/v1/graph, polled 4
// times a second, drawn on a canvas.
//
//  - neighbourhood (default): the service being deployed (or ?service=) with its callers
//    and callees two hops out, in columns; its baseline's and canary's edges side by side,
//    each with calls per request and error ratio, a canary edge that differs highlighted;
//  - fleet (?view=fleet): every service, grouped by domain (the name up to its first '-'),
//    searchable (?q=), laid out once with d3-force (vendor/d3-force.bundle.min.js) and kept
//    where it is as windows arrive: a new service is placed near its domain and only it moves.
//
// window.__herdGraph records render and frame timings for the browser test.
import { html, setHTML } from './format.js';

const stats = window.__herdGraph = {
  polls: 0, draws: 0, drawMs: [], firstRenderMs: 0, layoutMs: 0, frames: 0, frameGaps: [], services: 0, edges: 0, highlighted: [],
  focusEdges: [], // the neighbourhood's drawn edges of the focus: "version → callee: label"
};

const pollMs = 250;
// A canary edge differs when its calls per request or its error ratio is this many times
// its baseline's (and the error ratio above 0.5 %, and clear of the rates' noise: see
// clearOfNoise).
const differs = 1.5;
// The API's rates are exponentially weighted with a 2 s time constant (web/graph.go): their
// noise is that of counts over rateSeconds.
const rateSeconds = 4;

// clearOfNoise reports whether the canary edge's error ratio exceeds its baseline's by at
// least 4 standard errors (two proportions, pooled) and rests on at least 5 failed calls of
// the canary's, so that a few errors more than expected are not drawn as a difference: the
// page looks 4 times a second, and at 3 standard errors over a handful of errors a good
// canary's edge was highlighted now and then.
// errorPersistMs is how long an error-ratio difference must hold, on every look, before it is
// drawn: a new canary's first calls, or a burst on one of its instances, lift its ratio for a
// second or two (a handful of errors against a baseline at 0.1 % is many standard errors), and
// the page looked at that moment. A regression lasts; fan-out differences are exact and drawn
// at once.
const errorPersistMs = 3000;
// errorSince holds, per canary edge, when its error-ratio difference was first seen clear of
// noise on the looks since.
const errorSince = new Map();

// errorDiffers reports whether the canary edge key has been clear of noise for errorPersistMs.
function errorDiffers(key, clear, now) {
  if (!clear) { errorSince.delete(key); return false; }
  if (!errorSince.has(key)) errorSince.set(key, now);
  return now - errorSince.get(key) >= errorPersistMs;
}

function clearOfNoise(e, be) {
  const nc = e.rps * rateSeconds, nb = be.rps * rateSeconds;
  if (nc * e.error_ratio < 5) return false;
  const p = (nc * e.error_ratio + nb * be.error_ratio) / Math.max(nc + nb, 1);
  const se = Math.sqrt(p * (1 - p) * (1 / Math.max(nc, 1) + 1 / Math.max(nb, 1)));
  return se > 0 && (e.error_ratio - be.error_ratio) / se >= 4;
}

export function mount(el, app) {
  app.stream.subscribe('', 0);
  const view = () => app.param('view') === 'fleet' ? 'fleet' : 'neighbourhood';
  setHTML(el, html`<div class="graph-head">
      <h1>Dependencies</h1>
      <div class="graph-tabs" role="tablist">
        <button type="button" data-view="neighbourhood">Neighbourhood</button>
        <button type="button" data-view="fleet">Whole fleet</button>
      </div>
      <label class="graph-search">Service <input id="graph-q" type="search" placeholder="search or focus…" autocomplete="off"></label>
      <span id="graph-info" class="muted"></span>
    </div>
    <div class="graph-wrap"><canvas id="graph-canvas"></canvas></div>
    <div id="graph-legend" class="graph-legend"></div>`);
  const canvas = el.querySelector('#graph-canvas');
  const info = el.querySelector('#graph-info');
  const legend = el.querySelector('#graph-legend');
  const search = el.querySelector('#graph-q');
  search.value = app.param('q') || app.param('service') || '';
  const started = performance.now();
  let data = null, error = '', stopped = false, dirty = true;
  const layout = new FleetLayout();
  stats.positions = () => [...layout.pos].map(([n, p]) => [n, Math.round(p.x), Math.round(p.y)]);

  for (const b of el.querySelectorAll('[data-view]')) {
    b.addEventListener('click', () => { app.setParam('view', b.dataset.view === 'fleet' ? 'fleet' : null); dirty = true; tabs(); });
  }
  function tabs() {
    for (const b of el.querySelectorAll('[data-view]')) b.setAttribute('aria-selected', String(b.dataset.view === view()));
  }
  tabs();
  search.addEventListener('input', () => {
    app.setParam(view() === 'fleet' ? 'q' : 'service', search.value.trim() || null);
    dirty = true;
  });
  canvas.addEventListener('click', (e) => {
    const hit = hitTest(e.offsetX, e.offsetY);
    if (!hit) return;
    app.setParam('view', null);
    app.setParam('service', hit);
    search.value = hit;
    dirty = true;
    tabs();
  });

  async function poll() {
    if (stopped) return;
    try {
      if (app.live) {
        data = await app.fetchJSON('/api/v1/graph');
        stats.polls++;
        error = '';
        dirty = true;
      }
    } catch (e) {
      error = String(e.message || e);
      dirty = true;
    }
    if (!stopped) setTimeout(poll, pollMs);
  }
  poll();

  // One requestAnimationFrame loop draws when something changed and records frame gaps.
  let lastFrame = 0, raf = 0;
  function frame(t) {
    if (stopped) return;
    if (lastFrame) {
      stats.frameGaps.push(t - lastFrame);
      if (stats.frameGaps.length > 600) stats.frameGaps.splice(0, stats.frameGaps.length - 600);
    }
    lastFrame = t;
    stats.frames++;
    if (dirty) {
      dirty = false;
      const t0 = performance.now();
      draw();
      stats.drawMs.push(performance.now() - t0);
      if (stats.drawMs.length > 100) stats.drawMs.shift();
    }
    raf = requestAnimationFrame(frame);
  }
  raf = requestAnimationFrame(frame);

  let nodesDrawn = []; // [{name, x, y, r}] for hit testing
  function hitTest(x, y) {
    for (const n of nodesDrawn) if ((n.x - x) ** 2 + (n.y - y) ** 2 <= (n.r + 4) ** 2) return n.name;
    return null;
  }

  function draw() {
    const wrap = canvas.parentElement;
    const w = wrap.clientWidth || 1200, h = Math.max(480, Math.round(window.innerHeight - wrap.getBoundingClientRect().top - 60));
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
      canvas.style.width = w + 'px'; canvas.style.height = h + 'px';
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const css = getComputedStyle(document.documentElement);
    const col = (v) => css.getPropertyValue(v).trim();
    const colors = { bg: col('--panel'), fg: col('--fg'), muted: col('--muted'), border: col('--border'),
      base: col('--baseline'), canary: col('--canary'), bad: col('--bad'), ok: col('--ok'), other: col('--other') };
    ctx.fillStyle = colors.bg;
    ctx.fillRect(0, 0, w, h);
    if (!data) {
      ctx.fillStyle = colors.muted; ctx.font = '14px system-ui';
      ctx.fillText(error || 'Loading…', 20, 30);
      return;
    }
    const g = index(data);
    stats.services = g.services.size;
    stats.edges = data.edges.length;
    if (!g.services.size) {
      ctx.fillStyle = colors.muted; ctx.font = '14px system-ui';
      ctx.fillText('No request flow yet: services report edges with herd\'s HTTP client middleware (ingest.Edges).', 20, 30);
    } else if (view() === 'fleet') {
      drawFleet(ctx, g, w, h, colors);
    } else {
      drawNeighbourhood(ctx, g, w, h, colors);
    }
    stats.draws++;
    if (!stats.firstRenderMs && g.services.size) stats.firstRenderMs = performance.now() - started;
  }

  function drawFleet(ctx, g, w, h, c) {
    const t0 = performance.now();
    const pos = layout.update(g);
    stats.layoutMs = Math.max(stats.layoutMs, performance.now() - t0);
    const fit = layout.fit(w, h);
    const q = search.value.trim().toLowerCase();
    const match = (s) => !q || s.includes(q);
    // Edges: one line per caller → callee over the caller's groups, coloured by error ratio.
    const agg = new Map();
    for (const e of data.edges) {
      const k = e.caller + '\u0000' + e.callee;
      const a = agg.get(k) || { caller: e.caller, callee: e.callee, rps: 0, err: 0 };
      a.rps += e.rps; a.err += e.rps * e.error_ratio;
      agg.set(k, a);
    }
    ctx.lineWidth = 0.6;
    for (const bad of [false, true]) {
      ctx.beginPath();
      for (const a of agg.values()) {
        const ratio = a.rps > 0 ? a.err / a.rps : 0;
        if ((ratio >= 0.02) !== bad) continue;
        const p = pos.get(a.caller), r = pos.get(a.callee);
        if (!p || !r) continue;
        ctx.globalAlpha = (match(a.caller) || match(a.callee)) ? (bad ? 0.9 : 0.25) : 0.05;
        ctx.moveTo(fit.x(p.x), fit.y(p.y));
        ctx.lineTo(fit.x(r.x), fit.y(r.y));
      }
      ctx.strokeStyle = bad ? c.bad : c.other;
      ctx.stroke();
    }
    ctx.globalAlpha = 1;
    // Domains: a label at each group's centre.
    ctx.font = '600 12px system-ui';
    ctx.fillStyle = c.muted;
    for (const [d, p] of layout.domainCentres()) ctx.fillText(d, fit.x(p.x) - 12, fit.y(p.y) - 40 * fit.k - 6);
    nodesDrawn = [];
    ctx.font = '10px system-ui';
    for (const [name, sv] of g.services) {
      const p = pos.get(name);
      if (!p) continue;
      const x = fit.x(p.x), y = fit.y(p.y);
      const hit = q && name.includes(q);
      const deploying = sv.canary && sv.state === 'pending';
      ctx.globalAlpha = match(name) ? 1 : 0.2;
      ctx.beginPath();
      ctx.arc(x, y, deploying || hit ? 5 : 3, 0, 2 * Math.PI);
      ctx.fillStyle = sv.state === 'rollback' ? c.bad : deploying ? c.canary : c.base;
      ctx.fill();
      if (hit || deploying || (q === '' && fit.k > 1.4)) {
        ctx.fillStyle = c.fg;
        ctx.fillText(name, x + 6, y + 3);
      }
      nodesDrawn.push({ name, x, y, r: 5 });
    }
    ctx.globalAlpha = 1;
    info.textContent = `${g.services.size} services, ${agg.size} edges, ${layout.domains.size} groups`;
    setHTML(legend, html`<span><i class="dot base"></i>service</span><span><i class="dot canary"></i>canary under judgement</span>
      <span><i class="dot bad"></i>rolled back</span><span><i class="line bad"></i>edge with ≥ 2 % errors</span>
      <span class="muted">click a service for its neighbourhood</span>`);
  }

  function drawNeighbourhood(ctx, g, w, h, c) {
    const focus = pickFocus(g, search.value.trim() || app.param('service'));
    if (!focus) { info.textContent = 'no such service'; return; }
    const sv = g.services.get(focus);
    // Columns: callers' callers (-2), callers (-1), the service (0), callees (1), theirs (2).
    const col = new Map([[focus, 0]]);
    const walk = (from, dir, depth) => {
      for (const n of (dir > 0 ? g.callees : g.callers).get(from) || []) {
        if (!col.has(n)) { col.set(n, dir * depth); if (depth < 2) walk(n, dir, depth + 1); }
      }
    };
    walk(focus, 1, 1); walk(focus, -1, 1);
    const columns = new Map();
    for (const [n, k] of col) { if (!columns.has(k)) columns.set(k, []); columns.get(k).push(n); }
    const pos = new Map();
    const cx = (k) => w / 2 + k * Math.min(330, (w - 170) / 4);
    for (const [k, ns] of columns) {
      ns.sort();
      const step = Math.min(56, (h - 60) / Math.max(ns.length, 1));
      ns.forEach((n, i) => pos.set(n, { x: cx(k), y: h / 2 + (i - (ns.length - 1) / 2) * step }));
    }
    // Edges among the drawn services; the focus's own outbound edges per version.
    const base = sv.baseline || (sv.groups[0] && sv.groups[0].version);
    const canary = sv.canary && sv.canary !== base ? sv.canary : '';
    const reqRate = (svc, ver) => { const gr = (g.services.get(svc)?.groups || []).find(x => x.version === ver); return gr ? gr.rps : 0; };
    const diffs = [], focusEdges = [];
    ctx.font = '11px system-ui';
    for (const e of data.edges) {
      const p = pos.get(e.caller), r = pos.get(e.callee);
      if (!p || !r) continue;
      let color = c.other, offset = 0, width = 1.2, label = '';
      if (e.caller === focus) {
        if (canary && e.version === canary) { color = c.canary; offset = 7; width = 2.2; } else if (e.version === base) { color = c.base; offset = -7; width = 2.2; } else continue;
        const perReq = reqRate(focus, e.version) > 0 ? e.rps / reqRate(focus, e.version) : 0;
        label = `${e.version}: ${perReq.toFixed(1)}/req · ${(100 * e.error_ratio).toFixed(1)} %`;
        focusEdges.push(`${e.version} → ${e.callee}: ${perReq.toFixed(1)}/req · ${(100 * e.error_ratio).toFixed(1)} %`);
        if (canary && e.version === canary) {
          const be = data.edges.find(x => x.caller === focus && x.version === base && x.callee === e.callee);
          const bPer = be && reqRate(focus, base) > 0 ? be.rps / reqRate(focus, base) : 0;
          const fan = bPer > 0 ? perReq / bPer : Infinity;
          const errX = be ? (e.error_ratio + 1e-3) / (be.error_ratio + 1e-3) : Infinity;
          // Tracked on every look, whatever is drawn, so that a difference's age stays true.
          const errDiffers = errorDiffers(`${focus} ${canary} → ${e.callee}`, !!be && errX >= differs && e.error_ratio > 0.005 && clearOfNoise(e, be), performance.now());
          if (!be) diffs.push({ callee: e.callee, text: `${focus} ${canary} → ${e.callee}: new dependency (${perReq.toFixed(1)} calls per request)` });
          else if (fan >= differs) diffs.push({ callee: e.callee, text: `${focus} ${canary} → ${e.callee}: ${perReq.toFixed(1)} calls per request vs ${bPer.toFixed(1)}` });
          else if (errDiffers) diffs.push({ callee: e.callee, text: `${focus} ${canary} → ${e.callee}: ${(100 * e.error_ratio).toFixed(1)} % of calls fail vs ${(100 * be.error_ratio).toFixed(1)} %` });
          if (diffs.length && diffs[diffs.length - 1].callee === e.callee) { color = c.bad; width = 3.5; }
        }
      } else if (e.callee === focus && col.get(e.caller) !== -1) {
        continue;
      }
      ctx.strokeStyle = color; ctx.lineWidth = width;
      ctx.beginPath();
      ctx.moveTo(p.x + 70, p.y + offset);
      ctx.bezierCurveTo((p.x + r.x) / 2, p.y + offset, (p.x + r.x) / 2, r.y + offset, r.x - 70, r.y + offset);
      ctx.stroke();
      if (label) {
        // Beside the callee: the baseline's above its line, the canary's below.
        ctx.fillStyle = color;
        ctx.fillText(label, r.x - 76 - ctx.measureText(label).width, r.y + (offset > 0 ? 18 : -9));
      } else if (e.callee === focus || col.get(e.caller) !== undefined) {
        ctx.fillStyle = c.muted;
        ctx.fillText(`${fmtRate(e.rps)}/s · ${(100 * e.error_ratio).toFixed(1)} %`, (p.x + r.x) / 2 - 30, (p.y + r.y) / 2 - 3);
      }
    }
    nodesDrawn = [];
    for (const [n, p] of pos) {
      const s = g.services.get(n);
      const isFocus = n === focus;
      ctx.fillStyle = c.bg; ctx.strokeStyle = isFocus ? c.canary : c.border; ctx.lineWidth = isFocus ? 2 : 1;
      ctx.beginPath(); ctx.roundRect(p.x - 70, p.y - 13, 140, 26, 6); ctx.fill(); ctx.stroke();
      ctx.fillStyle = c.fg; ctx.font = (isFocus ? '600 ' : '') + '12px system-ui';
      const name = n.length > 20 ? n.slice(0, 19) + '…' : n;
      ctx.fillText(name, p.x - 64, p.y + 4);
      const rps = (s?.groups || []).reduce((a, x) => a + x.rps, 0);
      ctx.fillStyle = c.muted; ctx.font = '10px system-ui';
      ctx.fillText(fmtRate(rps) + '/s', p.x + 34, p.y + 4);
      nodesDrawn.push({ name: n, x: p.x, y: p.y, r: 14 });
    }
    stats.highlighted = diffs.map(d => d.text);
    stats.focusEdges = focusEdges;
    info.textContent = canary ? `${focus}: baseline ${base} beside canary ${canary}${sv.state ? ' (' + sv.state + ')' : ''}` : `${focus} ${base || ''}`;
    setHTML(legend, html`<span><i class="line base"></i>baseline ${base || ''}</span>${canary ? html`<span><i class="line canary"></i>canary ${canary}</span>` : ''}
      <span><i class="line bad"></i>canary edge that differs</span>
      ${diffs.map(d => html`<div class="graph-diff" data-edge="${d.callee}">⚠ ${d.text}</div>`)}`);
  }

  return {
    render() { dirty = true; },
    unmount() { stopped = true; cancelAnimationFrame(raf); },
  };
}

function fmtRate(v) { return v >= 1000 ? (v / 1000).toFixed(1) + 'k' : v >= 10 ? v.toFixed(0) : v.toFixed(1); }

// index builds the lookups of one /api/v1/graph answer.
function index(data) {
  const services = new Map(data.services.map(s => [s.name, s]));
  const callees = new Map(), callers = new Map();
  for (const e of data.edges) {
    if (!callees.has(e.caller)) callees.set(e.caller, new Set());
    callees.get(e.caller).add(e.callee);
    if (!callers.has(e.callee)) callers.set(e.callee, new Set());
    callers.get(e.callee).add(e.caller);
  }
  return { services, callees, callers };
}

// pickFocus: the asked service, else a service being deployed, else the busiest caller.
function pickFocus(g, asked) {
  if (asked && g.services.has(asked)) return asked;
  if (asked) for (const n of g.services.keys()) if (n.includes(asked)) return n;
  let best = null;
  for (const s of g.services.values()) if (s.canary && (!best || s.state === 'pending' || s.state === 'rollback')) best = s.name;
  if (best) return best;
  let most = 0;
  for (const [n, cs] of g.callees) if (cs.size > most) { most = cs.size; best = n; }
  return best;
}

// FleetLayout places services with d3-force, grouped by domain, and keeps every placed
// service where it is: only services new since the last update move.
class FleetLayout {
  constructor() {
    this.pos = new Map();      // name → {x, y}
    this.domains = new Map();  // domain → {x, y} centre
  }

  update(g) {
    const fresh = [];
    for (const [name, s] of g.services) if (!this.pos.has(name)) fresh.push(s);
    if (!fresh.length) return this.pos;
    for (const s of fresh) {
      if (!this.domains.has(s.domain)) {
        // Domain centres on a grid in order of arrival (sorted within one update).
        const i = this.domains.size, cols = 6;
        this.domains.set(s.domain, { x: (i % cols) * 260, y: Math.floor(i / cols) * 260 });
      }
    }
    // Placed services are pinned; only those of the new services' domains take part.
    const freshDomains = new Set(fresh.map(s => s.domain));
    const nodes = [];
    for (const [name, p] of this.pos) {
      if (freshDomains.has(g.services.get(name)?.domain)) nodes.push({ id: name, x: p.x, y: p.y, fx: p.x, fy: p.y });
    }
    const first = this.pos.size === 0;
    let seed = 1;
    const rnd = () => (seed = (seed * 16807) % 2147483647) / 2147483647;
    for (const s of fresh.sort((a, b) => a.name < b.name ? -1 : 1)) {
      const d = this.domains.get(s.domain);
      nodes.push({ id: s.name, domain: s.domain, x: d.x + (rnd() - 0.5) * 120, y: d.y + (rnd() - 0.5) * 120 });
    }
    const ids = new Set(nodes.map(n => n.id));
    const links = [];
    for (const [a, bs] of g.callees) for (const b of bs) if (ids.has(a) && ids.has(b)) links.push({ source: a, target: b });
    const d3 = window.d3;
    if (d3 && d3.forceSimulation) {
      const centre = (n) => this.domains.get(n.domain || g.services.get(n.id)?.domain) || { x: 0, y: 0 };
      const sim = d3.forceSimulation(nodes)
        .force('link', d3.forceLink(links).id(n => n.id).strength(0.005))
        .force('charge', d3.forceManyBody().strength(-18).distanceMax(90))
        .force('x', d3.forceX(n => centre(n).x).strength(0.25))
        .force('y', d3.forceY(n => centre(n).y).strength(0.25))
        .stop();
      sim.tick(first ? 40 : 20);
    }
    for (const n of nodes) if (!this.pos.has(n.id)) this.pos.set(n.id, { x: n.x, y: n.y });
    this.bounds = null;
    return this.pos;
  }

  domainCentres() { return this.domains; }

  // fit maps layout coordinates into a w × h canvas with a margin; the mapping changes only
  // when the set of services grows.
  fit(w, h) {
    if (!this.bounds) {
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const p of this.pos.values()) { x0 = Math.min(x0, p.x); y0 = Math.min(y0, p.y); x1 = Math.max(x1, p.x); y1 = Math.max(y1, p.y); }
      this.bounds = { x0, y0, x1, y1 };
    }
    const b = this.bounds, m = 40;
    const k = Math.min((w - 2 * m) / Math.max(b.x1 - b.x0, 1), (h - 2 * m) / Math.max(b.y1 - b.y0, 1));
    return { k, x: (x) => m + (x - b.x0) * k, y: (y) => m + (y - b.y0) * k };
  }
}
