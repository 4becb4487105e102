// The dashboard's only script: draws the plots the page carries as JSON, and
// sends what a button asks with the session's CSRF token. No inline script:
// the Content-Security-Policy allows scripts from this site only.
"use strict";

function drawPlots() {
  for (const carrier of document.querySelectorAll('script[type="application/json"][data-plot]')) {
    const target = document.getElementById(carrier.dataset.plot);
    const figure = JSON.parse(carrier.textContent);
    Plotly.newPlot(target, figure.data, figure.layout, { displaylogo: false, responsive: true })
      .then(() => { target.dataset.rendered = "true"; });
  }
}

function notice(text, ok) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = ok ? "ok" : "bad";
  box.hidden = false;
}

async function send(button, method, url) {
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  button.disabled = true;
  const response = await fetch(url, {
    method: method,
    credentials: "same-origin",
    headers: { "x-csrf-token": document.body.dataset.csrf, "content-type": "application/json" },
    body: method === "POST" ? "{}" : undefined,
  });
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON: the status says enough */ }
  if (response.ok) {
    notice(body.after ? `${body.model}: ${body.before} → ${body.after}` : "done", true);
    window.setTimeout(() => window.location.reload(), 600);
  } else {
    notice(body.error || `refused (HTTP ${response.status})`, false);
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  drawPlots();
  for (const button of document.querySelectorAll("button[data-post]")) {
    button.addEventListener("click", () => send(button, "POST", button.dataset.post));
  }
  for (const button of document.querySelectorAll("button[data-delete]")) {
    button.addEventListener("click", () => send(button, "DELETE", button.dataset.delete));
  }
});
