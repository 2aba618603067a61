// The rnnkit lab page: one function per panel, the server's JSON API underneath.
// Every string from the server or the user is data: it enters the page as text nodes, through
// el() and svg(), never as HTML (the lab's CSP turns on Trusted Types, so the browser itself
// refuses a string assigned to innerHTML).
const $ = (id) => document.getElementById(id);
let run = null;                                   // the selected run's summary (GET /api/runs)
let scored = null;                                // the last "Read a text" result

function el(tag, props = {}, ...children) {
  // an element with these properties (dataset: an object), children as nodes or plain text
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(e.dataset, value); else e[key] = value;
  }
  e.append(...children);
  return e;
}

function svg(tag, attrs = {}, text = null) {
  const e = document.createElementNS($("curve").namespaceURI, tag);       // the SVG namespace
  for (const [key, value] of Object.entries(attrs)) e.setAttribute(key, value);
  if (text !== null) e.textContent = text;
  return e;
}

const runPath = (what) => `/api/runs/${encodeURIComponent(run.name)}/${what}`;

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await response.json();
  if (!response.ok) throw Object.assign(new Error(data.error), {data, status: response.status});
  return data;
}

// ---- runs and panels --------------------------------------------------------------------------
async function loadRuns() {
  const {runs} = await api("/api/runs");
  const select = $("run");
  select.replaceChildren(...runs.map((r) => el("option", {value: r.name}, r.name)));
  const pick = () => {
    run = runs.find((r) => r.name === select.value);
    $("run-info").textContent = `${run.cell.toUpperCase()} ${run.layers}×${run.hidden}, ` +
      `${run.parameters.toLocaleString()} parameters, vocabulary ${run.vocab}, ` +
      `${run.epochs} epochs` + (run.best_val_ppl ? `, best validation perplexity ${run.best_val_ppl.toFixed(2)}` : "") +
      (run.ngram ? ` (network alone); ${run.ngram_val_ppl ? run.ngram_val_ppl.toFixed(2) + " " : ""}` +
        `with a ${run.ngram}-gram model mixed into its predictions` : "");
    $("gen-prefix").value = run.prefix;
    $("gen-top-k").max = run.vocab;
    $("units-layer").replaceChildren(...[...Array(run.num_layers).keys()].map((i) => el("option", {value: i}, String(i))));
    $("units-state").replaceChildren(...run.states.map((s) => el("option", {value: s}, s)));
    $("units-unit").max = run.hidden - 1;
    const recurrent = run.states.length > 0;     // a transformer has no states to show
    for (const id of ["units-layer", "units-state", "units-unit", "units-go"]) $(id).disabled = !recurrent;
    $("units-status").textContent = recurrent ? "" :
      `hidden units are for recurrent cells: a ${run.cell} run has no states to show`;
    loadTraining();
  };
  select.onchange = pick;
  pick();
}

function setupPanels() {
  for (const button of document.querySelectorAll("nav button")) {
    button.onclick = () => {
      document.querySelectorAll("nav button, .panel").forEach((e) => e.classList.remove("active"));
      button.classList.add("active");
      $(button.dataset.panel).classList.add("active");
    };
  }
  for (const input of document.querySelectorAll("input[type=range]")) {
    const show = () => { input.nextElementSibling.value = input.value === "0" && input.id === "gen-top-k" ? "off" : input.value; };
    input.oninput = show;
    show();
  }
}

// ---- 1. generate: streamed over server-sent events ---------------------------------------------
let abort = null;

function generateRequest() {
  const q = {prefix: $("gen-prefix").value, num_chars: $("gen-length").value,
             num_samples: $("gen-samples").value, temperature: $("gen-temperature").value};
  if ($("gen-top-k").value !== "0") q.top_k = $("gen-top-k").value;
  if ($("gen-top-p").value !== "1") q.top_p = $("gen-top-p").value;
  if ($("gen-seed").value !== "") q.seed = $("gen-seed").value;
  return q;
}

