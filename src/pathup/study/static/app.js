// PathUp rater study page: sign in with a token, score images 1 (synthetic) .. 10 (real).
// Plain JavaScript, no build step. All data comes from the JSON API under /api, which needs
// "Authorization: Bearer <token>"; images are fetched the same way and shown as blob: URLs.
"use strict";

(function () {
  const TOKEN_KEY = "pathup-study-token";
  const MAX_ZOOM = 8;
  const $ = (id) => document.getElementById(id);

  let token = null;
  let queue = [];          // [{image_id, position, score}] in this rater's order
  let index = -1;          // index into queue of the image on screen
  let state = "open";
  let busy = false;        // a rating is being sent
  let loadSeq = 0;         // guards against out-of-order image loads
  let objectUrl = null;
  const view = { scale: 1, fit: 1, tx: 0, ty: 0, w: 0, h: 0 };

  // ---------------------------------------------------------------- API
  async function api(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      options = Object.assign({}, options, { body: JSON.stringify(options.json) });
    }
    const res = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (res.status === 401) {
      signOut("Your token was not accepted. Please sign in again.");
      throw new Error("unauthorised");
    }
    return res;
  }

  async function apiJson(path, options) {
    const res = await api(path, options);
    let body = null;
    try { body = await res.json(); } catch (e) { body = { detail: res.statusText }; }
    if (!res.ok) {
      const err = new Error(body && body.detail ? body.detail : "request failed (" + res.status + ")");
      err.status = res.status;
      throw err;
    }
    return body;
  }

  // ---------------------------------------------------------------- sign in / out
  function showSignIn(message) {
    $("rating").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  function signOut(message) {
    token = null;
    try { localStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage may be disabled */ }
    showSignIn(message);
  }

  async function signIn(candidate) {
    token = candidate;
    try {
      const progress = await apiJson("/api/progress");
      try { localStorage.setItem(TOKEN_KEY, token); } catch (e) { /* session only */ }
      $("signin").hidden = true;
      $("rating").hidden = false;
      $("who").textContent = progress.name;
      await start();
    } catch (e) {
      if (e.message !== "unauthorised") showSignIn("Could not sign in: " + e.message);
    }
  }

  // ---------------------------------------------------------------- queue and navigation
  async function start() {
    const [q, next] = await Promise.all([apiJson("/api/queue"), apiJson("/api/next")]);
    queue = q.items;
    state = q.state;
    updateState();
    let i = next.done ? queue.length - 1 : queue.findIndex((it) => it.image_id === next.image_id);
    await show(Math.max(0, i));
  }

  function ratedCount() { return queue.filter((it) => it.score !== null).length; }

  function updateState() {
    const rated = ratedCount();
    $("progress").textContent = rated + " of " + queue.length + " rated";
    const banner = $("banner");
    banner.classList.toggle("closed", state === "closed");
    if (state === "closed") {
      banner.textContent = "The study is closed. Scores are final and can no longer be changed.";
      banner.hidden = false;
    } else if (queue.length && rated === queue.length) {
      banner.textContent = "All " + queue.length + " images are rated. Thank you! " +
        "You can go back and change a score until the study is closed.";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    document.querySelectorAll("#scores button").forEach((b) => { b.disabled = state === "closed" || busy; });
  }

  async function show(i) {
    if (i < 0 || i >= queue.length) return;
    index = i;
    const item = queue[i];
    $("position").textContent = "Image " + item.position + " of " + queue.length;
    $("prev").disabled = i === 0;
    $("next").disabled = i === queue.length - 1;
    $("message").textContent = "";
    markScore(item.score);
    const seq = ++loadSeq;
    $("loading").hidden = false;
    try {
      const res = await api("/api/images/" + encodeURIComponent(item.image_id));
      if (!res.ok) throw new Error("could not load the image (" + res.status + ")");
      const blob = await res.blob();
      if (seq !== loadSeq) return;
      const url = URL.createObjectURL(blob);
      const img = $("image");
      await new Promise((resolve, reject) => {
        img.onload = resolve;
        img.onerror = () => reject(new Error("the image could not be decoded"));
        img.src = url;
      });
      if (seq !== loadSeq) { URL.revokeObjectURL(url); return; }
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = url;
      img.dataset.imageId = item.image_id;
      view.w = img.naturalWidth;
      view.h = img.naturalHeight;
      fitView();
    } catch (e) {
      if (e.message !== "unauthorised" && seq === loadSeq) $("message").textContent = e.message;
    } finally {
      if (seq === loadSeq) $("loading").hidden = true;
    }
  }

  function markScore(score) {
    document.querySelectorAll("#scores button").forEach((b) => {
      const selected = Number(b.dataset.score) === score;
      b.classList.toggle("selected", selected);
      b.setAttribute("aria-pressed", selected ? "true" : "false");
    });
    $("current-score").textContent = score === null ? "Not rated yet" : "Your score: " + score;
  }

  function nextUnrated(from) {
    for (let k = 1; k <= queue.length; k++) {
      const j = (from + k) % queue.length;
      if (queue[j].score === null) return j;
    }
    return -1;
  }

  async function rate(score) {
    if (busy || state === "closed" || index < 0) return;
    busy = true;
    updateState();
    const item = queue[index];
    try {
      const res = await apiJson("/api/rating", { method: "POST", json: { image_id: item.image_id, score } });
      item.score = res.score;
      state = res.state;
      busy = false;
      updateState();
      markScore(item.score);
      const j = nextUnrated(index);
      if (j >= 0) await show(j);
    } catch (e) {
      busy = false;
      if (e.status === 409) { state = "closed"; }
      updateState();
      if (e.message !== "unauthorised") $("message").textContent = e.message;
    }
  }

  // ---------------------------------------------------------------- zoom and pan (CSS transform)
  function applyView() {
    const img = $("image");
    img.style.transform = "translate(" + view.tx + "px," + view.ty + "px) scale(" + view.scale + ")";
    $("zoom-level").textContent = Math.round(view.scale * 100) + "%";
    $("viewer").classList.toggle("pixelated", view.scale > 2);
  }

  function fitView() {
    const box = $("viewer").getBoundingClientRect();
    if (!view.w || !box.width) return;
    view.fit = Math.min(box.width / view.w, box.height / view.h);
    view.scale = view.fit;
    view.tx = (box.width - view.w * view.scale) / 2;
    view.ty = (box.height - view.h * view.scale) / 2;
    applyView();
  }

  function zoomAt(factor, cx, cy) {
    const s = Math.min(MAX_ZOOM, Math.max(view.fit * 0.5, view.scale * factor));
    const k = s / view.scale;
    view.tx = cx - (cx - view.tx) * k;   // keep the point under the cursor fixed
    view.ty = cy - (cy - view.ty) * k;
    view.scale = s;
    applyView();
  }

  function zoomCentre(factor) {
    const box = $("viewer").getBoundingClientRect();
    zoomAt(factor, box.width / 2, box.height / 2);
  }

  function setupViewer() {
    const viewer = $("viewer");
    viewer.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const box = viewer.getBoundingClientRect();
      zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - box.left, ev.clientY - box.top);
    }, { passive: false });
    let drag = null;
    viewer.addEventListener("pointerdown", (ev) => {
      drag = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty };
      viewer.setPointerCapture(ev.pointerId);
      viewer.classList.add("dragging");
    });
    viewer.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      view.tx = drag.tx + ev.clientX - drag.x;
      view.ty = drag.ty + ev.clientY - drag.y;
      applyView();
    });
    const end = () => { drag = null; viewer.classList.remove("dragging"); };
    viewer.addEventListener("pointerup", end);
    viewer.addEventListener("pointercancel", end);
    viewer.addEventListener("dblclick", fitView);
    window.addEventListener("resize", fitView);
    $("zoom-in").addEventListener("click", () => zoomCentre(1.5));
    $("zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
    $("zoom-fit").addEventListener("click", fitView);
    $("zoom-1").addEventListener("click", () => zoomCentre(1 / view.scale));
  }

  // ---------------------------------------------------------------- wiring
  function setup() {
    const scores = $("scores");
    for (let s = 1; s <= 10; s++) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = String(s);
      b.dataset.score = String(s);
      b.title = s === 1 ? "1: synthetic" : s === 10 ? "10: real" : String(s);
      b.addEventListener("click", () => rate(s));
      scores.appendChild(b);
    }
    $("prev").addEventListener("click", () => show(index - 1));
    $("next").addEventListener("click", () => show(index + 1));
    $("signout").addEventListener("click", () => signOut(""));
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token").value.trim();
      if (value) signIn(value);
    });
    document.addEventListener("keydown", (ev) => {
      if ($("rating").hidden || ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (/^[0-9]$/.test(ev.key)) { rate(ev.key === "0" ? 10 : Number(ev.key)); }
      else if (ev.key === "ArrowLeft") { show(index - 1); }
      else if (ev.key === "ArrowRight") { show(index + 1); }
      else if (ev.key === "+" || ev.key === "=") { zoomCentre(1.5); }
      else if (ev.key === "-") { zoomCentre(1 / 1.5); }
      else if (ev.key === "f" || ev.key === "F") { fitView(); }
      else return;
      ev.preventDefault();
    });
    setupViewer();

    // A link "…/#token=XYZ" signs in directly; the fragment never reaches the server or its logs.
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      history.replaceState(null, "", location.pathname + location.search);
      signIn(decodeURIComponent(m[1]));
      return;
    }
    let saved = null;
    try { saved = localStorage.getItem(TOKEN_KEY); } catch (e) { /* storage disabled */ }
    if (saved) signIn(saved); else showSignIn("");
  }

  setup();
})();
