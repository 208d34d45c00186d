// comfy-workshop's one web extension: tells a participant when no GPU is up (and why nodes may be
// missing), adds a "My place in line" sidebar tab (the shared queue is everyone's, so ComfyUI's
// own queue panel cannot say how many jobs run before yours), and ends a mask editor save the
// workspace refused instead of letting the editor re-send it forever.
// Served at /w/<user>/extensions/comfy-workshop/notice.js; the frontend imports it like any custom node's JS.
import { app } from "../../scripts/app.js";

const NO_CATALOGUE = {
  severity: "warn",
  summary: "The GPUs are still starting",
  detail: "Their nodes appear here once the first GPU worker is up. Reload this page in a minute.",
};
const NO_GPU = {
  severity: "info",
  summary: "No GPU is running right now",
  detail: "You can build and queue workflows: they run as soon as a GPU worker starts.",
};

const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function drawPlaces(box) {
  const places = await (await app.api.fetchApi("/workshop/places")).json();
  const running = places.running.map((id) => `<li>${esc(id.split("-")[0])}: running on a GPU</li>`);
  const waiting = places.waiting.map((job) => `<li>${esc(job.prompt_id.split("-")[0])}: <b>#${esc(job.place)}</b> in line</li>`);
  const rows = [...running, ...waiting];
  const list = rows.length ? `<ul style="padding-left:1.2rem">${rows.join("")}</ul>` : "<p>You have no job waiting or running.</p>";
  const note = "<p style=\"opacity:.7;font-size:.85em\">#1 runs next: the number counts the waiting jobs that can use the same GPUs as yours and run first (jobs for other GPU pools do not hold yours up).</p>";
  box.innerHTML = `<h3 style="margin:0 0 .5rem">My place in line</h3>${list}${rows.length ? note : ""}`;
}

function placeTab() {
  let box = null;
  const redraw = () => box?.isConnected && drawPlaces(box);
  app.api.addEventListener("status", redraw); // one of her jobs was queued, started or ended
  app.api.addEventListener("comfy-workshop.place", redraw); // her next job moved up the shared line
  app.extensionManager.registerSidebarTab({
    id: "workshop-place",
    icon: "pi pi-users",
    title: "My place in line",
    tooltip: "Where your jobs are in the shared queue",
    type: "custom",
    render: (element) => {
      box = document.createElement("div");
      box.className = "workshop-place";
      box.style.padding = "0.8rem";
      element.replaceChildren(box);
      drawPlaces(box);
    },
  });
}

// The stock mask editor (1.27) sends each layer of a save until the server takes it: it counts
// only lost connections, so a refusal (her folder full, an image too large) had her page re-send
// the layer without end and the editor hang on "Saving...". Its uploads to clipspace/ that the
// workspace refuses are shown to her, once, and fail as a lost connection does: the editor tries
// each layer three times and closes (naming on her node the layer it could not store, as after
// lost connections: she masks again once she has made room).
function endRefusedEditorSaves(api) {
  const fetchApi = api.fetchApi.bind(api);
  let shown = { detail: "", at: 0 };
  api.fetchApi = async (route, options) => {
    const reply = await fetchApi(route, options);
    const body = options?.body;
    const editorSave = route.startsWith("/upload/") && body instanceof FormData && body.get("subfolder") === "clipspace";
    if (reply.ok || !editorSave) return reply;
    const said = await reply.clone().json().then((answer) => answer?.error, () => null);
    const detail = typeof said === "string" ? said : `${reply.status} ${reply.statusText}`;
    if (detail !== shown.detail || Date.now() - shown.at > 10000) {
      app.extensionManager.toast.add({ severity: "error", summary: "The mask was not saved", detail, life: 20000 });
    }
    shown = { detail, at: Date.now() };
    throw new Error(`${route} refused: ${detail}`);
  };
}

app.registerExtension({
  name: "comfy-workshop.GpuNotice",
  async setup() {
    endRefusedEditorSaves(app.api);
    placeTab();
    const reply = await app.api.fetchApi("/workshop");
    if (!reply.ok) return;
    const state = await reply.json();
    const message = !state.catalogue_version ? NO_CATALOGUE : state.gpus_up === 0 ? NO_GPU : null;
    if (message) app.extensionManager.toast.add({ ...message, life: 15000 });
  },
});
