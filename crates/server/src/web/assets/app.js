// DistribuSync web page. Plain JavaScript, no build step.
// Rule: every name, path and message from the server is shown with
// textContent (never innerHTML), so a file named "<script>" is text.
'use strict';

const PIECE = 8 * 1024 * 1024;      // upload piece size (resumable above it)
const RETRIES = 5;                  // attempts per piece after a dropped connection
const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  dir: '',
  entries: [],
  sort: { key: 'name', desc: false },
  pendingFolders: new Set(),  // folders made here that hold no file yet
  events: null,
  jobEvents: null,
  reloadTimer: null,
};

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function say(text) { $('status').textContent = text || ''; }

function human(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function when(ms) {
  if (ms === null || ms === undefined) return '';
  const d = new Date(ms);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function can(scope) { return !!state.session && state.session.scopes.includes(scope); }

// --- HTTP -----------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, url, body) {
  const opts = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET' && state.session) opts.headers['x-csrf-token'] = state.session.csrf;
  if (body !== undefined) {
    opts.headers['content-type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  if (r.status === 401 && !url.startsWith('/api/signin')) { signedOut(); throw new HttpError(401, 'signed out'); }
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try { const j = await r.json(); if (j.error) msg = j.error; } catch (_) { /* not JSON */ }
    throw new HttpError(r.status, msg);
  }
  if (r.status === 204) return null;
  return r.json();
}

function q(params) {
  return new URLSearchParams(params).toString();
}

// --- session --------------------------------------------------------------

async function loadSession() {
  const s = await api('GET', '/api/session');
  state.session = s.signed_in ? s : null;
  return state.session;
}

function signedOut() {
  state.session = null;
  closeStreams();
  show('signin');
  say('Your session ended: sign in again to carry on where you were.');
}

function closeStreams() {
  if (state.events) { state.events.close(); state.events = null; }
  if (state.jobEvents) { state.jobEvents.close(); state.jobEvents = null; }
}

$('signin-form')?.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('signin-error').textContent = '';
  try {
    const s = await api('POST', '/api/signin', { token: $('token').value });
    $('token').value = '';
    state.session = s;
    say('');
    route();
  } catch (e) {
    $('signin-error').textContent = e.message;
  }
});

$('signout').addEventListener('click', async () => {
  try { await api('POST', '/api/signout'); } catch (_) { /* already out */ }
  state.session = null;
  closeStreams();
  location.hash = '#/files/';
  await start();
});

// --- views ----------------------------------------------------------------

function show(name) {
  for (const v of ['signin', 'files', 'shares', 'compute']) $(`view-${v}`).hidden = v !== name;
  const signed = !!state.session;
  $('nav').hidden = !signed;
  $('signout').hidden = !signed || !state.session.auth_required;
  $('who').textContent = signed
    ? `${state.session.name}${state.session.prefix ? ' · folder ' + state.session.prefix + '/' : ''} · ${state.session.scopes.join(', ')}`
    : '';
  for (const [id, v] of [['nav-files', 'files'], ['nav-shares', 'shares'], ['nav-compute', 'compute']]) {
    if (v === name) $(id).setAttribute('aria-current', 'page'); else $(id).removeAttribute('aria-current');
  }
  $('nav-compute').hidden = !can('compute');
  if (name === 'signin') $('token').focus();
}

function route() {
  if (!state.session) { show('signin'); return; }
  if (state.routed !== location.hash) say('');
  state.routed = location.hash;
  const h = decodeURIComponent(location.hash.slice(1) || '/files/');
  if (h.startsWith('/shares')) { show('shares'); loadShares(); return; }
  if (h.startsWith('/compute')) { show('compute'); loadJobs(); followJobs(); return; }
  const dir = h.startsWith('/files/') ? h.slice('/files/'.length).replace(/^\/+|\/+$/g, '') : '';
  show('files');
  openDir(dir);
}

window.addEventListener('hashchange', () => route());

// --- files ----------------------------------------------------------------

function dirHash(dir) { return '#/files/' + encodeURIComponent(dir).replace(/%2F/g, '/'); }

async function openDir(dir) {
  state.dir = dir;
  const writable = can('write');
  $('write-tools').hidden = !writable;
  renderCrumbs();
  followChanges();
  await reload();
}

