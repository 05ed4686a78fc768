// The demo page: builds a form from the bundle's manifest, predicts through the edgeport client,
// and shows where every answer came from. All inference logic lives in the client (edgeport-client), which
// the page imports by its package name through index.html's import map, as an app would.
import { describeColumns, loadModel, ServerError } from 'edgeport-client';
import { tfjsRuntime } from 'edgeport-client/tfjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const REASONS = {
  'no-wasm': () => 'This browser can\'t run WebAssembly, so the server answered instead.',
  'load-error': (m) => `The model couldn't load in this browser (${m.localError?.message ?? 'unknown error'}), so the server answered instead.`,
  integrity: (m) => (m.localError?.code === 'no-webcrypto'
    ? 'This page is not served over https (or localhost), so the browser cannot verify the model file and will not run it; the server answered instead.'
    : `The model file failed its integrity check (${m.localError?.message ?? ''}), so the browser refused to run it and the server answered instead.`),
  loading: () => 'The model was still loading in this browser, and the server answered first.',
  'inference-error': () => 'Running the model in the browser failed, so the server answered instead.',
  timeout: (m) => `The browser took longer than ${m.policy.timeoutMs} ms, so the server answered instead.`,
  'low-confidence': (m, r) => `The browser's answer was only ${pct(r.browser_confidence)} confident (threshold ${pct(m.policy.confidenceThreshold)}), so the server was asked.`,
};

let site;
let model;
let columns = [];
let golden = null;
let servedByEdgeport = false; // site.json came from `edgeport serve`, which answers OIP v2 on this origin
let predictions = 0;
let lastRow = null; // the row of the prediction on screen, for "Why?"

function pct(x) { return x === undefined || x === null ? '?' : `${(100 * x).toFixed(0)}%`; }

function show(id) {
  for (const part of ['idle', 'result', 'error-state']) $(part).hidden = part !== id;
}

function showError(message, detail = '') {
  $('error-text').textContent = message;
  $('error-detail').textContent = detail;
  $('error-details').hidden = !detail;
  show('error-state');
}

// the site's own URL; "" means the server that serves this page; none (a site built without --fallback-url)
// means that server too when it is `edgeport serve` (it says so on site.json), and no fallback on a static host
function fallbackUrl() {
  if (site.fallback_url === null || site.fallback_url === undefined) return servedByEdgeport ? location.origin : null;
  return site.fallback_url || location.origin;
}

async function main() {
  try {
    const response = await fetch('./site.json');
    servedByEdgeport = response.headers.get('edgeport-fallback') === 'same-origin';
    site = await response.json();
  } catch (err) {
    $('model-title').textContent = 'This demo site is incomplete';
    showError(`site.json could not be read (${err.message}). Rebuild the site with edgeport demo.`);
    return;
  }
  const chosen = site.models.find((m) => m.name === params.get('model')) ?? site.models[0];
  $('models').replaceChildren(...site.models.map((m) => {
    const link = document.createElement('a');
    link.href = `?model=${encodeURIComponent(m.name)}`;
    link.textContent = m.name;
    if (m === chosen) link.setAttribute('aria-current', 'page');
    return link;
  }));
  $('footer').textContent = fallbackUrl() ? `Fallback server: ${fallbackUrl()} (Open Inference Protocol v2)` : 'No fallback server: this page answers only from the browser.';
  $('predict').addEventListener('click', predict);
  $('sample').addEventListener('click', fillSample);
  $('retry').addEventListener('click', predict);
  $('why').addEventListener('click', explain);
  await open(chosen);
}

