// The login form (/w/login): a script file, not inline, so the page runs under the platform's CSP.
"use strict";

const form = document.getElementById("login");
const error = document.getElementById("error");
// Where to go after logging in: only a page of this site (a "next" like "/\\evil.example" or
// "//evil.example" would leave it, as browsers read a backslash as a slash).
function nextPage() {
  const next = new URLSearchParams(location.search).get("next");
  const target = next ? new URL(next, location.origin) : null;
  return target && target.origin === location.origin ? target.pathname + target.search + target.hash : "/w/";
}
// The ComfyUI frontend keeps open workflows in this browser's storage, which all workspaces on
// this site share: when someone else logs in on the same browser, drop what the last one left.
function forgetOtherParticipant(user) {
  if (localStorage.getItem("workshop.user") !== user) {
    for (const store of [localStorage, sessionStorage]) {
      Object.keys(store).filter((key) => key.startsWith("Comfy") || key.startsWith("workflow")).forEach((key) => store.removeItem(key));
    }
    localStorage.setItem("workshop.user", user);
  }
}
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const body = JSON.stringify({ user: form.username.value.trim(), password: form.password.value });
  const reply = await fetch("/api/auth/login", { method: "POST", headers: { "Content-Type": "application/json" }, body });
  if (reply.ok) {
    forgetOtherParticipant(form.username.value.trim());
    location.href = nextPage();
  } else {
    const detail = await reply.json().catch(() => ({}));
    error.textContent = detail.detail || detail.error || "Wrong name or password: ask the organizer for yours.";
  }
});