function renderCrumbs() {
  const ol = $('crumbs');
  ol.replaceChildren();
  const parts = state.dir ? state.dir.split('/') : [];
  ol.append(el('li', {}, el('a', { href: dirHash(''), text: 'All files', 'aria-current': parts.length ? null : 'location' })));
  parts.forEach((p, i) => {
    const path = parts.slice(0, i + 1).join('/');
    ol.append(el('li', {}, el('a', { href: dirHash(path), text: p, 'aria-current': i === parts.length - 1 ? 'location' : null })));
  });
}

async function reload() {
  try {
    const r = await api('GET', '/api/list?' + q({ dir: state.dir }));
    if (r.dir !== state.dir) return; // moved on meanwhile
    state.entries = r.entries;
    for (const e of r.entries) if (e.folder) state.pendingFolders.delete(e.path);
    render();
    if (r.truncated) say('This folder holds too many files to list them all.');
  } catch (e) {
    if (e.status !== 401) say(e.message);
  }
}

function scheduleReload() {
  clearTimeout(state.reloadTimer);
  state.reloadTimer = setTimeout(reload, 30);
}

function sorted(entries) {
  const { key, desc } = state.sort;
  const val = (e) => key === 'name' ? e.name : key === 'size' ? e.size : key === 'modified' ? e.modified_ms : e.revision;
  const list = [...entries].sort((a, b) => {
    if (a.folder !== b.folder) return a.folder ? -1 : 1; // folders first
    const x = val(a), y = val(b);
    const c = typeof x === 'string' ? x.localeCompare(y) : x - y;
    return desc ? -c : c;
  });
  return list;
}

for (const b of document.querySelectorAll('th button[data-sort]')) {
  b.addEventListener('click', () => {
    const key = b.dataset.sort;
    state.sort = { key, desc: state.sort.key === key ? !state.sort.desc : false };
    for (const th of document.querySelectorAll('#files th')) th.removeAttribute('aria-sort');
    b.parentElement.setAttribute('aria-sort', state.sort.desc ? 'descending' : 'ascending');
    render();
  });
}

function render() {
  const tbody = $('rows');
  tbody.replaceChildren();
  const entries = [...state.entries];
  for (const p of state.pendingFolders) {
    const parent = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
    if (parent === state.dir && !entries.some((e) => e.path === p)) {
      entries.push({ name: p.slice(parent ? parent.length + 1 : 0), path: p, folder: true, size: 0, modified_ms: null, revision: 0, files: 0, pending: true });
    }
  }
  const writable = can('write');
  for (const e of sorted(entries)) {
    const name = el('td', { class: 'name' });
    if (e.folder) {
      name.append(el('a', { href: dirHash(e.path), text: e.name + '/' , 'data-path': e.path, class: 'folder' }));
      if (e.pending) name.append(el('span', { class: 'tag', text: 'empty: upload to keep' }));
    } else {
      name.append(el('a', { href: '/api/file?' + q({ path: e.path }), text: e.name, 'data-path': e.path, class: 'file', target: '_blank', rel: 'noopener' }));
      if (e.conflict) name.append(el('span', { class: 'tag', text: 'conflict copy', title: 'Made by sync when two machines changed this file at once' }));
    }
    const actions = el('td', { class: 'actions' });
    if (!e.folder) actions.append(el('a', { class: 'button small', href: '/api/file?' + q({ path: e.path, dl: '1' }), download: e.name, text: 'Download', 'aria-label': `Download ${e.name}` }));
    if (!e.pending) actions.append(el('button', { type: 'button', class: 'small', text: 'Share', 'aria-label': `Share ${e.name}`, onclick: () => share(e) }));
    if (writable && !e.pending) {
      actions.append(el('button', { type: 'button', class: 'small', text: 'Rename', 'aria-label': `Rename or move ${e.name}`, onclick: () => rename(e) }));
      actions.append(el('button', { type: 'button', class: 'small danger', text: 'Delete', 'aria-label': `Delete ${e.name}`, onclick: () => remove(e) }));
    }
    const tr = el('tr', { class: e.conflict ? 'conflict' : '', 'data-name': e.name },
      name,
      el('td', { class: 'num', text: e.folder ? `${e.files} file${e.files === 1 ? '' : 's'}` : human(e.size), 'data-bytes': String(e.size) }),
      el('td', { class: 'when', text: when(e.modified_ms) }),
      el('td', { class: 'num rev', text: e.folder ? '' : String(e.revision) }),
      actions);
    tbody.append(tr);
  }
  $('empty').hidden = entries.length > 0;
}

