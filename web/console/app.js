// photo-pipeline console: one script for every page (the server sends the same HTML shell
// for each path; this renders the page the path names). Plain DOM, no framework, no CDN.
'use strict';

const TITLES = {
  '/': 'Home', '/login': 'Sign in', '/upload': 'Upload', '/status': 'Status',
  '/gallery': 'Gallery', '/dashboard': 'Dashboard', '/services': 'Services', '/settings': 'Settings',
};

let session = null; // { user, token, token_ttl_secs }

// --- small helpers -------------------------------------------------------------------------

/** Create an element: h('p', {class: 'x', text: 'hi', onclick: f}, child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toLocaleString() : '—';
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** JSON API call with the session's status token. */
async function api(path, opts = {}) {
  const headers = Object.assign({ Accept: 'application/json' }, opts.headers || {});
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(opts.json);
  }
  const resp = await fetch(path, { method: opts.method || 'GET', headers, body: opts.body });
  if (resp.status === 204) return null;
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, (body && body.error) || `HTTP ${resp.status}`);
  return body;
}

function userPath(rest) {
  return `/v1/users/${encodeURIComponent(session.user)}/${rest}`;
}

/**
 * Live status of the signed-in user over EventSource. Calls onStatus(snapshot) for each
 * newer snapshot (by seq) and onConnection(state) with 'live' | 'reconnecting'. A reconnect
 * keeps what is shown (no flicker): the server resends the current snapshot unless the
 * browser's Last-Event-ID shows it already has it, and older seqs are ignored.
 */
function followStatus(onStatus, onConnection) {
  let lastSeq = -1;
  let es = null;
  let stopped = false;
  function open() {
    es = new EventSource(`${userPath('events')}?token=${encodeURIComponent(session.token)}`);
    es.addEventListener('open', () => onConnection && onConnection('live'));
    es.addEventListener('status', (ev) => {
      const snap = JSON.parse(ev.data);
      if (snap.seq < lastSeq) return;
      lastSeq = snap.seq;
      onStatus(snap);
    });
    es.addEventListener('error', async () => {
      if (stopped) return;
      onConnection && onConnection('reconnecting');
      if (es.readyState === EventSource.CLOSED) {
        // The server refused (e.g. the token expired): get a fresh token and reopen.
        es.close();
        await new Promise((r) => setTimeout(r, 2000));
        if (stopped) return;
        try { await loadSession(); } catch (_) { /* retried on the next error */ }
        if (!session) { location.assign('/login?next=' + encodeURIComponent(location.pathname)); return; }
        open();
      }
    });
  }
  open();
  window.addEventListener('pagehide', () => { stopped = true; es && es.close(); });
  return () => { stopped = true; es && es.close(); };
}

async function loadSession() {
  const resp = await fetch('/v1/session', { headers: { Accept: 'application/json' } });
  const body = resp.ok ? await resp.json() : null;
  session = body && body.user ? body : null;
  return session;
}

// --- Status banners (used by the Status and Upload pages) ----------------------------------

