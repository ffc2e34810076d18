// @ts-check
// The batch-runner dashboard: a small single-page app over the public API, no dependencies and
// no build step (see docs/ARCHITECTURE.md, "The dashboard"). Every call carries the API key the
// user signed in with (kept in sessionStorage only), so the page shows what that key can see.
// Pages refresh in place: elements are created once and their text updated, so nothing flickers.

const REFRESH_MS = 2000;
const KEY = 'batch-runner-key';
const ENDED = ['completed', 'failed', 'expired', 'cancelled', 'interrupted'];

/** `keyless`: the service has no API keys (it serves loopback only), so there is no sign-in.
 * @type {{mode: string, keyless?: boolean, batch?: string, title?: string}} */
let config = { mode: 'service' };
/** @type {number | undefined} */
let timer;

// ---- small helpers -------------------------------------------------------------------------

/**
 * Creates an element: h('td', {class: 'num'}, 'text', child…).
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

/** @param {string} text @param {boolean} [error] */
function toast(text, error = false) {
  const box = document.getElementById('toast');
  if (!box) return;
  const item = h('div', { class: error ? 'error' : '' }, text);
  box.append(item);
  setTimeout(() => item.remove(), error ? 8000 : 4000);
}

/** @param {number | null | undefined} unix */
function fmtTime(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : '—';
}

/** @param {number | null | undefined} s */
function fmtDuration(s) {
  if (s === null || s === undefined) return '—';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** @param {number} n */
function fmtBytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/** @param {number} n */
const fmtNum = (n) => (n ?? 0).toLocaleString();

/** Sets text only when it changed (no needless layout). @param {Element | null} el @param {string} text */
function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

/** @param {string} title @param {string} text @param {string} yes */
function confirmDialog(title, text, yes) {
  const dialog = /** @type {HTMLDialogElement} */ (document.getElementById('confirm'));
  setText(document.getElementById('confirm-title'), title);
  setText(document.getElementById('confirm-text'), text);
  setText(document.getElementById('confirm-yes'), yes);
  dialog.returnValue = '';
  dialog.showModal();
  document.getElementById('confirm-no')?.focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'yes'), { once: true });
  });
}

// ---- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  /** @param {number} status @param {string} message */
  constructor(status, message) { super(message); this.status = status; }
}

/** @param {Record<string, string>} [extra] */
function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

/**
 * @param {string} method @param {string} path @param {any} [body]
 * @param {boolean} [signingIn] a 401 is the answer wanted, not a reason to sign out
 * @returns {Promise<any>}
 */
async function api(method, path, body, signingIn = false) {
  const init = { method, headers: headers(body ? { 'Content-Type': 'application/json' } : {}) };
  if (body) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  const text = await r.text();
  /** @type {any} */
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    if (r.status === 401 && config.mode === 'service' && !signingIn) signOut();
    throw new ApiError(r.status, json?.error?.message ?? `${r.status} ${r.statusText}`);
  }
  return json;
}

/** Downloads a file's content with the key (a plain link cannot send it). @param {string} id */
async function download(id) {
  try {
    const meta = await api('GET', `/v1/files/${id}`);
    const r = await fetch(`/v1/files/${id}/content`, { headers: headers() });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const url = URL.createObjectURL(await r.blob());
    const a = h('a', { href: url, download: meta.filename || id });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    toast(`Download failed: ${e instanceof Error ? e.message : e}`, true);
  }
}

// ---- shared pieces -----------------------------------------------------------------------------

