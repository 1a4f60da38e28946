// edgeclip web page: upload or drop an image, show top-k labels with score bars, edit the label list.
"use strict";
const $ = (id) => document.getElementById(id);
let lastFile = null;
let captionMode = false; // captioner bundles: POST /caption, no label list

// label edits need the server's token: `edgeclip serve` prints the page address with #token=...; it is kept
// for this tab only and taken out of the address bar
const token = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("edgeclip-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("edgeclip-token") || "";
})();

function showError(msg) {
  const e = $("error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (_) { body = { error: `HTTP ${r.status}` }; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}

function parseLabels(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length > 0);
}

function renderResults(rows) {
  const ol = $("results");
  ol.replaceChildren();
  for (const r of rows) {
    const li = document.createElement("li");
    li.className = "result";
    const name = document.createElement("span");
    name.className = "label-name";
    name.textContent = r.label;
    name.title = `${r.label} (cosine ${r.cosine.toFixed(3)})`;
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * r.score).toFixed(1)}%`;
    track.appendChild(bar);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(100 * r.score).toFixed(1)}%`;
    li.append(name, track, score);
    ol.appendChild(li);
  }
}

async function labelFile(file) {
  lastFile = file;
  showError("");
  const url = URL.createObjectURL(file);
  const img = $("preview");
  img.src = url;
  img.hidden = false;
  $("drop-text").hidden = true;
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  try {
    if (captionMode) {
      const res = await api("/caption", { method: "POST", body: form });
      $("caption").textContent = res.caption;
      $("timing").textContent = res.model;
      document.body.dataset.state = "labeled";
      return;
    }
    form.append("topk", $("topk").value);
    const res = await api("/label", { method: "POST", body: form });
    renderResults(res.labels);
    $("timing").textContent = `${res.model} · ${res.ms} ms`;
    $("like-row").hidden = false;
    document.body.dataset.state = "labeled";
  } catch (err) {
    $("results").replaceChildren();
    $("timing").textContent = "";
    showError(err.message);
    document.body.dataset.state = "error";
  }
}

function renderKnown(known) {
  const box = $("known");
  box.replaceChildren();
  for (const name of known) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = name;
    chip.addEventListener("click", () => {
      const cur = parseLabels($("labels").value);
      if (!cur.includes(name)) $("labels").value = cur.concat([name]).join("\n");
    });
    box.appendChild(chip);
  }
}

async function applyLabels(names) {
  try {
    const res = await api("/api/labels", {
      method: "PUT",
      headers: { "Content-Type": "application/json", "X-Edgeclip-Token": token },
      body: JSON.stringify({ labels: names }),
    });
    $("labels").value = res.labels.join("\n");
    $("labels-status").textContent = `${res.labels.length} labels active`;
    const known = await api("/api/labels");
    renderKnown(known.known);
    if (lastFile) await labelFile(lastFile);
  } catch (err) {
    $("labels-status").textContent = "";
    showError(err.message);
  }
}

// "more like this": the shown image becomes the example of a new label (its embedding, on the server)
async function moreLikeThis() {
  if (!lastFile) return;
  const name = $("like-name").value.trim() || `like ${lastFile.name || "this image"}`;
  const form = new FormData();
  form.append("name", name);
  form.append("file", lastFile, lastFile.name || "upload");
  try {
    const res = await api("/api/labels/examples", {
      method: "POST", headers: { "X-Edgeclip-Token": token }, body: form,
    });
    $("labels").value = res.labels.join("\n");
    $("labels-status").textContent = `${res.labels.length} labels active (added "${res.added}" from an example)`;
    const known = await api("/api/labels");
    renderKnown(known.known);
    await labelFile(lastFile);
  } catch (err) {
    showError(err.message);
  }
}

async function init() {
  const info = await api("/api/info");
  if (!info.labels && info.caption) {
    captionMode = true;
    $("labels-panel").hidden = true;
    $("topk").parentElement.hidden = true;
    $("model-info").textContent = `${info.bundle || "bundle"} · captioner`;
    document.body.dataset.state = "ready";
    return;
  }
  $("model-info").textContent =
    `${info.bundle} · ${info.student || "?"} student of ${info.teacher || "?"} · ${info.precision} · ${info.input_size} px`;
  $("topk").value = String(info.topk);
  $("labels").value = info.labels.join("\n");
  $("labels-status").textContent = `${info.labels.length} labels active`;
  $("free-text-note").textContent = info.can_add_free_text_labels
    ? "or are embedded by the server's text encoder (any text)" : "(this server has no text encoder)";
  renderKnown(info.known_labels);
  document.body.dataset.state = "ready";
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) labelFile(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) labelFile(e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("topk").addEventListener("change", () => { if (lastFile) labelFile(lastFile); });
$("more-like-this").addEventListener("click", moreLikeThis);
$("apply-labels").addEventListener("click", () => applyLabels(parseLabels($("labels").value)));
$("reset-labels").addEventListener("click", async () => {
  const info = await api("/api/info");
  applyLabels(info.known_labels);
});
init().catch((err) => showError(`cannot reach the server: ${err.message}`));
