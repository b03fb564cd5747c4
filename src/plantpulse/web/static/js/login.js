import { ApiError, login, session } from "./api.js";

function target() {
  const next = new URLSearchParams(location.search).get("next") || "";
  // Only our own pages: never an absolute or protocol-relative URL.
  return next.startsWith("/app/") && !next.startsWith("//") ? next : "/app/";
}

if (session()) location.replace(target());

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await login(form.username.value.trim(), form.password.value);
    location.assign(target());
  } catch (exc) {
    error.textContent =
      exc instanceof ApiError && exc.status === 401
        ? "Wrong username or password."
        : exc instanceof ApiError && exc.status === 422
          ? "Enter a username and a password."
          : `Could not sign in: ${exc.message}`;
    error.hidden = false;
    form.password.select();
  } finally {
    button.disabled = false;
  }
});