/** A progress bar of completed, failed and remaining requests, updated in place. */
function progressBar() {
  const done = h('span', { class: 'done' });
  const bad = h('span', { class: 'bad' });
  const skipped = h('span', { class: 'skipped' });
  const bar = h('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 }, done, bad, skipped);
  const label = h('div', { class: 'bar-label' });
  const el = h('div', {}, bar, label);
  /** @param {any} b */
  const update = (b) => {
    const c = b.request_counts ?? { total: 0, completed: 0, failed: 0 };
    const notRun = b.x_batch_runner?.not_run ?? 0;
    const total = c.total || 0;
    const finished = c.completed + c.failed + notRun;
    const pct = total ? Math.floor((100 * finished) / total) : ENDED.includes(b.status) ? 100 : 0;
    const width = (/** @type {number} */ n) => (total ? `${(100 * n) / total}%` : '0');
    done.style.width = width(c.completed);
    bad.style.width = width(c.failed);
    skipped.style.width = width(notRun);
    bar.setAttribute('aria-valuenow', String(pct));
    bar.setAttribute('aria-label', `${pct}% done`);
    const parts = [`${pct}%`, `${fmtNum(c.completed)} ok`, `${fmtNum(c.failed)} failed`];
    if (notRun) parts.push(`${fmtNum(notRun)} not run`);
    parts.push(`${fmtNum(Math.max(0, total - finished))} left`);
    setText(label, parts.join(' · '));
    el.dataset.percent = String(pct);
  };
  return { el, update };
}

/** @param {any} b */
function etaText(b) {
  const x = b.x_batch_runner ?? {};
  if (ENDED.includes(b.status)) return '—';
  if (x.estimated_finish_at) return `${fmtDuration(x.estimated_finish_at - Date.now() / 1000)}`;
  return x.eta_seconds !== undefined && x.eta_seconds !== null ? fmtDuration(x.eta_seconds) : '—';
}

/** @param {string} status */
function badge(status) {
  return h('span', { class: `badge ${status}` }, status);
}

// ---- sign in -----------------------------------------------------------------------------------

/** Shows `hash`'s page, also when it is the current one. @param {string} hash */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signOut() {
  sessionStorage.removeItem(KEY);
  go('#/signin');
}

/** @param {HTMLElement} main */
function signInPage(main) {
  const input = /** @type {HTMLInputElement} */ (h('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true }));
  const error = h('p', { class: 'error-text', role: 'alert' });
  const form = h('form', {
    onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await api('GET', '/v1/batches?limit=1', undefined, true);
        go('#/batches');
      } catch (err) {
        sessionStorage.removeItem(KEY);
        setText(error, err instanceof ApiError && err.status === 401 ? 'That key is not accepted.' : `Cannot reach the service: ${err}`);
      }
    },
  },
  h('label', { for: 'api-key' }, 'API key', input),
  h('p', { class: 'muted' }, 'The key stays in this browser tab only; every call goes through the API with it.'),
  error,
  h('button', { type: 'submit', id: 'sign-in' }, 'Sign in'));
  main.append(h('section', { class: 'panel signin' }, h('h1', {}, 'Sign in'), form));
  input.focus();
}

// ---- batches -------------------------------------------------------------------------------------

/** @param {HTMLElement} main */
async function batchesPage(main) {
  const status = /** @type {HTMLSelectElement} */ (h('select', { id: 'status-filter' },
    h('option', { value: '' }, 'All'),
    ...['validating', 'in_progress', 'finalizing', 'completed', 'failed', 'expired', 'cancelling', 'cancelled']
      .map((s) => h('option', { value: s }, s))));
  const body = h('tbody');
  const empty = h('p', { class: 'muted' }, 'No batches yet.');
  const table = h('div', { class: 'table-wrap' }, h('table', { id: 'batches' },
    h('caption', { class: 'skip' }, 'Batches, newest first'),
    h('thead', {}, h('tr', {},
      h('th', {}, 'Batch'), h('th', {}, 'Status'), h('th', { class: 'hide-narrow' }, 'Model'),
      h('th', {}, 'Progress'), h('th', { class: 'num hide-narrow' }, 'Req/s'), h('th', { class: 'hide-narrow' }, 'ETA'),
      h('th', { class: 'hide-narrow' }, 'Window ends'), h('th', { class: 'hide-narrow' }, 'Metadata'))),
    body));
  main.append(h('h1', {}, 'Batches'), createForm(), h('section', { class: 'panel' },
    h('div', { class: 'row' }, h('label', { for: 'status-filter' }, 'Status', status)), table, empty));

  /** @type {Map<string, {tr: HTMLElement, update: (b: any) => void}>} */
  const rows = new Map();
  // A refresh started later wins (a filter change races the periodic refresh).
  let latest = 0;
  const refresh = async () => {
    const mine = ++latest;
    const q = status.value ? `&status=${status.value}` : '';
    const list = await api('GET', `/v1/batches?limit=100${q}`);
    if (mine !== latest) return;
    const seen = new Set();
    let before = null;
    for (const b of list.data) {
      seen.add(b.id);
      let row = rows.get(b.id);
      if (!row) { row = batchRow(b); rows.set(b.id, row); }
      row.update(b);
      // Newest first, in the order the API lists them.
      const want = before ? before.nextSibling : body.firstChild;
      if (want !== row.tr) body.insertBefore(row.tr, want);
      before = row.tr;
    }
    for (const [id, row] of rows) if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    empty.hidden = rows.size > 0;
  };
  status.addEventListener('change', () => refresh().catch(report));
  await refresh();
  return refresh;
}

/** @param {any} b */
function batchRow(b) {
  const bar = progressBar();
  const cells = {
    status: h('td'), model: h('td', { class: 'hide-narrow mono' }), rate: h('td', { class: 'num hide-narrow' }),
    eta: h('td', { class: 'hide-narrow' }), window: h('td', { class: 'hide-narrow' }), meta: h('td', { class: 'hide-narrow muted' }),
  };
  const tr = h('tr', { 'data-id': b.id },
    h('td', {}, h('a', { href: `#/batches/${b.id}`, class: 'mono' }, b.id)),
    cells.status, cells.model, h('td', {}, bar.el), cells.rate, cells.eta, cells.window, cells.meta);
  /** @param {any} b */
  const update = (b) => {
    const x = b.x_batch_runner ?? {};
    const risk = x.at_risk ? ' at risk' : '';
    if (cells.status.dataset.v !== b.status + risk) {
      cells.status.replaceChildren(badge(b.status), x.at_risk ? h('span', { class: 'badge risk', title: 'Estimated to end after its window' }, 'at risk') : '');
      cells.status.dataset.v = b.status + risk;
    }
    setText(cells.model, b.model ?? '—');
    bar.update(b);
    setText(cells.rate, ENDED.includes(b.status) ? '—' : String(x.requests_per_second ?? 0));
    setText(cells.eta, etaText(b));
    setText(cells.window, fmtTime(b.expires_at));
    setText(cells.meta, Object.entries(b.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(', '));
  };
  return { tr, update };
}

/** The form that creates a batch from an uploaded file. */
function createForm() {
  const file = /** @type {HTMLSelectElement} */ (h('select', { id: 'new-file', required: true }));
  const endpoint = /** @type {HTMLSelectElement} */ (h('select', { id: 'new-endpoint' },
    ...['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses'].map((e) => h('option', { value: e }, e))));
  const windowInput = /** @type {HTMLInputElement} */ (h('input', { id: 'new-window', value: '24h', size: 6, required: true }));
  const form = h('form', {
    class: 'row',
    onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      try {
        const b = await api('POST', '/v1/batches', { input_file_id: file.value, endpoint: endpoint.value, completion_window: windowInput.value });
        toast(`Created ${b.id}`);
        location.hash = `#/batches/${b.id}`;
      } catch (err) { report(err); }
    },
  },
  h('label', { for: 'new-file' }, 'Input file', file),
  h('label', { for: 'new-endpoint' }, 'Endpoint', endpoint),
  h('label', { for: 'new-window' }, 'Completion window', windowInput),
  h('button', { type: 'submit', id: 'create-batch' }, 'Create batch'));
  api('GET', '/v1/files?purpose=batch&limit=100').then((list) => {
    file.replaceChildren(...list.data.map((/** @type {any} */ f) => h('option', { value: f.id }, `${f.filename} (${f.id})`)));
    if (!list.data.length) file.append(h('option', { value: '' }, 'Upload a file first'));
  }).catch(report);
  return h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'New batch'), form);
}