// A dialog asking to confirm or for a value; resolves null on cancel.
function ask({ title, text = '', label = '', value = null, ok = 'OK', danger = false }) {
  const d = $('ask');
  $('ask-title').textContent = title;
  $('ask-text').textContent = text;
  $('ask-label').textContent = label;
  const input = $('ask-input');
  const wantsValue = value !== null;
  input.hidden = !wantsValue; $('ask-label').hidden = !wantsValue;
  input.value = wantsValue ? value : '';
  $('ask-ok').textContent = ok;
  $('ask-ok').className = danger ? 'primary danger-bg' : 'primary';
  return new Promise((resolve) => {
    const done = (v) => { d.close(); cleanup(); resolve(v); };
    const onSubmit = (ev) => { ev.preventDefault(); done(wantsValue ? input.value : true); };
    const onCancel = () => done(null);
    const onClose = () => { cleanup(); resolve(null); };
    function cleanup() {
      $('ask-form').removeEventListener('submit', onSubmit);
      $('ask-cancel').removeEventListener('click', onCancel);
      d.removeEventListener('cancel', onClose);
    }
    $('ask-form').addEventListener('submit', onSubmit);
    $('ask-cancel').addEventListener('click', onCancel);
    d.addEventListener('cancel', onClose);
    d.showModal();
    if (wantsValue) { input.focus(); input.select(); } else $('ask-cancel').focus();
  });
}

async function rename(e) {
  const to = await ask({ title: `Rename or move`, text: e.path, label: 'New path (folders with /)', value: e.path, ok: 'Rename' });
  if (to === null || to.trim() === '' || to === e.path) return;
  try {
    await api('POST', '/api/rename', { from: e.path, to: to.trim().replace(/^\/+|\/+$/g, '') });
    say(`Renamed ${e.name}.`);
    await reload();
  } catch (err) { say(err.message); }
}

async function remove(e) {
  const what = e.folder ? `the folder ${e.name} and the ${e.files} file${e.files === 1 ? '' : 's'} in it` : e.name;
  const yes = await ask({ title: 'Delete?', text: `Delete ${what}? This cannot be undone.`, ok: 'Delete', danger: true });
  if (!yes) return;
  try {
    await api('POST', '/api/delete', { path: e.path, folder: e.folder });
    say(`Deleted ${e.name}.`);
    await reload();
  } catch (err) { say(err.message); }
}

async function share(e) {
  const hours = await ask({ title: `Share ${e.folder ? 'folder' : 'file'} (read-only)`, text: e.path, label: 'Link works for (hours)', value: '24', ok: 'Make link' });
  if (hours === null) return;
  try {
    const link = await api('POST', '/api/shares', { path: e.path, folder: e.folder, hours: Number(hours) });
    location.hash = '#/shares';
    state.routed = location.hash;
    say(`Link made for ${e.name}: copy it from the list.`);
    return link;
  } catch (err) { say(err.message); }
}

$('new-folder').addEventListener('click', async () => {
  const name = await ask({ title: 'New folder', label: 'Name', value: '', ok: 'Create' });
  if (!name || !name.trim()) return;
  const path = (state.dir ? state.dir + '/' : '') + name.trim().replace(/^\/+|\/+$/g, '');
  state.pendingFolders.add(path);
  location.hash = dirHash(path);
  say('The folder shows here until it holds a file (the server keeps files, not empty folders).');
});

// --- live changes ---------------------------------------------------------

function inView(path) {
  if (!path) return false;
  const parent = path.includes('/') ? path.slice(0, path.lastIndexOf('/')) : '';
  return parent === state.dir || parent.startsWith(state.dir ? state.dir + '/' : '') || (state.dir + '/').startsWith(path + '/');
}

function followChanges() {
  if (state.events || !can('read')) return;
  const es = new EventSource('/api/events');
  state.events = es;
  es.addEventListener('ready', () => scheduleReload());
  es.addEventListener('resync', () => scheduleReload());
  es.addEventListener('change', (ev) => {
    const c = JSON.parse(ev.data);
    if (inView(c.path) || inView(c.new_path)) scheduleReload();
  });
  es.addEventListener('signedout', () => signedOut());
  es.onerror = async () => {
    // Closed by the server (a restart, a revoked token): find out which.
    if (es.readyState === EventSource.CLOSED) {
      state.events = null;
      try { if (!(await loadSession())) signedOut(); else setTimeout(followChanges, 1000); } catch (_) { /* offline */ }
    }
  };
}

// --- uploads --------------------------------------------------------------

function uploadRow(name) {
  const bar = el('progress', { max: '100', value: '0', 'aria-label': `Uploading ${name}` });
  const note = el('span', { class: 'note', text: 'waiting' });
  const li = el('li', {}, el('span', { class: 'name', text: name }), note, bar);
  $('uploads').append(li);
  return { li, bar, note };
}

