// Light live updates: every few seconds re-fetch this page and swap the [data-live] region,
// unless the person is typing or a dialog is open. Confirmation for every action form.
(function () {
  "use strict";
  const PERIOD_MS = 5000;

  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  function layers() {
    const opacity = document.getElementById("opacity");
    document.querySelectorAll("input[data-layer]").forEach(function (box) {
      box.addEventListener("change", function () {
        const img = document.querySelector('img.overlay[data-class="' + box.dataset.layer + '"]');
        if (img) img.hidden = !box.checked;
      });
    });
    if (opacity) {
      opacity.addEventListener("input", function () {
        document.querySelectorAll("img.overlay").forEach(function (img) {
          img.style.opacity = String(opacity.value / 100);
        });
      });
    }
  }

  async function refresh() {
    const live = document.querySelector("[data-live]");
    if (!live || document.hidden) return;
    const active = document.activeElement;
    if (active && live.contains(active) && active.matches("input, select, textarea")) return;
    try {
      const response = await fetch(window.location.href, { headers: { "X-Live": "1" }, credentials: "same-origin" });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.querySelector("[data-live]");
      if (fresh && fresh.innerHTML !== live.innerHTML) live.innerHTML = fresh.innerHTML;
    } catch (e) { /* offline for a moment: try again next time */ }
  }

  // A thumbnail that cannot load (no QC output) leaves the grey box rather than a broken icon.
  document.addEventListener("error", function (event) {
    const img = event.target;
    if (img instanceof HTMLImageElement && img.closest(".thumb")) img.remove();
  }, true);

  document.addEventListener("DOMContentLoaded", function () {
    layers();
    window.setInterval(refresh, PERIOD_MS);
  });
})();
