// The live stream: one websocket per page. It keeps the state the pages draw, resumes after
// a disconnect with ?since=<last seq>, and records freshness statistics in window.__herd.

// Indexes of a point array (see the snapshot's "fields").
export const F = { end: 0, inst: 1, up: 2, down: 3, req: 4, err: 5, p50: 6, p90: 7, p99: 8, closed: 9 };

const stats = window.__herd = {
  connects: 0, snapshots: 0, resets: 0, resumes: 0, windows: 0, verdicts: [], lags: [], status: 'connecting',
  lastSeq: 0, renders: 0,
};

export class Stream {
  constructor(token) {
    this.token = token;
    this.service = '';
    this.historyMs = 60000;
    this.seq = 0;
    this.windowMs = 250;
    this.services = new Map(); // name → {name, groups: Map(version → {version, points}), verdicts, deployments}
    this.listeners = new Set();
    this.retry = 0;
    this.ws = null;
    this.status = 'connecting';
    this.nextRetryAt = 0;
    this.serverOffsetMs = 0; // the server's clock minus the page's, from the last snapshot
  }

  on(f) { this.listeners.add(f); return () => this.listeners.delete(f); }
  emit(kind, ev) { for (const f of this.listeners) f(kind, ev); }

  // subscribe narrows the stream to one service ('' = all) with historyMs of history.
  subscribe(service, historyMs) {
    if (service === this.service && historyMs === this.historyMs && this.ws) return;
    this.service = service;
    this.historyMs = historyMs;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: 'subscribe', service, history_ms: historyMs }));
    } else if (!this.ws) {
      this.connect();
    }
  }

  url() {
    const u = new URL('/api/v1/stream', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (this.service) u.searchParams.set('service', this.service);
    u.searchParams.set('history_ms', String(this.historyMs));
    if (this.seq > 0) u.searchParams.set('since', String(this.seq));
    if (this.token) u.searchParams.set('token', this.token);
    return u.toString();
  }

  connect() {
    const ws = new WebSocket(this.url());
    const asked = { service: this.service, historyMs: this.historyMs };
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      stats.connects++;
      this.setStatus('live');
      // The page may have changed its subscription while connecting.
      if (asked.service !== this.service || asked.historyMs !== this.historyMs) {
        ws.send(JSON.stringify({ type: 'subscribe', service: this.service, history_ms: this.historyMs }));
      }
    };
    ws.onmessage = (m) => {
      const now = Date.now();
      for (const line of String(m.data).split('\n')) {
        if (line) this.handle(JSON.parse(line), now);
      }
      this.emit('data');
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      const delay = Math.min(5000, 250 * 2 ** Math.min(this.retry, 5));
      this.retry++;
      this.nextRetryAt = Date.now() + delay;
      this.setStatus('down');
      setTimeout(() => this.connect(), delay);
    };
  }

  // drop closes the socket as a network failure would (used by tests and the page's retry).
  drop() { if (this.ws) this.ws.close(); }

  setStatus(s) { this.status = s; stats.status = s; this.emit('status'); }

  handle(ev, now) {
    if (ev.seq > this.seq) this.seq = ev.seq;
    stats.lastSeq = this.seq;
    switch (ev.type) {
      case 'snapshot': this.applySnapshot(ev); break;
      case 'resume': stats.resumes++; break;
      case 'window': this.addPoint(ev.service, ev.version, ev.p, now); break;
      case 'verdict':
        addVerdict(this.svc(ev.verdict.service).verdicts, ev.verdict);
        stats.verdicts.push({ seq: ev.seq, state: ev.verdict.state, service: ev.verdict.service, recvMs: now, unixMs: ev.verdict.unix_ms });
        this.emit('verdict', ev.verdict);
        break;
      case 'deployment': this.svc(ev.deployment.service).deployments.push(ev.deployment); break;
      case 'signals': this.svc(ev.service).signals = ev.signals; break;
    }
  }

  svc(name) {
    let s = this.services.get(name);
    if (!s) {
      s = { name, groups: new Map(), verdicts: [], deployments: [], signals: null };
      this.services.set(name, s);
    }
    return s;
  }

  applySnapshot(sn) {
    stats.snapshots++;
    if (sn.reset) stats.resets++;
    this.seq = sn.seq;
    this.windowMs = sn.window_ms;
    if (typeof sn.now_unix_ms === 'number') this.serverOffsetMs = sn.now_unix_ms - Date.now();
    this.services = new Map();
    for (const s of sn.services) {
      const svc = this.svc(s.service);
      svc.verdicts = s.verdicts;
      svc.deployments = s.deployments;
      svc.signals = s.signals || null;
      for (const g of s.groups) svc.groups.set(g.version, { version: g.version, points: g.points });
    }
    this.emit('snapshot', sn);
  }

  addPoint(service, version, p, now) {
    const svc = this.svc(service);
    let g = svc.groups.get(version);
    if (!g) {
      g = { version, points: [] };
      svc.groups.set(version, g);
    }
    g.points.push(p);
    // Keep the requested history plus a little; drop from the front in chunks.
    const cutoff = now - this.historyMs - 5000;
    if (g.points.length > 64 && g.points[0][F.end] < cutoff) {
      let i = 0;
      while (i < g.points.length && g.points[i][F.end] < cutoff) i++;
      g.points.splice(0, i);
    }
    stats.windows++;
    stats.lags.push(now - p[F.end]);
    if (stats.lags.length > 20000) stats.lags.splice(0, 10000);
  }
}