// Marks, for anyone timing the page (bench/page_bench.py does):
//   edgeport:ready            the page can answer: the form is built and Predict works. With a fallback server
//                             that is as soon as the manifest is read (predictions race the server while the
//                             runtime loads); without one, once the runtime is ready
//   edgeport:runtime-ready    the in-browser runtime has loaded the model, or failed to (detail.error says why;
//                             the server answers from then on)
//   edgeport:first-prediction the first answer is on screen (detail.served_by says whose)
async function open(entry) {
  $('model-title').textContent = entry.name;
  $('model-meta').textContent = `${entry.task} · ${entry.format} · version ${entry.version}`;
  $('progress').hidden = false;
  const fallback = fallbackUrl();
  const options = {
    fallbackUrl: fallback ?? '',
    hedge: Boolean(fallback) && !params.has('nohedge'),
    onProgress: progress,
    forceNoWasm: params.has('nowasm'),
    runtimes: [tfjsRuntime],
    // counts of what this page predicted (never its rows) to the fallback server, for its drift and metrics;
    // ?telemetryms=N reports every N ms (tests), ?notelemetry turns it off
    telemetry: Boolean(fallback) && !params.has('notelemetry') && { flushMs: Number(params.get('telemetryms')) || undefined },
  };
  if (params.has('threshold')) options.confidenceThreshold = Number(params.get('threshold'));
  if (params.has('policy')) options.onLowConfidence = params.get('policy');
  if (params.has('timeout')) options.timeoutMs = Number(params.get('timeout'));
  // the sample rows, fetched beside the model rather than after it (predict-on-load needs them first)
  const sample = fetch(new URL('golden.json', new URL(entry.manifest, location.href))).then((r) => r.json())
    .then((g) => { golden = g; }).catch(() => {});
  try {
    model = await loadModel(entry.manifest, options);
  } catch (err) {
    $('progress').hidden = true;
    showError('The model can\'t run in this browser, and this page has no fallback server.', err.message);
    return;
  }
  columns = formColumns(model.manifest);
  buildForm(model.manifest);
  sample.then(() => { $('sample').disabled = !golden; });
  $('predict').disabled = false;
  performance.mark('edgeport:ready', { detail: { model: entry.name } });
  const runtime = (model.loading ?? Promise.resolve()).then(() => {
    $('progress').hidden = true;
    if (model.localError) $('model-meta').textContent += ' · running on the server';
    performance.mark('edgeport:runtime-ready', { detail: { model: entry.name, error: model.localError?.code ?? null } });
  });
  if (params.has('predict')) {
    // predict-on-load, for measuring the page: the sample's first row (or the form's defaults without one)
    await sample;
    fillSample(0);
    await predict();
  }
  await runtime;
}

function progress(event) {
  const text = { manifest: 'Reading the manifest…', model: 'Downloading the model…', runtime: 'Starting the runtime…', ready: 'Ready', fallback: 'Using the server' }[event.stage];
  const fraction = event.total ? event.loaded / event.total : event.stage === 'ready' ? 1 : 0;
  $('progress-text').textContent = event.total && event.stage === 'model' ? `${text} ${(event.loaded / 1024).toFixed(0)} / ${(event.total / 1024).toFixed(0)} KB` : text;
  $('progress-bar').style.width = `${Math.round(100 * fraction)}%`;
}

// ------------------------------------------------------------------ the form, built from the manifest

// a tensor input says what it holds (`kind`); one without a kind and of rank 3 or more is taken for an image
function isImage(manifest) {
  const [input] = manifest.inputs;
  return manifest.layout === 'matrix' && input.shape.length >= 3 && (input.kind ?? 'image') === 'image';
}

function isSequence(manifest) {
  const [input] = manifest.inputs;
  return manifest.layout === 'matrix' && input.shape.length === 3 && input.kind === 'sequence';
}

// a matrix input without column names (a .npy sample) still gets one field per value: f0, f1, ...
function formColumns(manifest) {
  const described = describeColumns(manifest);
  const [input] = manifest.inputs;
  if (described.length || manifest.layout !== 'matrix' || input.shape.length !== 2 || !(input.shape[1] > 0)) return described;
  return Array.from({ length: input.shape[1] }, (_, i) => ({ name: `f${i}`, stat: `x${i}`, dtype: input.dtype, nullable: input.nullable }));
}

