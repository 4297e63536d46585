// Submit page: paste a matrix (YAML or JSON) or start from a preset, see the expanded jobs and their
// parameter counts (POST /api/expand, a dry run) and submit. An invalid matrix shows its error at the
// offending line: ratiod's 400 carries {"error", "line", "column", "path"} (1-based line and column).

import { api } from './api.js';
import { el, setText, fmtCount } from './util.js';

const PREVIEW_DELAY_MS = 600;
const MAX_SHOWN = 5;  // problems listed under the editor

export function mountSubmit(root) {
  const presetPick = el('select', { id: 'preset', 'aria-label': 'Preset', onchange: loadPreset },
    el('option', { value: '' }, '— paste your own —'));
  const gutter = el('div', { class: 'gutter', 'aria-hidden': 'true' });
  const editor = el('textarea', {
    id: 'matrix-yaml', class: 'code', spellcheck: 'false', 'aria-label': 'Matrix YAML',
    'aria-describedby': 'yaml-error', rows: '24', oninput: onEdit, onscroll: syncGutter,
    placeholder: 'name: my-ablation\nbase:\n  model: {n_layer: 2, n_embd: 64, n_head: 4}\nsteps:\n  - {id: 0, name: baseline}\n  - {id: 1, name: + RA, ra: true}',
  });
  const errorBox = el('div', { id: 'yaml-error', class: 'yaml-error', role: 'alert', hidden: true });
  const previewBtn = el('button', { type: 'button', onclick: () => preview() }, 'Preview');
  const submitBtn = el('button', { type: 'button', class: 'primary', onclick: submit, disabled: true }, 'Submit');
  const force = el('input', { type: 'checkbox', id: 'force' });
  const summary = el('p', { class: 'muted', role: 'status' }, 'Paste a matrix or pick a preset.');
  const warnings = el('ul', { class: 'warnings', 'aria-label': 'Warnings' });
  const jobsBody = el('tbody');
  const jobsTable = el('table', { class: 'grid-table', 'aria-label': 'Expanded jobs', hidden: true },
    el('thead', {}, el('tr', {}, ...['Step', 'Name', 'Params', 'Added', 'Effective', 'Config hash', 'Tags']
      .map((h) => el('th', { scope: 'col' }, h)))),
    jobsBody);

  root.append(
    el('div', { class: 'page-head' }, el('h1', {}, 'New matrix')),
    el('div', { class: 'submit-layout' },
      el('section', { class: 'card', 'aria-label': 'Matrix definition' },
        el('div', { class: 'section-head' }, el('label', { for: 'preset' }, 'Start from a preset'), presetPick),
        el('div', { class: 'editor' }, gutter, editor),
        errorBox,
        el('div', { class: 'actions' }, previewBtn, submitBtn,
          el('label', { class: 'toggle', title: 'Run again even when an identical config already has a result' }, force, ' force rerun of cached configs'))),
      el('section', { class: 'card', 'aria-label': 'Dry run' },
        el('h2', {}, 'Dry run'), summary, warnings, el('div', { class: 'scroll-x' }, jobsTable))));

  let timer = null;
  let generation = 0;  // drops answers to outdated previews
  let errorLines = new Set();  // 1-based lines marked in the gutter

  function onEdit() {
    renderGutter();
    submitBtn.disabled = true;
    clearTimeout(timer);
    timer = setTimeout(preview, PREVIEW_DELAY_MS);
  }

  function renderGutter() {
    const lines = editor.value.split('\n').length;
    if (gutter.childElementCount !== lines) {
      gutter.replaceChildren(...Array.from({ length: lines }, (_, i) => el('div', {}, String(i + 1))));
    }
    for (const [i, div] of [...gutter.children].entries()) div.classList.toggle('error-line', errorLines.has(i + 1));
    syncGutter();
  }

  function syncGutter() { gutter.scrollTop = editor.scrollTop; }

  async function loadPreset() {
    if (!presetPick.value) return;
    try {
      editor.value = await api.presetYaml(presetPick.value);
      onEdit();
      preview();
    } catch (e) {
      showError({ error: `Could not load preset ${presetPick.value}: ${e.message}` });
    }
  }

  async function preview() {
    clearTimeout(timer);
    const text = editor.value;
    if (!text.trim()) { clearError(); setText(summary, 'Paste a matrix or pick a preset.'); return; }
    const mine = ++generation;
    setText(summary, 'Expanding…');
    try {
      const res = await api.expand(text);
      if (mine !== generation) return;
      clearError();
      renderExpansion(res);
      submitBtn.disabled = false;
    } catch (e) {
      if (mine !== generation) return;
      showError(e.body && e.body.error ? e.body : { error: e.message });
      jobsTable.hidden = true;
      warnings.replaceChildren();
      setText(summary, 'Fix the error to see the jobs.');
    }
  }

  function renderExpansion(res) {
    const jobs = res.jobs || [];
    const m = res.matrix || {};
    setText(summary, `${m.name || 'matrix'}: ${jobs.length} job${jobs.length === 1 ? '' : 's'}`);
    warnings.replaceChildren(...(res.warnings || []).map((w) => el('li', { class: 'warn' }, typeof w === 'string' ? w : (w.message || JSON.stringify(w)))));
    jobsBody.replaceChildren(...jobs.map((j) => {
      const p = j.params || {};
      return el('tr', {},
        el('td', {}, String(j.step)),
        el('th', { scope: 'row' }, j.name || ''),
        el('td', { class: 'num', title: String(p.total ?? '') }, fmtCount(p.total)),
        el('td', { class: 'num', title: String(p.added ?? '') }, fmtCount(p.added)),
        el('td', { class: 'num', title: String(p.effective ?? '') }, fmtCount(p.effective)),
        el('td', { class: 'mono' }, j.config_hash || ''),
        el('td', { class: 'muted small' }, ((j.config && j.config.tags) || []).join(', ')));
    }));
    jobsTable.hidden = false;
  }

  // Shows every problem ratiod found (the primary first, at most MAX_SHOWN): its message, the offending
  // line with a caret under the column, and a mark in the gutter.
  function showError(body) {
    const problems = (Array.isArray(body.errors) && body.errors.length ? body.errors : [body]).slice(0, MAX_SHOWN);
    errorLines = new Set(problems.map((p) => p.line).filter((l) => Number.isInteger(l) && l > 0));
    errorBox.replaceChildren(...problems.map(renderProblem));
    const more = (body.errors || []).length - problems.length;
    if (more > 0) errorBox.append(el('p', { class: 'muted' }, `… and ${more} more.`));
    errorBox.hidden = false;
    editor.setAttribute('aria-invalid', 'true');
    submitBtn.disabled = true;
    renderGutter();
  }

  function renderProblem(p) {
    const line = Number.isInteger(p.line) && p.line > 0 ? p.line : null;
    // The message may start with its own "file:line:column: " location; the heading already says it.
    const located = `${p.file}:${p.line}:${p.column}: `;
    const message = p.file && p.error.startsWith(located) ? p.error.slice(located.length) : p.error;
    const div = el('div', { class: 'problem' },
      el('p', {}, el('strong', {}, line ? `Line ${line}${p.column ? `, column ${p.column}` : ''}: ` : 'Error: '), message));
    if (line) {
      const text = editor.value.split('\n')[line - 1] ?? '';
      const col = Math.max(1, Number(p.column) || 1);
      div.append(
        el('pre', { class: 'excerpt', 'aria-label': `Line ${line}` },
          el('span', { class: 'ln' }, String(line).padStart(4) + ' │ '), text, '\n',
          el('span', { class: 'ln' }, '     │ '), ' '.repeat(col - 1), el('span', { class: 'caret' }, '^')),
        el('button', { type: 'button', class: 'link', onclick: () => goToLine(line, col) }, `Go to line ${line}`));
    }
    return div;
  }

  function clearError() {
    errorLines = new Set();
    errorBox.hidden = true;
    editor.removeAttribute('aria-invalid');
    renderGutter();
  }

  function goToLine(line, col) {
    const lines = editor.value.split('\n');
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    editor.focus();
    editor.setSelectionRange(offset + col - 1, offset + (lines[line - 1] || '').length);
  }

  async function submit() {
    submitBtn.disabled = true;
    try {
      const res = await (force.checked ? api.submitForced(editor.value) : api.submit(editor.value));
      location.hash = `#/matrix/${encodeURIComponent(res.id)}`;
    } catch (e) {
      showError(e.body && e.body.error ? e.body : { error: e.message });
    }
  }

  async function loadPresets() {
    try {
      const { presets } = await api.presets();
      presetPick.append(...presets.map((p) => el('option', { value: p.name, title: p.description || '' },
        `${p.name}${p.steps ? ` (${p.steps} steps)` : ''}`)));
    } catch (e) {
      presetPick.disabled = true;
      presetPick.title = `Presets unavailable: ${e.message}`;
    }
  }

  renderGutter();
  loadPresets();
  return { unmount: () => clearTimeout(timer) };
}