/** The banners for one snapshot; updates text only when it changes. */
function statusBanners() {
  const mk = (cls, id) => {
    const title = h('div', { class: 'title', id: `${id}-title` });
    const detail = h('div', { class: 'detail muted', id: `${id}-detail` });
    const bar = h('progress', { max: 1, value: 0, 'aria-labelledby': `${id}-title` });
    const el = h('div', { class: `banner ${cls}`, id, hidden: true }, title, detail, bar);
    return { el, title, detail, bar };
  };
  const processing = mk('processing', 'banner-processing');
  const indexing = mk('indexing', 'banner-indexing');
  const done = mk('done', 'banner-done');
  const failures = mk('failures', 'banner-failures');
  failures.bar.remove();
  done.bar.remove();
  const idle = h('p', { class: 'muted', id: 'banner-idle', text: 'No uploads yet. Upload photos and their progress shows here.' });
  const connection = h('p', { class: 'connection muted', id: 'connection', text: 'Connecting…' });
  const root = h('section', { class: 'banners', 'aria-label': 'Processing status' },
    h('div', { role: 'status', 'aria-live': 'polite', class: 'banners' }, idle, processing.el, indexing.el, done.el, failures.el),
    connection);

  function show(b, on) { if (b.el.hidden === on) b.el.hidden = !on; }

  function render(s) {
    idle.hidden = s.phase !== 'idle';
    const thumbsDone = s.thumbnails.ok + s.thumbnails.failed;
    show(processing, s.phase === 'processing');
    setText(processing.title, `Processing your photos — ${thumbsDone} of ${s.uploaded}`);
    setText(processing.detail, 'Making thumbnails.');
    processing.bar.max = Math.max(1, s.uploaded);
    processing.bar.value = thumbsDone;

    const embDone = s.embeddings.ok + s.embeddings.failed;
    show(indexing, s.phase === 'indexing');
    setText(indexing.title, `Indexing with AI — ${embDone} of ${s.thumbnails.ok}`);
    setText(indexing.detail, `Finding faces: ${s.faces} so far.`);
    indexing.bar.max = Math.max(1, s.thumbnails.ok);
    indexing.bar.value = embDone;

    show(done, s.phase === 'done');
    setText(done.title, `Done — ${s.thumbnails.ok} of ${s.uploaded} photos ready`);
    setText(done.detail, `${s.faces} face${s.faces === 1 ? '' : 's'} found. Uploaded ${fmtTime(s.first_event_ms)}, last change ${fmtTime(s.last_event_ms)}.`);

    const failed = s.thumbnails.failed + s.embeddings.failed;
    show(failures, failed > 0);
    setText(failures.title, `${failed} failed`);
    setText(failures.detail, `${s.thumbnails.failed} could not be made into thumbnails, ${s.embeddings.failed} could not be indexed. See the Gallery for reasons.`);
  }

  function connectionState(state) {
    setText(connection, state === 'live' ? 'Live.' : 'Connection lost — reconnecting… (what is shown stays until updated)');
    connection.className = `connection ${state === 'live' ? 'muted' : 'warn'}`;
  }

  return { root, render, connectionState };
}

// --- pages ---------------------------------------------------------------------------------

