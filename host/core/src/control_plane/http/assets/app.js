/* fastworker dashboard: one page, hash routes, a JSON API and a server-sent event
   stream read with fetch (so it can carry the Authorization header). No libraries.
   Everything the API says is put in the page as text (textContent, attributes),
   never as HTML. */
'use strict';

(() => {
  const THEME_KEY = 'fastworker-theme';
  const TOKEN_KEY = 'fastworker-token';
  const PAGE_SIZE = 50;
  const BACKOFF_MS = [1000, 2000, 5000, 10000];
  const FINAL = new Set(['success', 'failure', 'cancelled']);
  const FILTER_STATUSES = ['queued', 'scheduled', 'running', 'retrying', 'success', 'failure', 'cancelled'];
  const EVENT_STATUS = {
    'task.queued': 'queued',
    'task.scheduled': 'scheduled',
    'task.started': 'running',
    'task.success': 'success',
    'task.failure': 'failure',
    'task.cancelled': 'cancelled',
    'task.retrying': 'retrying',
    'task.requeued': 'queued',
  };
  const PRIORITIES = ['critical', 'high', 'normal', 'low'];
  const TITLES = {
    overview: 'Overview',
    workers: 'Workers',
    queues: 'Queues',
    tasks: 'Tasks',
    task: 'Task',
    plugins: 'Plugins',
    'dead-letters': 'Dead letters',
    notfound: 'Not found',
  };

  const root = document.documentElement;

  /* ------------------------------------------------------------------ theme */
  // Applied at once (this script runs in <head>) so the page never flashes.

  const darkQuery = window.matchMedia ? window.matchMedia('(prefers-color-scheme: dark)') : null;

  function storedTheme() {
    try {
      const t = localStorage.getItem(THEME_KEY);
      return t === 'dark' || t === 'light' ? t : null;
    } catch (_) {
      return null;
    }
  }

  function applyTheme() {
    root.dataset.theme = storedTheme() || (darkQuery && darkQuery.matches ? 'dark' : 'light');
    const btn = document.getElementById('theme-toggle');
    if (btn) {
      const dark = root.dataset.theme === 'dark';
      btn.title = dark ? 'Switch to light mode' : 'Switch to dark mode';
      btn.setAttribute('aria-pressed', dark ? 'true' : 'false');
    }
  }

  function toggleTheme() {
    const next = root.dataset.theme === 'dark' ? 'light' : 'dark';
    try {
      localStorage.setItem(THEME_KEY, next);
    } catch (_) {
      /* storage refused: the choice lasts until the page reloads */
    }
    applyTheme();
  }

  applyTheme();
  if (darkQuery && darkQuery.addEventListener) {
    darkQuery.addEventListener('change', () => {
      if (!storedTheme()) applyTheme();
    });
  }

  /* ------------------------------------------------------------------ state */

  const state = {
    view: null,
    status: null,
    cache: null,
    live: 'polling',
    authNeeded: false,
    offline: false,
    activity: [],
    knownNames: new Set(),
  };

  /* ---------------------------------------------------------------- helpers */

  const $ = (sel, el = document) => el.querySelector(sel);

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    setProps(el, props);
    appendKids(el, children);
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, props, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setProps(el, props);
    appendKids(el, children);
    return el;
  }

  function setProps(el, props) {
    if (!props) return;
    for (const [k, v] of Object.entries(props)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'style' && typeof v === 'object') {
        for (const [prop, val] of Object.entries(v)) el.style.setProperty(prop.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), val);
      }
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }

  function appendKids(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
  }

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const pad = (n) => String(n).padStart(2, '0');
  const enc = encodeURIComponent;
  const count = (v) => (isNum(v) ? String(v) : '0');

  function clock(d) {
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** HH:MM:SS today, YYYY-MM-DD HH:MM:SS otherwise. */
  function fmtTime(ms) {
    if (!isNum(ms) || ms <= 0) return '—';
    const d = new Date(ms);
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return clock(d);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
  }

  function fullTime(ms) {
    const d = new Date(ms);
    return `${d.toLocaleString()} (.${String(d.getMilliseconds()).padStart(3, '0')})`;
  }

  function timeEl(ms) {
    if (!isNum(ms) || ms <= 0) return h('span', { class: 'faint' }, '—');
    return h('time', { datetime: new Date(ms).toISOString(), title: fullTime(ms) }, fmtTime(ms));
  }

  function fmtDuration(ms) {
    if (!isNum(ms) || ms < 0) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const sec = ms / 1000;
    if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
    const totalMin = Math.floor(sec / 60);
    if (totalMin < 60) return `${totalMin}m ${Math.floor(sec % 60)}s`;
    const hours = Math.floor(totalMin / 60);
    if (hours < 24) return `${hours}h ${totalMin % 60}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function fmtAgo(ms) {
    if (!isNum(ms)) return '—';
    if (ms < 1500) return 'just now';
    return `${fmtDuration(ms)} ago`;
  }

  function fmtBytes(n) {
    if (!isNum(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  function fmtNum(x) {
    if (!isNum(x)) return '0';
    if (x === 0) return '0';
    if (Math.abs(x) >= 100) return String(Math.round(x));
    if (Math.abs(x) >= 10) return String(Math.round(x * 10) / 10);
    return String(Math.round(x * 100) / 100);
  }

  function pct(part, whole) {
    if (!isNum(part) || !isNum(whole) || whole <= 0) return 0;
    return Math.max(0, Math.min(100, (part / whole) * 100));
  }

  function shortId(id) {
    return typeof id === 'string' && id.length > 13 ? id.slice(0, 8) : String(id);
  }

  function clip(text, max) {
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  function jsonText(value, pretty) {
    if (value === undefined) return '';
    try {
      return JSON.stringify(value, null, pretty ? 2 : 0) ?? '';
    } catch (_) {
      return String(value);
    }
  }

  function badge(status, extraClass) {
    const st = String(status || 'unknown');
    return h('span', { class: `badge st-${st.replace(/[^a-z0-9_-]/gi, '')}${extraClass ? ` ${extraClass}` : ''}` }, st);
  }

  function meter(percent, plain) {
    const bar = h('span');
    bar.style.width = `${percent.toFixed(1)}%`;
    const level = plain ? '' : percent >= 100 ? ' full' : percent >= 80 ? ' warn' : '';
    return h('div', { class: `meter${level}` }, bar);
  }

  /** Calls fn at most once every `ms` (the first call at once, the last never lost). */
  function throttle(fn, ms) {
    let last = 0;
    let timer = null;
    return () => {
      if (timer) return;
      const wait = last + ms - Date.now();
      if (wait <= 0) {
        last = Date.now();
        fn();
      } else {
        timer = setTimeout(() => {
          timer = null;
          last = Date.now();
          fn();
        }, wait);
      }
    };
  }

  /** An async job that never runs twice at once: a call while it runs runs it once more after. */
  function coalesce(fn, onError) {
    let running = false;
    let again = false;
    const run = async () => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await fn();
      } catch (err) {
        if (onError) onError(err);
      } finally {
        running = false;
        if (again) {
          again = false;
          run();
        }
      }
    };
    return run;
  }

  /* ------------------------------------------------------------ table rows */

  /** A cell: its class, a signature (redrawn only when it changes) and its content. */
  function C(cls, sig, content) {
    return { cls, sig: String(sig), content };
  }

  function setCells(tr, specs) {
    while (tr.cells.length > specs.length) tr.deleteCell(-1);
    specs.forEach((spec, i) => {
      let td = tr.cells[i];
      if (!td) td = tr.appendChild(document.createElement('td'));
      if (td.className !== spec.cls) td.className = spec.cls;
      if (td._sig !== spec.sig) {
        td._sig = spec.sig;
        const content = spec.content === undefined ? spec.sig : typeof spec.content === 'function' ? spec.content() : spec.content;
        td.replaceChildren();
        appendKids(td, [content]);
      }
    });
  }

  /**
   * Makes tbody's rows those of `items`, in order, keeping (and updating) the rows
   * already there so buttons and focus survive a refresh. `keep(tr)` may keep a row
   * the items lack (it goes first) or leave a row as it is (`build` skipped).
   */
  function syncRows(tbody, items, keyOf, build, keep) {
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) {
      if (tr._key === undefined) tr.remove();
      else existing.set(tr._key, tr);
    }
    const order = [];
    const seen = new Set();
    if (keep) {
      for (const [key, tr] of existing) {
        if (!items.some((it) => keyOf(it) === key) && keep(tr)) {
          order.push(tr);
          seen.add(key);
        }
      }
    }
    for (const item of items) {
      const key = keyOf(item);
      if (seen.has(key)) continue;
      seen.add(key);
      let tr = existing.get(key);
      if (!tr) {
        tr = document.createElement('tr');
        tr._key = key;
        build(tr, item);
      } else if (!(keep && keep(tr))) {
        build(tr, item);
      }
      order.push(tr);
    }
    for (const [key, tr] of existing) if (!seen.has(key)) tr.remove();
    let prev = null;
    for (const tr of order) {
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (tr !== want) tbody.insertBefore(tr, want);
      prev = tr;
    }
  }

  function flash(tr) {
    tr.classList.remove('row-flash');
    // Restart the animation.
    void tr.offsetWidth;
    tr.classList.add('row-flash');
  }

  /* --------------------------------------------------------------------- API */

  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async function api(path, options = {}) {
    const method = options.method || 'GET';
    let res;
    try {
      res = await fetch(path, {
        method,
        headers: authHeaders({ Accept: 'application/json' }),
        cache: 'no-store',
      });
    } catch (_) {
      setOffline(true);
      throw new ApiError(0, 'network', 'cannot reach the control plane');
    }
    setOffline(false);
    let text = '';
    try {
      text = await res.text();
    } catch (_) {
      text = '';
    }
    let body = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
    }
    const err = body && typeof body === 'object' && body.error && typeof body.error === 'object' ? body.error : null;
    if (res.status === 401) {
      needAuth(err && err.message, method === 'GET');
      throw new ApiError(401, 'unauthorized', (err && err.message) || 'a token is needed');
    }
    if (!res.ok) {
      throw new ApiError(res.status, (err && err.kind) || `http_${res.status}`, (err && err.message) || `${res.status} ${res.statusText}`.trim());
    }
    return body;
  }

  /* ------------------------------------------------------- chrome: top bar */

  function setOffline(offline) {
    if (state.offline === offline) return;
    state.offline = offline;
    renderBanner();
  }

  function renderBanner() {
    const el = $('#banner');
    if (!el) return;
    const st = state.status;
    let text = null;
    let warn = false;
    let action = null;
    if (state.offline) {
      text = 'Cannot reach the control plane. Retrying…';
    } else if (state.authNeeded) {
      text = 'This control plane needs an API token to show its data.';
      warn = true;
      action = h('button', { type: 'button', class: 'btn btn-sm', onclick: () => showTokenForm() }, 'Enter token');
    } else if (st && st.store_error) {
      text = `The data directory cannot be written: ${st.store_error}. New tasks are refused until it can.`;
    } else if (st && st.accepting === false) {
      text = 'The control plane is not accepting new tasks (it may be shutting down).';
      warn = true;
    }
    if (!text) {
      el.hidden = true;
      el.replaceChildren();
      return;
    }
    el.className = `banner${warn ? ' warn' : ''}`;
    el.replaceChildren(h('span', null, text), action ? ' ' : null, action);
    el.hidden = false;
  }

  function renderHeader(st) {
    const id = $('#cp-id');
    if (id) {
      id.textContent = st.control_plane_id || '—';
      id.title = `Control plane ${st.control_plane_id || ''}${st.address ? ` at ${st.address}` : ''}`;
    }
    const ver = $('#cp-version');
    if (ver) {
      ver.textContent = st.version ? `v${st.version}` : '';
      ver.title = st.protocol_version ? `protocol v${st.protocol_version}` : '';
      ver.hidden = !st.version;
    }
    const acc = $('#cp-accepting');
    if (acc) acc.hidden = st.accepting !== false;
    const setCount = (id2, n, showZero) => {
      const el = document.getElementById(id2);
      if (!el) return;
      el.textContent = count(n);
      el.hidden = !(isNum(n) && (n > 0 || showZero));
    };
    setCount('nav-count-workers', st.active_workers, true);
    setCount('nav-count-queues', st.queued ? sumQueued(st.queued) : 0, false);
    setCount('nav-count-dead-letters', st.dead_letters, false);
    renderBanner();
  }

  function sumQueued(q) {
    return PRIORITIES.reduce((n, p) => n + (isNum(q && q[p]) ? q[p] : 0), 0);
  }

  function setLive(mode) {
    state.live = mode;
    document.body.dataset.live = mode;
    const ind = $('#live-indicator');
    if (!ind) return;
    const label = $('.live-label', ind);
    if (mode === 'sse') {
      label.textContent = 'live';
      ind.title = 'Connected to the event stream: updates arrive as they happen';
    } else {
      label.textContent = 'polling';
      ind.title = 'The event stream is not connected: refreshing every 2 s';
    }
  }

  function toast(message, kind) {
    const box = $('#toasts');
    if (!box) return;
    const el = h('div', { class: `toast ${kind || ''}`, role: kind === 'error' ? 'alert' : 'status' }, message);
    box.append(el);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(() => {
      el.classList.add('leaving');
      setTimeout(() => el.remove(), 300);
    }, kind === 'error' ? 6000 : 3500);
  }

  /* ------------------------------------------------------------------- auth */

  function showTokenForm(message) {
    const dialog = $('#token-dialog');
    if (!dialog) return;
    const p = $('p', dialog);
    if (p) {
      p.textContent = message
        ? `The control plane says: ${message}. Enter a token; it is kept in this tab only.`
        : 'This control plane asks for a bearer token. It is kept in this tab only (session storage).';
    }
    const input = $('#token-input');
    if (dialog.hidden) {
      input.value = getToken();
      dialog.hidden = false;
    }
    input.focus();
  }

  function hideTokenForm() {
    const dialog = $('#token-dialog');
    if (dialog) dialog.hidden = true;
  }

  /** A 401: ask for a token. A refused read stops polling until one is given. */
  function needAuth(message, reads) {
    if (reads) {
      if (!state.authNeeded) {
        state.authNeeded = true;
        stopStream();
        setLive('polling');
        renderBanner();
      }
    }
    showTokenForm(message);
  }

  function submitToken(ev) {
    ev.preventDefault();
    const value = $('#token-input').value.trim();
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      toast('This browser refused to keep the token (session storage).', 'error');
    }
    hideTokenForm();
    state.authNeeded = false;
    renderBanner();
    refreshAll();
    restartStream();
  }

  /* ----------------------------------------------------------------- status */

  const loadStatus = coalesce(async () => {
    if (state.authNeeded) return;
    const st = await api('/api/status');
    if (!st || typeof st !== 'object') return;
    state.status = st;
    renderHeader(st);
    const v = state.view;
    if (v && v.alive && v.onStatus) v.onStatus(st);
  }, () => {});
  const refreshStatus = throttle(loadStatus, 500);

  /* ------------------------------------------------------------------ views */

  /** The frame every view shares: root, error line, refresh plumbing. */
  function makeView(name, rootEl, refreshFn) {
    const errorBox = h('div', { class: 'view-error', role: 'alert', hidden: true });
    const v = {
      name,
      root: rootEl,
      alive: true,
      errorBox,
      showError(err) {
        if (!v.alive || (err && err.status === 401)) return;
        errorBox.textContent = err && err.message ? `Could not load: ${err.message}` : 'Could not load.';
        errorBox.hidden = false;
      },
      clearError() {
        errorBox.hidden = true;
      },
    };
    v.refreshNow = coalesce(async () => {
      if (!v.alive || state.authNeeded) return;
      await refreshFn();
      if (v.alive) v.clearError();
    }, (err) => v.showError(err));
    v.refreshSoon = throttle(v.refreshNow, 400);
    return v;
  }

  function pageHead(title, subtitle, actions) {
    return h('div', { class: 'page-head' },
      h('div', null, h('h1', null, title), subtitle ? h('p', null, subtitle) : null),
      actions ? h('div', { class: 'actions' }, actions) : null);
  }

  function table(headers, tbody) {
    return h('div', { class: 'table-wrap' },
      h('table', null,
        h('thead', null, h('tr', null, headers.map((x) => (Array.isArray(x) ? h('th', { class: x[1] }, x[0]) : h('th', null, x))))),
        tbody));
  }

  /* ---------------------------------------------------------- overview view */

  function overviewView() {
    const statEl = (key) => h('span', { class: 'stat-value', 'data-stat': key }, '–');
    const sub = (id) => h('b', { 'data-sub': id }, '–');
    const card = (label, color, valueEl, subEl, cls) =>
      h('div', { class: `card stat${cls ? ` ${cls}` : ''}` },
        h('div', { class: 'stat-label' }, h('span', { class: 'stat-accent', style: { '--c': `var(${color})` } }), label),
        valueEl, subEl);

    const throughputSvg = s('svg', { id: 'chart-throughput', class: 'chart', role: 'img', 'aria-label': 'Tasks per second that succeeded' });
    const failuresSvg = s('svg', { id: 'chart-failures', class: 'chart', role: 'img', 'aria-label': 'Failures per interval' });
    const nowRate = h('span', { class: 'chart-now' }, '–');
    const failSum = h('span', { class: 'chart-now' }, '–');
    const failSub = h('span', { class: 'muted' });
    const cpList = h('dl', { class: 'kv' });
    const cacheList = h('dl', { class: 'kv' });
    const activity = h('ul', { class: 'activity' });
    const activityEmpty = h('p', { class: 'empty-inline' }, 'Events appear here as they happen while the event stream is connected.');

    const rootEl = h('section', { 'data-view-root': 'overview' });
    const v = makeView('overview', rootEl, async () => {
      loadStatus();
      const [cache, tp] = await Promise.all([
        api('/api/cache').catch((e) => (e.status === 404 ? null : Promise.reject(e))),
        api('/api/throughput'),
      ]);
      if (!v.alive) return;
      state.cache = cache;
      renderCache();
      v.tp = tp;
      drawCharts();
    });

    rootEl.append(
      pageHead('Overview', 'The control plane at a glance'),
      v.errorBox,
      h('div', { class: 'grid stats six' },
        card('Active workers', '--green', statEl('active-workers'), h('div', { class: 'stat-sub' }, 'of ', sub('workers'), ' known')),
        card('Queued', '--cyan', statEl('queued'),
          h('div', { class: 'prio-row' }, PRIORITIES.map((p) =>
            h('span', { class: `prio p-${p}`, title: `${p} priority` }, p, ' ', h('b', { 'data-stat': `queued-${p}` }, '–'))))),
        card('Running', '--blue', statEl('running'),
          h('div', { class: 'stat-sub' }, sub('scheduled'), ' scheduled · ', sub('retrying'), ' retrying')),
        card('Succeeded', '--green', statEl('success-total'),
          h('div', { class: 'stat-sub' }, sub('submitted'), ' submitted'), 'good'),
        card('Failed', '--red', statEl('failure-total'),
          h('div', { class: 'stat-sub' }, sub('cancelled'), ' cancelled · ', sub('retried'), ' retried'), 'bad'),
        card('Cached results', '--violet', statEl('cached-results'),
          h('div', { class: 'stat-sub' }, 'hit rate ', sub('hit-rate')))),
      h('div', { class: 'grid two section' },
        h('div', { class: 'card chart-card' },
          h('div', { class: 'chart-head' },
            h('div', null, h('h3', null, 'Throughput'), h('div', null, nowRate, h('span', { class: 'muted' }, ' tasks/s'))),
            h('div', { class: 'chart-legend' },
              h('span', null, h('i', { style: { '--c': 'var(--green)' } }), 'succeeded/s'),
              h('span', null, h('i', { class: 'dashed', style: { '--c': 'var(--accent)' } }), 'submitted/s'))),
          throughputSvg),
        h('div', { class: 'card chart-card' },
          h('div', { class: 'chart-head' },
            h('div', null, h('h3', null, 'Failures'), h('div', null, failSum, ' ', failSub)),
            h('div', { class: 'chart-legend' }, h('span', null, h('i', { style: { '--c': 'var(--red)' } }), 'failures per interval'))),
          failuresSvg)),
      h('div', { class: 'grid two section' },
        h('div', { class: 'card' }, h('h2', null, 'Control plane'), cpList),
        h('div', { class: 'card' }, h('h2', null, 'Result cache'), cacheList)),
      h('div', { class: 'section card' },
        h('div', { class: 'chart-head' }, h('h2', null, 'Live activity'), h('a', { href: '#/tasks' }, 'All tasks →')),
        activityEmpty, activity));

    function setStat(key, value) {
      const el = rootEl.querySelector(`[data-stat="${key}"]`);
      if (el) el.textContent = count(value);
    }
    function setSub(key, text) {
      const el = rootEl.querySelector(`[data-sub="${key}"]`);
      if (el) el.textContent = text;
    }

    function kvRows(dl, rows) {
      dl.replaceChildren(...rows.flatMap(([k, val]) => [h('dt', null, k), h('dd', null, val)]));
    }

    v.onStatus = (st) => {
      const q = st.queued || {};
      setStat('active-workers', st.active_workers);
      setStat('queued', sumQueued(q));
      for (const p of PRIORITIES) setStat(`queued-${p}`, q[p]);
      setStat('running', st.running);
      setStat('cached-results', st.cached_results);
      const totals = st.totals || {};
      setStat('success-total', totals.success);
      setStat('failure-total', totals.failure);
      setSub('workers', count(st.workers));
      setSub('scheduled', count(st.scheduled));
      setSub('retrying', count(st.retrying));
      setSub('submitted', count(totals.submitted));
      setSub('cancelled', count(totals.cancelled));
      setSub('retried', count(totals.retried));
      kvRows(cpList, [
        ['Id', h('code', null, st.control_plane_id || '—')],
        ['Version', `${st.version || '—'}${st.protocol_version ? ` (protocol v${st.protocol_version})` : ''}`],
        ['Address', h('code', null, st.address || '—')],
        ['Uptime', fmtDuration((st.uptime_secs || 0) * 1000)],
        ['Accepting', st.accepting === false ? h('span', { class: 'err-text' }, 'no') : 'yes'],
        ['Storage', st.store_error
          ? h('span', { class: 'err-text' }, `durable, failing: ${st.store_error}`)
          : st.durable ? 'durable (data directory)' : 'in memory'],
        ['Dead letters', h('a', { href: '#/dead-letters' }, count(st.dead_letters))],
      ]);
    };

    function renderCache() {
      const c = state.cache;
      if (!c) {
        kvRows(cacheList, [['Cache', h('span', { class: 'muted' }, 'not reported')]]);
        setSub('hit-rate', '—');
        return;
      }
      const lookups = (c.hits || 0) + (c.misses || 0);
      const rate = lookups > 0 ? `${fmtNum((100 * (c.hits || 0)) / lookups)}%` : '—';
      setSub('hit-rate', rate);
      const withMeter = (text, p) => h('div', { class: 'load-cell' }, meter(p), h('span', { class: 'nowrap' }, text));
      kvRows(cacheList, [
        ['Entries', withMeter(`${count(c.entries)} / ${count(c.capacity)}`, pct(c.entries, c.capacity))],
        ['Size', withMeter(`${fmtBytes(c.bytes)} / ${fmtBytes(c.max_bytes)}`, pct(c.bytes, c.max_bytes))],
        ['Kept for', c.ttl_secs ? fmtDuration(c.ttl_secs * 1000) : 'until evicted'],
        ['Hits / misses', `${count(c.hits)} / ${count(c.misses)} (hit rate ${rate})`],
        ['Evictions', count(c.evictions)],
      ]);
    }

    function drawCharts() {
      const tp = v.tp;
      const samples = tp && Array.isArray(tp.samples) ? tp.samples : [];
      const iv = tp && isNum(tp.interval_secs) && tp.interval_secs > 0 ? tp.interval_secs : 5;
      drawThroughput(throughputSvg, samples, iv);
      drawFailures(failuresSvg, samples, iv);
      const last = samples[samples.length - 1];
      nowRate.textContent = last ? fmtNum((last.success || 0) / iv) : '0';
      const failures = samples.reduce((n, x) => n + (x.failure || 0), 0);
      failSum.textContent = String(failures);
      const span = samples.length * iv;
      failSub.textContent = `in the last ${fmtDuration(span * 1000 || iv * 1000)}`;
    }
    v.redraw = drawCharts;

    function renderActivity() {
      const items = state.activity.slice(0, 14);
      activityEmpty.hidden = items.length > 0;
      activity.replaceChildren(...items.map(activityItem));
    }
    const renderActivitySoon = throttle(renderActivity, 250);
    v.onEvent = () => renderActivitySoon();

    // Fill from what is known already.
    if (state.status) v.onStatus(state.status);
    renderActivity();
    return v;
  }

  function activityItem(ev) {
    const type = String(ev.type || '');
    const [group, what] = type.includes('.') ? type.split('.', 2) : ['', type];
    let text;
    if (group === 'task') {
      text = [
        h('b', null, ev.task_name || 'task'), ' ',
        ev.task_id ? h('a', { href: `#/tasks/${enc(ev.task_id)}`, class: 'mono' }, shortId(ev.task_id)) : null,
        ev.worker_id ? h('span', { class: 'muted' }, ` on ${ev.worker_id}`) : null,
        ev.error && ev.error.message ? h('span', { class: 'err-text' }, ` — ${clip(String(ev.error.message), 140)}`) : null,
        !ev.error && ev.message ? h('span', { class: 'muted' }, ` — ${clip(String(ev.message), 140)}`) : null,
      ];
    } else {
      text = [
        ev.worker_id ? h('b', null, ev.worker_id) : null,
        ev.message ? h('span', { class: group === 'plugin' && what === 'rejected' ? 'err-text' : 'muted' }, ` ${clip(String(ev.message), 160)}`) : null,
      ];
    }
    const st = group === 'task' ? EVENT_STATUS[type] || what : what === 'registered' ? 'active' : what === 'lost' ? 'lost' : what;
    return h('li', null,
      h('span', { class: 'a-time', title: isNum(ev.at) ? fullTime(ev.at) : null }, fmtTime(ev.at)),
      h('span', null, h('span', { class: `badge st-${String(st).replace(/[^a-z0-9_-]/gi, '')}`, title: type }, type)),
      h('span', { class: 'a-text' }, text));
  }

  /* ----------------------------------------------------------------- charts */

  function niceMax(v) {
    if (!isNum(v) || v <= 0) return 1;
    const e = 10 ** Math.floor(Math.log10(v));
    const f = v / e;
    const n = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
    return n * e;
  }

  function chartFrame(svgEl, maxValue, samples) {
    const W = Math.max(240, Math.round(svgEl.getBoundingClientRect().width || 600));
    const H = 170;
    const m = { l: 38, r: 8, t: 10, b: 22 };
    svgEl.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svgEl.setAttribute('preserveAspectRatio', 'none');
    const kids = [];
    const y = (val) => m.t + (H - m.t - m.b) * (1 - val / maxValue);
    for (const f of [0, 0.5, 1]) {
      const yy = y(maxValue * f);
      kids.push(s('line', { class: 'grid-line', x1: m.l, x2: W - m.r, y1: yy, y2: yy }));
      kids.push(s('text', { class: 'axis-label', x: m.l - 6, y: yy + 3.5, 'text-anchor': 'end' }, fmtNum(maxValue * f)));
    }
    if (samples.length > 0) {
      const first = new Date(samples[0].at);
      const last = new Date(samples[samples.length - 1].at);
      kids.push(s('text', { class: 'axis-label', x: m.l, y: H - 5, 'text-anchor': 'start' }, clock(first)));
      kids.push(s('text', { class: 'axis-label', x: W - m.r, y: H - 5, 'text-anchor': 'end' }, clock(last)));
    }
    return { W, H, m, y, kids };
  }

  function emptyLabel(f, text) {
    f.kids.push(s('text', { class: 'empty-label', x: (f.W + f.m.l) / 2, y: f.H / 2, 'text-anchor': 'middle' }, text));
  }

  function drawThroughput(svgEl, samples, iv) {
    const ok = samples.map((x) => (x.success || 0) / iv);
    const sub = samples.map((x) => (x.submitted || 0) / iv);
    const f = chartFrame(svgEl, niceMax(Math.max(0, ...ok, ...sub)), samples);
    const { W, H, m, y, kids } = f;
    const n = samples.length;
    if (n === 0) {
      emptyLabel(f, 'Waiting for the first sample…');
    } else {
      const step = n > 1 ? (W - m.l - m.r) / (n - 1) : 0;
      const x = (i) => (n > 1 ? m.l + i * step : (W + m.l) / 2);
      const line = (vals) => vals.map((val, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(val).toFixed(1)}`).join('');
      const base = y(0).toFixed(1);
      if (n > 1) {
        kids.push(s('path', { class: 'area-success', d: `${line(ok)}L${x(n - 1).toFixed(1)},${base}L${x(0).toFixed(1)},${base}Z` }));
      }
      kids.push(s('path', { class: 'line-submitted', d: line(sub) }));
      kids.push(s('path', { class: 'line-success', d: line(ok) }));
      if (n === 1) kids.push(s('circle', { cx: x(0), cy: y(ok[0]), r: 3, fill: 'var(--green)' }));
      const zone = n > 1 ? step : W - m.l - m.r;
      samples.forEach((sample, i) => {
        kids.push(s('rect', { class: 'hover-zone', x: Math.max(m.l, x(i) - zone / 2), y: m.t, width: zone, height: H - m.t - m.b },
          s('title', null, `${fmtTime(sample.at)}: ${fmtNum(ok[i])} succeeded/s, ${fmtNum(sub[i])} submitted/s`)));
      });
    }
    svgEl.replaceChildren(...kids);
  }

  function drawFailures(svgEl, samples, iv) {
    const fails = samples.map((x) => x.failure || 0);
    const f = chartFrame(svgEl, niceMax(Math.max(1, ...fails)), samples);
    const { W, m, y, kids } = f;
    const n = samples.length;
    if (n === 0) {
      emptyLabel(f, 'Waiting for the first sample…');
    } else {
      const slot = (W - m.l - m.r) / n;
      const bw = Math.max(1, slot * 0.7);
      samples.forEach((sample, i) => {
        const val = fails[i];
        const top = y(val);
        const x0 = m.l + i * slot + (slot - bw) / 2;
        const bar = s('rect', { class: 'bar-failure', x: x0.toFixed(1), y: top.toFixed(1), width: bw.toFixed(1), height: Math.max(0, y(0) - top).toFixed(1), rx: Math.min(2, bw / 3) });
        kids.push(bar);
        kids.push(s('rect', { class: 'hover-zone', x: (m.l + i * slot).toFixed(1), y: m.t, width: slot.toFixed(1), height: y(0) - m.t },
          s('title', null, `${fmtTime(sample.at)}: ${val} failed in ${iv} s`)));
      });
      if (fails.every((x) => x === 0)) emptyLabel(f, 'No failures');
    }
    svgEl.replaceChildren(...kids);
  }

  /* ----------------------------------------------------------- workers view */

  function workersView() {
    const tbody = h('tbody');
    const empty = h('div', { class: 'empty', hidden: true }, 'No subworkers have registered.');
    const subtitle = h('span', null, 'Subworkers that registered with this control plane');
    const rootEl = h('section', { 'data-view-root': 'workers' });
    const v = makeView('workers', rootEl, async () => {
      const list = await api('/api/workers');
      if (!v.alive) return;
      const workers = Array.isArray(list) ? list : [];
      const active = workers.filter((w) => w.status === 'active').length;
      subtitle.textContent = `${active} active of ${workers.length} known`;
      empty.hidden = workers.length > 0;
      for (const w of workers) for (const t of w.tasks || []) state.knownNames.add(t);
      syncRows(tbody, workers, (w) => w.worker_id, buildWorkerRow);
    });
    rootEl.append(
      pageHead('Workers', subtitle),
      v.errorBox,
      table(['Worker', 'Address', ['PID', 'num'], 'Status', 'Load', ['Slots', 'num'], 'Last seen', ['Done', 'num'], 'Plugins'], tbody),
      empty);
    v.onEvent = (ev) => {
      const t = String(ev.type || '');
      if (t.startsWith('worker.') || t.startsWith('plugin.') || t === 'task.started' || FINAL.has(EVENT_STATUS[t])) v.refreshSoon();
    };
    return v;
  }

  function buildWorkerRow(tr, w) {
    tr.dataset.workerId = w.worker_id;
    const load = isNum(w.load) ? w.load * 100 : pct(w.running, w.slots);
    const plugins = Array.isArray(w.plugins) ? w.plugins : [];
    const pluginSig = plugins.map((p) => `${p.name} ${p.version} ${p.build}`).join('|');
    setCells(tr, [
      C(`id${w.own ? ' own' : ''}`, `${w.worker_id}|${w.own}`, () => h('code', { title: w.own ? "The control plane's own subworker" : null }, w.worker_id)),
      C('address', w.address || '—', () => (w.address ? h('code', null, w.address) : h('span', { class: 'faint' }, '—'))),
      C('pid num', isNum(w.pid) && w.pid > 0 ? w.pid : '—'),
      C('status', w.status, () => badge(w.status)),
      C('load', load.toFixed(1), () => h('div', { class: 'load-cell' }, meter(load), h('span', { class: 'pct' }, `${Math.round(load)}%`))),
      C('slots num nowrap', `${count(w.running)} / ${count(w.slots)}`),
      C('last-seen nowrap', fmtAgo(w.last_seen_ms_ago)),
      C('done num', `${count(w.completed_total)}|${count(w.assigned_total)}`, () =>
        h('span', { title: `${count(w.assigned_total)} assigned, ${count(w.completed_total)} completed since it registered` }, count(w.completed_total))),
      C('plugins', pluginSig, () => (plugins.length === 0
        ? h('span', { class: 'faint' }, '—')
        : h('div', { class: 'plugin-chips' }, plugins.map((p) =>
          h('span', { class: 'plugin-chip', title: `${p.path || ''}${p.tasks && p.tasks.length ? `\ntasks: ${p.tasks.join(', ')}` : ''}` },
            h('b', null, p.name), ' ', p.version || '', p.build ? ' ' : '', p.build ? h('code', null, p.build) : null))))),
    ]);
  }

  /* ------------------------------------------------------------ queues view */

  function queuesView() {
    const cards = {};
    const valueEl = (key) => {
      cards[key] = h('span', { class: 'stat-value', 'data-queue': key }, '–');
      return cards[key];
    };
    const card = (label, color, key, note) =>
      h('div', { class: 'card stat' },
        h('div', { class: 'stat-label' }, h('span', { class: 'stat-accent', style: { '--c': `var(${color})` } }), label),
        valueEl(key), note ? h('div', { class: 'stat-sub' }, note) : null);
    const tbody = h('tbody');
    const empty = h('div', { class: 'empty', hidden: true }, 'Nothing is waiting or running.');
    const rootEl = h('section', { 'data-view-root': 'queues' });
    const v = makeView('queues', rootEl, async () => {
      const q = await api('/api/queues');
      if (!v.alive || !q) return;
      const queued = q.queued || {};
      for (const p of PRIORITIES) cards[p].textContent = count(queued[p]);
      cards.scheduled.textContent = count(q.scheduled);
      cards.retrying.textContent = count(q.retrying);
      cards.running.textContent = count(q.running);
      const rows = Array.isArray(q.by_name) ? q.by_name : [];
      const biggest = Math.max(1, ...rows.map((r) => (r.waiting || 0) + (r.running || 0)));
      empty.hidden = rows.length > 0;
      syncRows(tbody, rows, (r) => r.name, (tr, r) => {
        tr.dataset.queueName = r.name;
        state.knownNames.add(r.name);
        const share = pct((r.waiting || 0) + (r.running || 0), biggest);
        setCells(tr, [
          C('name', r.name, () => h('a', { href: `#/tasks?name=${enc(r.name)}` }, r.name)),
          C('waiting num', count(r.waiting)),
          C('running num', count(r.running)),
          C('share', share.toFixed(1), () => meter(share, true)),
        ]);
      });
    });
    rootEl.append(
      pageHead('Queues', 'What waits, by priority and by task name'),
      v.errorBox,
      h('div', { class: 'section-head' }, h('h3', null, 'Due, waiting for a worker')),
      h('div', { class: 'grid stats fit' },
        card('Critical', '--red', 'critical', 'priority critical'),
        card('High', '--amber', 'high', 'priority high'),
        card('Normal', '--blue', 'normal', 'priority normal'),
        card('Low', '--gray', 'low', 'priority low')),
      h('div', { class: 'section-head section' }, h('h3', null, 'Not due yet, or running')),
      h('div', { class: 'grid stats fit' },
        card('Scheduled', '--violet', 'scheduled', 'waiting for a countdown or eta'),
        card('Retrying', '--amber', 'retrying', 'waiting to retry'),
        card('Running', '--green', 'running', 'held by workers')),
      h('div', { class: 'section' },
        h('div', { class: 'section-head' }, h('h2', null, 'By task name')),
        table(['Task', ['Waiting', 'num'], ['Running', 'num'], 'Share'], tbody),
        empty));
    v.onEvent = (ev) => {
      if (String(ev.type || '').startsWith('task.')) v.refreshSoon();
    };
    return v;
  }

  /* ------------------------------------------------------------- tasks view */

  function readTaskParams(params) {
    const status = params.get('status') || '';
    const offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
    return { status, name: (params.get('name') || '').trim(), offset };
  }

  function taskHash(p) {
    const qs = new URLSearchParams();
    if (p.status) qs.set('status', p.status);
    if (p.name) qs.set('name', p.name);
    if (p.offset) qs.set('offset', String(p.offset));
    const q = qs.toString();
    return `#/tasks${q ? `?${q}` : ''}`;
  }

  function resultCell(t) {
    if (t.error && typeof t.error === 'object') {
      const msg = String(t.error.message || '');
      return h('span', { class: 'clip', title: clip(`${t.error.kind}: ${msg}`, 2000) },
        h('span', { class: 'err-kind' }, String(t.error.kind || 'error')), h('span', { class: 'err-text' }, msg));
    }
    if (t.result === null || t.result === undefined) return h('span', { class: 'faint' }, '—');
    const text = jsonText(t.result, false);
    return h('span', { class: 'clip', title: clip(jsonText(t.result, true), 2000) }, clip(text, 200));
  }

  function taskActions(id, status, after) {
    if (FINAL.has(status)) {
      return h('button', {
        type: 'button', class: 'btn btn-sm btn-accent', 'data-action': 'retry', title: 'Queue this task again',
        onclick: (e) => doAction(e.currentTarget, 'retry', id, after),
      }, 'Retry');
    }
    return h('button', {
      type: 'button', class: 'btn btn-sm btn-danger', 'data-action': 'cancel', title: 'Cancel this task',
      onclick: (e) => doAction(e.currentTarget, 'cancel', id, after),
    }, 'Cancel');
  }

  async function doAction(btn, action, id, after) {
    if (btn.disabled) return;
    btn.disabled = true;
    btn.classList.add('busy');
    const url = action === 'replay'
      ? `/api/dead-letters/${enc(id)}/replay`
      : `/api/tasks/${enc(id)}/${action}`;
    try {
      const reply = await api(url, { method: 'POST' });
      const outcome = reply && reply.outcome;
      const short = shortId(id);
      if (action === 'cancel') {
        toast(outcome === 'signalled' ? `Task ${short}: its worker was told to stop` : `Task ${short} cancelled`, 'ok');
      } else if (action === 'retry') {
        toast(`Task ${short} queued again`, 'ok');
      } else {
        toast(`Dead letter ${short} replayed`, 'ok');
      }
    } catch (err) {
      if (err.status !== 401) {
        const why = err.status === 409 ? (action === 'cancel' ? 'it is already final' : 'it is not final yet')
          : err.status === 410 ? 'its payload is no longer kept'
            : err.status === 404 ? 'it is not known (any more)'
              : err.message;
        toast(`Could not ${action} ${shortId(id)}: ${why}${err.status === 409 || err.status === 410 || err.status === 404 ? ` (${err.message})` : ''}`, 'error');
      }
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
    if (after) after(id, action);
    refreshStatus();
  }

  function tasksView(route) {
    const sel = h('select', { id: 'filter-status', name: 'status', 'aria-label': 'Filter by status' },
      h('option', { value: '' }, 'All statuses'),
      FILTER_STATUSES.map((st) => h('option', { value: st }, st)));
    const nameIn = h('input', {
      id: 'filter-name', name: 'name', type: 'search', placeholder: 'Task name, e.g. add',
      'aria-label': 'Filter by task name', list: 'task-names', autocomplete: 'off', spellcheck: 'false',
    });
    const names = h('datalist', { id: 'task-names' });
    const clear = h('button', { type: 'button', class: 'btn', id: 'filter-clear', onclick: () => { location.hash = '#/tasks'; } }, 'Clear');
    const tbody = h('tbody');
    const empty = h('div', { class: 'empty', hidden: true }, 'No tasks match.');
    const summary = h('span');
    const prev = h('button', { type: 'button', class: 'btn btn-sm', 'data-page': 'prev' }, '← Newer');
    const next = h('button', { type: 'button', class: 'btn btn-sm', 'data-page': 'next' }, 'Older →');
    const subtitle = h('span', null, 'Recent tasks, newest first');

    const rootEl = h('section', { 'data-view-root': 'tasks' });
    const v = makeView('tasks', rootEl, async () => {
      const p = v.params;
      const seq = v.seq;
      const qs = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(p.offset) });
      if (p.status) qs.set('status', p.status);
      if (p.name) qs.set('name', p.name);
      const asked = performance.now();
      const page = await api(`/api/tasks?${qs}`);
      if (!v.alive || seq !== v.seq || !page) return;
      const tasks = Array.isArray(page.tasks) ? page.tasks : [];
      v.total = isNum(page.total) ? page.total : tasks.length;
      // Rows an event changed after this page was asked for are fresher than it.
      const fresher = (tr) => isNum(tr._evAt) && tr._evAt > asked;
      syncRows(tbody, tasks, (t) => t.task_id, buildRow, fresher);
      trim();
      renderPager();
      for (const t of tasks) state.knownNames.add(t.task_name);
      renderNames();
    });
    v.seq = 0;
    v.total = 0;
    v.params = readTaskParams(route.params);

    function buildRow(tr, t) {
      tr._rec = t;
      tr.dataset.taskId = t.task_id;
      setCells(tr, [
        C('id', t.task_id, () => h('a', { href: `#/tasks/${enc(t.task_id)}`, title: t.task_id }, shortId(t.task_id))),
        C('name', t.task_name || ''),
        C('status', t.status, () => badge(t.status)),
        C('result', `${jsonText(t.error)}|${jsonText(t.result)}`, () => resultCell(t)),
        C('worker', t.worker_id || '', () => (t.worker_id ? h('code', null, t.worker_id) : h('span', { class: 'faint' }, '—'))),
        C('attempts num', count(t.attempts)),
        C('submitted nowrap', fmtTime(t.submitted_at), () => timeEl(t.submitted_at)),
        C('completed nowrap', `${fmtTime(t.completed_at)}|${t.started_at || ''}`, () => {
          if (isNum(t.completed_at) && t.completed_at > 0) {
            const el = timeEl(t.completed_at);
            if (isNum(t.started_at) && t.started_at > 0) el.title = `${el.title}\nran ${fmtDuration(t.completed_at - t.started_at)}`;
            return el;
          }
          return h('span', { class: 'faint' }, '—');
        }),
        C('actions', FINAL.has(t.status) ? 'final' : 'open', () => taskActions(t.task_id, t.status, afterAction)),
      ]);
    }

    function trim() {
      while (tbody.rows.length > PAGE_SIZE) tbody.deleteRow(-1);
      empty.hidden = tbody.rows.length > 0;
    }

    function renderPager() {
      const shown = tbody.rows.length;
      const p = v.params;
      const total = Math.max(v.total, p.offset + shown);
      summary.textContent = shown === 0 ? `${total} tasks` : `${p.offset + 1}–${p.offset + shown} of ${total}`;
      prev.disabled = p.offset === 0;
      next.disabled = p.offset + PAGE_SIZE >= total;
      subtitle.textContent = `${total} ${p.status || p.name ? 'matching' : 'recent'} task${total === 1 ? '' : 's'}, newest first`;
    }

    function renderNames() {
      const want = Array.from(state.knownNames).filter(Boolean).sort();
      if (names.childElementCount === want.length) return;
      names.replaceChildren(...want.map((n) => h('option', { value: n })));
    }

    function syncControls() {
      if (sel.value !== v.params.status) {
        sel.value = v.params.status;
        if (sel.value !== v.params.status) {
          // A status not in the list (e.g. "assigned"): offer it.
          sel.append(h('option', { value: v.params.status }, v.params.status));
          sel.value = v.params.status;
        }
      }
      if (document.activeElement !== nameIn && nameIn.value.trim() !== v.params.name) nameIn.value = v.params.name;
      clear.hidden = !v.params.status && !v.params.name;
    }

    function setQuery(changes, replace) {
      const p = Object.assign({}, v.params, changes);
      const hash = taskHash(p);
      if (replace) {
        history.replaceState(null, '', hash);
        v.update({ params: new URLSearchParams(hash.split('?')[1] || '') });
      } else if (location.hash !== hash) {
        location.hash = hash;
      } else {
        v.refreshNow();
      }
    }

    let typing = null;
    const applyName = () => {
      clearTimeout(typing);
      typing = null;
      const name = nameIn.value.trim();
      if (name !== v.params.name) setQuery({ name, offset: 0 }, true);
    };
    nameIn.addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(applyName, 300);
    });
    nameIn.addEventListener('change', applyName);
    nameIn.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') applyName();
    });
    sel.addEventListener('change', () => setQuery({ status: sel.value, offset: 0 }, false));
    prev.addEventListener('click', () => setQuery({ offset: Math.max(0, v.params.offset - PAGE_SIZE) }, false));
    next.addEventListener('click', () => setQuery({ offset: v.params.offset + PAGE_SIZE }, false));

    v.update = (r) => {
      const p = readTaskParams(r.params);
      const same = p.status === v.params.status && p.name === v.params.name && p.offset === v.params.offset;
      v.params = p;
      syncControls();
      if (!same) {
        v.seq += 1;
        tbody.replaceChildren();
        empty.hidden = true;
        summary.textContent = 'Loading…';
      }
      v.refreshNow();
    };

    function matches(status, name) {
      const p = v.params;
      return p.offset === 0 && (!p.status || p.status === status) && (!p.name || p.name === name);
    }

    function findRow(id) {
      for (const tr of tbody.rows) if (tr._key === id) return tr;
      return null;
    }

    v.onEvent = (ev) => {
      const st = EVENT_STATUS[ev.type];
      if (!st || !ev.task_id) return;
      if (ev.task_name) state.knownNames.add(ev.task_name);
      const tr = findRow(ev.task_id);
      if (tr) {
        const rec = Object.assign({}, tr._rec, { status: st });
        if (ev.worker_id) rec.worker_id = ev.worker_id;
        if (isNum(ev.attempt)) rec.attempts = Math.max(rec.attempts || 0, ev.attempt);
        if (FINAL.has(st)) {
          rec.completed_at = ev.at;
          rec.error = ev.error || null;
        } else {
          rec.error = null;
          rec.result = null;
          rec.completed_at = null;
          if (st === 'running') rec.started_at = ev.at;
        }
        tr._evAt = performance.now();
        buildRow(tr, rec);
        flash(tr);
      } else if ((st === 'queued' || st === 'scheduled') && ev.type !== 'task.requeued' && matches(st, ev.task_name || '')) {
        const row = document.createElement('tr');
        row._key = ev.task_id;
        row._evAt = performance.now();
        buildRow(row, {
          task_id: ev.task_id, task_name: ev.task_name || '', status: st, result: null, error: null,
          worker_id: null, attempts: 0, delivery_count: 0, submitted_at: ev.at, started_at: null, completed_at: null,
        });
        tbody.insertBefore(row, tbody.firstChild);
        flash(row);
        v.total += 1;
        trim();
        renderPager();
      }
      v.refreshSoon();
    };

    async function afterAction(id) {
      try {
        const rec = await api(`/api/tasks/${enc(id)}`);
        const tr = findRow(id);
        if (v.alive && tr && rec) {
          tr._evAt = performance.now();
          buildRow(tr, rec);
          flash(tr);
        }
      } catch (_) {
        /* the list refresh below shows what is true */
      }
      v.refreshSoon();
    }

    rootEl.append(
      pageHead('Tasks', subtitle),
      h('div', { class: 'filters' },
        h('label', { class: 'field', for: 'filter-status' }, 'Status'), sel,
        h('label', { class: 'field', for: 'filter-name' }, 'Name'), nameIn, names, clear),
      v.errorBox,
      table(['Id', 'Name', 'Status', 'Result / error', 'Worker', ['Attempts', 'num'], 'Submitted', 'Completed', ''], tbody),
      empty,
      h('div', { class: 'pager' }, summary, h('div', { class: 'pager-buttons' }, prev, next)));
    syncControls();
    renderNames();
    // Names served, for the name filter's suggestions.
    if (state.knownNames.size === 0) {
      api('/api/workers').then((list) => {
        for (const w of Array.isArray(list) ? list : []) for (const t of w.tasks || []) state.knownNames.add(t);
        if (v.alive) renderNames();
      }).catch(() => {});
    }
    return v;
  }

  /* -------------------------------------------------------- task detail view */

  function taskView(route) {
    const id = route.id;
    const statusSlot = h('span');
    const nameEl = h('span', null, 'Task');
    const actions = h('div', { class: 'actions' });
    const details = h('dl', { class: 'kv' });
    const outcome = h('div');
    const timeline = h('ol', { id: 'timeline', class: 'timeline' });
    const noTimeline = h('p', { class: 'empty-inline', hidden: true }, 'No timeline: this control plane did not see this task submitted (it may have been restored from its data directory).');
    const body = h('div');
    const missing = h('div', { class: 'card empty', hidden: true });

    const rootEl = h('section', { 'data-view-root': 'task', 'data-id': id });
    const v = makeView('task', rootEl, async () => {
      let t;
      try {
        t = await api(`/api/tasks/${enc(id)}`);
      } catch (err) {
        if (err.status === 404 && v.alive) {
          body.hidden = true;
          actions.replaceChildren();
          missing.replaceChildren(h('p', null, 'No task with id ', h('code', null, id), ' is known to this control plane.'), h('a', { href: '#/tasks' }, '← All tasks'));
          missing.hidden = false;
          return;
        }
        throw err;
      }
      if (!v.alive || !t) return;
      missing.hidden = true;
      body.hidden = false;
      render(t);
    });
    v.id = id;

    let lastFinal = null;
    function render(t) {
      nameEl.textContent = t.task_name || 'Task';
      document.title = `fastworker · ${t.task_name || 'task'} ${shortId(id)}`;
      if (statusSlot.textContent !== t.status) statusSlot.replaceChildren(badge(t.status, 'status'));
      const final = FINAL.has(t.status);
      if (lastFinal !== final) {
        lastFinal = final;
        actions.replaceChildren(taskActions(id, t.status, () => v.refreshNow()));
      }
      const retryBtn = actions.querySelector('button[data-action="retry"]');
      if (retryBtn) retryBtn.title = t.retryable === false ? 'Its payload may no longer be kept; the control plane will say' : 'Queue this task again';

      const wait = isNum(t.started_at) && t.started_at > 0 ? t.started_at - t.submitted_at : null;
      const run = isNum(t.completed_at) && t.completed_at > 0 && isNum(t.started_at) && t.started_at > 0 ? t.completed_at - t.started_at : null;
      const rows = [
        ['Id', h('code', null, t.task_id || id)],
        ['Name', t.task_name || '—'],
        ['Status', badge(t.status)],
        ['Priority', t.priority ? h('span', { class: `prio p-${t.priority}` }, t.priority) : '—'],
        ['Worker', t.worker_id ? h('code', null, t.worker_id) : '—'],
        ['Attempts', `${count(t.attempts)} (delivered ${count(t.delivery_count)} time${t.delivery_count === 1 ? '' : 's'})`],
        ['Submitted', timeEl(t.submitted_at)],
        ['Started', timeEl(t.started_at)],
        ['Completed', timeEl(t.completed_at)],
        ['Waited', wait === null ? '—' : fmtDuration(wait)],
        ['Ran', run === null ? '—' : fmtDuration(run)],
        ['Retryable', t.retryable ? 'yes' : 'no'],
      ];
      details.replaceChildren(...rows.flatMap(([k, val]) => [h('dt', null, k), h('dd', null, val)]));

      const parts = [];
      if (t.error && typeof t.error === 'object') {
        parts.push(h('h2', null, 'Error'),
          h('div', { class: 'error-box' }, h('span', { class: 'err-kind' }, String(t.error.kind || 'error')), h('pre', null, String(t.error.message || ''))));
      }
      if (t.result !== null && t.result !== undefined) {
        parts.push(h('h2', { class: parts.length ? 'section' : null }, 'Result'), h('pre', { class: 'json result' }, jsonText(t.result, true)));
      }
      if (parts.length === 0) {
        parts.push(h('h2', null, 'Result'), h('p', { class: 'muted' }, final ? 'No result value.' : 'Not finished yet.'));
      }
      outcome.replaceChildren(...parts);

      const steps = Array.isArray(t.timeline) ? t.timeline : [];
      noTimeline.hidden = steps.length > 0;
      const t0 = steps.length ? steps[0].at : 0;
      timeline.replaceChildren(...steps.map((step) => {
        const ev = String(step.event || '');
        return h('li', { 'data-step': ev, class: `st-${ev.replace(/[^a-z0-9_-]/gi, '')}` },
          h('div', { class: 'tl-head' },
            h('span', { class: 'tl-event' }, ev),
            h('span', { class: 'tl-time' }, timeEl(step.at)),
            isNum(step.at) && step.at !== t0 ? h('span', { class: 'tl-delta' }, `+${fmtDuration(step.at - t0)}`) : null),
          h('div', { class: 'tl-meta' },
            `attempt ${count(step.attempt)}`,
            step.worker_id ? [' · worker ', h('code', null, step.worker_id)] : null),
          step.message ? h('div', { class: 'tl-msg' }, String(step.message)) : null);
      }));
    }

    body.append(
      h('div', { class: 'grid two detail-grid' },
        h('div', { class: 'card' }, h('h2', null, 'Details'), details),
        h('div', { class: 'card' }, outcome)),
      h('div', { class: 'card section' }, h('h2', null, 'Timeline'), timeline, noTimeline));
    rootEl.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', h('code', null, shortId(id))),
      h('div', { class: 'page-head' },
        h('div', null,
          h('h1', { class: 'task-title' }, nameEl, statusSlot),
          h('p', null, h('code', null, id))),
        actions),
      v.errorBox,
      missing,
      body);

    const soon = throttle(() => v.refreshNow(), 250);
    v.onEvent = (ev) => {
      if (ev.task_id === id) soon();
    };
    return v;
  }

  /* ----------------------------------------------------------- plugins view */

  function versionText(version, build) {
    if (!version && !build) return '—';
    return build ? `${version || '?'} (${build})` : version;
  }

  function pluginsView() {
    const tbody = h('tbody');
    const empty = h('div', { class: 'empty', hidden: true }, 'No plugins are loaded on a connected subworker.');
    const history = h('ul', { id: 'plugin-history', class: 'history' });
    const noHistory = h('p', { class: 'empty', hidden: true }, 'No reloads, retirements or rejections yet.');
    const subtitle = h('span', null, 'Task modules loaded on each subworker, and their reloads');
    let historySig = null;
    const rootEl = h('section', { 'data-view-root': 'plugins' });
    const v = makeView('plugins', rootEl, async () => {
      const data = await api('/api/plugins');
      if (!v.alive || !data) return;
      const plugins = Array.isArray(data.plugins) ? data.plugins : [];
      const workers = new Set(plugins.map((p) => p.worker_id));
      subtitle.textContent = `${plugins.length} plugin${plugins.length === 1 ? '' : 's'} on ${workers.size} subworker${workers.size === 1 ? '' : 's'}`;
      empty.hidden = plugins.length > 0;
      syncRows(tbody, plugins, (p) => `${p.worker_id}\u0000${p.name}\u0000${p.path}`, (tr, p) => {
        tr.dataset.plugin = p.name;
        tr.dataset.workerId = p.worker_id;
        const tasks = Array.isArray(p.tasks) ? p.tasks : [];
        setCells(tr, [
          C('name', p.name, () => h('b', null, p.name)),
          C('version', p.version || ''),
          C('build', p.build || '', () => (p.build ? h('code', null, p.build) : h('span', { class: 'faint' }, '—'))),
          C('worker', p.worker_id, () => h('code', null, p.worker_id)),
          C('tasks', tasks.join(', ') || '—'),
          C('path', p.path || '', () => h('code', { class: 'faint' }, p.path || '')),
        ]);
      });
      const hist = Array.isArray(data.history) ? data.history.slice().reverse() : [];
      const sig = jsonText(hist);
      if (sig !== historySig) {
        historySig = sig;
        noHistory.hidden = hist.length > 0;
        history.replaceChildren(...hist.map(historyItem));
      }
    });
    rootEl.append(
      pageHead('Plugins', subtitle),
      v.errorBox,
      table(['Plugin', 'Version', 'Build', 'Worker', 'Tasks', 'File'], tbody),
      empty,
      h('div', { class: 'section' },
        h('div', { class: 'section-head' }, h('h2', null, 'History'), h('span', { class: 'muted' }, 'newest first')),
        h('div', { class: 'table-wrap' }, history, noHistory)));
    v.onEvent = (ev) => {
      const t = String(ev.type || '');
      if (t.startsWith('plugin.') || t.startsWith('worker.')) v.refreshSoon();
    };
    return v;
  }

  function historyItem(e) {
    const kind = String(e.kind || '');
    const file = e.path ? String(e.path).split(/[\\/]/).pop() : '';
    const what = e.plugin || file || 'plugin';
    const oldV = versionText(e.old_version, e.old_build);
    const newV = versionText(e.new_version, e.new_build);
    return h('li', { 'data-kind': kind },
      h('span', { class: 'h-time', title: isNum(e.at) ? fullTime(e.at) : null }, fmtTime(e.at)),
      h('span', null, badge(kind)),
      h('div', { class: 'h-body' },
        h('div', { class: 'h-line' },
          h('b', { class: 'h-plugin' }, what),
          h('span', { class: 'muted' }, 'on'),
          h('code', { class: 'h-worker' }, e.worker_id || '—'),
          h('span', { class: 'h-versions' },
            h('span', { class: 'old' }, oldV), h('span', { class: 'arrow' }, '→'), h('span', { class: 'new' }, newV))),
        e.message ? h('div', { class: 'h-msg' }, String(e.message)) : null,
        e.path ? h('div', { class: 'h-path' }, String(e.path)) : null));
  }

  /* ------------------------------------------------------ dead letters view */

  function deadLettersView() {
    const tbody = h('tbody');
    const empty = h('div', { class: 'empty', hidden: true }, 'No dead letters. Tasks that fail for good are kept here for replay.');
    const subtitle = h('span', null, 'Tasks that failed for good, kept so they can run again');
    const rootEl = h('section', { 'data-view-root': 'dead-letters' });
    const v = makeView('dead-letters', rootEl, async () => {
      const list = await api('/api/dead-letters');
      if (!v.alive) return;
      const items = Array.isArray(list) ? list : [];
      subtitle.textContent = `${items.length} task${items.length === 1 ? '' : 's'} that failed for good, kept so they can run again`;
      empty.hidden = items.length > 0;
      syncRows(tbody, items, (t) => t.task_id, (tr, t) => {
        tr.dataset.taskId = t.task_id;
        setCells(tr, [
          C('id', t.task_id, () => h('a', { href: `#/tasks/${enc(t.task_id)}`, title: t.task_id }, shortId(t.task_id))),
          C('name', t.task_name || ''),
          C('result', `${jsonText(t.error)}|${jsonText(t.result)}`, () => resultCell(t)),
          C('worker', t.worker_id || '', () => (t.worker_id ? h('code', null, t.worker_id) : h('span', { class: 'faint' }, '—'))),
          C('attempts num', count(t.attempts)),
          C('submitted nowrap', fmtTime(t.submitted_at), () => timeEl(t.submitted_at)),
          C('completed nowrap', fmtTime(t.completed_at), () => timeEl(t.completed_at)),
          C('actions', 'replay', () => h('button', {
            type: 'button', class: 'btn btn-sm btn-accent', 'data-action': 'replay', title: 'Submit this task again',
            onclick: (e) => doAction(e.currentTarget, 'replay', t.task_id, () => v.refreshNow()),
          }, 'Replay')),
        ]);
      });
    });
    rootEl.append(
      pageHead('Dead letters', subtitle),
      v.errorBox,
      table(['Id', 'Name', 'Error', 'Worker', ['Attempts', 'num'], 'Submitted', 'Failed', ''], tbody),
      empty);
    v.onEvent = (ev) => {
      const t = String(ev.type || '');
      if (t === 'task.failure' || t === 'task.queued') v.refreshSoon();
    };
    return v;
  }

  function notFoundView(route) {
    const rootEl = h('section', { 'data-view-root': 'notfound' },
      pageHead('Nothing here', null),
      h('div', { class: 'card empty' },
        h('p', null, 'There is no page at ', h('code', null, `#${route.path}`), '.'),
        h('a', { href: '#/' }, '← Overview')));
    return makeView('notfound', rootEl, async () => {});
  }

  const VIEWS = {
    overview: overviewView,
    workers: workersView,
    queues: queuesView,
    tasks: tasksView,
    task: taskView,
    plugins: pluginsView,
    'dead-letters': deadLettersView,
    notfound: notFoundView,
  };

  /* ----------------------------------------------------------------- router */

  function parseHash() {
    let raw = location.hash.replace(/^#/, '');
    if (!raw.startsWith('/')) raw = `/${raw}`;
    const q = raw.indexOf('?');
    const path = q >= 0 ? raw.slice(0, q) : raw;
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : '');
    const parts = path.split('/').filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p;
      }
    });
    if (parts.length === 0 || (parts.length === 1 && parts[0] === 'overview')) return { name: 'overview', path, params };
    if (parts[0] === 'tasks' && parts.length > 1) return { name: 'task', id: parts.slice(1).join('/'), path, params };
    if (parts.length === 1 && VIEWS[parts[0]] && parts[0] !== 'task' && parts[0] !== 'notfound') return { name: parts[0], path, params };
    return { name: 'notfound', path, params };
  }

  function route() {
    const r = parseHash();
    const cur = state.view;
    if (cur && cur.alive && cur.name === r.name && r.name !== 'notfound') {
      if (r.name === 'task' ? cur.id === r.id : true) {
        if (cur.update) cur.update(r);
        else cur.refreshNow();
        return;
      }
    }
    if (cur) cur.alive = false;
    const v = VIEWS[r.name](r);
    state.view = v;
    const main = $('#view');
    main.replaceChildren(v.root);
    window.scrollTo(0, 0);
    const nav = r.name === 'task' ? 'tasks' : r.name;
    for (const a of document.querySelectorAll('nav a[data-view]')) {
      const on = a.dataset.view === nav;
      a.classList.toggle('active', on);
      if (on) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `fastworker · ${TITLES[r.name] || ''}`;
    v.refreshNow();
  }

  function refreshAll() {
    if (state.authNeeded) return;
    loadStatus();
    const v = state.view;
    if (v && v.alive) v.refreshNow();
  }

  /* ----------------------------------------------------------- event stream */

  const stream = { ctrl: null, lastId: null, failures: 0, timer: null, connectedAt: 0 };

  function stopStream() {
    clearTimeout(stream.timer);
    stream.timer = null;
    if (stream.ctrl) {
      const c = stream.ctrl;
      stream.ctrl = null;
      c.abort();
    }
  }

  function restartStream() {
    stopStream();
    stream.failures = 0;
    connectStream();
  }

  function streamFailed(ctrl) {
    if (stream.ctrl !== ctrl) return; // replaced or stopped on purpose
    stream.ctrl = null;
    setLive('polling');
    if (state.authNeeded) return;
    if (stream.connectedAt && Date.now() - stream.connectedAt > 10000) stream.failures = 0;
    stream.connectedAt = 0;
    const delay = BACKOFF_MS[Math.min(stream.failures, BACKOFF_MS.length - 1)];
    stream.failures += 1;
    clearTimeout(stream.timer);
    stream.timer = setTimeout(connectStream, delay);
    refreshAll();
  }

  async function connectStream() {
    clearTimeout(stream.timer);
    stream.timer = null;
    if (state.authNeeded || stream.ctrl) return;
    const ctrl = new AbortController();
    stream.ctrl = ctrl;
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (stream.lastId !== null) headers['Last-Event-ID'] = stream.lastId;
    let res;
    try {
      res = await fetch('/api/events', { headers, cache: 'no-store', signal: ctrl.signal });
    } catch (_) {
      streamFailed(ctrl);
      return;
    }
    if (stream.ctrl !== ctrl) return;
    if (res.status === 401) {
      stream.ctrl = null;
      needAuth(null, true);
      return;
    }
    if (!res.ok || !res.body) {
      try {
        await res.text();
      } catch (_) {
        /* the body does not matter */
      }
      streamFailed(ctrl);
      return;
    }
    stream.connectedAt = Date.now();
    setLive('sse');
    // Anything that happened before the stream opened.
    refreshAll();

    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let data = [];
    let type = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (stream.ctrl !== ctrl) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (data.length) dispatch(type || 'message', data.join('\n'));
            data = [];
            type = '';
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon >= 0 ? line.slice(0, colon) : line;
          let val = colon >= 0 ? line.slice(colon + 1) : '';
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') data.push(val);
          else if (field === 'event') type = val;
          else if (field === 'id' && !val.includes('\u0000')) stream.lastId = val;
        }
      }
    } catch (_) {
      /* the connection dropped */
    }
    try {
      reader.cancel().catch(() => {});
    } catch (_) {
      /* already closed */
    }
    streamFailed(ctrl);
  }

  function dispatch(type, text) {
    if (type === 'lagged') {
      refreshAll();
      return;
    }
    let ev;
    try {
      ev = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!ev || typeof ev !== 'object') return;
    if (!ev.type) ev.type = type;
    handleEvent(ev);
  }

  function handleEvent(ev) {
    const type = String(ev.type);
    state.activity.unshift(ev);
    if (state.activity.length > 50) state.activity.length = 50;
    if (ev.task_name) state.knownNames.add(ev.task_name);
    if (type.startsWith('task.') || type.startsWith('worker.')) refreshStatus();
    const v = state.view;
    if (v && v.alive && v.onEvent) {
      try {
        v.onEvent(ev);
      } catch (_) {
        v.refreshSoon();
      }
    }
  }

  /* ------------------------------------------------------------------- init */

  function init() {
    applyTheme();
    setLive('polling');
    $('#live-indicator .live-label').textContent = 'connecting';
    $('#theme-toggle').addEventListener('click', toggleTheme);
    $('#token-button').addEventListener('click', () => showTokenForm());
    $('#token-form').addEventListener('submit', submitToken);
    $('#token-cancel').addEventListener('click', hideTokenForm);
    $('#token-dialog').addEventListener('click', (e) => {
      if (e.target === e.currentTarget) hideTokenForm();
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') hideTokenForm();
    });
    window.addEventListener('hashchange', route);
    window.addEventListener('resize', throttle(() => {
      const v = state.view;
      if (v && v.alive && v.redraw) v.redraw();
    }, 150));
    window.addEventListener('online', () => {
      if (!stream.ctrl && !state.authNeeded) restartStream();
    });
    window.addEventListener('pagehide', stopStream);

    route();
    loadStatus();
    connectStream();

    // Polling while the stream is down.
    setInterval(() => {
      if (state.authNeeded || state.live !== 'polling') return;
      refreshAll();
    }, 2000);
    // Charts, ages and anything an event would not say, every 5 s.
    setInterval(() => {
      if (state.authNeeded || state.live !== 'sse') return;
      refreshAll();
    }, 5000);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