function buildForm(manifest) {
  const form = $('form');
  form.replaceChildren();
  if (isImage(manifest)) {
    form.append(imageField(manifest));
    return;
  }
  if (isSequence(manifest)) {
    form.append(sequenceField(manifest));
    return;
  }
  const stats = manifest.feature_stats ?? {};
  for (const column of columns) {
    const label = document.createElement('label');
    label.textContent = column.name;
    let field;
    const stat = stats[column.stat ?? column.name] ?? {}; // samples.py names unnamed columns x0, x1, ...
    if (column.kind === 'text') {
      // free text the model tokenizes: a text box, never a list of the sample's texts
      field = document.createElement('textarea');
      field.rows = 4;
      field.placeholder = 'Type or paste text';
      label.className = 'text-field';
    } else if (column.dtype === 'string') {
      field = document.createElement('select');
      const options = column.categories ?? Object.keys(stat.frequencies ?? {});
      for (const value of options) field.append(new Option(value, value));
      const common = Object.entries(stat.frequencies ?? {}).sort((a, b) => b[1] - a[1])[0];
      if (common) field.value = common[0];
    } else {
      field = document.createElement('input');
      field.type = 'number';
      field.step = column.dtype.startsWith('int') ? '1' : 'any';
      if (stat.mean !== null && stat.mean !== undefined) field.value = roundish(stat.mean);
      if (stat.min !== null && stat.min !== undefined) field.placeholder = `${roundish(stat.min)} – ${roundish(stat.max)}`;
      if (!column.nullable) field.required = true;
    }
    field.name = column.name;
    field.dataset.dtype = column.dtype;
    label.append(field);
    form.append(label);
  }
}

// [steps, features]: a grid typed as text, one step per line (steps may be any number where the shape says null)
function sequenceField(manifest) {
  const input = manifest.inputs[0];
  const [steps, features] = input.shape.slice(1);
  const mean = manifest.feature_stats?.[input.name]?.mean ?? 0;
  const label = document.createElement('label');
  label.className = 'sequence-field';
  const caption = document.createElement('span');
  caption.textContent = `${input.name}: ${steps ?? 'any number of'} steps × ${features} features. One step per line, ` +
    'its values separated by commas or spaces.';
  const area = document.createElement('textarea');
  area.name = input.name;
  area.id = 'sequence';
  area.rows = Math.min(12, (steps ?? 4) + 1);
  area.spellcheck = false;
  area.wrap = 'off'; // a step is a line
  area.value = paintSequence(Array.from({ length: steps ?? 1 }, () => Array(features).fill(roundish(mean))));
  label.append(caption, area);
  return label;
}

function paintSequence(steps) { return steps.map((step) => step.join(', ')).join('\n'); }

// text stays text where it isn't a number, so the client's message names the value ("expected a number, got ...")
function readSequence() {
  return $('sequence').value.split('\n').map((line) => line.trim()).filter(Boolean)
    .map((line) => line.split(/[\s,;]+/).filter(Boolean).map((v) => (Number.isNaN(Number(v)) ? v : Number(v))));
}

function roundish(x) { return Math.abs(x) >= 100 ? x.toFixed(1) : Number(x.toPrecision(4)); }

function imageField(manifest) {
  const input = manifest.inputs[0];
  const [height, width] = input.shape.slice(1, 3);
  const stat = manifest.feature_stats?.[input.name] ?? { min: 0, max: 1 };
  // a div, not a label: a click inside a <label> would "click" its first control (the Clear button)
  const label = document.createElement('div');
  label.className = 'canvas-field';
  const caption = document.createElement('span');
  caption.textContent = `Draw, or upload an image (scaled to ${height}×${width})`;
  const canvas = document.createElement('canvas');
  canvas.width = canvas.height = 160;
  canvas.id = 'canvas';
  const ctx = canvas.getContext('2d');
  ctx.lineWidth = 22;
  ctx.lineCap = 'round';
  let drawing = false;
  const point = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  canvas.addEventListener('pointerdown', (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(...point(e)); });
  canvas.addEventListener('pointermove', (e) => { if (drawing) { ctx.lineTo(...point(e)); ctx.stroke(); } });
  window.addEventListener('pointerup', () => { drawing = false; });
  const clear = document.createElement('button');
  clear.type = 'button';
  clear.className = 'secondary';
  clear.textContent = 'Clear';
  clear.addEventListener('click', () => ctx.clearRect(0, 0, canvas.width, canvas.height));
  const upload = document.createElement('input');
  upload.type = 'file';
  upload.accept = 'image/*';
  upload.addEventListener('change', async () => {
    const bitmap = await createImageBitmap(upload.files[0]);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  });
  canvas.readPixels = () => {
    // average the drawing down to the model's grid, darkness scaled into the sample's value range
    const small = document.createElement('canvas');
    small.width = width;
    small.height = height;
    const sctx = small.getContext('2d');
    sctx.drawImage(canvas, 0, 0, width, height);
    const { data } = sctx.getImageData(0, 0, width, height);
    const values = [];
    for (let i = 0; i < width * height; i++) values.push(stat.min + (data[i * 4 + 3] / 255) * (stat.max - stat.min));
    return values;
  };
  canvas.paintPixels = (values) => {
    const cell = canvas.width / width;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    values.forEach((v, i) => {
      ctx.fillStyle = `rgba(0, 0, 0, ${Math.max(0, Math.min(1, (v - stat.min) / ((stat.max - stat.min) || 1)))})`;
      ctx.fillRect((i % width) * cell, Math.floor(i / width) * cell, cell, cell);
    });
  };
  const tools = document.createElement('div');
  tools.className = 'actions';
  tools.append(clear, upload);
  label.append(caption, canvas, tools);
  return label;
}