async function pageLogin(app) {
  const params = new URLSearchParams(location.search);
  const next = params.get('next') && params.get('next').startsWith('/') && !params.get('next').startsWith('//') ? params.get('next') : '/upload';
  if (session) {
    app.append(h('p', {}, `You are signed in as ${session.user}. `, h('a', { href: next, text: 'Continue' })));
    return;
  }
  const error = h('p', { class: 'error', id: 'login-error', role: 'alert' });
  const user = h('input', { id: 'user', name: 'user', type: 'text', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false' });
  const password = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', id: 'sign-in', text: 'Sign in' });
  const form = h('form', { class: 'card login', novalidate: true },
    h('label', { for: 'user', text: 'User name' }), user,
    h('label', { for: 'password', text: 'Password' }), password,
    submit, error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    setText(error, '');
    if (!user.value.trim() || !password.value) {
      setText(error, 'Enter your user name and password.');
      (user.value.trim() ? password : user).focus();
      return;
    }
    submit.disabled = true;
    try {
      session = await api('/v1/session', { method: 'POST', json: { user: user.value.trim(), password: password.value } });
      location.assign(next);
    } catch (e) {
      setText(error, e.status === 429 ? `Too many failed attempts. ${e.message}` : e.status === 401 ? 'Wrong user name or password.' : `Sign-in failed: ${e.message}`);
      password.select();
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  app.append(form, h('p', { class: 'muted', text: 'Local accounts: scripts/dev prints the demo account\'s password.' }));
  user.focus();
}

async function pageUpload(app) {
  const input = h('input', { id: 'files', type: 'file', multiple: true, accept: 'image/*,.heic,.heif,.avif', class: 'sr-only' });
  const zone = h('label', { class: 'dropzone', for: 'files', id: 'dropzone' },
    h('span', { text: 'Drag and drop photos here, or ' }), h('span', { class: 'pick', text: 'choose files' }),
    input);
  const tbody = h('tbody');
  const table = h('table', { class: 'files', hidden: true },
    h('caption', { class: 'sr-only', text: 'Files to upload' }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'File' }), h('th', { scope: 'col', text: 'Size' }), h('th', { scope: 'col', text: 'State' }))),
    tbody);
  const button = h('button', { id: 'upload-button', type: 'button', disabled: true, text: 'Upload' });
  const summary = h('p', { id: 'upload-summary', role: 'status', 'aria-live': 'polite' });
  const banners = statusBanners();
  let files = [];

  function choose(list) {
    files = Array.from(list).filter((f) => f.size > 0);
    tbody.replaceChildren(...files.map((f, i) => h('tr', {},
      h('td', { text: f.name }), h('td', { text: fmtBytes(f.size) }), h('td', { id: `file-state-${i}`, text: 'ready' }))));
    table.hidden = files.length === 0;
    button.disabled = files.length === 0;
    setText(button, files.length ? `Upload ${files.length} photo${files.length === 1 ? '' : 's'}` : 'Upload');
    setText(summary, files.length ? `${files.length} selected.` : '');
  }
  input.addEventListener('change', () => choose(input.files));
  zone.addEventListener('dragover', (ev) => { ev.preventDefault(); zone.classList.add('dragging'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    zone.classList.remove('dragging');
    choose(ev.dataTransfer.files);
  });

  button.addEventListener('click', async () => {
    button.disabled = true;
    const batch = files;
    const state = (i, text, cls) => {
      const td = document.getElementById(`file-state-${i}`);
      if (td) { setText(td, text); td.className = cls ? `state-${cls}` : ''; }
    };
    let targets;
    try {
      targets = (await api(userPath('uploads'), { method: 'POST', json: { files: batch.map((f) => ({ name: f.name })) } })).uploads;
    } catch (e) {
      setText(summary, `Could not start the upload: ${e.message}`);
      button.disabled = false;
      return;
    }
    let ok = 0; let failed = 0; let next = 0;
    async function worker() {
      while (next < batch.length) {
        const i = next++;
        state(i, 'uploading…');
        try {
          const resp = await fetch(targets[i].url, {
            method: 'PUT', body: batch[i],
            headers: { 'Content-Type': batch[i].type || 'application/octet-stream' },
          });
          if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
          ok++;
          state(i, 'uploaded', 'uploaded');
        } catch (e) {
          failed++;
          state(i, `failed: ${e.message}`, 'failed');
        }
        setText(summary, `Uploaded ${ok} of ${batch.length}${failed ? `, ${failed} failed` : ''}.`);
      }
    }
    await Promise.all([worker(), worker(), worker(), worker()]);
    setText(summary, `Uploaded ${ok} of ${batch.length}${failed ? `, ${failed} failed` : ''}. Progress below; thumbnails appear in the Gallery.`);
    button.disabled = false;
  });

  app.append(
    h('div', { class: 'card' }, zone, table, h('div', { class: 'toolbar' }, button), summary),
    h('h2', { text: 'Progress' }), banners.root,
    h('p', {}, h('a', { href: '/gallery', text: 'Open the Gallery' })));
  followStatus(banners.render, banners.connectionState);
}

async function pageStatus(app) {
  const banners = statusBanners();
  const failuresList = h('ul', { id: 'failure-list' });
  const totals = h('dl', { class: 'kv', id: 'lifetime' });
  app.append(banners.root,
    h('h2', { text: 'Failed photos' }), failuresList,
    h('h2', { text: 'All uploads so far' }), totals);
  let lastFailed = -1;
  followStatus(async (s) => {
    banners.render(s);
    const l = s.lifetime;
    totals.replaceChildren(
      h('dt', { text: 'Uploaded' }), h('dd', { text: l.uploaded }),
      h('dt', { text: 'Thumbnails' }), h('dd', { text: `${l.thumbnails.ok} ok, ${l.thumbnails.failed} failed` }),
      h('dt', { text: 'Indexed' }), h('dd', { text: `${l.embeddings.ok} ok, ${l.embeddings.failed} failed` }),
      h('dt', { text: 'Faces' }), h('dd', { text: l.faces }));
    const failed = s.thumbnails.failed + s.embeddings.failed;
    if (failed !== lastFailed) {
      lastFailed = failed;
      if (failed === 0) { failuresList.replaceChildren(h('li', { class: 'muted', text: 'None.' })); return; }
      try {
        const { photos } = await api(userPath('photos'));
        failuresList.replaceChildren(...photos.filter((p) => p.thumbnail_status === 'failed' || p.embedding_status === 'failed')
          .map((p) => h('li', {}, h('strong', { text: p.file || p.photo_id }), `: ${p.failure || 'failed'}`)));
      } catch (_) { /* shown on the next change */ }
    }
  }, banners.connectionState);
}

async function pageGallery(app) {
  const toggle = h('input', { type: 'checkbox', id: 'show-faces' });
  const count = h('span', { id: 'gallery-count', class: 'muted', role: 'status', 'aria-live': 'polite' });
  const grid = h('ul', { class: 'gallery', id: 'gallery', 'aria-label': 'Your photos' });
  toggle.addEventListener('change', () => grid.classList.toggle('show-faces', toggle.checked));
  app.append(h('div', { class: 'toolbar' }, h('label', { class: 'inline-label', for: 'show-faces' }, toggle, 'Show face boxes'), count), grid);
  const items = new Map();

  function itemFor(p) {
    let it = items.get(p.photo_id);
    if (!it) {
      const frame = h('div', { class: 'frame' });
      const caption = h('figcaption');
      const li = h('li', { 'data-photo-id': p.photo_id }, h('figure', {}, frame, caption));
      it = { li, frame, caption, img: null, faces: null };
      items.set(p.photo_id, it);
    }
    return it;
  }

  function update(it, p) {
    if (p.thumbnail_url && !it.img) {
      it.img = h('img', { src: p.thumbnail_url, alt: p.file || 'photo', width: p.thumbnail_width, height: p.thumbnail_height, loading: 'lazy' });
      it.frame.replaceChildren(it.img);
    } else if (!it.img) {
      const text = p.thumbnail_status === 'failed' ? `Failed: ${p.failure || 'unknown'}` : 'Processing…';
      if (!it.frame.firstChild || it.frame.firstChild.textContent !== text) it.frame.replaceChildren(h('div', { class: 'placeholder', text }));
    }
    const key = JSON.stringify(p.faces);
    if (it.img && it.faces !== key) {
      it.faces = key;
      it.frame.querySelectorAll('.face').forEach((f) => f.remove());
      p.faces.forEach((f, i) => {
        const box = h('div', { class: 'face', title: `face ${i + 1}, score ${f.score.toFixed(2)}`, 'aria-hidden': 'true' });
        box.style.left = `${f.x * 100}%`;
        box.style.top = `${f.y * 100}%`;
        box.style.width = `${f.w * 100}%`;
        box.style.height = `${f.h * 100}%`;
        it.frame.append(box);
      });
    }
    const faces = p.embedding_status === 'ok' ? `${p.faces.length} face${p.faces.length === 1 ? '' : 's'}` : p.embedding_status === 'failed' ? `indexing failed: ${p.failure || ''}` : 'indexing…';
    const status = p.thumbnail_status === 'failed' ? `failed: ${p.failure || ''}` : p.thumbnail_status === 'ok' ? faces : 'processing…';
    setText(it.caption, `${p.file || p.photo_id} — ${status}`);
  }

  let refreshing = false; let again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const { photos } = await api(userPath('photos'));
      const order = photos.map((p) => { const it = itemFor(p); update(it, p); return it.li; });
      // Re-append only when the order changed, so loaded images are not disturbed.
      const same = order.length === grid.children.length && order.every((li, i) => grid.children[i] === li);
      if (!same) grid.replaceChildren(...order);
      setText(count, `${photos.length} photo${photos.length === 1 ? '' : 's'}, ${photos.filter((p) => p.thumbnail_status === 'ok').length} with thumbnails.`);
      if (photos.length === 0) setText(count, 'No photos yet. Upload some on the Upload page.');
    } catch (e) {
      setText(count, `Could not load photos: ${e.message}`);
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(); }
    }
  }
  await refresh();
  let timer = null;
  followStatus(() => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
  setInterval(refresh, 10000);
}

