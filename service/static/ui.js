// convzoo page (service/http/ui.py): pick or drop images, POST them to the service's own API
// (`../classify`, `../metadata`), show each image's top classes. With several models served,
// choose one, or compare two side by side on the same images. No framework, no external
// resources. With CONVZOO_API_KEY on the server, the key is asked once and kept in
// sessionStorage (this tab only).
"use strict";

(() => {
  const KEY_STORAGE = "convzoo-api-key";
  const TOP_K = 5;
  const $ = (selector) => document.querySelector(selector);

  let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
  const waitingForKey = []; // requests answered 401, resent once a key is accepted
  const thumbnails = []; // object URLs to release on "Clear results"

  // ------------------------------------------------------------------------------ the API

  function call(path, init) {
    const headers = new Headers(init.headers);
    if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
    return fetch(new URL(`../${path}`, document.baseURI), { ...init, headers });
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  /** One sentence for an answer that is neither 200 nor a per-file refusal. */
  function plainError(status, body) {
    const detail = body && body.error ? ` (${body.error})` : "";
    if (status === 413) return `Too many or too large files for one request${detail}. Send fewer or smaller files.`;
    if (status === 415 || status === 400) return `The server refused the request${detail}.`;
    if (status === 429 || status === 503) return "The server is busy right now; try again in a moment.";
    if (status === 504) return "The server took too long to answer; try again with fewer images.";
    return `The server answered with an error (HTTP ${status})${detail}.`;
  }

  // ------------------------------------------------------------------------ model and key

  /** The models to send the images to: the one chosen, and the one to compare with. */
  function chosenModels() {
    return [$("#model-select").value, $("#compare-select").value].filter(Boolean);
  }

  async function loadModel() {
    let response;
    const model = $("#model-select").value;
    try {
      response = await call("metadata", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(model ? { model } : {}),
      });
    } catch {
      showModelError("Could not reach the server. Is it running?");
      return;
    }
    if (response.status === 401) {
      askForKey();
      return;
    }
    const body = await readJson(response);
    if (!response.ok || !body) {
      showModelError(`Could not read the model's description: ${plainError(response.status, body)}`);
      return;
    }
    showModel(body);
    showChoices(body.served || []);
    $("#key-form").hidden = true;
    for (const items of waitingForKey.splice(0)) classify(items);
  }

  function showModel(metadata) {
    const fact = (name, text) => { $(`[data-fact="${name}"]`).textContent = text; };
    const percent = (value) => (typeof value === "number" ? `${(value * 100).toFixed(1)} %` : "n/a");
    const runtime = metadata.runtime;
    // The serving runtime's own held-out scores (python -m training optimize), else the model's.
    const served = runtime && runtime.key && (metadata.runtimes || {})[runtime.key];
    const metrics = (served && served.test) || metadata.metrics || {};
    const [height, width] = metadata.input_size || [];
    fact("model", `${metadata.name} v${metadata.version}` +
      (metadata.architecture ? ` (${metadata.architecture})` : ""));
    fact("runtime", !runtime ? "tensorflow" : typeof runtime === "string" ? runtime
      : [runtime.name, runtime.precision].filter(Boolean).join(" "));
    fact("input", height ? `${height}×${width} px` : "any size");
    fact("accuracy", `top-1 ${percent(metrics.top1)}, top-5 ${percent(metrics.top5)}`);
    $("#model-error").hidden = true;
  }

  /** Fill the two model lists from /metadata's ``served`` (once), keeping what is chosen. */
  function showChoices(served) {
    const select = $("#model-select");
    const compare = $("#compare-select");
    if (served.length < 2 || select.options.length > 0) return;
    for (const entry of served) {
      const key = `${entry.name}:${entry.version}`;
      const text = `${entry.name} v${entry.version}` +
        (entry.architecture ? ` (${entry.architecture})` : "") + (entry.default ? ", default" : "");
      select.append(new Option(text, key, entry.default, entry.default));
      compare.append(new Option(text, key));
    }
    $("#model-choice").hidden = false;
  }

  $("#model-select").addEventListener("change", () => loadModel());

  function showModelError(text) {
    $("#model-error").textContent = text;
    $("#model-error").hidden = false;
  }

  function askForKey() {
    const form = $("#key-form");
    const error = $("#key-error");
    error.hidden = !apiKey;
    error.textContent = apiKey ? "That key was not accepted; check it and try again." : "";
    apiKey = "";
    sessionStorage.removeItem(KEY_STORAGE);
    if (form.hidden) {
      form.hidden = false;
      $("#key-input").focus();
    }
  }

  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("#key-input").value.trim();
    if (!apiKey) return;
    sessionStorage.setItem(KEY_STORAGE, apiKey);
    $("#key-input").value = "";
    loadModel();
  });

  // ------------------------------------------------------------------------------ images

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 0) return;
    const cards = files.map(newCard);
    $("#results").prepend(...cards);
    $("#clear").hidden = false;
    classify(files.map((file, i) => ({ file, card: cards[i] })));
  }

  function newCard(file) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    const url = URL.createObjectURL(file);
    thumbnails.push(url);
    const image = card.querySelector(".thumb");
    image.addEventListener("error", () => { // not an image the browser can show
      const placeholder = document.createElement("span");
      placeholder.className = "thumb no-preview";
      placeholder.textContent = "no preview";
      image.replaceWith(placeholder);
    }, { once: true });
    image.src = url;
    card.dataset.file = file.name;
    card.querySelector(".file-name").textContent = file.name;
    card.setAttribute("aria-busy", "true");
    return card;
  }

  /** Send ``items`` ({file, card}) in one request per chosen model, show the answers on each card. */
  async function classify(items) {
    if (items.length === 0) return;
    const models = chosenModels();
    for (const { card } of items) prepareCard(card, models);
    setStatus(`Classifying ${count(items.length)}…`);
    const started = performance.now();
    let results;
    try {
      results = await Promise.all((models.length ? models : [""]).map((model) => send(items, model)));
    } catch {
      for (const { card } of items) setMessage(card, "error", "Could not reach the server. Is it running?");
      setStatus("");
      return;
    }
    const seconds = (performance.now() - started) / 1000;
    const [{ response, body }] = results;
    if (results.every((r) => r.response.ok && Array.isArray(r.body))) {
      const timing = `${seconds.toFixed(2)} s for ${items.length === 1 ? "this image" : `${items.length} images in one request`}`;
      items.forEach(({ card }, i) => results.forEach((r, j) => showClasses(card, r.body[i], timing, j)));
      setStatus(`${count(items.length)} classified in ${seconds.toFixed(2)} s.`);
    } else if (results.some((r) => r.response.status === 401)) {
      for (const { card } of items) setMessage(card, "waiting", "Waiting for the API key…");
      waitingForKey.push(items);
      setStatus("");
      askForKey();
    } else if (response.status === 400 && body && Array.isArray(body.files)) {
      // one bad file refuses the whole request: say why next to it, resend the others
      const reasons = new Map(body.files.map((refusal) => [refusal.index, refusal.reason]));
      items.forEach(({ card }, i) => {
        if (reasons.has(i)) setMessage(card, "error", `Refused: ${reasons.get(i)}.`);
      });
      setStatus(`${count(reasons.size)} refused.`);
      classify(items.filter((_, i) => !reasons.has(i)));
    } else {
      const failed = results.find((r) => !r.response.ok) || results[0];
      for (const { card } of items) setMessage(card, "error", plainError(failed.response.status, failed.body));
      setStatus("");
    }
  }

  async function send(items, model) {
    const form = new FormData();
    for (const { file } of items) form.append("images", file, file.name);
    form.append("top_k", String(TOP_K));
    if (model) form.append("model", model);
    const response = await call("classify", { method: "POST", body: form });
    return { response, body: await readJson(response) };
  }

  /** One outcome column per model (headed by its name when there are two). */
  function prepareCard(card, models) {
    const outcomes = card.querySelector(".outcomes");
    const first = outcomes.querySelector(".outcome");
    const columns = Math.max(models.length, 1);
    outcomes.replaceChildren(first, ...Array.from({ length: columns - 1 }, () => first.cloneNode(true)));
    outcomes.classList.toggle("compare", columns > 1);
    outcomes.querySelectorAll(".outcome").forEach((outcome, j) => {
      const name = outcome.querySelector(".model-name");
      name.hidden = columns < 2;
      name.textContent = models[j] || "";
      outcome.querySelector(".classes").replaceChildren();
      outcome.querySelector(".timing").textContent = "";
    });
    setMessage(card, "pending", "Classifying…");
  }

  function showClasses(card, answer, timing, column = 0) {
    const outcome = card.querySelectorAll(".outcome")[column];
    const list = outcome.querySelector(".classes");
    list.replaceChildren(...answer.top_k.map(({ label, score }) => {
      const row = $("#class-template").content.firstElementChild.cloneNode(true);
      row.querySelector(".label").textContent = label;
      row.querySelector(".score").textContent = `${(score * 100).toFixed(1)} %`;
      row.querySelector(".fill").style.width = `${(score * 100).toFixed(1)}%`;
      return row;
    }));
    outcome.querySelector(".timing").textContent = timing;
    setMessage(card, "done", "");
  }

  function setMessage(card, state, text) {
    card.dataset.state = state;
    card.querySelectorAll(".message").forEach((message, j) => { message.textContent = j ? "" : text; });
    if (state === "pending" || state === "waiting") card.setAttribute("aria-busy", "true");
    else card.removeAttribute("aria-busy");
  }

  function setStatus(text) {
    $("#status").textContent = text;
  }

  function count(n) {
    return n === 1 ? "1 image" : `${n} images`;
  }

  // -------------------------------------------------------------------- picking and dropping

  const dropZone = $("#drop-zone");
  const fileInput = $("#file-input");
  const cameraInput = $("#camera-input");

  dropZone.addEventListener("click", () => fileInput.click());
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });
  $("#camera").addEventListener("click", () => cameraInput.click());
  for (const input of [fileInput, cameraInput]) {
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // the same file again is a new pick
    });
  }

  // a drop anywhere on the page counts (and never makes the browser open the file instead)
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) dropZone.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  document.addEventListener("paste", (event) => addFiles(event.clipboardData.files));

  $("#clear").addEventListener("click", () => {
    $("#results").replaceChildren();
    thumbnails.splice(0).forEach((url) => URL.revokeObjectURL(url));
    $("#clear").hidden = true;
    setStatus("");
    dropZone.focus();
  });

  loadModel();
})();