// ---- one batch -----------------------------------------------------------------------------------

/** @param {HTMLElement} main @param {string} id */
async function batchPage(main, id) {
  const bar = progressBar();
  const title = h('h1', { class: 'mono' }, config.mode === 'service' ? id : config.title ?? id);
  const status = h('span');
  const stats = h('div', { class: 'stats' });
  const times = h('tbody');
  const chart = h('div', { class: 'chart', role: 'img', 'aria-label': 'Results per second over time' });
  const files = h('div', { class: 'row' });
  const cancel = h('button', { type: 'button', class: 'danger', id: 'cancel-batch', hidden: true, onclick: () => cancelBatch(id) }, 'Cancel batch');
  const errorsBody = h('tbody');
  const errorsNone = h('p', { class: 'muted' }, 'No failed requests.');
  const modelsBody = h('tbody');
  const modelsPanel = h('section', { class: 'panel', hidden: true }, h('h2', { class: 'flush' }, 'By model'),
    h('div', { class: 'table-wrap' }, h('table', { id: 'models' }, h('thead', {}, h('tr', {}, h('th', {}, 'Model'),
      ...['Requests', 'Succeeded', 'Failed', 'Expired or cancelled'].map((t) => h('th', { class: 'num' }, t)))), modelsBody)));
  const results = resultsBrowser(id);
  main.append(
    h('p', {}, config.mode === 'service' ? h('a', { href: '#/batches' }, '← Batches') : ''),
    title,
    h('section', { class: 'panel' }, h('div', { class: 'row spread' }, status, cancel), h('div', { class: 'spaced' }, bar.el), stats),
    h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'Throughput'), chart),
    modelsPanel,
    h('div', { class: 'side' },
      h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'Lifecycle'), h('table', {}, times)),
      h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'Files'), files)),
    h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'Errors by code'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'errors' }, h('thead', {}, h('tr', {}, h('th', {}, 'Code'), h('th', { class: 'num' }, 'Count'), h('th', {}, 'Sample'))), errorsBody)), errorsNone),
    results.el);

  /** @type {Record<string, HTMLElement>} */
  const statEls = {};
  const stat = (/** @type {string} */ key, /** @type {string} */ label) => {
    if (!statEls[key]) { statEls[key] = h('b'); stats.append(h('div', { class: 'stat' }, statEls[key], h('span', {}, label))); }
    return statEls[key];
  };
  let filesShown = '';
  let lastDone = -1;
  const refresh = async () => {
    const b = await api('GET', `/v1/batches/${id}`);
    const x = b.x_batch_runner ?? {};
    const c = b.request_counts ?? {};
    if (status.dataset.v !== b.status) { status.replaceChildren(badge(b.status)); status.dataset.v = b.status; }
    status.id = 'batch-status';
    bar.update(b);
    setText(stat('total', 'requests'), fmtNum(c.total));
    setText(stat('completed', 'succeeded'), fmtNum(c.completed));
    setText(stat('failed', 'failed'), fmtNum(c.failed));
    setText(stat('not_run', 'expired or cancelled'), fmtNum(x.not_run ?? 0));
    setText(stat('in_flight', 'in flight'), fmtNum(x.in_flight ?? 0));
    setText(stat('retried', 'retries'), fmtNum(x.retried ?? 0));
    setText(stat('rate', 'requests/s'), ENDED.includes(b.status) ? '—' : String(x.requests_per_second ?? 0));
    setText(stat('eta', x.at_risk ? 'ETA (at risk)' : 'ETA'), etaText(b));
    setText(stat('tokens', 'output tokens'), fmtNum(b.usage?.output_tokens ?? 0));
    setText(stat('model', 'model'), b.model ?? '—');
    const lifecycle = [['created_at', 'Created'], ['in_progress_at', 'Started'], ['finalizing_at', 'Finalizing'],
      ['completed_at', 'Completed'], ['failed_at', 'Failed'], ['expired_at', 'Expired'], ['cancelling_at', 'Cancelling'],
      ['cancelled_at', 'Cancelled'], ['expires_at', 'Window ends']];
    times.replaceChildren(...lifecycle.filter(([k]) => b[k]).map(([k, label]) => h('tr', {}, h('th', {}, label), h('td', {}, fmtTime(b[k])))));
    const fileIds = [['input_file_id', 'Input'], ['output_file_id', 'Output'], ['error_file_id', 'Errors']].filter(([k]) => b[k]);
    const key = fileIds.map(([k]) => b[k]).join();
    if (key !== filesShown && config.mode === 'service') {
      files.replaceChildren(...fileIds.map(([k, label]) => h('button', { type: 'button', class: 'secondary', id: `download-${k.split('_')[0]}`, onclick: () => download(b[k]) }, `Download ${label.toLowerCase()}`)));
      filesShown = key;
    } else if (config.mode !== 'service') {
      setText(files, 'Written by the job to its output and error files.');
    }
    cancel.hidden = config.mode !== 'service' || ENDED.includes(b.status) || b.status === 'cancelling';
    const history = x.history ?? [];
    // A batch shorter than one report has a single point: it started from nothing.
    if (history.length === 1 && b.in_progress_at && b.in_progress_at < history[0][0]) history.unshift([b.in_progress_at, 0]);
    drawChart(chart, history);
    // A batch of several models: each one's counts.
    const models = x.models ?? [];
    modelsPanel.hidden = models.length === 0;
    modelsBody.replaceChildren(...models.map((/** @type {any} */ m) => h('tr', {}, h('td', { class: 'mono' }, m.model),
      ...[m.total, m.succeeded, m.failed, m.expired + m.cancelled].map((n) => h('td', { class: 'num' }, fmtNum(n))))));
    const done = (c.completed ?? 0) + (c.failed ?? 0);
    if (done !== lastDone) {
      lastDone = done;
      const errs = await api('GET', `/v1/batches/${id}/errors`);
      errorsBody.replaceChildren(...errs.data.map((/** @type {any} */ e) => h('tr', {},
        h('td', { class: 'mono' }, e.code), h('td', { class: 'num' }, fmtNum(e.count)),
        h('td', {}, e.sample, e.sample_custom_id ? h('div', {}, h('button', { type: 'button', class: 'link', onclick: () => results.open(e.sample_custom_id) }, `open ${e.sample_custom_id}`)) : ''))));
      errorsNone.hidden = errs.data.length > 0;
      await results.refresh();
    }
  };
  await refresh();
  return refresh;
}