async function pageHome(app) {
  const summary = h('dl', { class: 'kv', id: 'home-summary' });
  app.append(
    h('p', {}, `Signed in as ${session.user}. Every photo you upload becomes a thumbnail within seconds and is then indexed for faces.`),
    h('div', { class: 'grid2' },
      h('section', { class: 'card' }, h('h2', { text: 'Your photos' }), summary,
        h('p', {}, h('a', { href: '/upload', text: 'Upload photos' }), ' · ', h('a', { href: '/status', text: 'Status' }), ' · ', h('a', { href: '/gallery', text: 'Gallery' }))),
      h('section', { class: 'card' }, h('h2', { text: 'Operations' }),
        h('ul', {},
          h('li', {}, h('a', { href: '/dashboard', text: 'Dashboard' }), ' — throughput, latency, errors over time'),
          h('li', {}, h('a', { href: '/services', text: 'Services' }), ' — thumbnail and embedding jobs'),
          h('li', {}, h('a', { href: '/settings', text: 'Settings' }), ' — thresholds')))));
  followStatus((s) => {
    const l = s.lifetime;
    summary.replaceChildren(
      h('dt', { text: 'Uploaded' }), h('dd', { text: l.uploaded }),
      h('dt', { text: 'Thumbnails' }), h('dd', { text: l.thumbnails.ok }),
      h('dt', { text: 'Indexed' }), h('dd', { text: l.embeddings.ok }),
      h('dt', { text: 'Faces found' }), h('dd', { text: l.faces }),
      h('dt', { text: 'Now' }), h('dd', { text: s.phase }));
  });
}