function readRow() {
  if (isImage(model.manifest)) return $('canvas').readPixels();
  if (isSequence(model.manifest)) return readSequence();
  const row = {};
  for (const field of $('form').elements) {
    if (!field.name) continue;
    if (field.dataset.dtype === 'string') row[field.name] = field.value;
    else row[field.name] = field.value === '' ? null : Number(field.value);
  }
  // a matrix row is an array in column order; a columns row is the object itself
  return model.manifest.layout === 'matrix' ? columns.map((c) => row[c.name]) : row;
}

function fillSample(index) {
  if (!golden?.rows?.length) return;
  const row = golden.rows[Number.isInteger(index) ? index : Math.floor(Math.random() * golden.rows.length)];
  if (isImage(model.manifest)) {
    $('canvas').paintPixels(row.flat(Infinity));
    return;
  }
  if (isSequence(model.manifest)) {
    $('sequence').value = paintSequence(row);
    return;
  }
  const values = Array.isArray(row) ? Object.fromEntries(columns.map((c, i) => [c.name, row[i]])) : row;
  for (const field of $('form').elements) {
    if (field.name in values) field.value = values[field.name] ?? '';
  }
}

// ------------------------------------------------------------------ predicting and showing where the answer came from

async function predict() {
  $('predict').disabled = true;
  try {
    const row = readRow();
    const [result] = await model.predict([row]);
    lastRow = row;
    render(result);
  } catch (err) {
    if (err instanceof ServerError) {
      const local = model.localError ? 'The model can\'t run in this browser, and the' : 'The';
      showError(`${local} fallback server can't be reached right now. Check your connection and try again.`,
        [model.localError && `In the browser: ${model.localError.message}`, `Server: ${err.message}`].filter(Boolean).join('\n'));
    } else {
      showError(err.message);
    }
  } finally {
    $('predict').disabled = false;
  }
}

function render(result) {
  const classes = model.classes ?? [];
  const [headline, detail] = describeResult(model.manifest.task, result);
  $('label').textContent = headline;
  $('confidence').textContent = detail;
  $('bars').replaceChildren(...(result.probabilities ?? []).map((p, i) => {
    const row = document.createElement('div');
    row.className = `prob${p === result.confidence ? ' top' : ''}`;
    const name = document.createElement('span');
    name.textContent = String(classes[i] ?? i);
    const track = document.createElement('div');
    track.className = 'track';
    const fill = document.createElement('div');
    fill.className = 'fill';
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement('span');
    value.textContent = pct(p);
    row.append(name, track, value);
    return row;
  }));
  $('served-by').textContent = result.served_by;
  $('served-by').className = `badge ${result.served_by}`;
  $('model-version').textContent = result.model_version;
  $('latency').textContent = `${result.latency_ms.toFixed(result.latency_ms < 10 ? 2 : 0)} ms`;
  const notice = $('notice');
  notice.className = 'notice';
  if (result.fallback_reason) {
    notice.textContent = REASONS[result.fallback_reason]?.(model, result) ?? `The server answered (${result.fallback_reason}).`;
    notice.hidden = false;
  } else if (result.low_confidence) {
    notice.textContent = `Only ${pct(result.confidence)} confident (threshold ${pct(model.policy.confidenceThreshold)}): treat this answer as a guess.`;
    notice.className = 'notice abstain';
    notice.hidden = false;
  } else {
    notice.hidden = true;
  }
  notice.dataset.reason = result.fallback_reason ?? '';
  $('why-area').hidden = !explainable(model.manifest);
  $('why-result').hidden = true;
  $('why-error').hidden = true;
  show('result');
  if (predictions++ === 0) performance.mark('edgeport:first-prediction', { detail: { served_by: result.served_by } });
}

