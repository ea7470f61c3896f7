// Copy buttons: <button data-copy="#id"> copies the text of that element (a new key, a link, a
// code snippet) and says so on the button for a moment.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.dataset.copy);
    if (!source) return;
    var text = source.value !== undefined && source.tagName === "INPUT" ? source.value : source.textContent;
    var label = button.textContent;
    function done(message) {
      button.textContent = message;
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text.trim()).then(function () { done("Copied"); }, function () { done("Press Ctrl+C"); });
    } else {
      // Plain http on another host has no clipboard API: select the text for Ctrl+C instead.
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done(document.execCommand && document.execCommand("copy") ? "Copied" : "Press Ctrl+C");
    }
  });
})();
// A table wider than the screen scrolls sideways: keyboard users need to reach it (tab to it,
// then the arrow keys scroll it).
(function () {
  function focusable() {
    document.querySelectorAll(".table-wrap").forEach(function (wrap) {
      if (wrap.scrollWidth > wrap.clientWidth + 1) wrap.setAttribute("tabindex", "0");
      else wrap.removeAttribute("tabindex");
    });
  }
  focusable();
  window.addEventListener("resize", focusable);
  document.body.addEventListener("htmx:afterSettle", focusable);
})();
