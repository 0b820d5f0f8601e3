// A small deep-zoom viewer: tiles of the DICOM pyramid levels, positioned with CSS.
// State: s = screen px per level-0 px, (ox, oy) = level-0 point at the top-left corner.
// The smallest level is always drawn underneath, so moving never shows blank glass.
(function () {
  "use strict";
  const box = document.getElementById("deepzoom");
  if (!box) return;
  const job = box.dataset.job;
  const levels = JSON.parse(box.dataset.levels);
  const W = levels[0].width, H = levels[0].height;
  const down = levels.map(function (l) { return W / l.width; });
  let s = 1, ox = 0, oy = 0, fit = 1, queued = false;
  const layers = [make(), make()];  // [0]: smallest level, [1]: the level for this zoom
  const overlays = make();  // QC heatmaps: heatmap px = `ds` level-0 px
  const ds = Number(box.dataset.downsample) || 0;
  const shown = [new Map(), new Map()];

  function make() {
    const plane = document.createElement("div");
    plane.className = "plane";
    box.appendChild(plane);
    return plane;
  }

  function size() { return [box.clientWidth || 1, box.clientHeight || 1]; }

  function fitAll() {
    const [vw, vh] = size();
    fit = Math.min(vw / W, vh / H);
    s = fit;
    ox = (W - vw / s) / 2;
    oy = (H - vh / s) / 2;
    draw();
  }

  function pick() {
    let best = 0;
    for (let i = 0; i < levels.length; i++) if (down[i] <= 1 / s + 1e-9) best = i;
    return best;
  }

  function place(layer, i) {
    const plane = layers[layer], seen = shown[layer], lv = levels[i], d = down[i];
    const [vw, vh] = size();
    plane.style.left = (-ox * s) + "px";
    plane.style.top = (-oy * s) + "px";
    plane.style.width = (W * s) + "px";
    plane.style.height = (H * s) + "px";
    const tw = lv.tile_width * d, th = lv.tile_height * d;
    const x0 = Math.max(0, ox), y0 = Math.max(0, oy);
    const x1 = Math.min(W, ox + vw / s), y1 = Math.min(H, oy + vh / s);
    const want = new Set();
    if (x1 > x0 && y1 > y0) {
      for (let r = Math.floor(y0 / th); r <= Math.min(lv.rows - 1, Math.floor((y1 - 1e-6) / th)); r++) {
        for (let c = Math.floor(x0 / tw); c <= Math.min(lv.columns - 1, Math.floor((x1 - 1e-6) / tw)); c++) {
          const key = i + "/" + c + "/" + r;
          want.add(key);
          let img = seen.get(key);
          if (!img) {
            img = new Image();
            img.alt = "";
            img.draggable = false;
            img.className = "tile";
            img.src = "/slides/" + job + "/tiles/" + key + ".jpg";
            seen.set(key, img);
            plane.appendChild(img);
          }
          img.style.left = (c * tw * s) + "px";
          img.style.top = (r * th * s) + "px";
          img.style.width = (tw * s) + "px";
          img.style.height = (th * s) + "px";
        }
      }
    }
    seen.forEach(function (img, key) {
      if (!want.has(key)) { img.remove(); seen.delete(key); }
    });
  }

  function draw() {
    if (queued) return;
    queued = true;
    window.requestAnimationFrame(function () {
      queued = false;
      const i = pick();
      place(0, levels.length - 1);
      place(1, i);
      placeOverlays();
      box.dataset.level = String(i);
      const info = document.getElementById("zoom-info");
      if (info) info.textContent = "level " + i + " · " + (s * 100).toFixed(s < 0.1 ? 1 : 0) + "% of full resolution";
    });
  }

  function placeOverlays() {
    overlays.style.left = (-ox * s) + "px";
    overlays.style.top = (-oy * s) + "px";
    overlays.style.width = (W * s) + "px";
    overlays.style.height = (H * s) + "px";
    overlays.querySelectorAll("img").forEach(function (img) {
      if (!img.naturalWidth) return;
      img.style.left = "0px";
      img.style.top = "0px";
      img.style.width = (img.naturalWidth * ds * s) + "px";
      img.style.height = (img.naturalHeight * ds * s) + "px";
    });
  }

  document.querySelectorAll("input[data-zoom-layer]").forEach(function (box_) {
    box_.addEventListener("change", function () {
      const name = box_.dataset.zoomLayer;
      const old = overlays.querySelector('img[data-class="' + name + '"]');
      if (old) old.remove();
      if (!box_.checked || !ds) return;
      const img = new Image();
      img.alt = "";
      img.className = "heat";
      img.dataset.class = name;
      img.addEventListener("load", draw);
      img.src = "/slides/" + job + "/image/" + name;
      overlays.appendChild(img);
    });
  });

  function zoom(factor, cx, cy) {
    const next = Math.min(4, Math.max(fit / 2, s * factor));
    ox += cx / s - cx / next;
    oy += cy / s - cy / next;
    s = next;
    draw();
  }

  function centre() { const [vw, vh] = size(); return [vw / 2, vh / 2]; }

  document.getElementById("zoom-in").addEventListener("click", function () { zoom(2, ...centre()); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoom(0.5, ...centre()); });
  document.getElementById("zoom-fit").addEventListener("click", fitAll);

  box.addEventListener("wheel", function (e) {
    e.preventDefault();
    const r = box.getBoundingClientRect();
    zoom(Math.exp(-e.deltaY * 0.002), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });

  const pointers = new Map();
  let pinch = 0;
  box.addEventListener("pointerdown", function (e) {
    box.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    pinch = 0;
  });
  box.addEventListener("pointermove", function (e) {
    const last = pointers.get(e.pointerId);
    if (!last) return;
    if (pointers.size === 1) {
      ox -= (e.clientX - last[0]) / s;
      oy -= (e.clientY - last[1]) / s;
      draw();
    }
    pointers.set(e.pointerId, [e.clientX, e.clientY]);
    if (pointers.size === 2) {
      const [a, b] = Array.from(pointers.values());
      const dist = Math.hypot(a[0] - b[0], a[1] - b[1]);
      const r = box.getBoundingClientRect();
      if (pinch) zoom(dist / pinch, (a[0] + b[0]) / 2 - r.left, (a[1] + b[1]) / 2 - r.top);
      pinch = dist;
    }
  });
  function release(e) { pointers.delete(e.pointerId); pinch = 0; }
  box.addEventListener("pointerup", release);
  box.addEventListener("pointercancel", release);
  window.addEventListener("resize", draw);
  fitAll();
})();
