// comfy-workshop's one web extension: tells a participant when no GPU is up, and why nodes may be missing.
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

app.registerExtension({
  name: "comfy-workshop.GpuNotice",
  async setup() {
    const reply = await app.api.fetchApi("/workshop");
    if (!reply.ok) return;
    const state = await reply.json();
    const message = !state.catalogue_version ? NO_CATALOGUE : state.gpus_up === 0 ? NO_GPU : null;
    if (message) app.extensionManager.toast.add({ ...message, life: 15000 });
  },
});
