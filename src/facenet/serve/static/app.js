// The facenet page: plain fetch + canvas, no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 360, MIN_SIDE = 160; // photos are drawn between these sizes (longest side)

const KEY_STORE = "facenet-key"; // sessionStorage: the key lasts as long as this tab, never on disk for good

// POST/GET/DELETE the API with the key, if one is entered; resolves to the JSON body or throws an Error
// carrying the problem's detail (and, when a key is missing or refused, where to enter one).
async function api(method, path, body) {
  const headers = {}, key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(path, { method, body, headers });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const hint = response.status === 401 || response.status === 403 ? " (the Key field is at the top of the page)" : "";
    throw new Error((data.detail || `${response.status} ${response.statusText}`) + hint);
  }
  return data;
}

function show(el, text, kind) {
  el.textContent = text;
  el.className = "result " + (kind || "");
}

// Draw the chosen photo on a canvas and outline the faces the server found (the used ones in green);
// the faces an answer is about (`numbered`) get their number, as in the list below the photo.
async function drawFaces(canvas, file, report, numbered = []) {
  const bitmap = await createImageBitmap(file);
  const side = Math.max(bitmap.width, bitmap.height);
  const scale = Math.min(MAX_SIDE / side, Math.max(1, MIN_SIDE / side)); // small crops are enlarged
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  // Boxes are in pixels of the decoded photo (EXIF-rotated), which is what createImageBitmap draws.
  const sx = canvas.width / report.width, sy = canvas.height / report.height;
  for (const face of report.faces) {
    const [x1, y1, x2, y2] = face.box;
    ctx.lineWidth = face.used ? 3 : 1.5;
    ctx.strokeStyle = face.used ? "#12b76a" : "#fdb022";
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
  }
  ctx.font = "bold 13px system-ui, sans-serif";
  numbered.forEach((face, index) => {
    const x = face.box[0] * sx, y = face.box[1] * sy, label = String(index + 1);
    ctx.fillStyle = "#12b76a";
    ctx.fillRect(x, y, ctx.measureText(label).width + 8, 18);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 4, y + 14);
  });
  canvas.dataset.faces = String(report.faces.length);
}

// Why answers may be unreliable (tiny face, photo turned sideways, face mostly outside the photo).
function noteItems(notes, prefix = "") {
  return notes.map((note) => {
    const item = document.createElement("li");
    item.textContent = prefix + note;
    return item;
  });
}

// One face of an identify answer: its number and place on the photo, who it is, and its notes.
function faceItem(face, index) {
  const [x1, y1, x2, y2] = face.box.map(Math.round);
  const head = document.createElement("p");
  head.className = "face";
  head.textContent = `Face ${index + 1} at ${x1}, ${y1} (${x2 - x1}×${y2 - y1} px): ` +
    (face.known ? face.matches[0].name : "unknown — nobody in the gallery is close enough") +
    (face.compared_as === "masked" ? " (masked: compared with the threshold for masked faces)" : "");
  const matches = document.createElement("ol");
  matches.className = "matches";
  for (const m of face.matches) {
    const item = document.createElement("li");
    item.textContent = `${m.name} — distance ${m.distance.toFixed(3)}`;
    matches.append(item);
  }
  const notes = document.createElement("ul");
  notes.className = "notes";
  notes.append(...noteItems(face.notes));
  const item = document.createElement("li");
  item.dataset.face = String(index + 1);
  item.append(head, notes, matches);
  return item;
}

// An empty canvas: a failed request leaves no photo from an earlier one on the page.
function clearCanvas(canvas) {
  canvas.width = canvas.height = 0;
  delete canvas.dataset.faces;
}

async function busy(button, work) {
  button.disabled = true;
  try { await work(); } finally { button.disabled = false; }
}