function putPiece(url, blob, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('PUT', url);
    x.setRequestHeader('x-csrf-token', state.session.csrf);
    x.upload.onprogress = (ev) => onProgress(ev.loaded);
    x.onload = () => {
      let body = null;
      try { body = JSON.parse(x.responseText); } catch (_) { /* not JSON */ }
      if (x.status >= 200 && x.status < 300) resolve(body);
      else if (x.status === 401) { signedOut(); reject(new HttpError(401, 'signed out')); }
      else reject(new HttpError(x.status, (body && body.error) || `${x.status} ${x.statusText}`));
    };
    x.onerror = () => reject(new HttpError(0, 'connection lost'));
    x.send(blob);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function uploadOne(file, path) {
  const row = uploadRow(path);
  const meta = { path, size: file.size, modified_ms: file.lastModified || Date.now() };
  let offset = 0;
  if (file.size > PIECE) {
    // Resume what an earlier, interrupted attempt left on the server.
    try { offset = (await api('GET', '/api/upload?' + q(meta))).offset; } catch (_) { offset = 0; }
  }
  let failures = 0;
  for (;;) {
    const end = file.size > PIECE ? Math.min(offset + PIECE, file.size) : file.size;
    row.note.textContent = offset ? `${human(offset)} of ${human(file.size)}` : 'uploading';
    try {
      const r = await putPiece('/api/upload?' + q({ ...meta, offset }), file.slice(offset, end), (sent) => {
        row.bar.value = file.size ? Math.floor(((offset + sent) / file.size) * 100) : 100;
      });
      offset = r.received;
      failures = 0;
      if (r.done) {
        row.bar.value = 100;
        row.note.textContent = `done · ${human(file.size)}`;
        setTimeout(() => row.li.remove(), 4000);
        return true;
      }
    } catch (e) {
      if (e.status === 401) { row.note.textContent = 'signed out: sign in, then upload again to resume'; return false; }
      if (e.status !== 0 || ++failures > RETRIES || file.size <= PIECE) {
        row.note.textContent = `failed: ${e.message}`;
        row.li.classList.add('error');
        return false;
      }
      row.note.textContent = `connection lost; retrying (${failures}/${RETRIES})`;
      await sleep(500 * 2 ** failures);
      try { offset = (await api('GET', '/api/upload?' + q(meta))).offset; } catch (_) { /* retry */ }
    }
  }
}

async function uploadAll(items) {
  // items: [{file, rel}] with rel relative to the current folder
  const base = state.dir ? state.dir + '/' : '';
  let ok = 0;
  for (const { file, rel } of items) {
    if (await uploadOne(file, base + rel)) ok++;
  }
  say(`${ok} of ${items.length} uploaded.`);
  await reload();
}

$('upload-input').addEventListener('change', (ev) => {
  const files = [...ev.target.files].map((f) => ({ file: f, rel: f.name }));
  ev.target.value = '';
  uploadAll(files);
});
$('upload-folder').addEventListener('change', (ev) => {
  const files = [...ev.target.files].map((f) => ({ file: f, rel: f.webkitRelativePath || f.name }));
  ev.target.value = '';
  uploadAll(files);
});
for (const id of ['upload-label', 'upload-folder-label']) {
  // Labels are not focusable: make them keyboard buttons.
  const l = $(id);
  l.tabIndex = 0; l.setAttribute('role', 'button');
  l.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); $(l.htmlFor).click(); } });
}

async function entriesOf(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, rel: prefix + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const e of batch) await entriesOf(e, prefix + entry.name + '/', out);
    }
  }
}

let dragDepth = 0;
document.addEventListener('dragenter', (ev) => {
  if (!can('write') || $('view-files').hidden) return;
  ev.preventDefault(); dragDepth++; document.body.classList.add('dragging');
});
document.addEventListener('dragleave', () => { if (--dragDepth <= 0) { dragDepth = 0; document.body.classList.remove('dragging'); } });
document.addEventListener('dragover', (ev) => { if (can('write')) ev.preventDefault(); });
document.addEventListener('drop', async (ev) => {
  ev.preventDefault();
  dragDepth = 0; document.body.classList.remove('dragging');
  if (!can('write') || $('view-files').hidden) return;
  const items = [...(ev.dataTransfer.items || [])];
  const out = [];
  const entries = items.map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (entries.length) {
    for (const e of entries) await entriesOf(e, '', out);
  } else {
    for (const f of ev.dataTransfer.files) out.push({ file: f, rel: f.name });
  }
  uploadAll(out);
});

