// Progressive enhancement only: every page works without this script.
"use strict";

// Replace <main> with the one of a freshly rendered page and move focus where a reader needs it.
function swapMain(html) {
  const doc = new DOMParser().parseFromString(html, "text/html");
  const fresh = doc.querySelector("main");
  if (!fresh) return false;
  document.querySelector("main").replaceWith(fresh);
  document.title = doc.title;
  const target = fresh.querySelector("[data-focus]") || fresh;
  target.focus();
  enhance(fresh);
  return true;
}

function enhancePredictForm(form) {
  form.addEventListener("submit", async (event) => {
    const button = form.querySelector("button[type=submit]");
    if (button.getAttribute("aria-disabled") === "true") { event.preventDefault(); return; }
    event.preventDefault();
    button.setAttribute("aria-disabled", "true");
    button.textContent = "Predicting…";
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "Accept": "text/html" },
      });
      if (!swapMain(await response.text())) throw new Error("unexpected answer");
    } catch (error) {
      form.submit(); // fall back to an ordinary submission, which renders its own error page
    }
  });
}

function enhanceHistory(root) {
  const toggle = document.getElementById("live-toggle");
  const status = document.getElementById("live-status");
  if (!toggle || !root.querySelector("#live")) return;
  const seconds = Number(toggle.dataset.refreshS) || 5;
  let timer = null;

  async function refresh() {
    timer = null;
    const live = document.getElementById("live");
    // Never pull the page from under a reader who is in the table or a chart, nor refresh hidden tabs.
    if (!toggle.checked || document.hidden || !live || live.contains(document.activeElement)) return schedule();
    try {
      const response = await fetch(location.href, { headers: { "Accept": "text/html" } });
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (response.ok && fresh) {
        // Speak only when something changed: a status read out every few seconds is noise.
        if (fresh.dataset.version !== live.dataset.version) {
          live.replaceWith(fresh);
          status.textContent = "New predictions shown at " + new Date().toLocaleTimeString();
        }
      } else {
        status.textContent = "The history could not be refreshed; retrying.";
      }
    } catch (error) {
      status.textContent = "The web service cannot be reached; retrying.";
    }
    schedule();
  }
  function schedule() { if (timer === null) timer = setTimeout(refresh, seconds * 1000); }
  toggle.addEventListener("change", () => {
    status.textContent = toggle.checked ? "Live updates on" : "Live updates paused";
    if (toggle.checked) schedule();
  });
  schedule();
}

function enhance(root) {
  const form = root.querySelector("#predict-form");
  if (form) enhancePredictForm(form);
  enhanceHistory(root);
}

document.addEventListener("DOMContentLoaded", () => {
  enhance(document);
  const target = document.querySelector("[data-focus]"); // a result or an error after an ordinary submission
  if (target) target.focus();
});
