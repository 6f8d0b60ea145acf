// Finding the system's Chromium for the browser test (Debian: apt-get install chromium).
import { accessSync, constants } from "node:fs";
import { delimiter, join } from "node:path";

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `CHROMIUM` when set (and executable), else `chromium` or `chromium-browser` on the PATH. */
export function findChromium(): string | undefined {
  const chosen = process.env.CHROMIUM;
  if (chosen) return executable(chosen) ? chosen : undefined;
  const dirs = (process.env.PATH ?? "").split(delimiter).filter(Boolean);
  return dirs.flatMap((dir) => ["chromium", "chromium-browser"].map((name) => join(dir, name))).find(executable);
}

/** Why the browser test cannot run here, or undefined when it can. Throws when REQUIRE_SERVICES=1. */
export function missingChromium(): string | undefined {
  if (findChromium()) return undefined;
  const reason = process.env.CHROMIUM
    ? `CHROMIUM=${process.env.CHROMIUM} is not an executable`
    : "no chromium on the PATH (apt-get install chromium; or set CHROMIUM)";
  if (process.env.REQUIRE_SERVICES === "1") throw new Error(`REQUIRE_SERVICES=1 but ${reason}`);
  return reason;
}