async function generate() {
  const q = generateRequest();
  const out = $("gen-out");
  out.replaceChildren();
  $("gen-status").textContent = "";
  if ($("gen-beam-on").checked) {                 // beam search: one JSON answer, best first
    try {
      const {samples} = await api(runPath("generate"),
                                  {...q, beam: $("gen-beam").value, temperature: 0});
      for (const s of samples) {
        const pre = out.appendChild(el("pre", {title: `log-probability ${s.log_prob.toFixed(3)}`}, s.text));
        showCopies(pre, s.segments);
      }
    } catch (e) { $("gen-status").textContent = e.message; }
    return;
  }
  abort = new AbortController();
  $("gen-go").disabled = true;
  $("gen-stop").disabled = false;
  try {
    const response = await fetch(`${runPath("stream")}?${new URLSearchParams(q)}`,
                                 {signal: abort.signal});
    if (!response.ok) throw new Error((await response.json()).error);
    const pres = [];
    await readEvents(response, (kind, data) => {
      if (kind === "start") {
        for (let i = 0; i < data.num_samples; i++) {
          pres.push(out.appendChild(el("pre", {}, data.prefix)));
        }
      } else if (kind === "chunk") {
        pres[data.sample].textContent += data.text;
      } else if (kind === "done") {
        pres.forEach((pre, i) => showCopies(pre, data.segments && data.segments[i]));
        $("gen-status").textContent = "done";
      } else if (kind === "error") {
        $("gen-status").textContent = data.error;
      }
    });
  } catch (e) {
    $("gen-status").textContent = e.name === "AbortError" ? "stopped" : e.message;
  } finally {
    $("gen-go").disabled = false;
    $("gen-stop").disabled = true;
  }
}

function showCopies(pre, segments) {
  // the sample again, its copies of the training text underlined; hover: where they occur
  if (!segments) return;
  pre.replaceChildren(...segments.map((seg) => seg.copy === null ? seg.text : el("u", {
    className: "copy",
    title: `${seg.copy.tokens} tokens copied from the training text (at token ` +
           `${seg.copy.train_at}):\n…${seg.copy.context}…`}, seg.text)));
}

async function readEvents(response, onEvent) {
  // text/event-stream: "event: kind\ndata: json\n\n" blocks, arriving in any pieces
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const kind = block.match(/^event: (.*)$/m)[1];
      onEvent(kind, JSON.parse(block.match(/^data: (.*)$/m)[1]));
    }
  }
}

// ---- 2. read a text: surprisal per character, the model's guesses on hover --------------------
async function score(unknown = "refuse") {
  $("read-status").textContent = "scoring…";
  $("read-unknown").hidden = true;
  $("read-out").replaceChildren();                // no stale shading from an earlier text
  $("read-summary").textContent = "";
  try {
    scored = await api(runPath("score"), {text: $("read-text").value, unknown});
  } catch (e) {
    $("read-status").textContent = "";
    if (e.data && e.data.unknown) return showUnknown(e.data);
    $("read-status").textContent = e.message;
    return;
  }
  const bits = scored.bits_per_char;
  $("read-summary").textContent = `${bits.toFixed(3)} bits per character, perplexity ` +
    `${Math.pow(2, bits).toFixed(2)}, over ${scored.tokens.length.toLocaleString()} characters`;
  $("read-status").textContent = "";
  renderShaded($("read-out"), scored.tokens, scored.bits.map((b) => b === null ? null : surprisalColour(b)),
               (i) => guessesTable(i));
}

function showUnknown(data) {
  const box = $("read-unknown");
  box.hidden = false;
  const parts = ["Not in the run's vocabulary: "];
  data.unknown.forEach((u, k) => parts.push(k ? "; " : "", el("code", {}, JSON.stringify(u.char)),
    ` at ${u.positions.slice(0, 8).join(", ")}${u.positions.length > 8 ? "…" : ""}`));
  const anyway = el("button", {id: "read-anyway"}, "score the rest, reading those as <unk>");
  anyway.onclick = () => score("unk");
  box.replaceChildren(...parts, " ", anyway);
}

