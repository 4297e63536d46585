// ratiod's HTTP API (docs/api.md) and its server-sent events, shared by all views.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};  // {"error", "line", "column", "path"} for invalid matrices
  }
}

async function request(method, path, body, contentType) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers['Content-Type'] = contentType || (typeof body === 'string' ? 'application/yaml' : 'application/json');
  }
  const res = await fetch(path, init);
  const type = res.headers.get('Content-Type') || '';
  const payload = type.includes('json') ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) throw new ApiError(res.status, typeof payload === 'object' ? payload : { error: payload });
  return payload;
}

const enc = encodeURIComponent;

export const api = {
  health: () => request('GET', '/api/health'),
  presets: () => request('GET', '/api/presets'),
  presetYaml: (name) => request('GET', `/api/presets/${enc(name)}`),
  expand: (yaml) => request('POST', '/api/expand', yaml),
  submit: (yaml) => request('POST', '/api/matrices', yaml),
  submitForced: (yaml) => request('POST', '/api/matrices?force=1', yaml),
  matrices: () => request('GET', '/api/matrices'),
  matrix: (id) => request('GET', `/api/matrices/${enc(id)}`),
  results: (id) => request('GET', `/api/matrices/${enc(id)}/results`),
  rerunMatrix: (id, statuses = ['failed']) => request('POST', `/api/matrices/${enc(id)}/rerun`, { status: statuses }),
  job: (id) => request('GET', `/api/jobs/${enc(id)}`),
  rerunJob: (id) => request('POST', `/api/jobs/${enc(id)}/rerun`, {}),
  cancelJob: (id) => request('POST', `/api/jobs/${enc(id)}/cancel`, {}),
  log: (id, tail = 200) => request('GET', `/api/jobs/${enc(id)}/log?tail=${tail}`),
  // names: array of metric names; after: only iterations > after (incremental fetches).
  metrics: (id, names, maxPoints, after) => {
    const q = [`names=${enc(names.join(','))}`, `max_points=${maxPoints}`];
    if (after !== undefined && after !== null) q.push(`after=${after}`);
    return request('GET', `/api/jobs/${enc(id)}/metrics?${q.join('&')}`);
  },
};

// One EventSource for the whole page; views subscribe to 'job', 'matrix' and 'metric' and
// must unsubscribe when they unmount (the returned function does it). 'refetch' listeners re-read
// their whole view: on every (re)connect, and when ratiod says this client missed events
// (`event: resync`, docs/api.md).
const listeners = { job: new Set(), matrix: new Set(), metric: new Set(), refetch: new Set() };
let source = null;

export function connectEvents(onState) {
  if (source) return;
  source = new EventSource('/api/events');
  source.onopen = () => {
    onState('live');
    for (const fn of listeners.refetch) fn();  // views refetch what they may have missed
  };
  source.addEventListener('resync', () => {
    for (const fn of listeners.refetch) fn();
  });
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? 'offline' : 'reconnecting');
  for (const type of ['job', 'matrix', 'metric']) {
    source.addEventListener(type, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { return; }
      for (const fn of listeners[type]) fn(data);
    });
  }
}

export function subscribe(type, fn) {
  listeners[type].add(fn);
  return () => listeners[type].delete(fn);
}
