// A real fleet for integration tests: `gaia run` on a free port, in a temporary data dir.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const GAIA_BIN =
  process.env.GAIA_BIN ?? fileURLToPath(new URL("../../../../target/debug/gaia", import.meta.url));

/** Why the fleet tests cannot run here, or undefined when they can. Throws when REQUIRE_SERVICES=1. */
export function missingServices(): string | undefined {
  if (existsSync(GAIA_BIN)) return undefined;
  const reason = `${GAIA_BIN} not found (build it: cargo build -p gaia; or set GAIA_BIN)`;
  if (process.env.REQUIRE_SERVICES === "1") throw new Error(`REQUIRE_SERVICES=1 but ${reason}`);
  return reason;
}

const SDK_SECRET = "ts-client-test-secret";

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

export interface Allocation {
  worldId: string;
  playerId: string;
  address: string;
  joinToken: string;
}

export class Fleet {
  private log = "";
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly dataDir: string,
  ) {
    child.stdout?.on("data", (d: Buffer) => (this.log += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (this.log += d.toString()));
  }

  /** Starts `gaia run` and waits for `/readyz` and a Ready game server of fleet `town`. */
  static async start(timeoutMs = 90_000): Promise<Fleet> {
    const port = await freePort();
    const dataDir = mkdtempSync(join(tmpdir(), "gaia-ts-client-"));
    const args = ["run", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, "--sdk-secret", SDK_SECRET];
    const child = spawn(GAIA_BIN, args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
    });
    const fleet = new Fleet(`http://127.0.0.1:${port}`, child, dataDir);
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`gaia run exited (${child.exitCode}):\n${fleet.log}`);
      if (await fleet.ready()) return fleet;
      await new Promise((r) => setTimeout(r, 200));
    }
    await fleet.stop();
    throw new Error(`no Ready game server within ${timeoutMs} ms:\n${fleet.log}`);
  }

  private async ready(): Promise<boolean> {
    try {
      if (!(await fetch(`${this.url}/readyz`)).ok) return false;
      const servers = (await (await fetch(`${this.url}/v1/gameservers?fleet=town`)).json()) as Array<{ state: string }>;
      return servers.some((s) => s.state === "Ready");
    } catch {
      return false;
    }
  }

  async allocate(body: Record<string, unknown>): Promise<Allocation> {
    const res = await fetch(`${this.url}/v1/allocations`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ fleet: "town", ...body }),
    });
    if (!res.ok) throw new Error(`allocation: ${res.status} ${await res.text()}`);
    return (await res.json()) as Allocation;
  }

  /** Drains a game server (README, "Drain a game server"): its worlds move and clients get `Migrate`. */
  async drain(server: string): Promise<void> {
    const token = await new Promise<string>((resolve, reject) =>
      execFile(GAIA_BIN, ["sdk-token", "--name", server, "--sdk-secret", SDK_SECRET], (error, stdout) =>
        error ? reject(error) : resolve(stdout.trim()),
      ),
    );
    const res = await fetch(`${this.url}/v1/gameservers/${server}/drain`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    if (!res.ok) throw new Error(`drain: ${res.status} ${await res.text()}`);
  }

  /** SIGTERM to the process we started (it stops its game servers), SIGKILL after 15 s. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((r) => child.once("exit", () => r()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  get output(): string {
    return this.log;
  }
}