// maxVerdicts bounds the verdicts kept per service, as the server does.
const maxVerdicts = 64;

// addVerdict adds a verdict to a service's list: an update (live evidence, delivery state,
// a watch's end) replaces the verdict of the same comparison and state it updates, where it
// is (a pass's delivery state may change after a later rollback of the same canary).
function addVerdict(vs, v) {
  if (v.update) {
    for (let i = vs.length - 1; i >= 0; i--) {
      const o = vs[i];
      if (o.baseline === v.baseline && o.canary === v.canary && o.state === v.state &&
          (o.decision_id || '') === (v.decision_id || '') && o.started_unix_ms === v.started_unix_ms) {
        vs[i] = v;
        return;
      }
    }
  }
  vs.push(v);
  if (vs.length > maxVerdicts) vs.splice(0, vs.length - maxVerdicts);
}

// Summaries over the newest second of a group's points.
export function recent(g, windowMs, n = Math.max(1, Math.round(1000 / windowMs))) {
  const ps = g.points;
  const k = Math.min(n, ps.length);
  let req = 0, err = 0;
  for (let i = ps.length - k; i < ps.length; i++) { req += ps[i][F.req]; err += ps[i][F.err]; }
  const last = ps[ps.length - 1];
  return {
    rps: k ? req / (k * windowMs / 1000) : 0,
    errRatio: req > 0 ? err / req : 0,
    req, err,
    inst: last ? last[F.inst] : 0,
    p50: last ? last[F.p50] : 0, p90: last ? last[F.p90] : 0, p99: last ? last[F.p99] : 0,
    lastEnd: last ? last[F.end] : 0,
  };
}

// roles returns {baseline, canary} versions of a service: from the newest verdict or
// deployment, else the busiest version is the baseline.
export function roles(svc) {
  const v = svc.verdicts[svc.verdicts.length - 1];
  const d = svc.deployments[svc.deployments.length - 1];
  const pick = (v && d) ? (v.unix_ms >= (d.unix_ms || 0) ? v : d) : (v || d);
  if (pick) return { baseline: pick.baseline, canary: pick.canary };
  let best = null, bestN = -1;
  for (const g of svc.groups.values()) {
    const n = g.points.length ? g.points[g.points.length - 1][F.inst] : 0;
    if (n > bestN) { best = g.version; bestN = n; }
  }
  return { baseline: best, canary: null };
}

// signalsTitle describes a service's signal definition for a tooltip.
export function signalsTitle(sig) {
  if (!sig) return '';
  return `signals: ${sig.profile}${sig.pinned ? ' (policy file)' : sig.detected ? ' (detected)' : ' (default)'}\n` +
    `requests: ${sig.requests}\nerrors: ${sig.errors}\nlatency: ${sig.latency}` +
    (sig.latency_unit_seconds !== 1 ? ` (unit ${sig.latency_unit_seconds} s)` : '');
}

// latestVerdict returns the newest verdict of the service, or null.
export function latestVerdict(svc) {
  return svc.verdicts.length ? svc.verdicts[svc.verdicts.length - 1] : null;
}
