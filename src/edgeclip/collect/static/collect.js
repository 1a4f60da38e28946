// The collection's search page: text or example-image search over the fleet's frames, with filters.
const params = new URLSearchParams(location.search);
const token = params.get("token");
const headers = token ? { "X-Edgeclip-Token": token } : {};
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  if (text !== undefined) e.textContent = text;
  return e;
}

async function stats() {
  const r = await fetch("/api/stats", { headers });
  const s = await r.json();
  if (!r.ok) { document.getElementById("error").textContent = s.error; return; }
  const v = s.verdicts || {};
  document.getElementById("stats").textContent =
    `${s.events} frames from ${Object.keys(s.per_device || {}).length} devices · ${s.groups} scenes · ` +
    `teacher confirmed ${v.confirmed || 0}, rejected ${v.rejected || 0}, pending ${v.pending || 0} · ${s.store}`;
}

function show(results) {
  const box = document.getElementById("results");
  box.replaceChildren();
  for (const r of results) {
    const card = el("div", { className: "card result" });
    card.append(el("img", { src: withToken(r.image), alt: r.rule || "frame", loading: "lazy" }));
    const info = el("div");
    info.append(el("div", {}, `${r.rule} · ${r.device}` + (r.similarity !== null ? ` · sim ${r.similarity}` : "")));
    info.append(el("div", { className: r.verdict || "" }, `student ${Number(r.score).toFixed(2)} · teacher ${r.verdict || "pending"}`));
    card.append(info);
    box.append(card);
  }
  if (!results.length) box.append(el("p", { className: "empty" }, "no frames match"));
}

document.getElementById("search").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  document.getElementById("error").textContent = "";
  const f = new FormData(ev.target);
  const filters = {};
  for (const k of ["rule", "device", "verdict"]) if (f.get(k)) filters[k] = f.get(k);
  let r;
  const file = document.getElementById("example").files[0];
  if (file) {
    const body = new FormData();
    body.append("file", file);
    for (const [k, v] of Object.entries(filters)) body.append(k, v);
    r = await fetch("/api/search/image", { method: "POST", body, headers });
  } else {
    const q = new URLSearchParams({ q: f.get("q") || "", ...filters });
    r = await fetch("/api/search?" + q, { headers });
  }
  const out = await r.json();
  if (!r.ok) { document.getElementById("error").textContent = out.error; return; }
  show(out.results);
});

stats();
document.getElementById("search").requestSubmit();