/** @param {string} id */
async function cancelBatch(id) {
  const yes = await confirmDialog('Cancel this batch?', 'Nothing new is sent; requests in flight may finish, and every request left is recorded as cancelled. This cannot be undone.', 'Cancel batch');
  if (!yes) return;
  try {
    await api('POST', `/v1/batches/${id}/cancel`);
    toast('Cancelling…');
  } catch (err) { report(err); }
}

/**
 * Results per second between consecutive points of `history` ([unix seconds, results]), as an
 * SVG line. @param {HTMLElement} el @param {number[][]} history
 */
function drawChart(el, history) {
  const key = history.length ? `${history.length}:${history[history.length - 1].join()}` : '';
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  if (history.length < 2) { el.replaceChildren(h('p', { class: 'muted' }, 'Not enough data yet.')); return; }
  const points = [];
  for (let i = 1; i < history.length; i++) {
    const dt = history[i][0] - history[i - 1][0];
    if (dt > 0) points.push([history[i][0], Math.max(0, history[i][1] - history[i - 1][1]) / dt]);
  }
  if (!points.length) { el.replaceChildren(h('p', { class: 'muted' }, 'Not enough data yet.')); return; }
  // One interval is a flat line over it.
  if (points.length === 1) points.unshift([history[0][0], points[0][1]]);
  const W = 600, H = 160, L = 44, B = 20;
  const t0 = history[0][0], t1 = history[history.length - 1][0];
  const max = Math.max(...points.map((p) => p[1]), 0.1);
  const x = (/** @type {number} */ t) => L + ((W - L - 8) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (/** @type {number} */ v) => 8 + (H - B - 8) * (1 - v / max);
  const line = points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  const add = (/** @type {string} */ tag, /** @type {Record<string, string>} */ attrs, text = '') => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text) e.textContent = text;
    svg.append(e);
  };
  add('line', { class: 'grid', x1: String(L), x2: String(W), y1: String(y(max)), y2: String(y(max)) });
  add('line', { class: 'grid', x1: String(L), x2: String(W), y1: String(y(0)), y2: String(y(0)) });
  add('polygon', { class: 'area', points: `${x(points[0][0])},${y(0)} ${line} ${x(points[points.length - 1][0])},${y(0)}` });
  add('polyline', { class: 'line', points: line });
  add('text', { x: '2', y: String(y(max) + 4) }, `${max.toFixed(max < 10 ? 1 : 0)}/s`);
  add('text', { x: '2', y: String(y(0)) }, '0');
  add('text', { x: String(L), y: String(H - 4) }, new Date(t0 * 1000).toLocaleTimeString());
  add('text', { x: String(W - 70), y: String(H - 4) }, `+${fmtDuration(t1 - t0)}`);
  el.replaceChildren(svg);
  el.setAttribute('aria-label', `Results per second over ${fmtDuration(t1 - t0)}; peak ${max.toFixed(1)} per second`);
}

