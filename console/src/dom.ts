// A few DOM helpers: the console is plain DOM, updated in place so that what the operator
// is pointing at (a button, a link) is not replaced under the pointer.

/** An element with attributes and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** Sets `el`'s text when it differs (no layout work otherwise). */
export function text(el: Element, value: string): void {
  if (el.textContent !== value) el.textContent = value;
}

/**
 * Keeps `parent`'s children in step with `keys`: one element per key, made by `make` the
 * first time, in the order of `keys`; elements of keys no longer there are removed.
 */
export function keyed<E extends HTMLElement>(parent: Element, keys: string[], make: (key: string) => E): E[] {
  const existing = new Map<string, E>();
  for (const child of Array.from(parent.children) as E[]) {
    const key = child.dataset.key;
    if (key !== undefined && keys.includes(key)) existing.set(key, child);
    else child.remove();
  }
  return keys.map((key, i) => {
    let el = existing.get(key);
    if (!el) {
      el = make(key);
      el.dataset.key = key;
    }
    if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] ?? null);
    return el;
  });
}

/** `12:03:04` for a Unix ms time. */
export function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}
