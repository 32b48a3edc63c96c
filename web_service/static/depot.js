// Depot's only script of its own (no inline scripts: the CSP allows none): copy buttons.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = source.textContent.trim();
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(text).then(done, () => window.getSelection().selectAllChildren(source));
  } else {
    window.getSelection().selectAllChildren(source);
  }
});