/** The results browser of a batch: filter, search, pages, one request side by side. @param {string} id */
function resultsBrowser(id) {
  const status = /** @type {HTMLSelectElement} */ (h('select', { id: 'results-status' },
    h('option', { value: '' }, 'All'), ...['succeeded', 'failed', 'expired', 'cancelled'].map((s) => h('option', { value: s }, s))));
  const search = /** @type {HTMLInputElement} */ (h('input', { id: 'results-search', type: 'search', placeholder: 'custom_id' }));
  const body = h('tbody');
  const more = /** @type {HTMLButtonElement} */ (h('button', { type: 'button', class: 'secondary', id: 'results-next' }, 'Next page'));
  const first = /** @type {HTMLButtonElement} */ (h('button', { type: 'button', class: 'secondary', id: 'results-first' }, 'First page'));
  const info = h('span', { class: 'muted' });
  const detail = h('div', { id: 'result-detail' });
  /** @type {number[]} */
  const cursors = [0];
  // A load started later wins: an older answer arriving last must not show the old filter.
  let latest = 0;
  const load = async () => {
    const mine = ++latest;
    const after = cursors[cursors.length - 1];
    const q = new URLSearchParams({ limit: '20', after: String(after) });
    if (status.value) q.set('status', status.value);
    if (search.value.trim()) q.set('custom_id', search.value.trim());
    const page = await api('GET', `/v1/batches/${id}/results?${q}`);
    if (mine !== latest) return;
    body.replaceChildren(...page.data.map((/** @type {any} */ r) => h('tr', { class: 'clickable' },
      h('td', { class: 'num' }, String(r.line)),
      h('td', {}, h('button', { type: 'button', class: 'link mono result-open', onclick: () => open(r.custom_id) }, r.custom_id ?? '(none)')),
      h('td', {}, badge(r.status)),
      h('td', { class: 'muted hide-narrow' }, summary(r.result)))));
    if (!page.data.length) body.append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No results here yet.')));
    more.disabled = !page.has_more;
    first.disabled = cursors.length === 1;
    setText(info, page.data.length ? `lines ${page.first_line}–${page.last_line}` : '');
    more.onclick = () => { cursors.push(page.last_line); load().catch(report); };
  };
  first.onclick = () => { cursors.length = 1; load().catch(report); };
  const restart = () => { cursors.length = 1; load().catch(report); };
  status.addEventListener('change', restart);
  const form = h('form', { class: 'row', role: 'search', onsubmit: (/** @type {Event} */ e) => { e.preventDefault(); restart(); } },
    h('label', { for: 'results-status' }, 'Status', status),
    h('label', { for: 'results-search' }, 'Find a request', search),
    h('button', { type: 'submit', id: 'results-find' }, 'Find'));
  /** @param {string} customId */
  const open = async (customId) => {
    try {
      const d = await api('GET', `/v1/batches/${id}/results/${encodeURIComponent(customId)}`);
      const t = d.timing;
      detail.replaceChildren(
        h('h3', {}, `Request ${d.custom_id} (line ${d.line}) `, badge(d.status)),
        h('p', { class: 'muted' }, t ? `${t.attempts} attempt${t.attempts === 1 ? '' : 's'} · sent ${new Date(t.started_at_ms).toLocaleString()} · ${t.latency_ms} ms` : 'No timing recorded.'),
        h('div', { class: 'side' },
          h('div', {}, h('h4', {}, 'Input'), h('pre', { id: 'detail-input', tabindex: 0 }, JSON.stringify(d.input, null, 2))),
          h('div', {}, h('h4', {}, 'Result'), h('pre', { id: 'detail-result', tabindex: 0 }, JSON.stringify(d.result, null, 2)))));
      detail.scrollIntoView({ block: 'nearest' });
    } catch (err) { report(err); }
  };
  const el = h('section', { class: 'panel', id: 'results' }, h('h2', { class: 'flush' }, 'Results'), form,
    h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Line'), h('th', {}, 'custom_id'), h('th', {}, 'Status'), h('th', { class: 'hide-narrow' }, 'Summary'))), body)),
    h('div', { class: 'pager' }, first, more, info), detail);
  return { el, refresh: load, open };
}