$("verify-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const a = $("verify-a").files[0], b = $("verify-b").files[0];
  const out = $("verify-result"), notes = $("verify-notes");
  busy($("verify-go"), async () => {
    show(out, "comparing…");
    notes.replaceChildren();
    clearCanvas($("verify-canvas-a"));
    clearCanvas($("verify-canvas-b"));
    const form = new FormData();
    form.append("a", a);
    form.append("b", b);
    try {
      const r = await api("POST", "/api/verify", form);
      await drawFaces($("verify-canvas-a"), a, r.photos[0]);
      await drawFaces($("verify-canvas-b"), b, r.photos[1]);
      const verdict = r.same ? "SAME person" : "DIFFERENT people";
      const masked = r.compared_as === "masked" ? ", compared as masked: one face is masked" : "";
      show(out, `${verdict} — distance ${r.distance.toFixed(3)} (threshold ${r.threshold.toFixed(3)}${masked}, ` +
           `model ${r.model})`, r.same ? "same" : "different");
      notes.replaceChildren(...noteItems(r.faces[0].notes, "First photo: "),
                            ...noteItems(r.faces[1].notes, "Second photo: "));
    } catch (err) { show(out, err.message, "error"); }
  });
});

$("identify-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const photo = $("identify-photo").files[0];
  const out = $("identify-result"), list = $("identify-faces");
  busy($("identify-go"), async () => {
    show(out, "searching…");
    list.replaceChildren();
    clearCanvas($("identify-canvas"));
    const form = new FormData();
    form.append("photo", photo);
    form.append("top_k", $("identify-k").value || "5");
    form.append("which", $("identify-which").value);
    try {
      const r = await api("POST", "/api/identify", form);
      await drawFaces($("identify-canvas"), photo, r.photo, r.faces);
      const by = ` (model ${r.model})`;
      if (r.faces.length === 1) {
        show(out, (r.known ? `Best match: ${r.matches[0].name}` : "Unknown: nobody in the gallery is close enough") + by,
             r.known ? "known" : "unknown");
      } else {
        const names = r.faces.map((f, i) => `${i + 1}: ${f.known ? f.matches[0].name : "unknown"}`);
        show(out, `${r.faces.length} faces — ${names.join(", ")}${by}`,
             r.faces.some((f) => f.known) ? "known" : "unknown");
      }
      list.replaceChildren(...r.faces.map(faceItem));
    } catch (err) { show(out, err.message, "error"); }
  });
});

async function refreshPeople() {
  const body = $("people").querySelector("tbody");
  body.replaceChildren();
  show($("people-result"), "");
  try {
    const r = await api("GET", "/api/people");
    body.replaceChildren(...r.people.map((p) => {
      const row = document.createElement("tr");
      row.dataset.name = p.name;
      for (const text of [p.name, String(p.faces), new Date(p.created * 1000).toLocaleString()]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const button = document.createElement("button");
      button.className = "remove";
      button.type = "button";
      button.textContent = "Remove";
      button.addEventListener("click", () => removePerson(p.name));
      const cell = document.createElement("td");
      cell.append(button);
      row.append(cell);
      return row;
    }));
  } catch (err) { show($("people-result"), err.message, "error"); }
}

async function removePerson(name) {
  if (!window.confirm(`Remove ${name} and all their faces?`)) return;
  try {
    const r = await api("DELETE", "/api/people/" + encodeURIComponent(name));
    show($("gallery-result"), `Removed ${r.name} (${r.faces_removed} faces)`);
  } catch (err) { show($("gallery-result"), err.message, "error"); }
  await refreshPeople();
}

$("enrol-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("gallery-result");
  busy($("enrol-go"), async () => {
    const form = new FormData();
    form.append("name", $("enrol-name").value);
    for (const file of $("enrol-photos").files) form.append("photos", file);
    form.append("merge", $("enrol-merge").checked ? "true" : "false");
    try {
      const r = await api("POST", "/api/people", form);
      show(out, `Enrolled ${r.name} (${r.faces} faces)`);
      $("enrol-form").reset();
    } catch (err) { show(out, err.message, "error"); }
    await refreshPeople();
  });
});

$("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
  show($("gallery-result"), "");
  refreshPeople();
});

// Wait for the service (a big gallery loads for a while after the server starts), then say who answers.
(async () => {
  for (;;) {
    try {
      await api("GET", "/readyz");
      break;
    } catch (err) { $("status").textContent = "not ready: " + err.message; }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  try {
    const m = await api("GET", "/api/model");
    const warning = m.open_set && m.open_set.note ? ` — ${m.open_set.note}` : "";
    $("status").textContent = `ready — model ${m.name} (threshold ${m.threshold.toFixed(3)}; trained on ${m.trained_on})${warning}`;
  } catch (err) { $("status").textContent = "not ready: " + err.message; }
  await refreshPeople();
})();
