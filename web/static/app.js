// herd dashboard: router, URL state, live/pause, connection state. Pages are ES modules with
// mount(el, app) → {render(), unmount()}.
import { Stream } from './stream.js';
import * as overview from './overview.js';
import * as servicePage from './service.js';
import * as decisionsPage from './decisions.js';
import * as graphPage from './graph.js';

const q = () => new URLSearchParams(location.search);

let token = q().get('token') || sessionStorage.getItem('herd-token') || '';
if (q().get('token')) sessionStorage.setItem('herd-token', token);

const stream = new Stream(token);

export const app = {
  stream,
  get live() { return q().get('live') !== '0'; },
  get rangeS() { return Number(q().get('range')) || 300; },
  param(k) { return q().get(k); },
  // setParam changes URL state without reloading; null deletes.
  setParam(k, v) {
    const u = new URL(location.href);
    if (v === null || v === undefined || v === '') u.searchParams.delete(k); else u.searchParams.set(k, String(v));
    history.replaceState(null, '', u);
  },
  navigate(href) {
    const u = new URL(href, location.href);
    for (const k of ['range', 'live', 'token']) if (!u.searchParams.has(k) && q().has(k) && k !== 'token') u.searchParams.set(k, q().get(k));
    history.pushState(null, '', u);
    route();
  },
  async fetchJSON(path) {
    const r = await fetch(path, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
    if (!r.ok) throw new Error(path + ': ' + r.status);
    return r.json();
  },
  invalidate() { schedule(); },
};

let page = null;
const main = document.getElementById('main');

function route() {
  if (page) page.unmount();
  main.replaceChildren();
  const path = location.pathname;
  let m;
  document.querySelectorAll('nav a').forEach(a => a.classList.remove('active'));
  if ((m = path.match(/^\/services\/([a-z0-9_-]+)$/))) {
    page = servicePage.mount(main, app, m[1]);
  } else if (path === '/graph') {
    document.getElementById('nav-graph').classList.add('active');
    page = graphPage.mount(main, app);
  } else if (path === '/decisions') {
    document.getElementById('nav-decisions').classList.add('active');
    page = decisionsPage.mount(main, app);
  } else {
    document.getElementById('nav-overview').classList.add('active');
    page = overview.mount(main, app);
  }
  syncControls();
  schedule();
}

// Rendering is batched: at most one render per 100 ms however many events arrive.
let timer = null;
function schedule() {
  if (timer !== null) return;
  timer = setTimeout(() => {
    timer = null;
    if (page && app.live) {
      page.render();
      window.__herd.renders++;
    }
  }, 100);
}

stream.on((kind) => {
  if (kind === 'status') showStatus();
  schedule();
});

function showStatus() {
  const el = document.getElementById('conn');
  const banner = document.getElementById('banner');
  if (stream.status === 'live') {
    el.textContent = 'connected';
    el.className = 'conn up';
    banner.hidden = true;
  } else {
    const s = Math.max(0, Math.ceil((stream.nextRetryAt - Date.now()) / 1000));
    el.textContent = 'disconnected — retrying';
    el.className = 'conn down';
    banner.hidden = false;
    banner.textContent = `Disconnected — retrying${s > 0 ? ' in ' + s + ' s' : '…'} (the charts resume where they stopped)`;
  }
}
setInterval(() => { if (stream.status !== 'live') showStatus(); }, 500);

function syncControls() {
  const sel = document.getElementById('range');
  sel.value = String(app.rangeS);
  const live = document.getElementById('live');
  live.setAttribute('aria-pressed', String(app.live));
  live.textContent = app.live ? '● Live' : '❚❚ Paused';
}

document.getElementById('range').addEventListener('change', (e) => {
  app.setParam('range', e.target.value);
  route();
});
document.getElementById('live').addEventListener('click', () => {
  app.setParam('live', app.live ? '0' : null);
  syncControls();
  schedule();
});
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey) return;
  e.preventDefault();
  app.navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', route);
matchMedia('(prefers-color-scheme: dark)').addEventListener('change', route);

window.__herd.stream = stream;
route();