async function pageSettings(app) {
  if (operatorsOnly(app)) return;
  const groups = [
    { group: 'thumbnail', legend: 'Thumbnails', note: 'Applied by the thumbnail stage to the next photo.', fields: [
      { name: 'max_width', label: 'Maximum width (px)', min: 16, max: 4096, step: 1, dflt: 400 },
      { name: 'max_height', label: 'Maximum height (px)', min: 16, max: 4096, step: 1, dflt: 400 },
      { name: 'quality', label: 'JPEG quality (1–100)', min: 1, max: 100, step: 1, dflt: 80 }] },
    { group: 'faces', legend: 'Face detection', note: 'A filter on the faces the model finds: it can only be stricter than the model profile’s own thresholds.', fields: [
      { name: 'min_score', label: 'Minimum detection score (0–1)', min: 0, max: 1, step: 0.01, dflt: 0.5 },
      { name: 'min_size_px', label: 'Minimum face size (px, shorter side)', min: 0, max: 4096, step: 1, dflt: 0 }] },
    { group: 'alerts', legend: 'Alert thresholds', note: 'The Dashboard flags a stage above these.', fields: [
      { name: 'max_lag_records', label: 'Consumer lag (records)', min: 1, max: 1e12, step: 1, dflt: 1000 },
      { name: 'max_latency_ms', label: 'p95 latency, upload to done (ms)', min: 1, max: 1e9, step: 1, dflt: 30000 }] },
  ];
  const history = h('tbody', { id: 'settings-history' });
  let view = await api('/v1/settings');
  const forms = groups.map((g) => {
    const msg = h('p', { id: `settings-${g.group}-message`, role: 'status', 'aria-live': 'polite' });
    const inputs = g.fields.map((f) => {
      const id = `setting-${g.group}-${f.name}`;
      const cur = view.current[g.group];
      const input = h('input', { id, name: f.name, type: 'number', min: f.min, max: f.max, step: f.step, required: true,
        value: cur ? cur[f.name] : f.dflt, 'aria-describedby': `settings-${g.group}-note` });
      return { f, input, row: h('div', {}, h('label', { for: id, text: f.label }), input) };
    });
    const save = h('button', { type: 'submit', id: `settings-${g.group}-save`, text: `Save ${g.legend.toLowerCase()}` });
    const state = h('p', { class: 'muted', id: `settings-${g.group}-state` });
    const form = h('form', { class: 'card', novalidate: true },
      h('fieldset', {}, h('legend', { text: g.legend }),
        h('p', { class: 'muted', id: `settings-${g.group}-note`, text: g.note }), state,
        inputs.map((i) => i.row), h('div', { class: 'toolbar' }, save), msg));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      setText(msg, ''); msg.className = '';
      const values = {};
      for (const { f, input } of inputs) {
        const v = Number(input.value);
        if (input.value === '' || !Number.isFinite(v) || v < f.min || v > f.max || (f.step === 1 && !Number.isInteger(v))) {
          setText(msg, `${f.label}: enter ${f.step === 1 ? 'a whole number' : 'a number'} from ${f.min} to ${f.max}.`);
          msg.className = 'error';
          input.setAttribute('aria-invalid', 'true');
          input.focus();
          return;
        }
        input.removeAttribute('aria-invalid');
        values[f.name] = v;
      }
      save.disabled = true;
      try {
        const change = await api('/v1/settings', { method: 'PUT', json: { group: g.group, values } });
        setText(msg, `Saved by ${change.changed_by} at ${fmtTime(change.changed_at_ms)}; processors apply it to their next photo.`);
        msg.className = 'ok';
        await reload();
      } catch (e) {
        setText(msg, `Not saved: ${e.message}`);
        msg.className = 'error';
      } finally {
        save.disabled = false;
      }
    });
    return { g, form, state };
  });

  function describe(c) {
    return Object.entries(c.settings.values).map(([k, v]) => `${k} ${v}`).join(', ');
  }
  function renderView() {
    for (const { g, state } of forms) {
      const last = view.changes.find((c) => c.settings.group === g.group);
      setText(state, last ? `In force: ${describe(last)} — set by ${last.changed_by}, ${fmtTime(last.changed_at_ms)}.` : 'Not set: each service’s own configuration applies.');
    }
    history.replaceChildren(...(view.changes.length ? view.changes.map((c) => h('tr', {},
      h('td', { text: fmtTime(c.changed_at_ms) }), h('td', { text: c.changed_by }),
      h('td', { text: c.settings.group }), h('td', { text: describe(c) })))
      : [h('tr', {}, h('td', { colspan: 4, class: 'muted', text: 'No changes yet.' }))]));
  }
  async function reload() { view = await api('/v1/settings'); renderView(); }
  renderView();
  app.append(h('div', { class: 'grid2' }, forms.map((f) => f.form)),
    h('h2', { text: 'Who changed what' }),
    h('table', { class: 'data' }, h('caption', { class: 'sr-only', text: 'Settings changes, newest first' }),
      h('thead', {}, h('tr', {}, ['When', 'Who', 'Group', 'Values'].map((t) => h('th', { scope: 'col', text: t })))), history));
}

