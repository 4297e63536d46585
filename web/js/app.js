// Entry point: hash routes, the live-connection indicator and the slot summary.
//   #/                         matrix list
//   #/matrix/{id}              one matrix (table, ablation grid, curves)
//   #/matrix/{id}/job/{jobId}  the same with one job's detail panel open
//   #/submit                   paste YAML or pick a preset, dry run, submit

import { api, connectEvents } from './api.js';
import { el } from './util.js';
import { mountMatrixList } from './matrix_list.js';
import { mountMatrixView } from './matrix_view.js';
import { mountSubmit } from './submit.js';

const view = document.getElementById('view');
let current = null;  // {route, unmount, update}

// ratiod's ids are integers in JSON; keep route ids the same type so Map lookups match.
const toId = (s) => (/^\d+$/.test(s) ? Number(s) : s);

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'submit') return { name: 'submit' };
  if (parts[0] === 'matrix' && parts[1]) return { name: 'matrix', id: toId(parts[1]), jobId: parts[3] ? toId(parts[3]) : null };
  return { name: 'matrices' };
}

function route() {
  const next = parseRoute();
  for (const a of document.querySelectorAll('[data-nav]')) {
    const active = a.dataset.nav === (next.name === 'submit' ? 'submit' : 'matrices');
    if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  // Moving between a matrix and one of its jobs keeps the matrix view (and its live state).
  if (current && current.route.name === 'matrix' && next.name === 'matrix' && current.route.id === next.id) {
    current.route = next;
    current.update(next);
    return;
  }
  if (current) current.unmount();
  view.replaceChildren();
  const mount = { matrices: mountMatrixList, matrix: mountMatrixView, submit: mountSubmit }[next.name];
  const handle = mount(view, next);
  current = { route: next, unmount: handle.unmount, update: handle.update || (() => {}) };
}

function showLiveState(state) {
  const live = document.getElementById('live');
  live.textContent = { live: 'live', reconnecting: 'reconnecting…', offline: 'offline' }[state];
  live.dataset.state = state;
}

async function refreshSlots() {
  const slots = document.getElementById('slots');
  try {
    const h = await api.health();
    const busy = (h.slots || []).filter((s) => s.job !== null && s.job !== undefined).length;
    slots.replaceChildren(el('span', {}, `${busy}/${(h.slots || []).length} slots busy · ${h.queued ?? 0} queued`));
    slots.title = `ratiod ${h.version || ''} build ${h.build_id || '?'}`;
  } catch {
    slots.textContent = 'ratiod unreachable';
  }
}

window.addEventListener('hashchange', route);
connectEvents(showLiveState);
route();
refreshSlots();
setInterval(refreshSlots, 10000);