// ------------------------------------------------------------------ "Why?": the top contributing columns

// the fallback server explains a row per named column (shap over the ONNX session it serves), for classifiers and
// regressors; a page without a fallback server has no button
function explainable(manifest) {
  const [input] = manifest.inputs;
  const named = manifest.layout === 'columns' || (manifest.layout === 'matrix' && input.columns && input.shape.length === 2);
  return Boolean(fallbackUrl()) && named && ['classification', 'regression'].includes(manifest.task);
}

async function explain() {
  const { name, version } = model.manifest;
  const url = `${fallbackUrl().replace(/\/$/, '')}/v2/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/explain`;
  $('why').disabled = true;
  $('why-error').hidden = true;
  try {
    const response = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ row: lastRow }) });
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(payload.error ?? `the server answered ${response.status}`);
    renderWhy(payload);
  } catch (err) {
    $('why-error').textContent = `No explanation right now: ${err.message}`;
    $('why-error').hidden = false;
  } finally {
    $('why').disabled = false;
  }
}

// the five largest attributions as bars from a zero line: right (positive) pushes the answer up, left pulls it down
function renderWhy(explanation) {
  const top = explanation.attributions.slice(0, 5);
  const largest = Math.max(...top.map((a) => Math.abs(a.attribution)), 1e-12);
  const classifier = model.manifest.task === 'classification';
  const shown = (x) => (classifier ? pct(x) : format(x));
  $('why-caption').textContent = `${classifier ? `P(${explanation.target})` : explanation.target}: ${shown(explanation.prediction)}, `
    + `against ${shown(explanation.base_value)} on average. What moved it (SHAP, on the server's model):`;
  $('why-bars').replaceChildren(...top.map((a) => {
    const row = document.createElement('div');
    row.className = `why-row ${a.attribution >= 0 ? 'positive' : 'negative'}`;
    const name = document.createElement('span');
    name.textContent = `${a.feature} = ${a.value ?? 'missing'}`;
    name.title = name.textContent;
    const track = document.createElement('div');
    track.className = 'why-track';
    const halves = [document.createElement('div'), document.createElement('div')];
    const fill = document.createElement('div');
    fill.className = 'fill';
    fill.style.width = `${(100 * Math.abs(a.attribution) / largest).toFixed(1)}%`;
    halves[a.attribution >= 0 ? 1 : 0].append(fill);
    track.append(...halves);
    const value = document.createElement('span');
    value.textContent = `${a.attribution >= 0 ? '+' : '−'}${Math.abs(a.attribution).toPrecision(2)}`;
    row.append(name, track, value);
    return row;
  }));
  $('why-result').hidden = false;
}

// the headline and the line under it, by what the outputs mean (the manifest's task)
function describeResult(task, result) {
  if (task === 'anomaly-detection') {
    return [Number(result.label) === -1 ? 'Outlier' : 'Inlier', `score ${format(result.score)} (below 0 is an outlier)`];
  }
  if (task === 'clustering') {
    const nearest = result.distances?.[Number(result.label)];
    return [`Cluster ${result.label}`, nearest === undefined ? '' : `distance to its centre ${format(nearest)}`];
  }
  if (task === 'multi-output-classification') return [[result.label].flat().join(', '), 'one label per target'];
  if (result.value !== undefined) return [format(result.value), ''];
  return [String(result.label), `${pct(result.confidence)} confident`];
}

function format(value) { return Array.isArray(value) ? value.map(format).join(', ') : Number(value).toPrecision(5); }

main().catch((err) => showError(`The demo failed to start: ${err.message}`));
