"""The page ``hpsearch serve`` shows at ``/``: pick a photo, see its label and probabilities.

Self-contained (no external scripts, styles or fonts), so it works with no internet. The lines
under the title describe the model being served, from ``GET /model``'s fields, written by the
server (:func:`render_page`): which model (a search trial, or a confirm run of one), and its
checkpoint's provenance.
"""

from __future__ import annotations

import html
import re
from typing import Any

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
<p class="meta" id="meta">__META__</p>
<p class="meta" id="provenance">__PROVENANCE__</p>
<label>Photo: <input type="file" id="file" accept="image/*"></label>
<img id="preview" alt="" hidden>
<div id="label"></div>
<div id="probs"></div>
<p id="error"></p>
<script>
const $ = (id) => document.getElementById(id);
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


def _meta(info: dict[str, Any]) -> str:
    """``study smoke, trial 3 (val accuracy 0.6250), 32px, classes cat, dog``; for a confirm
    run, ``study smoke, confirm run 1 of trial 3 (seed 123; val accuracy 0.6300; trial 3
    confirmed 0.6200 ± 0.0100), ...``."""
    run = info["checkpoint"].get("confirm_run")
    if run is None:
        which = f"trial {info['trial']} (val accuracy {info['val_accuracy']:.4f})"
    else:
        which = (
            f"confirm run {run['run']} of trial {info['trial']} (seed {run['seed']}; val "
            f"accuracy {info['val_accuracy']:.4f}"
        )
        confirmed = info.get("confirmed_val_accuracy")
        if confirmed:
            which += (
                f"; trial {info['trial']} confirmed {confirmed['mean']:.4f} ± "
                f"{confirmed['std']:.4f}"
            )
        which += ")"
    return (
        f"study {info['study']}, {which}, {info['image_size']}px, classes "
        f"{', '.join(info['classes'])}"
    )


def _provenance(info: dict[str, Any]) -> str:
    """``checkpoint ID (sha256 0123abcd...), seed 42, finished 2025-01-01T12:00:00+00:00``."""
    c = info["checkpoint"]
    return (
        f"checkpoint {c.get('artifact_id')} (sha256 {c['sha256'][:12]}...), seed "
        f"{c.get('seed')}, finished {c.get('finished') or 'unrecorded'}"
    )


def render_page(info: dict[str, Any]) -> str:
    """The page for the model ``info`` (``GET /model``) describes."""
    lines = {"__META__": _meta(info), "__PROVENANCE__": _provenance(info)}
    # one pass, so that a study name holding "__PROVENANCE__" stays as it is
    return re.sub("__META__|__PROVENANCE__", lambda m: html.escape(lines[m[0]]), PAGE)
