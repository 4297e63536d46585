// Matrix list: one row per matrix with a stacked progress bar. `matrix` events update rows in place.

import { api, subscribe } from './api.js';
import { el, setText, fmtTime, STATUSES } from './util.js';

// The segments of a progress bar, in drawing order.
const SEGMENTS = ['succeeded', 'failed', 'cancelled', 'running', 'queued'];

export function progressBar(counts, total) {
  const bar = el('div', { class: 'progress', role: 'img' });
  for (const s of SEGMENTS) bar.append(el('span', { class: `seg seg-${s}`, dataset: { status: s } }));
  updateProgressBar(bar, counts, total);
  return bar;
}

export function updateProgressBar(bar, counts, total) {
  const n = total || STATUSES.reduce((sum, s) => sum + (counts[s] || 0), 0) || 1;
  for (const seg of bar.children) {
    const width = `${(100 * (counts[seg.dataset.status] || 0)) / n}%`;
    if (seg.style.width !== width) seg.style.width = width;
  }
  bar.setAttribute('aria-label', countsText(counts, total));
}

export function countsText(counts, total) {
  const done = (counts.succeeded || 0);
  const parts = [`${done}/${total} succeeded`];
  for (const s of ['running', 'queued', 'failed', 'cancelled']) if (counts[s]) parts.push(`${counts[s]} ${s}`);
  return parts.join(' · ');
}

export function mountMatrixList(root) {
  const tbody = el('tbody');
  const rows = new Map();  // matrix id -> {tr, cells}
  const empty = el('p', { class: 'muted', hidden: true }, 'No matrices yet. ', el('a', { href: '#/submit' }, 'Submit one'), '.');
  const error = el('p', { class: 'error', role: 'alert', hidden: true });

  root.append(
    el('div', { class: 'page-head' }, el('h1', {}, 'Matrices'), el('a', { class: 'button primary', href: '#/submit' }, 'New matrix')),
    error,
    el('table', { class: 'grid-table', 'aria-label': 'Matrices' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Name'),
        el('th', { scope: 'col', class: 'wide' }, 'Progress'),
        el('th', { scope: 'col' }, 'Jobs'),
        el('th', { scope: 'col' }, 'Created'),
        el('th', { scope: 'col' }, 'Finished'),
        el('th', { scope: 'col' }, 'Builds'))),
      tbody),
    empty);

  function upsert(m, atTop) {
    let row = rows.get(m.id);
    if (!row) {
      const cells = {
        name: el('a', { href: `#/matrix/${encodeURIComponent(m.id)}` }),
        bar: progressBar(m.counts || {}, m.total),
        counts: el('td', { class: 'muted' }),
        created: el('td', { class: 'num' }),
        finished: el('td', { class: 'num' }),
        builds: el('td'),
      };
      const tr = el('tr', { dataset: { matrixId: m.id } },
        el('th', { scope: 'row' }, cells.name), el('td', {}, cells.bar),
        cells.counts, cells.created, cells.finished, cells.builds);
      row = { tr, cells, data: {} };
      rows.set(m.id, row);
      if (atTop) tbody.prepend(tr); else tbody.append(tr);
    }
    Object.assign(row.data, m);
    const d = row.data;
    const counts = d.counts || {};
    setText(row.cells.name, d.name || d.id);
    updateProgressBar(row.cells.bar, counts, d.total);
    setText(row.cells.counts, countsText(counts, d.total));
    setText(row.cells.created, fmtTime(d.created_at));
    setText(row.cells.finished, fmtTime(d.finished_at));
    const builds = d.build_ids || [];
    setText(row.cells.builds, builds.length > 1 ? `⚠ ${builds.length} builds` : (builds[0] || '–'));
    row.cells.builds.title = builds.length > 1 ? `This matrix mixes builds: ${builds.join(', ')}` : '';
    row.cells.builds.className = builds.length > 1 ? 'warn' : 'muted mono';
    empty.hidden = rows.size > 0;
  }

  async function load() {
    try {
      const { matrices } = await api.matrices();
      const newestFirst = [...matrices].sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
      for (const m of newestFirst) upsert(m, false);
      empty.hidden = rows.size > 0;
      error.hidden = true;
    } catch (e) {
      error.textContent = `Could not load matrices: ${e.message}`;
      error.hidden = false;
    }
  }

  const unsubs = [subscribe('matrix', (m) => upsert(m, true)), subscribe('refetch', load)];
  // Dropped events come with a `resync`; a slow poll while anything is active also covers a stream
  // that stalls silently (a buffering proxy, a suspended tab).
  const safetyNet = setInterval(() => {
    if ([...rows.values()].some((r) => (r.data.counts || {}).queued || (r.data.counts || {}).running)) load();
  }, 15000);
  load();
  return { unmount: () => { clearInterval(safetyNet); unsubs.forEach((u) => u()); } };
}
