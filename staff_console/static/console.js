// Tawasul staff console: keyboard shortcuts, bulk selection, training progress. Plain JS, no framework,
// no inline handlers (the Content-Security-Policy forbids inline script).
(function () {
  "use strict";

  function typing(event) {
    var el = event.target;
    var tag = el && el.tagName ? el.tagName.toLowerCase() : "";
    return tag === "input" || tag === "select" || tag === "textarea" || (el && el.isContentEditable);
  }

  function click(id) {
    var el = document.getElementById(id);
    if (el && !el.disabled) { el.click(); return true; }
    return false;
  }

  // Forms that ask before doing something hard to undo (promote, roll back).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  function itemPage() {
    var typeSelect = document.getElementById("final-type");
    var agencySelect = document.getElementById("final-agency");
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) { return; }
      var key = event.key;
      var handled = true;
      if (key === "a") { handled = click("btn-accept"); }
      else if (key === "r") { handled = click("btn-relabel"); }
      else if (key === "x") { handled = click("btn-not-case"); }
      else if ((key === "1" || key === "2" || key === "3") && typeSelect) {
        typeSelect.selectedIndex = Number(key) - 1;
      }
      else if (key === "g" && agencySelect) { agencySelect.focus(); }
      else if (key === "j") { handled = click("next-link"); }
      else if (key === "q" || key === "Escape") { handled = click("queue-link"); }
      else { handled = false; }
      if (handled) { event.preventDefault(); }
    });
  }

  function queuePage() {
    var rows = Array.prototype.slice.call(document.querySelectorAll("tr.row"));
    var all = document.getElementById("select-all");
    var current = -1;
    if (all) {
      all.addEventListener("change", function () {
        document.querySelectorAll("input.pick").forEach(function (box) {
          if (!box.disabled) { box.checked = all.checked; }
        });
      });
    }
    function focusRow(index) {
      if (!rows.length) { return; }
      current = Math.max(0, Math.min(rows.length - 1, index));
      rows.forEach(function (row, i) { row.classList.toggle("focused", i === current); });
      rows[current].scrollIntoView({ block: "nearest" });
    }
    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) { return; }
      var key = event.key;
      if (key === "j") { focusRow(current + 1); }
      else if (key === "k") { focusRow(current - 1); }
      else if ((key === "o" || key === "Enter") && current >= 0) {
        var link = rows[current].querySelector("a.open");
        if (link) { link.click(); }
      }
      else if (key === "x" && current >= 0) {
        var box = rows[current].querySelector("input.pick");
        if (box && !box.disabled) { box.checked = !box.checked; }
      }
      else if (key === "A") {
        var form = document.getElementById("bulk-form");
        if (form && form.querySelector("input.pick:checked")) { form.submit(); }
      }
      else { return; }
      event.preventDefault();
    });
  }

  function trainingPage() {
    var card = document.getElementById("training-card");
    if (!card) { return; }
    var url = card.getAttribute("data-status-url");
    var bar = document.getElementById("train-progress");
    var stage = document.getElementById("train-stage");
    var state = document.getElementById("train-state");
    var button = document.getElementById("retrain-btn");
    var wasRunning = card.getAttribute("data-state") === "running" || card.getAttribute("data-state") === "trained";
    function poll() {
      fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (status) {
          if (!status) { return; }
          if (bar) { bar.value = status.fraction || 0; }
          if (stage) { stage.textContent = status.stage || ""; }
          if (state) { state.setAttribute("data-state", status.state || "idle"); }
          if (button) { button.disabled = !!status.running; }
          if (status.running) { wasRunning = true; window.setTimeout(poll, 1000); }
          else if (wasRunning) { window.location.assign(window.location.pathname); }  // new model, metrics
        })
        .catch(function () { window.setTimeout(poll, 3000); });
    }
    if (wasRunning) { poll(); }
  }

  var page = document.body.getAttribute("data-page");
  if (page === "item") { itemPage(); }
  else if (page === "queue") { queuePage(); }
  else if (page === "training") { trainingPage(); }
})();
