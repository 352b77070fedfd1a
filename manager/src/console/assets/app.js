// mignet console: VirtualMachines list and details, polled every 500 ms.
// The DOM is built once per page and updated in place, so an open actions
// menu (and a button being clicked) survives the refreshes.
'use strict';
(function () {
  const POLL_MS = 500;
  let session = null;
  let refresh = function () {};

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function fmtBytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
  }
  function setText(e, t) { if (e.textContent !== t) e.textContent = t; }
  function vmPath(ns, name) { return encodeURIComponent(ns) + '/' + encodeURIComponent(name); }

  function showMessage(text, isError) {
    const m = document.getElementById('message');
    m.textContent = text;
    m.className = isError ? 'error' : 'info';
    m.hidden = false;
  }

  async function api(method, path) {
    const opts = { method, headers: {}, credentials: 'same-origin' };
    if (method !== 'GET' && session && session.csrf) opts.headers['X-CSRF-Token'] = session.csrf;
    const r = await fetch(path, opts);
    if (r.status === 401) { location.href = '/login'; throw new Error('Unauthorized'); }
    let body = null;
    try { body = await r.json(); } catch (_) { /* empty body */ }
    if (!r.ok) throw new Error((body && body.error) || ('HTTP ' + r.status));
    return body;
  }

  function closeMenus() {
    document.querySelectorAll('.menu').forEach(function (m) { m.hidden = true; });
  }
  document.addEventListener('click', function (ev) {
    if (!ev.target.closest('.menu') && !ev.target.closest('.kebab') && !ev.target.closest('.actions-toggle')) closeMenus();
  });

  async function act(action, ns, name) {
    closeMenus();
    try {
      const r = await api('POST', '/api/vms/' + vmPath(ns, name) + '/' + action);
      showMessage(r.message, false);
    } catch (e) {
      showMessage(e.message, true);
    }
    refresh();
  }

  // The same two actions for everyone: the server refuses non-administrators.
  function actionMenu(ns, name) {
    const menu = h('div', { class: 'menu', role: 'menu', hidden: '' });
    const mig = h('button', { type: 'button', role: 'menuitem', 'data-action': 'migrate', text: 'Migrate' });
    const can = h('button', { type: 'button', role: 'menuitem', 'data-action': 'cancel', text: 'Cancel Migration' });
    mig.addEventListener('click', function () { act('migrate', ns, name); });
    can.addEventListener('click', function () { act('cancel', ns, name); });
    menu.append(mig, can);
    return menu;
  }
  function toggle(menu) {
    const wasHidden = menu.hidden;
    closeMenus();
    menu.hidden = !wasHidden;
  }
  function updateMenu(menu, row) {
    const active = !!(row.migration && row.migration.active);
    menu.querySelector('[data-action=migrate]').classList.toggle('disabled', active || row.status !== 'Running');
    menu.querySelector('[data-action=cancel]').classList.toggle('disabled', !active);
  }

  function migrationSummary(cell, row) {
    const m = row.migration;
    const bar = cell.querySelector('.bar > span');
    const text = cell.querySelector('.mig-text');
    const note = cell.querySelector('.mig-note');
    let pct = 0, t = '', n = '', cls = 'mig-note small';
    if (m && m.active) {
      t = m.cancelling ? 'Cancelling (' + m.phase + ')' : m.phase;
      const p = m.progress;
      if (p && p.totalBytes > 0) {
        pct = Math.min(100, 100 * p.transferredBytes / p.totalBytes);
        t += ': ' + fmtBytes(p.transferredBytes) + ' of ' + fmtBytes(p.totalBytes) + ' at ' + fmtBytes(p.bytesPerSecond) + '/s';
      }
      if (m.waiting) { n = 'Waiting: ' + m.waiting; cls += ' waiting'; }
    } else if (m) {
      t = 'Last migration ' + m.name + ': ' + m.phase;
      if (m.phase === 'Succeeded') pct = 100;
      if (m.failure) { n = m.failure; cls += ' failure'; }
    } else if (row.liveMigratable && !row.liveMigratable.ok) {
      n = 'Not live-migratable: ' + row.liveMigratable.why; cls += ' failure';
    }
    bar.style.width = pct.toFixed(1) + '%';
    bar.parentElement.hidden = !(m && (m.active || m.phase === 'Succeeded'));
    setText(text, t);
    setText(note, n);
    note.className = cls;
  }
  function progressCell() {
    return h('td', { class: 'progress-cell' },
      h('div', { class: 'bar', hidden: '' }, h('span')),
      h('div', { class: 'mig-text small' }),
      h('div', { class: 'mig-note small' }));
  }

  // ------------------------------------------------------------- list
  function listPage(root) {
    root.replaceChildren(
      h('h1', { text: 'VirtualMachines' }),
      h('table', { id: 'vms' },
        h('thead', {}, h('tr', {},
          h('th', { text: 'Name' }), h('th', { text: 'Namespace' }), h('th', { text: 'Status' }),
          h('th', { text: 'Node' }), h('th', { text: 'Migration' }), h('th', { 'aria-label': 'Actions' }))),
        h('tbody')),
      h('h2', { text: 'Nodes' }),
      h('table', { id: 'nodes' },
        h('thead', {}, h('tr', {},
          h('th', { text: 'Name' }), h('th', { text: 'Status' }), h('th', { text: 'Maintenance' }),
          h('th', { text: 'VirtualMachines' }))),
        h('tbody')));
    const tbody = root.querySelector('#vms tbody');
    const rows = new Map();
    const nodeRows = nodesTable(root.querySelector('#nodes tbody'));
    refresh = async function () {
      const [data, nodes] = await Promise.all([api('GET', '/api/vms'), api('GET', '/api/nodes')]);
      const inMaintenance = nodeRows(nodes);
      const seen = new Set();
      for (const row of data) {
        const key = row.namespace + '/' + row.name;
        seen.add(key);
        let tr = rows.get(key);
        if (!tr) {
          const menu = actionMenu(row.namespace, row.name);
          const kebab = h('button', { type: 'button', class: 'kebab', 'aria-label': 'Actions for ' + row.name, text: '⋮' });
          kebab.addEventListener('click', function () { toggle(menu); });
          tr = h('tr', { 'data-vm': key },
            h('td', {}, h('a', { href: '/vms/' + vmPath(row.namespace, row.name), class: 'vm-link', text: row.name })),
            h('td', { class: 'namespace', text: row.namespace }),
            h('td', {}, h('span', { class: 'status' })),
            h('td', { class: 'node' }),
            progressCell(),
            h('td', { class: 'kebab-cell' }, kebab, menu));
          tbody.append(tr);
          rows.set(key, tr);
        }
        const st = tr.querySelector('.status');
        setText(st, row.status);
        st.className = 'status ' + row.status;
        const nodeCell = tr.querySelector('.node');
        setText(nodeCell, row.node ? row.node + (inMaintenance.has(row.node) ? ' (maintenance)' : '') : '');
        nodeCell.classList.toggle('maintenance', !!row.node && inMaintenance.has(row.node));
        migrationSummary(tr.querySelector('.progress-cell'), row);
        updateMenu(tr.querySelector('.menu'), row);
      }
      for (const [key, tr] of rows) if (!seen.has(key)) { tr.remove(); rows.delete(key); }
    };
  }

  // One row per node: its readiness and cordon, its NodeMaintenance (in
  // OpenShift's words, with the reason and what still has to leave), and
  // its VMs. Returns the names of the nodes in maintenance.
  function nodesTable(tbody) {
    const rows = new Map();
    return function (nodes) {
      const inMaintenance = new Set();
      const seen = new Set();
      for (const n of nodes) {
        seen.add(n.name);
        let tr = rows.get(n.name);
        if (!tr) {
          tr = h('tr', { 'data-node': n.name },
            h('td', { class: 'node-name', text: n.name }),
            h('td', {}, h('span', { class: 'node-status' })),
            h('td', { class: 'maintenance-cell' }, h('span', { class: 'maint-state' }), h('div', { class: 'maint-note small' })),
            h('td', { class: 'node-vms small' }));
          tbody.append(tr);
          rows.set(n.name, tr);
        }
        const m = n.maintenance;
        if (m) inMaintenance.add(n.name);
        setText(tr.querySelector('.node-status'), n.status + (n.schedulable ? '' : ', SchedulingDisabled'));
        const st = tr.querySelector('.maint-state');
        setText(st, m ? m.state : '');
        st.className = 'maint-state' + (m ? ' ' + m.state.replace(/ /g, '-') : '');
        const notes = [];
        if (m && m.reason) notes.push('Reason: ' + m.reason);
        if (m && m.pendingPods && m.pendingPods.length) notes.push('Pending: ' + m.pendingPods.join(', '));
        if (m && m.lastError) notes.push('Last error: ' + m.lastError);
        setText(tr.querySelector('.maint-note'), notes.join(' · '));
        setText(tr.querySelector('.node-vms'), n.vms.join(', '));
      }
      for (const [name, tr] of rows) if (!seen.has(name)) { tr.remove(); rows.delete(name); }
      return inMaintenance;
    };
  }

  // ---------------------------------------------------------- details
  const STATE_FIELDS = ['sourceNode', 'targetNode', 'targetNodeAddress', 'mode', 'startTimestamp', 'endTimestamp',
    'completed', 'failed', 'failureReason', 'abortRequested', 'abortStatus', 'migrationUid', 'targetNodeDomainDetected'];

  function detailsPage(root, ns, name) {
    const menu = actionMenu(ns, name);
    const toggleBtn = h('button', { type: 'button', class: 'actions-toggle', id: 'actions-toggle', text: 'Actions ▾' });
    toggleBtn.addEventListener('click', function () { toggle(menu); });
    const chart = svg('svg', { class: 'chart', id: 'chart', viewBox: '0 0 600 240' });
    root.replaceChildren(
      h('div', { class: 'actions' }, toggleBtn, menu),
      h('h1', {}, 'VirtualMachine ', h('span', { id: 'vm-name', text: name })),
      h('dl', { class: 'fields', id: 'overview' },
        h('dt', { text: 'Namespace' }), h('dd', { text: ns }),
        h('dt', { text: 'Status' }), h('dd', {}, h('span', { id: 'vm-status', class: 'status' })),
        h('dt', { text: 'Node' }), h('dd', { id: 'vm-node' }),
        h('dt', { text: 'Live-migratable' }), h('dd', { id: 'vm-migratable' })),
      h('h2', { text: 'Migration' }),
      h('div', { class: 'card', id: 'migration' },
        h('div', {}, 'Phase: ', h('span', { id: 'mig-phase', text: 'none' })),
        h('table', { class: 'mini' }, h('tbody', {}, h('tr', {}, progressCell()))),
        h('div', { class: 'legend', id: 'chart-legend', hidden: '' },
          h('span', { class: 'b', text: '— transferred' }), h('span', { class: 'r', text: '- - rate' })),
        chart),
      h('h2', { text: 'Migration state' }),
      h('dl', { class: 'fields', id: 'migration-state' }),
      h('h2', { text: 'Conditions' }),
      h('table', { id: 'conditions' }, h('thead', {}, h('tr', {},
        h('th', { text: 'Type' }), h('th', { text: 'Status' }), h('th', { text: 'Reason' }), h('th', { text: 'Message' }))),
        h('tbody')));
    refresh = async function () {
      const d = await api('GET', '/api/vms/' + vmPath(ns, name));
      const st = document.getElementById('vm-status');
      setText(st, d.status);
      st.className = 'status ' + d.status;
      setText(document.getElementById('vm-node'), d.node || '');
      const lm = d.liveMigratable;
      setText(document.getElementById('vm-migratable'), lm ? (lm.ok ? 'Yes' : 'No: ' + lm.why) : 'unknown');
      setText(document.getElementById('mig-phase'), d.migration ? d.migration.phase + (d.migration.active ? '' : ' (' + d.migration.name + ')') : 'none');
      migrationSummary(root.querySelector('#migration .progress-cell'), d);
      updateMenu(menu, d);
      drawChart(chart, d.history || []);
      document.getElementById('chart-legend').hidden = !(d.history && d.history.length);
      const dl = document.getElementById('migration-state');
      const ms = d.migrationState;
      const items = [];
      if (ms) {
        for (const k of STATE_FIELDS) if (ms[k] !== undefined && ms[k] !== null) {
          items.push(h('dt', { text: k }), h('dd', { 'data-field': k, text: String(ms[k]) }));
        }
      } else {
        items.push(h('dd', { text: 'This VM has not been migrated.' }));
      }
      const sig = JSON.stringify(ms || null);
      if (dl.dataset.sig !== sig) { dl.dataset.sig = sig; dl.replaceChildren(...items); }
      const tb = document.querySelector('#conditions tbody');
      const csig = JSON.stringify(d.conditions);
      if (tb.dataset.sig !== csig) {
        tb.dataset.sig = csig;
        tb.replaceChildren(...d.conditions.map(function (c) {
          return h('tr', {}, h('td', { text: c.type }), h('td', { text: c.status }),
            h('td', { text: c.reason || '' }), h('td', { text: c.message || '' }));
        }));
      }
    };
  }

  // Transferred bytes (solid, scaled to the total) and rate (dashed,
  // scaled to its maximum) over time.
  function drawChart(el, hist) {
    el.style.display = hist.length ? '' : 'none';
    if (!hist.length) { el.replaceChildren(); return; }
    const W = 600, H = 240, L = 64, R = 84, T = 10, B = 24;
    const t0 = hist[0].t, t1 = Math.max(hist[hist.length - 1].t, t0 + 1000);
    const total = Math.max(1, ...hist.map(function (s) { return s.totalBytes; }), ...hist.map(function (s) { return s.transferredBytes; }));
    const maxRate = Math.max(1, ...hist.map(function (s) { return s.bytesPerSecond; }));
    const x = function (t) { return L + (W - L - R) * (t - t0) / (t1 - t0); };
    const y = function (v, max) { return T + (H - T - B) * (1 - v / max); };
    const pts = function (f, max) {
      return hist.map(function (s) { return x(s.t).toFixed(1) + ',' + y(f(s), max).toFixed(1); }).join(' ');
    };
    const label = function (px, py, text, anchor) {
      const e = svg('text', { x: px, y: py, 'text-anchor': anchor || 'start' });
      e.textContent = text;
      return e;
    };
    el.replaceChildren(
      svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
      svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }),
      svg('line', { class: 'axis', x1: W - R, y1: T, x2: W - R, y2: H - B }),
      label(L - 4, T + 10, fmtBytes(total), 'end'),
      label(L - 4, H - B, '0', 'end'),
      label(W - R + 4, T + 10, fmtBytes(maxRate) + '/s'),
      label(L, H - 6, '0 s'),
      label(W - R, H - 6, ((t1 - t0) / 1000).toFixed(1) + ' s', 'end'),
      svg('polyline', { class: 'bytes', points: pts(function (s) { return s.transferredBytes; }, total) }),
      svg('polyline', { class: 'rate', points: pts(function (s) { return s.bytesPerSecond; }, maxRate) }));
  }

  async function loop() {
    try {
      await refresh();
    } catch (e) {
      if (e.message !== 'Unauthorized') showMessage('Refresh failed: ' + e.message, true);
    }
    setTimeout(loop, POLL_MS);
  }

  async function start() {
    session = await api('GET', '/api/session');
    document.getElementById('whoami').textContent = session.user + (session.admin ? ' (administrator)' : '');
    document.getElementById('logout').addEventListener('click', async function () {
      try { await api('POST', '/api/logout'); } catch (_) { /* gone anyway */ }
      location.href = '/login';
    });
    const root = document.getElementById('page');
    const m = location.pathname.match(/^\/vms\/([^/]+)\/([^/]+)$/);
    if (m) detailsPage(root, decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    else listPage(root);
    loop();
  }
  document.addEventListener('DOMContentLoaded', start);
})();