function surprisalColour(bits) {
  // 0 bits: white, 4 bits: amber, 8 bits or more: red
  const t = Math.min(bits / 8, 1);
  const [from, to, u] = t < 0.5 ? [[255, 255, 255], [253, 174, 97], t / 0.5]
                                : [[253, 174, 97], [215, 48, 39], (t - 0.5) / 0.5];
  return `rgb(${from.map((c, k) => Math.round(c + (to[k] - c) * u)).join(",")})`;
}

function guessesTable(i) {
  if (i === 0) return ["the first character: nothing to predict it from"];
  const rows = scored.top_ids[i].map((id, k) => el("tr", {},
    el("td", {}, JSON.stringify(scored.vocab[id])), el("td", {}, `${(100 * scored.top_probs[i][k]).toFixed(1)}%`)));
  return [el("div", {}, `${JSON.stringify(scored.tokens[i])}: ${(100 * scored.prob[i]).toFixed(1)}%, ` +
                        `${scored.bits[i].toFixed(2)} bits`),
          el("table", {className: "guesses"}, ...rows)];
}

function renderShaded(box, tokens, colours, tooltip) {
  // tooltip(i): the nodes (or text) to show when token i is under the mouse
  const sep = run.token === "word" ? " " : "";
  box.replaceChildren(...tokens.map((t, i) => {
    const span = el("span", {dataset: {i}}, (i > 0 ? sep : "") + (t === "\n" ? "↵\n" : t));
    if (colours[i]) span.style.background = colours[i];     // CSSOM: allowed by the CSP
    return span;
  }));
  box.onmousemove = (event) => {
    const i = event.target.dataset.i;
    const tip = $("tooltip");
    if (i === undefined) { tip.hidden = true; return; }
    tip.replaceChildren(...[tooltip(Number(i))].flat());
    tip.hidden = false;
    tip.style.left = `${event.clientX + 14}px`;
    tip.style.top = `${event.clientY + 14}px`;
  };
  box.onmouseleave = () => { $("tooltip").hidden = true; };
}

// ---- 3. hidden units: the text shaded by one unit ----------------------------------------------
let unitData = null;                                // {tokens, shape, scale, values: Int8Array}

async function apiUnits(body) {
  // the units in binary: a uint32 (little-endian) header length, the JSON header, then the
  // (T, H) int8 values; an error is JSON as for every other call
  const response = await fetch(runPath("units"), {method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "Accept": "application/octet-stream"}});
  if (!response.ok) {
    const data = await response.json();
    throw Object.assign(new Error(data.error), {data, status: response.status});
  }
  const buffer = await response.arrayBuffer();
  const length = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  return {...header, values: new Int8Array(buffer, 4 + length)};
}

async function loadUnits() {
  $("units-status").textContent = "computing…";
  try {
    unitData = await apiUnits({text: $("read-text").value, unknown: "unk",
      layer: Number($("units-layer").value), state: $("units-state").value});
    const [steps, width] = unitData.shape;
    $("units-status").textContent = `${steps.toLocaleString()} characters × ${width} units`;
    showRanking(unitData.ranking);
    showUnit();
  } catch (e) { $("units-status").textContent = e.message; }
}

function showUnit() {
  if (!unitData) return;
  const [steps, width] = unitData.shape;
  const unit = Math.max(0, Math.min(width - 1, Number($("units-unit").value)));
  const value = (t) => unitData.values[t * width + unit] / 127;        // −1 … 1 of this unit's max
  const colours = [...Array(steps).keys()].map((t) => divergingColour(value(t)));
  renderShaded($("units-out"), unitData.tokens, colours, (t) =>
    `unit ${unit} after ${JSON.stringify(unitData.tokens[t])}: ${(value(t) * unitData.scale[unit]).toFixed(3)}`);
}