const SVG = 'http://www.w3.org/2000/svg';

/** An inline SVG sparkline of `values` (null = no data), with a text title for screen readers. */
function sparkline(values, label) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 100 30');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const nums = values.filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...nums);
  const n = Math.max(1, values.length - 1);
  const pts = values.map((v, i) => (v === null ? null : `${(i / n) * 100},${(28 - (v / max) * 26).toFixed(2)}`)).filter(Boolean);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts.join(' '));
  svg.append(line);
  return svg;
}

function operatorsOnly(app) {
  if (session.operator) return false;
  app.append(h('p', { class: 'card', id: 'operators-only' }, 'This page is for operators. Ask an administrator to mark your account ', h('code', { text: 'operator' }), ' in the accounts file.'));
  return true;
}

async function poll(fn, ms) {
  let stopped = false;
  window.addEventListener('pagehide', () => { stopped = true; });
  for (;;) {
    try { await fn(); } catch (e) { if (e.status === 401) { location.assign('/login?next=' + encodeURIComponent(location.pathname)); return; } }
    await new Promise((r) => setTimeout(r, ms));
    if (stopped) return;
  }
}

async function pageDashboard(app) {
  if (operatorsOnly(app)) return;
  const body = h('div', { class: 'grid2', id: 'dashboard' });
  const note = h('p', { class: 'muted', id: 'dashboard-updated', role: 'status' });
  app.append(h('p', { class: 'muted', text: 'From the stage events status-api consumes (10-second buckets, last 10 minutes) and the processors\u2019 heartbeats; no Prometheus needed.' }), body, note);
  await poll(async () => {
    const m = await api('/v1/ops/metrics');
    const pts = m.points;
    const perMin = (sel) => pts.map((p) => sel(p) * (60000 / m.bucket_ms));
    const last = (arr) => arr.length ? arr[arr.length - 1] : 0;
    const recent = pts.slice(-6); // last minute
    const sum = (sel) => recent.reduce((a, p) => a + sel(p), 0);
    const lat = (stage) => pts.map((p) => (p[stage].latency_ms ? p[stage].latency_ms.p95 : null));
    const lastLat = (stage) => { const p = [...pts].reverse().find((x) => x[stage].latency_ms); return p ? p[stage].latency_ms : null; };
    const alerts = m.alerts || null;
    const card = (title, id, value, spark, extra) => h('section', { class: 'card', id },
      h('h2', { text: title }), h('div', { class: 'stat', text: value }), spark, extra || null);
    const latText = (l) => (l ? `p50 ${Math.round(l.p50)} ms · p95 ${Math.round(l.p95)} ms · p99 ${Math.round(l.p99)} ms` : 'no photos in the window');
    const latAlert = (l) => (alerts && l && l.p95 > alerts.max_latency_ms ? h('p', { class: 'alert', text: `Above the ${alerts.max_latency_ms} ms alert threshold` }) : null);
    const errRate = pts.map((p) => { const t = p.thumbnail.ok + p.thumbnail.failed + p.embed.ok + p.embed.failed; return t ? (p.thumbnail.failed + p.embed.failed) / t : null; });
    const failedMin = sum((p) => p.thumbnail.failed + p.embed.failed);
    const doneMin = sum((p) => p.thumbnail.ok + p.thumbnail.failed + p.embed.ok + p.embed.failed);
    const lagRows = Object.entries(m.consumer_lag).map(([topic, lag]) => h('tr', {},
      h('td', { text: topic }), h('td', { text: lag }),
      h('td', { class: alerts && lag > alerts.max_lag_records ? 'alert' : '', text: alerts ? (lag > alerts.max_lag_records ? 'above threshold' : 'ok') : '—' })));
    body.replaceChildren(
      card('Throughput: thumbnails', 'dash-thumb-throughput', `${sum((p) => p.thumbnail.ok + p.thumbnail.failed)} / min`,
        sparkline(perMin((p) => p.thumbnail.ok + p.thumbnail.failed), 'thumbnails per minute over 10 minutes')),
      card('Throughput: indexing', 'dash-embed-throughput', `${sum((p) => p.embed.ok + p.embed.failed)} / min`,
        sparkline(perMin((p) => p.embed.ok + p.embed.failed), 'photos indexed per minute over 10 minutes')),
      card('Latency: thumbnail (upload → done)', 'dash-thumb-latency', latText(lastLat('thumbnail')), sparkline(lat('thumbnail'), 'thumbnail p95 latency over 10 minutes'), latAlert(lastLat('thumbnail'))),
      card('Latency: indexing (upload → done)', 'dash-embed-latency', latText(lastLat('embed')), sparkline(lat('embed'), 'indexing p95 latency over 10 minutes'), latAlert(lastLat('embed'))),
      card('Error rate', 'dash-errors', doneMin ? `${((failedMin / doneMin) * 100).toFixed(1)} % (last minute)` : '— (nothing done in the last minute)', sparkline(errRate, 'error rate over 10 minutes')),
      h('section', { class: 'card', id: 'dash-lag' }, h('h2', { text: 'Consumer lag' }),
        lagRows.length ? h('table', { class: 'data' }, h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Topic' }), h('th', { scope: 'col', text: 'Records behind' }), h('th', { scope: 'col', text: 'Alert' }))), h('tbody', {}, lagRows))
          : h('p', { class: 'muted', text: 'No processor heartbeats with lag yet.' })));
    setText(note, `Updated ${new Date(m.now_ms).toLocaleTimeString()}; uploads in the last bucket: ${last(pts.map((p) => p.uploaded))}.`);
  }, 5000);
}

async function pageServices(app) {
  if (operatorsOnly(app)) return;
  const body = h('div', { id: 'services' });
  app.append(body);
  await poll(async () => {
    const s = await api('/v1/ops/services');
    const job = (stage, title, keys) => {
      const inst = s.instances.filter((i) => i.stages.includes(stage));
      const alive = inst.filter((i) => i.alive);
      const ok = inst.reduce((a, i) => a + ((i.counters[stage] || {}).processed_ok || 0), 0);
      const failed = inst.reduce((a, i) => a + ((i.counters[stage] || {}).processed_failed || 0), 0);
      const fails = s.dlq.recent.filter((f) => f.stage === stage);
      const byReason = Object.entries(s.dlq.by_reason).filter(([k]) => k.startsWith(`${stage}/`));
      const cfg = alive[0] ? alive[0].config : {};
      return h('section', { class: 'card', id: `service-${stage}` }, h('h2', { text: title }),
        h('dl', { class: 'kv' },
          h('dt', { text: 'Instances' }), h('dd', { text: `${alive.length} running${inst.length > alive.length ? `, ${inst.length - alive.length} silent` : ''}` }),
          h('dt', { text: 'In flight' }), h('dd', { text: alive.reduce((a, i) => a + i.in_flight, 0) }),
          h('dt', { text: 'Processed' }), h('dd', { text: `${ok} ok, ${failed} failed (since the instances started)` }),
          h('dt', { text: 'Dead letters' }), h('dd', { text: byReason.length ? byReason.map(([k, v]) => `${k.split('/')[1]}: ${v}`).join(', ') : 'none' }),
          keys.filter((k) => cfg[k] !== undefined).flatMap((k) => [h('dt', { text: k }), h('dd', { text: cfg[k] })])),
        h('h3', { text: 'Instances' }),
        inst.length ? h('ul', {}, inst.map((i) => h('li', {}, `${i.instance_id} — ${i.alive ? 'alive' : 'silent'}, last heartbeat ${new Date(i.sent_at_ms).toLocaleTimeString()}, stages ${i.stages.join(', ')}`)))
          : h('p', { class: 'muted', text: 'No heartbeats yet.' }),
        h('h3', { text: 'Recent failures' }),
        fails.length ? h('table', { class: 'data' },
          h('thead', {}, h('tr', {}, ['When', 'User', 'Object', 'Reason', 'Detail'].map((t) => h('th', { scope: 'col', text: t })))),
          h('tbody', {}, fails.map((f) => h('tr', {}, h('td', { text: fmtTime(f.failed_at_ms) }), h('td', { text: f.user_id }), h('td', { text: f.key }), h('td', { text: f.reason }), h('td', { text: f.detail })))))
          : h('p', { class: 'muted', text: 'None.' }));
    };
    body.replaceChildren(
      h('p', {}, `Dead-letter queue: ${s.dlq.total} record${s.dlq.total === 1 ? '' : 's'}.`),
      job('thumbnail', 'Thumbnail job', ['thumb_max_width', 'thumb_max_height', 'thumb_quality', 'cpu_workers', 'max_in_flight', 'thumbnail_group']),
      job('embed', 'Embedding job', ['embed_profile', 'embed_workers', 'max_in_flight', 'embed_group']),
      h('section', { class: 'card' }, h('h2', { text: 'Live settings in force' }),
        h('pre', { id: 'services-settings', text: JSON.stringify(s.settings, null, 2) }), h('a', { href: '/settings', text: 'Change on the Settings page' })));
  }, 5000);
}

const VIEWS = {
  '/': pageHome,
  '/login': pageLogin,
  '/upload': pageUpload,
  '/status': pageStatus,
  '/gallery': pageGallery,
  '/dashboard': pageDashboard,
  '/services': pageServices,
  '/settings': pageSettings,
};

async function main() {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  const title = TITLES[path] || 'Not found';
  document.title = `${title} · photo-pipeline`;
  setText(document.getElementById('page-title'), title);
  for (const a of document.querySelectorAll('.nav a')) {
    if (a.getAttribute('href') === path) a.setAttribute('aria-current', 'page');
  }
  const app = document.getElementById('app');
  app.replaceChildren();
  try {
    await loadSession();
  } catch (e) {
    app.append(h('p', { class: 'error', role: 'alert', text: `Cannot reach the server: ${e.message}` }));
    return;
  }
  const account = document.getElementById('account');
  if (session) {
    const out = h('button', { type: 'button', class: 'secondary', id: 'sign-out', text: 'Sign out' });
    out.addEventListener('click', async () => {
      await fetch('/v1/session', { method: 'DELETE' });
      location.assign('/login');
    });
    account.replaceChildren(h('span', { id: 'signed-in-as', text: session.user }), out);
  } else {
    account.replaceChildren(h('a', { href: '/login', text: 'Sign in' }));
  }
  if (!session && path !== '/login') {
    location.replace(`/login?next=${encodeURIComponent(path)}`);
    return;
  }
  const view = VIEWS[path];
  if (!view) { app.append(h('p', { text: 'No such page.' })); return; }
  await view(app);
}

main();
