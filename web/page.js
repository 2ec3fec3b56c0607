/* The page (index.html): model list, file picker and drop zone, Translate, progress, before/after
 * slider, downloads and the status line. It only posts files to worker.js and shows what comes back.
 *
 *     python web/serve.py        # then open http://127.0.0.1:8000
 */
import { MAX_MEGAPIXELS } from "./images.js";

const $ = (id) => document.getElementById(id);
const state = { worker: null, card: null, ready: false, busy: false, file: null, urls: [] };

$("limit").textContent = `Up to ${MAX_MEGAPIXELS} megapixels (e.g. 6000 × 6000 px); larger scenes: predict.py.`;

async function listModels() {
  let models = [];
  try {
    const response = await fetch("models/index.json", { cache: "no-store" });
    if (response.ok) models = (await response.json()).models ?? [];
  } catch {
    // no index: the message below says how to make one
  }
  if (!models.length) {
    say("No models in models/ yet: run python export.py --weights W --web web/models/NAME.onnx, then reload.");
    $("backend").textContent = "Backend: none (no model)";
    return;
  }
  for (const m of models) {
    $("model").add(new Option(`${m.name} (${m.precision}, ${(m.bytes / 1e6).toFixed(1)} MB)`, m.card));
  }
  $("model").onchange = () => startWorker($("model").value);
  startWorker(models[0].card);
}

/** A fresh worker for the model whose card is `cardFile`; the previous one, and its work, end. */
async function startWorker(cardFile) {
  state.worker?.terminate();
  Object.assign(state, { worker: null, ready: false, busy: false });
  update();
  $("backend").textContent = "Backend: loading the model…";
  let card;
  try {
    card = await (await fetch(`models/${cardFile}`, { cache: "no-store" })).json();
  } catch {
    say(`models/${cardFile}: cannot read this model's card; export the model again`);
    $("backend").textContent = "Backend: none (no model)";
    return;
  }
  state.card = card;
  const diff = card.difference_from_float32;
  $("card").textContent = `${card.name}: ${card.direction}, ${card.precision}, ${card.tile} px tiles, ` +
    `${diff.mean_levels} levels from float32 on average (${diff.max_levels} at most)`;
  const worker = new Worker("worker.js", { type: "module" });
  worker.onmessage = ({ data }) => receive(data);
  worker.onerror = (e) => {
    say(`The page's worker stopped (${e.message ?? "it did not load"}): is web/vendor/ there? (cd web && npm ci)`);
    $("backend").textContent = "Backend: none (the worker stopped)";
    finish();
  };
  worker.postMessage({ type: "load", url: `models/${card.model}`, card });
  state.worker = worker;
}

function receive(data) {
  if (data.type === "ready") {
    state.ready = true;
    $("backend").textContent = `Backend: ${data.backend} (${data.why}) · model: ${state.card.name}`;
    $("backend").dataset.backend = data.backend;
  } else if (data.type === "progress") {
    $("progress").max = data.total;
    $("progress").value = data.done;
    $("tiles").textContent = `${data.done} / ${data.total} tiles`;
  } else if (data.type === "result") {
    show(data);
    $("message").textContent = data.note;
    finish();
  } else if (data.type === "error") {
    say(data.message);
    if (!state.ready) $("backend").textContent = "Backend: none (the model did not load)";
    finish();
  }
  update();
}

function choose(file) {
  state.file = file ?? null;
  $("chosen").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(2)} MB)` : "No file chosen.";
  say("");
  update();
}

function translateChosen() {
  if (!state.file || !state.ready || state.busy) return;
  state.busy = true;
  say("");
  $("status").textContent = `Translating ${state.file.name}…`;
  $("progress").value = 0;
  $("tiles").textContent = "";
  state.worker.postMessage({ type: "translate", file: state.file, bands: $("bands").value });
  update();
}

/** The result: before/after, downloads, and the status line (time, MP/s, backend, model). */
function show(r) {
  state.urls.forEach((u) => URL.revokeObjectURL(u));
  const url = (blob) => { const u = URL.createObjectURL(blob); state.urls.push(u); return u; };
  const stem = state.file.name.replace(/\.[^.]*$/, "");
  $("before").src = url(r.before ?? state.file);
  $("after").src = url(r.png);
  Object.assign($("png"), { href: $("after").src, download: `${stem}_map.png`, hidden: false });
  Object.assign($("tif"), { href: r.tif ? url(r.tif) : "", download: `${stem}_map.tif`, hidden: !r.tif });
  $("compare").hidden = false;
  const mp = (r.width * r.height) / 1e6;
  $("status").textContent = `${state.file.name}: ${r.width}×${r.height} px, ${r.tiles} tiles in ` +
    `${r.seconds.toFixed(2)} s (${(mp / r.seconds).toFixed(2)} MP/s) · backend ${$("backend").dataset.backend} · ` +
    `model ${state.card.name}`;
  Object.assign($("status").dataset, { tiles: r.tiles, seconds: r.seconds, network: r.network });
}

function finish() {
  state.busy = false;
  update();
}

function say(text) {
  $("message").textContent = text;
  if (text) $("status").textContent = "";
}

function update() {
  $("translate").disabled = !(state.file && state.ready && !state.busy);
}

$("file").onchange = () => choose($("file").files[0]);
$("translate").onclick = translateChosen;
$("split").oninput = () => { $("after").style.clipPath = `inset(0 0 0 ${$("split").value}%)`; };
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); };
listModels();