/** A result line in a few words. @param {any} r */
function summary(r) {
  if (r?.error) return `${r.error.code}: ${r.error.message}`.slice(0, 120);
  const body = r?.response?.body;
  if (r?.response && r.response.status_code >= 300) return `HTTP ${r.response.status_code}: ${body?.error?.message ?? ''}`.slice(0, 120);
  const text = body?.choices?.[0]?.message?.content ?? body?.choices?.[0]?.text ?? body?.output_text;
  if (typeof text === 'string') return text.slice(0, 120);
  return body?.usage ? `${body.usage.total_tokens ?? ''} tokens` : '';
}

// ---- files -------------------------------------------------------------------------------------

/** @param {HTMLElement} main */
async function filesPage(main) {
  const input = /** @type {HTMLInputElement} */ (h('input', { type: 'file', id: 'upload-input', accept: '.jsonl,.json,.txt' }));
  const purpose = /** @type {HTMLSelectElement} */ (h('select', { id: 'upload-purpose' }, h('option', { value: 'batch' }, 'batch')));
  const bar = /** @type {HTMLProgressElement} */ (h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' }));
  const drop = h('div', { class: 'drop', id: 'drop-zone', tabindex: 0, role: 'button', 'aria-label': 'Drop a .jsonl file here, or press Enter to choose one' },
    h('p', {}, 'Drop a .jsonl file here, or ', h('label', { for: 'upload-input', class: 'inline' }, 'choose one'), '.'), input);
  const body = h('tbody');
  const empty = h('p', { class: 'muted' }, 'No files.');
  main.append(h('h1', {}, 'Files'),
    h('section', { class: 'panel' }, h('h2', { class: 'flush' }, 'Upload'), h('div', { class: 'row' }, h('label', { for: 'upload-purpose' }, 'Purpose', purpose)), drop, bar),
    h('section', { class: 'panel' }, h('div', { class: 'table-wrap' }, h('table', { id: 'files' },
      h('thead', {}, h('tr', {}, h('th', {}, 'File'), h('th', {}, 'Name'), h('th', { class: 'hide-narrow' }, 'Purpose'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'hide-narrow' }, 'Created'), h('th', {}, ''))), body)), empty));

  const refresh = async () => {
    const list = await api('GET', '/v1/files?limit=100');
    body.replaceChildren(...list.data.map((/** @type {any} */ f) => h('tr', { 'data-id': f.id },
      h('td', { class: 'mono' }, f.id), h('td', {}, f.filename), h('td', { class: 'hide-narrow' }, f.purpose),
      h('td', { class: 'num' }, fmtBytes(f.bytes)), h('td', { class: 'hide-narrow' }, fmtTime(f.created_at)),
      h('td', {}, h('button', { type: 'button', class: 'secondary', onclick: () => download(f.id) }, 'Download'), ' ',
        h('button', { type: 'button', class: 'danger file-delete', 'aria-label': `Delete ${f.filename}`, onclick: () => remove(f) }, 'Delete')))));
    empty.hidden = list.data.length > 0;
  };
  /** @param {any} f */
  const remove = async (f) => {
    if (!(await confirmDialog(`Delete ${f.filename}?`, `The file ${f.id} and its content are deleted.`, 'Delete'))) return;
    try { await api('DELETE', `/v1/files/${f.id}`); toast(`Deleted ${f.filename}`); await refresh(); } catch (err) { report(err); }
  };
  /** @param {File} file */
  const upload = (file) => {
    const form = new FormData();
    form.append('purpose', purpose.value);
    form.append('file', file);
    const xhr = new XMLHttpRequest();
    xhr.open('POST', '/v1/files');
    for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      bar.hidden = true;
      let message = `${xhr.status}`;
      try { message = JSON.parse(xhr.responseText)?.error?.message ?? message; } catch { /* keep the status */ }
      if (xhr.status === 200) { toast(`Uploaded ${file.name}`); refresh().catch(report); } else toast(`Upload failed: ${message}`, true);
    };
    xhr.onerror = () => { bar.hidden = true; toast('Upload failed: the connection broke', true); };
    xhr.send(form);
  };
  input.addEventListener('change', () => { if (input.files?.[0]) upload(input.files[0]); input.value = ''; });
  drop.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); } });
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = e.dataTransfer?.files?.[0];
    if (file) upload(file);
  });
  await refresh();
  return null;
}

