/**
 * Strict readers for `gaia.v1.json` values (docs/protocol.md §7): objects tagged by `type`,
 * camelCase fields, integers in range, no unknown or missing field. They mirror what the
 * server refuses, so a value that decodes here would also be accepted there. The codecs
 * name the generated wire type (src/generated/) they read, so a field name or a tag that
 * is not the Rust type's does not compile.
 */
import { DecodeError } from "./errors.js";
import type { UInt } from "./bincode.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

const RANGE: Record<UInt | "u8" | "i8", [number, number]> = {
  u8: [0, 0xff],
  i8: [-128, 127],
  u16: [0, 0xffff],
  u32: [0, 0xffff_ffff],
  u64: [0, Number.MAX_SAFE_INTEGER],
};

/** Every key of every member of the union `W`. */
type Keys<W> = W extends unknown ? keyof W & string : never;

/**
 * The names of the union `U` (a union's `type` tags, or a unit enum's strings), in the order
 * of the Rust variants (the bincode variant index): a compile error names any missing.
 */
export function tags<U extends string>() {
  return <const T extends readonly U[]>(
    names: T & ([Exclude<U, T[number]>] extends [never] ? unknown : { missing: Exclude<U, T[number]> }),
  ): T => names;
}

/**
 * Fields of one JSON object, read by name; `done()` refuses any field not read. `W` is the
 * wire type read: only its fields' names (those of any of its variants) may be asked for.
 */
export class Fields<W = JsonObject> {
  private readonly seen = new Set<string>();
  constructor(
    private readonly obj: JsonObject,
    readonly path: string,
  ) {}

  static of<W = JsonObject>(value: unknown, path: string): Fields<W> {
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new DecodeError(`expected an object, got ${describe(value)}`, path || "$");
    }
    return new Fields<W>(value as JsonObject, path);
  }

  at(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  get(key: Keys<W>): unknown {
    if (!Object.prototype.hasOwnProperty.call(this.obj, key)) {
      throw new DecodeError(`missing field \`${key}\``, this.at(key));
    }
    this.seen.add(key);
    return this.obj[key];
  }

  int(key: Keys<W>, type: keyof typeof RANGE): number {
    return int(this.get(key), type, this.at(key));
  }

  string(key: Keys<W>): string {
    const v = this.get(key);
    if (typeof v !== "string") throw new DecodeError(`expected a string, got ${describe(v)}`, this.at(key));
    return v;
  }

  array(key: Keys<W>): unknown[] {
    const v = this.get(key);
    if (!Array.isArray(v)) throw new DecodeError(`expected an array, got ${describe(v)}`, this.at(key));
    return v;
  }

  /** These fields as those of `V`, the variant of `W` that the tag named. */
  variant<V extends W>(): Fields<V> {
    return this as unknown as Fields<V>;
  }

  /** The `type` tag, which must be one of `names`. */
  tag<T extends string>(names: readonly T[], what: string): T {
    const t = (this as Fields).string("type");
    if (!(names as readonly string[]).includes(t)) {
      throw new DecodeError(`unknown ${what} type \`${t}\``, this.at("type"));
    }
    return t as T;
  }

  done(): void {
    for (const key of Object.keys(this.obj)) {
      if (!this.seen.has(key)) throw new DecodeError(`unknown field \`${key}\``, this.at(key));
    }
  }
}

export function int(v: unknown, type: keyof typeof RANGE, path: string): number {
  const [min, max] = RANGE[type];
  if (typeof v !== "number" || !Number.isInteger(v)) {
    throw new DecodeError(`expected an integer (${type}), got ${describe(v)}`, path);
  }
  if (v < min || v > max) throw new DecodeError(`${v} is out of range for ${type}`, path);
  return v;
}

/** Parse a text frame; JSON that does not parse is a `DecodeError`, like every other fault. */
export function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new DecodeError(`not JSON: ${(e as Error).message}`, "$");
  }
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "number" && !Number.isInteger(v)) return `the number ${v}`;
  return typeof v;
}
