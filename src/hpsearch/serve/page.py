"""The page ``hpsearch serve`` shows at ``/``: pick a photo, see its label and probabilities.

Self-contained (no external scripts, styles or fonts), so it works with no internet. ``__MODEL__``
is replaced by the JSON of ``GET /model``.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hpsearch serve</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
         padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
  .meta { color: #666; font-size: 0.9rem; margin-top: 0; }
  #preview { display: block; max-width: 16rem; max-height: 16rem; margin: 1rem 0;
             border-radius: 4px; }
  #label { font-size: 2rem; font-weight: 600; min-height: 2.5rem; }
  .row { display: flex; align-items: center; gap: 0.5rem; margin: 0.25rem 0; }
  .name { width: 8rem; overflow: hidden; text-overflow: ellipsis; }
  .bar { flex: 1; background: #eee; height: 1rem; border-radius: 3px; }
  .fill { background: #3b7dd8; height: 100%; border-radius: 3px; }
  .pct { width: 4rem; text-align: right; font-variant-numeric: tabular-nums; }
  #error { color: #b00020; }
</style>
</head>
<body>
<h1>hpsearch serve</h1>
<p class="meta" id="meta"></p>
<label>Photo: <input type="file" id="file" accept="image/*"></label>
<img id="preview" alt="" hidden>
<div id="label"></div>
<div id="probs"></div>
<p id="error"></p>
<script>
const model = __MODEL__;
const $ = (id) => document.getElementById(id);
$("meta").textContent = "study " + model.study + ", trial " + model.trial +
  " (val accuracy " + model.val_accuracy.toFixed(4) + "), " + model.image_size + "px, classes " +
  model.classes.join(", ");
$("file").addEventListener("change", async () => {
  const file = $("file").files[0];
  $("label").textContent = ""; $("probs").textContent = ""; $("error").textContent = "";
  if (!file) return;
  $("preview").src = URL.createObjectURL(file); $("preview").hidden = false;
  const form = new FormData(); form.append("file", file);
  try {
    const resp = await fetch("predict", { method: "POST", body: form });
    const body = await resp.json();
    if (!resp.ok) { $("error").textContent = body.error || resp.statusText; return; }
    const p = body.predictions[0];
    $("label").textContent = p.label;
    for (const [name, prob] of Object.entries(p.probabilities)) {
      const row = document.createElement("div"); row.className = "row";
      const n = document.createElement("span"); n.className = "name"; n.textContent = name;
      const bar = document.createElement("div"); bar.className = "bar";
      const fill = document.createElement("div"); fill.className = "fill";
      fill.style.width = (100 * prob).toFixed(1) + "%"; bar.appendChild(fill);
      const pct = document.createElement("span"); pct.className = "pct";
      pct.textContent = (100 * prob).toFixed(1) + "%";
      row.append(n, bar, pct); $("probs").appendChild(row);
    }
  } catch (e) {
    $("error").textContent = "request failed: " + e;
  }
});
</script>
</body>
</html>
"""