// --- share links ----------------------------------------------------------

async function loadShares() {
  try {
    const list = await api('GET', '/api/shares');
    const ul = $('share-list');
    ul.replaceChildren();
    for (const s of list) {
      const url = new URL(s.url, location.href).href;
      const input = el('input', { readonly: true, value: url, 'aria-label': `Link to ${s.path}` });
      ul.append(el('li', { 'data-id': s.id },
        el('span', { class: 'path', text: s.path + (s.folder ? '/' : '') }),
        el('span', { class: 'help', text: `until ${when(s.expires * 1000)}` }),
        input,
        el('button', { type: 'button', class: 'small', text: 'Copy', onclick: async () => {
          input.select();
          try { await navigator.clipboard.writeText(url); say('Link copied.'); } catch (_) { say('Select the link and copy it.'); }
        } }),
        el('button', { type: 'button', class: 'small danger', text: 'Revoke', 'aria-label': `Revoke the link to ${s.path}`, onclick: async () => {
          if (!(await ask({ title: 'Revoke link?', text: `The link to ${s.path} stops working at once.`, ok: 'Revoke', danger: true }))) return;
          try { await api('POST', '/api/shares/revoke', { id: s.id }); say('Link revoked.'); loadShares(); } catch (e) { say(e.message); }
        } })));
    }
    $('shares-empty').hidden = list.length > 0;
  } catch (e) { if (e.status !== 401) say(e.message); }
}

// --- compute --------------------------------------------------------------

async function runCompute(job) {
  const op = document.querySelector('input[name=op]:checked').value;
  const out = $('compute-result');
  out.textContent = job ? 'Submitting…' : 'Computing…';
  try {
    const r = await api('POST', '/api/compute', { op, numbers: $('numbers').value, descending: $('descending').checked, job });
    if (job) { out.textContent = `Job ${r.job_id.slice(0, 8)} queued.`; loadJobs(); return; }
    out.textContent = r.sum !== null ? `Sum: ${r.sum}` : `Sorted (${r.count}): ${r.sorted.join(' ')}`;
  } catch (e) { out.textContent = `Error: ${e.message}`; }
}

$('compute-form').addEventListener('submit', (ev) => { ev.preventDefault(); runCompute(false); });
$('run-job').addEventListener('click', () => { if ($('compute-form').reportValidity()) runCompute(true); });
$('numbers-file').addEventListener('change', async (ev) => {
  const f = ev.target.files[0];
  if (f) $('numbers').value = await f.text();
  ev.target.value = '';
});

async function loadJobs() {
  if (!can('compute')) return;
  try {
    const jobs = await api('GET', '/api/jobs');
    const tbody = $('job-rows');
    tbody.replaceChildren();
    for (const j of jobs) {
      const cell = el('td', { class: 'actions' });
      if (j.state === 'done') {
        cell.append(el('button', { type: 'button', class: 'small', text: 'Show result', 'aria-label': `Show the result of job ${j.id.slice(0, 8)}`, onclick: async () => {
          try {
            const r = await api('GET', '/api/jobs/result?' + q({ id: j.id }));
            cell.replaceChildren(el('span', { class: 'result', text: r.sum !== null ? `Sum: ${r.sum}` : r.sorted.join(' ') }));
          } catch (e) { say(e.message); }
        } }));
      } else if (j.error) cell.append(el('span', { class: 'error', text: j.error }));
      tbody.append(el('tr', { 'data-state': j.state },
        el('td', { text: `${j.kind} ${j.id.slice(0, 8)}` }),
        el('td', { text: j.state }),
        el('td', { class: 'num', text: String(j.count) }),
        el('td', { class: 'when', text: when(j.submitted_ms) }),
        cell));
    }
    $('jobs-empty').hidden = jobs.length > 0;
  } catch (e) { if (e.status !== 401) say(e.message); }
}

function followJobs() {
  if (state.jobEvents || !can('compute')) return;
  const es = new EventSource('/api/jobs/events');
  state.jobEvents = es;
  es.addEventListener('job', () => loadJobs());
  es.addEventListener('ready', () => loadJobs());
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) state.jobEvents = null; };
}

// --- start ----------------------------------------------------------------

async function start() {
  try {
    await loadSession();
  } catch (e) {
    say(`The server did not answer: ${e.message}`);
    return;
  }
  route();
}

start();
