// Classic (blocking) script, loaded in <head>: applies the theme before the first paint.
// The user's choice is remembered in localStorage; without one the system setting wins.
(function () {
  "use strict";
  var KEY = "plantpulse.theme";
  var root = document.documentElement;
  var system = window.matchMedia("(prefers-color-scheme: dark)");
  function stored() {
    try { return localStorage.getItem(KEY); } catch (e) { return null; }
  }
  function apply() {
    var theme = stored() || (system.matches ? "dark" : "light");
    root.setAttribute("data-theme", theme);
    var button = document.getElementById("theme-toggle");
    if (button) button.setAttribute("aria-pressed", theme === "dark" ? "true" : "false");
    document.dispatchEvent(new CustomEvent("themechange", { detail: theme }));
  }
  apply();
  system.addEventListener("change", function () { if (!stored()) apply(); });
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme-toggle");
    if (!button) return;
    apply();
    button.addEventListener("click", function () {
      var next = root.getAttribute("data-theme") === "dark" ? "light" : "dark";
      try { localStorage.setItem(KEY, next); } catch (e) { /* private mode: this page only */ }
      apply();
    });
  });
})();
