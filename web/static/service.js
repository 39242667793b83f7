// Service page: baseline and canary overlaid live, instances, deploy and verdict markers,
// and the current evidence in words and numbers. Every text comes from the server and is
// escaped (html`…`, setHTML); chart labels are drawn on canvas.
import { F, recent, roles, latestVerdict, signalsTitle } from './stream.js';
import { rate, pct, secs, html, setHTML } from './format.js';
import * as verdictPanel from './verdict.js';

export function mount(el, app, name) {
  const rangeMs = app.rangeS * 1000;
  app.stream.subscribe(name, rangeMs);
  setHTML(el, html`
    <div class="toolbar"><h1 style="margin:0" id="svc-name">${name}</h1><span id="svc-badge"></span>
      <a href="/${location.search}" data-nav class="muted">← fleet</a></div>
    <div class="panel evidence" id="evidence"></div>
    <div class="panel"><h2>Groups <span id="svc-signals" class="profile"></span></h2><div id="groups"></div></div>
    <div class="charts">
      <div class="panel"><h2>Request rate (req/s)</h2><div id="c-rate"></div></div>
      <div class="panel"><h2>Error ratio (%, 1 s rolling)</h2><div id="c-err"></div></div>
      <div class="panel"><h2>Latency p50 · p90 · p99</h2><div id="c-lat"></div></div>
      <div class="panel"><h2>Instances per version</h2><div id="c-inst"></div></div>
    </div>`);
  const css = getComputedStyle(document.documentElement);
  const cssv = (k) => css.getPropertyValue(k).trim();
  const theme = { fg: cssv('--fg'), muted: cssv('--muted'), grid: cssv('--grid'), baseline: cssv('--baseline'),
    canary: cssv('--canary'), other: cssv('--other'), bad: cssv('--bad'), ok: cssv('--ok'), warn: cssv('--warn') };
  let charts = {};
  let layoutKey = '';
  let markers = [];
  let xmax = Date.now() / 1000;
  const stats = window.__herd;

  function colorOf(version, r) {
    return version === r.canary ? theme.canary : version === r.baseline ? theme.baseline : theme.other;
  }

  // build (re)creates the charts when the set of versions changes.
  function build(versions, r) {
    for (const c of Object.values(charts)) c.destroy();
    charts = {};
    const mk = (id, series, opts = {}) => {
      const box = el.querySelector('#' + id);
      box.replaceChildren();
      const width = Math.max(300, Math.floor(box.getBoundingClientRect().width) || 500);
      const u = new uPlot({
        width, height: 220,
        series: [{}, ...series],
        scales: { x: { time: true, range: () => [xmax - rangeMs / 1000, xmax] }, y: opts.y || {} },
        axes: [
          { stroke: theme.muted, grid: { stroke: theme.grid }, ticks: { stroke: theme.grid } },
          { stroke: theme.muted, grid: { stroke: theme.grid }, ticks: { stroke: theme.grid }, size: 60, values: opts.values },
        ],
        legend: { live: true },
        cursor: { drag: { x: false, y: false } },
        hooks: { draw: [drawMarkers] },
      }, [[]].concat(series.map(() => [])), box);
      charts[id] = u;
    };
    const per = (extra) => versions.map(v => ({ label: v, stroke: colorOf(v, r), width: 1.6, spanGaps: false, ...extra(v) }));
    mk('c-rate', per(() => ({ value: (u, v) => v == null ? '–' : rate(v) })), { values: (u, vs) => vs.map(rate) });
    mk('c-err', per(() => ({ value: (u, v) => v == null ? '–' : v.toFixed(2) + ' %' })), { values: (u, vs) => vs.map(v => v + ' %') });
    const lat = [];
    for (const v of versions) {
      const main = v === r.baseline || v === r.canary;
      lat.push({ label: v + ' p99', stroke: colorOf(v, r), width: 1.8, value: (u, x) => secs(x) });
      if (main) {
        lat.push({ label: v + ' p90', stroke: colorOf(v, r), width: 1.2, dash: [6, 4], value: (u, x) => secs(x) });
        lat.push({ label: v + ' p50', stroke: colorOf(v, r), width: 1.2, dash: [2, 3], value: (u, x) => secs(x) });
      }
    }
    mk('c-lat', lat, { values: (u, vs) => vs.map(secs) });
    mk('c-inst', per(() => ({ paths: uPlot.paths.stepped({ align: 1 }) })), { values: (u, vs) => vs.map(v => String(v)) });
    stats.charts = charts;
  }

  function drawMarkers(u) {
    const ctx = u.ctx;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    for (const m of markers) {
      const x = u.valToPos(m.t / 1000, 'x', true);
      if (x < left || x > left + width) continue;
      ctx.strokeStyle = m.color;
      ctx.fillStyle = m.color;
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.setLineDash(m.dash || []);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(m.label, x + 4 * devicePixelRatio, top + 12 * devicePixelRatio);
    }
    ctx.restore();
  }

  function render() {
    const svc = app.stream.services.get(name);
    const wms = app.stream.windowMs;
    if (!svc) {
      setHTML(el.querySelector('#evidence'), html`<div class="muted">No data for ${name} yet.</div>`);
      return;
    }
    const r = roles(svc);
    const versions = [...svc.groups.keys()].sort((a, b) => (a === r.baseline ? -1 : b === r.baseline ? 1 : a === r.canary ? -1 : b === r.canary ? 1 : a.localeCompare(b)));
    const key = versions.join('|') + '#' + r.baseline + '#' + r.canary;
    if (key !== layoutKey) { build(versions, r); layoutKey = key; }

    // Align every version on window ends.
    const xsSet = new Set();
    for (const g of svc.groups.values()) for (const p of g.points) xsSet.add(p[F.end]);
    const xs = [...xsSet].sort((a, b) => a - b);
    const idx = new Map(xs.map((t, i) => [t, i]));
    const col = () => new Array(xs.length).fill(null);
    const rateS = [], errS = [], latS = [], instS = [];
    for (const v of versions) {
      const g = svc.groups.get(v);
      const rr = col(), er = col(), p50 = col(), p90 = col(), p99 = col(), inst = col();
      const ps = g.points;
      let wr = 0, we = 0; const win = Math.max(1, Math.round(1000 / wms));
      for (let i = 0; i < ps.length; i++) {
        const p = ps[i], k = idx.get(p[F.end]);
        rr[k] = p[F.req] / (wms / 1000);
        wr += p[F.req]; we += p[F.err];
        if (i >= win) { wr -= ps[i - win][F.req]; we -= ps[i - win][F.err]; }
        er[k] = wr > 0 ? 100 * we / wr : null;
        if (p[F.p99] > 0) { p50[k] = p[F.p50]; p90[k] = p[F.p90]; p99[k] = p[F.p99]; }
        inst[k] = p[F.inst];
      }
      rateS.push(rr); errS.push(er); instS.push(inst);
      latS.push(p99);
      if (v === r.baseline || v === r.canary) { latS.push(p90); latS.push(p50); }
    }
    xmax = Math.max(Date.now(), xs.length ? xs[xs.length - 1] : 0) / 1000;
    markers = [];
    for (const d of svc.deployments) markers.push({ t: d.unix_ms, color: theme.canary, dash: [4, 3], label: `deploy ${d.canary}` });
    for (const v of svc.verdicts) {
      if (v.state === 'pending') continue;
      const view = verdictPanel.verdictView(v); // a rollback is red only once delivered
      markers.push({ t: v.unix_ms, color: view.cls === 'rollback' ? theme.bad : view.cls === 'pass' ? theme.ok : theme.warn, label: view.text });
    }
    const xsS = xs.map(t => t / 1000);
    charts['c-rate'].setData([xsS, ...rateS]);
    charts['c-err'].setData([xsS, ...errS]);
    charts['c-lat'].setData([xsS, ...latS]);
    charts['c-inst'].setData([xsS, ...instS]);
    stats.chartPoints = xs.length;
    stats.chartLastMs = xs.length ? xs[xs.length - 1] : 0;

    renderGroups(svc, versions, r, wms);
    renderEvidence(svc, r);
  }

  function renderGroups(svc, versions, r, wms) {
    const sigEl = el.querySelector('#svc-signals');
    const sig = svc.signals;
    sigEl.textContent = sig ? `signals: ${sig.profile}` : '';
    sigEl.title = signalsTitle(sig);
    const rows = versions.map(v => {
      const g = svc.groups.get(v);
      const x = recent(g, wms);
      let up = 0, down = 0;
      const cutoff = Date.now() - 60000;
      for (const p of g.points) if (p[F.end] >= cutoff) { up += p[F.up]; down += p[F.down]; }
      const role = v === r.canary ? 'canary' : v === r.baseline ? 'baseline' : '';
      return html`<tr><td><span class="sw" style="background:${colorOf(v, r)}"></span>${v}</td><td>${role}</td>
        <td class="num">${x.inst}</td><td class="num">+${up} / −${down}</td><td class="num">${rate(x.rps)}</td>
        <td class="num">${pct(x.errRatio)}</td><td class="num">${secs(x.p50)}</td><td class="num">${secs(x.p90)}</td><td class="num">${secs(x.p99)}</td></tr>`;
    });
    setHTML(el.querySelector('#groups'), html`<table><tr><th>version</th><th>role</th><th class="num">instances</th>
      <th class="num">joined / left (1 min)</th><th class="num">req/s</th><th class="num">errors</th><th class="num">p50</th>
      <th class="num">p90</th><th class="num">p99</th></tr>${rows}</table>`);
  }

  function renderEvidence(svc, r) {
    const v = latestVerdict(svc);
    const badge = el.querySelector('#svc-badge');
    if (!v) {
      badge.replaceChildren();
      setHTML(el.querySelector('#evidence'), r.canary
        ? html`<div class="sentence">Canary ${r.canary} deployed beside ${r.baseline}; waiting for the detector's first verdict.</div>`
        : html`<div class="sentence">One version running (${r.baseline || '–'}); no comparison in progress.</div>`);
      return;
    }
    verdictPanel.render(el.querySelector('#evidence'), badge, v, Date.now() + app.stream.serverOffsetMs);
  }

  const onResize = () => { layoutKey = ''; app.invalidate(); };
  window.addEventListener('resize', onResize);
  return {
    render,
    unmount() {
      window.removeEventListener('resize', onResize);
      for (const c of Object.values(charts)) c.destroy();
    },
  };
}
