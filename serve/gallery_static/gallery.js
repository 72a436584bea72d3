// ganaug gallery: draws a per-class grid from the API. The token lives in sessionStorage only.
"use strict";
(function () {
  const ROOT = document.querySelector('meta[name="ganaug-root"]').content;
  const CONFIG = JSON.parse(document.querySelector('meta[name="ganaug-config"]').content);
  const KEY = "ganaug-token";
  const $ = (id) => document.getElementById(id);
  let models = {};
  let drawn = [];  // rows of {label, name, images: [data urls]}

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function api(path, body) {
    const headers = {};
    const token = sessionStorage.getItem(KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    const opts = { method: body ? "POST" : "GET", headers };
    if (body) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    const r = await fetch(ROOT + path, opts);
    let ans = null;
    try { ans = await r.json(); } catch (e) { ans = null; }
    if (!r.ok) {
      const detail = ans && ans.detail ? ans.detail : r.statusText;
      const err = new Error(r.status === 401 ? "401: the token is missing or wrong - enter it above"
                                              : r.status + ": " + detail);
      err.status = r.status;
      throw err;
    }
    return ans;
  }

  function fillClasses() {
    const m = models[$("model").value];
    const sel = $("class");
    sel.innerHTML = "";
    if (!m || !m.conditional) {
      sel.add(new Option("(unconditional)", "none"));
      sel.disabled = true;
      return;
    }
    sel.disabled = false;
    sel.add(new Option("all classes", "all"));
    m.class_names.forEach((name, i) => sel.add(new Option(i + ": " + name, String(i))));
  }

  async function loadModels() {
    try {
      const ans = await api("/v1/models");
      models = {};
      $("model").innerHTML = "";
      ans.models.filter((m) => m.kind === "noise").forEach((m) => {
        models[m.id] = m;
        $("model").add(new Option(m.id + " (" + m.family + ")", m.id));
      });
      fillClasses();
      status(Object.keys(models).length + " model(s)");
      return true;
    } catch (e) {
      status(e.message, true);
      return false;
    }
  }

  async function draw() {
    const m = models[$("model").value];
    if (!m) { status("no model to draw from", true); return; }
    const seed = Number($("seed").value);
    const n = Number($("count").value);
    const truncation = Number($("truncation").value);
    const choice = $("class").value;
    const labels = !m.conditional ? [null] : (choice === "all" ? m.class_names.map((_, i) => i) : [Number(choice)]);
    status("drawing...");
    try {
      const rows = await Promise.all(labels.map(async (label) => {
        const body = { n, seed, truncation };
        if (label !== null) body.label = label;
        const ans = await api("/v1/models/" + encodeURIComponent(m.id) + "/samples", body);
        return { label, name: label === null ? "" : (m.class_names[label] || String(label)),
                 images: ans.images.map((im) => "data:image/png;base64," + im.data) };
      }));
      drawn = rows;
      render();
      $("download").disabled = false;
      status(rows.length * n + " image(s), seed " + seed);
    } catch (e) {
      status(e.message, true);
    }
  }

  function render() {
    const grid = $("grid");
    grid.innerHTML = "";
    drawn.forEach((row) => {
      const div = document.createElement("div");
      div.className = "row";
      div.dataset.label = row.label === null ? "-1" : String(row.label);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = row.name;
      div.appendChild(name);
      row.images.forEach((src) => { const img = new Image(); img.src = src; div.appendChild(img); });
      grid.appendChild(div);
    });
  }

  async function download() {
    // One PNG of the grid as drawn, at the model's own resolution with a 1-pixel border.
    const imgs = await Promise.all(drawn.map((row) => Promise.all(row.images.map((src) => new Promise((ok, bad) => {
      const im = new Image(); im.onload = () => ok(im); im.onerror = bad; im.src = src;
    })))));
    const h = imgs[0][0].naturalHeight, w = imgs[0][0].naturalWidth, cols = imgs[0].length;
    const canvas = document.createElement("canvas");
    canvas.width = cols * (w + 1) + 1;
    canvas.height = imgs.length * (h + 1) + 1;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    imgs.forEach((row, r) => row.forEach((im, c) => ctx.drawImage(im, 1 + c * (w + 1), 1 + r * (h + 1))));
    const a = document.createElement("a");
    a.download = "ganaug-" + $("model").value + "-seed" + $("seed").value + ".png";
    a.href = canvas.toDataURL("image/png");
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  $("truncation").min = CONFIG.min_truncation;
  $("truncation").max = CONFIG.max_truncation;
  $("count").max = CONFIG.max_n;
  $("truncation").addEventListener("input", () => { $("truncation-value").textContent = $("truncation").value; });
  $("model").addEventListener("change", fillClasses);
  $("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("token").value);
    $("token").value = "";
    await loadModels();
  });
  $("forget-token").addEventListener("click", () => { sessionStorage.removeItem(KEY); status("token forgotten"); });
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); draw(); });
  $("download").addEventListener("click", download);
  loadModels();
})();
