// The API, with the console's bearer token: asked for only when the API answers 401, and kept
// in sessionStorage (this tab only). `authorized` wraps fetch; `askForToken` shows the prompt.
const KEY = "gaia-console-token";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** The Authorization header to send, if a token was given. */
export function authHeaders(): Record<string, string> {
  const token = sessionStorage.getItem(KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

let asking: Promise<void> | undefined;

/** Shows the token prompt (once, however many requests were refused) and stores the answer. */
export function askForToken(reason: string): Promise<void> {
  asking ??= new Promise<void>((resolve) => {
    const dialog = document.querySelector<HTMLDialogElement>("#token")!;
    const form = dialog.querySelector("form")!;
    const input = dialog.querySelector<HTMLInputElement>("input")!;
    dialog.querySelector(".reason")!.textContent = reason;
    input.value = "";
    form.onsubmit = (e) => {
      e.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      dialog.close();
      asking = undefined;
      resolve();
    };
    dialog.showModal();
  });
  return asking;
}

/** `fetch` with the token; a 401 asks for a token and tries again. Other errors throw `ApiError`. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  for (;;) {
    const headers: Record<string, string> = { ...authHeaders() };
    if (body !== undefined) headers["content-type"] = "application/json";
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await fetch(path, init);
    if (res.status === 401) {
      await askForToken(sessionStorage.getItem(KEY) ? "That token was refused." : "This control plane needs a matchmaker token.");
      continue;
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text;
      try {
        message = (JSON.parse(text) as { error: { message: string } }).error.message;
      } catch {
        // not the error body: keep the text
      }
      throw new ApiError(res.status, `${res.status}: ${message}`);
    }
    return JSON.parse(text) as T;
  }
}