// ---- routing -------------------------------------------------------------------------------------

/** @param {unknown} err */
function report(err) {
  if (err instanceof ApiError && err.status === 401) return;
  toast(err instanceof Error ? err.message : String(err), true);
}

async function route() {
  clearInterval(timer);
  const main = /** @type {HTMLElement} */ (document.getElementById('main'));
  main.replaceChildren();
  const signedIn = config.mode !== 'service' || config.keyless || !!sessionStorage.getItem(KEY);
  const [, page, id] = location.hash.split('/');
  const nav = document.getElementById('nav');
  if (nav) nav.hidden = config.mode !== 'service' || !signedIn;
  if (!signedIn || page === 'signin') {
    if (config.mode === 'service') { signInPage(main); return; }
  }
  if (config.mode !== 'service' && !(page === 'batches' && id)) {
    location.hash = `#/batches/${config.batch}`;
    return;
  }
  for (const a of document.querySelectorAll('nav a')) {
    if (!(a instanceof HTMLElement)) continue;
    if (a.dataset.page === (page || 'batches')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  try {
    let refresh;
    if (page === 'files') refresh = await filesPage(main);
    else if (page === 'batches' && id) refresh = await batchPage(main, decodeURIComponent(id));
    else refresh = await batchesPage(main);
    if (refresh) timer = setInterval(() => refresh().catch(report), REFRESH_MS);
  } catch (err) {
    main.append(h('p', { class: 'error-text', role: 'alert' }, err instanceof Error ? err.message : String(err)));
  }
}

async function start() {
  try {
    const r = await fetch('/ui/config.json');
    if (r.ok) config = await r.json();
  } catch { /* the service's defaults */ }
  const signOutButton = document.getElementById('sign-out');
  signOutButton?.addEventListener('click', signOut);
  if (signOutButton) signOutButton.hidden = !!config.keyless;
  window.addEventListener('hashchange', route);
  if (!location.hash) location.hash = config.mode === 'service' ? '#/batches' : `#/batches/${config.batch}`;
  else route();
}

start();
