// Wisp dashboard: theme switch, live page updates and live logs over server-sent events.
(function () {
  "use strict";
  var root = document.documentElement;
  var saved = null;
  try { saved = localStorage.getItem("wisp-theme"); } catch (e) { /* storage off */ }
  if (saved === "light" || saved === "dark") { root.setAttribute("data-theme", saved); }

  // The log panel: lines as text (never HTML), the last 2000; an `end` event (the log ended)
  // closes the stream rather than reconnecting (which would repeat the last lines).
  function follow(pre) {
    var es = new EventSource(pre.getAttribute("data-stream"));
    es.onmessage = function (ev) {
      pre.appendChild(document.createTextNode(ev.data + "\n"));
      while (pre.childNodes.length > 2000) { pre.removeChild(pre.firstChild); }
      pre.scrollTop = pre.scrollHeight;
    };
    es.addEventListener("end", function () { es.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme");
    if (button) {
      button.addEventListener("click", function () {
        var dark = root.getAttribute("data-theme") === "dark" ||
          (!root.getAttribute("data-theme") && window.matchMedia("(prefers-color-scheme: dark)").matches);
        var next = dark ? "light" : "dark";
        root.setAttribute("data-theme", next);
        try { localStorage.setItem("wisp-theme", next); } catch (e) { /* storage off */ }
      });
    }
    var logs = document.getElementById("logs");
    if (logs && logs.getAttribute("data-stream")) { follow(logs); }
    var main = document.getElementById("main");
    var live = main && main.getAttribute("data-live");
    if (!live) { return; }
    var es = null;
    function open() {
      if (es) { return; }
      es = new EventSource(live);
      es.addEventListener("main", function (ev) {
        // Not while the keyboard is in the page's content: the focused control would go.
        var focused = document.activeElement;
        if (focused && focused !== document.body && main.contains(focused)) { return; }
        // The log panel keeps its stream and its lines.
        var kept = document.getElementById("logs");
        if (kept) { kept.parentNode.removeChild(kept); }
        main.innerHTML = ev.data;
        var slot = document.getElementById("logs");
        if (kept && slot) { slot.parentNode.replaceChild(kept, slot); }
        main.setAttribute("data-updated", String(Date.now()));
      });
    }
    // A hidden tab holds no stream (browsers allow few connections per server).
    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { if (es) { es.close(); es = null; } } else { open(); }
    });
    if (!document.hidden) { open(); }
  });
})();