function divergingColour(v) {
  const t = Math.min(Math.abs(v), 1);
  const mix = (a) => Math.round(255 + (a - 255) * t);
  return v < 0 ? `rgb(${mix(33)},${mix(102)},${mix(172)})` : `rgb(${mix(178)},${mix(24)},${mix(43)})`;
}

function showRanking(ranking) {
  $("units-ranking").replaceChildren(...Object.entries(ranking).map(([feature, units]) =>
    el("div", {}, el("b", {}, feature), el("br"), ...units.map(([u, r]) => {
      const b = el("button", {dataset: {unit: u}, title: `correlation ${r}`}, `${u} (${r.toFixed(2)})`);
      b.onclick = () => { $("units-unit").value = u; showUnit(); };
      return b;
    }))));
}

// ---- 4. training: the perplexity curves, refreshed while a run trains -------------------------
async function loadTraining() {
  if (!run) return;
  const {metrics, config} = await api(runPath("metrics"));
  drawCurve(metrics);
  $("training-status").textContent = metrics.length ? `${metrics.length} epochs so far (refreshed every 5 s)` : "no epochs yet";
  $("config").replaceChildren(...Object.entries(config).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, JSON.stringify(v)))));
}

function drawCurve(metrics) {
  const box = $("curve"), W = 640, H = 300, pad = 44;
  const series = [["train", metrics.map((m) => m.train_ppl)], ["val", metrics.map((m) => m.val_ppl)]];
  const all = series.flatMap(([, ys]) => ys).filter((y) => y > 0);
  if (!all.length) { box.replaceChildren(); return; }
  const lo = Math.log(Math.min(...all)), hi = Math.log(Math.max(...all)) + 1e-9;
  const x = (i) => pad + (W - 2 * pad) * (metrics.length > 1 ? i / (metrics.length - 1) : 0.5);
  const y = (v) => H - pad - (H - 2 * pad) * (Math.log(v) - lo) / (hi - lo || 1);
  const parts = [
    svg("line", {x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#bbb"}),
    svg("line", {x1: pad, y1: pad, x2: pad, y2: H - pad, stroke: "#bbb"}),
    svg("text", {x: W / 2, y: H - 10}, "epoch"),
    svg("text", {x: 4, y: pad - 12}, "perplexity (log scale)"),
    svg("text", {x: 4, y: y(Math.exp(lo)) + 4}, Math.exp(lo).toFixed(2)),
    svg("text", {x: 4, y: y(Math.exp(hi)) + 4}, Math.exp(hi).toFixed(2)),
    svg("text", {x: W - pad - 10, y: H - pad + 16}, String(metrics.length))];
  series.forEach(([name, ys], k) => {
    const pts = ys.map((v, i) => v ? `${x(i).toFixed(1)},${y(v).toFixed(1)}` : null).filter(Boolean);
    if (!pts.length) return;
    parts.push(svg("polyline", {class: name, fill: "none", "stroke-width": 2, points: pts.join(" ")}),
               svg("line", {class: name, x1: W - 150, x2: W - 130, y1: 20 + 16 * k, y2: 20 + 16 * k, "stroke-width": 2}),
               svg("text", {x: W - 124, y: 24 + 16 * k}, name === "val" ? "validation" : "train"));
  });
  box.replaceChildren(...parts);
}

// ---- start ---------------------------------------------------------------------------------------
setupPanels();
$("gen-go").onclick = generate;
$("gen-stop").onclick = () => abort && abort.abort();
$("read-go").onclick = () => score();
$("read-validation").onclick = async () => {
  $("read-text").value = (await api(`${runPath("validation")}?chars=2000`)).text;
  score();
};
$("units-go").onclick = loadUnits;
$("units-unit").oninput = showUnit;
setInterval(loadTraining, 5000);
loadRuns();
