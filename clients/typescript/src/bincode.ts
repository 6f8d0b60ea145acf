/**
 * bincode 2's standard configuration, as docs/protocol.md §6 states it: varint integers,
 * length-prefixed strings, lists and bytes, enums as a varint index then their fields.
 * `Reader` never reads past its buffer and never allocates more than the bytes left can
 * hold: every length is checked against what remains before anything is built.
 */
import { DecodeError, EncodeError } from "./errors.js";

const U16_MARKER = 0xfb;
const U32_MARKER = 0xfc;
const U64_MARKER = 0xfd;
const SINGLE_BYTE_MAX = 250;

const MAX = { u16: 0xffff, u32: 0xffff_ffff, u64: Number.MAX_SAFE_INTEGER } as const;
export type UInt = keyof typeof MAX;

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

export class Reader {
  private pos = 0;
  constructor(private readonly bytes: Uint8Array) {}

  get remaining(): number {
    return this.bytes.length - this.pos;
  }

  private fail(message: string, at = this.pos): never {
    throw new DecodeError(message, `byte ${at}`);
  }

  private take(n: number): Uint8Array {
    if (n > this.remaining) this.fail(`need ${n} bytes, ${this.remaining} left`);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u8(): number {
    return this.take(1)[0]!;
  }

  i8(): number {
    const b = this.u8();
    return b > 127 ? b - 256 : b;
  }

  /** A varint of the given width. u64 values above 2^53 - 1 are refused: a JS number cannot hold them. */
  uint(width: UInt): number {
    const start = this.pos;
    const first = this.u8();
    if (first <= SINGLE_BYTE_MAX) return first;
    let b: Uint8Array;
    let value: number;
    switch (first) {
      case U16_MARKER:
        b = this.take(2);
        value = b[0]! | (b[1]! << 8);
        break;
      case U32_MARKER:
        if (width === "u16") this.fail(`u32 marker in a u16`, start);
        b = this.take(4);
        value = (b[0]! | (b[1]! << 8) | (b[2]! << 16)) + b[3]! * 2 ** 24;
        break;
      case U64_MARKER: {
        if (width !== "u64") this.fail(`u64 marker in a ${width}`, start);
        b = this.take(8);
        const lo = (b[0]! | (b[1]! << 8) | (b[2]! << 16)) + b[3]! * 2 ** 24;
        const hi = (b[4]! | (b[5]! << 8) | (b[6]! << 16)) + b[7]! * 2 ** 24;
        if (hi >= 2 ** 21) this.fail(`u64 above 2^53 - 1 does not fit a JavaScript number`, start);
        value = hi * 2 ** 32 + lo;
        break;
      }
      default:
        this.fail(`invalid varint marker 0x${first.toString(16)}`, start);
    }
    return value;
  }

  /**
   * A length (varint u64). Every element of a string, bytes or list takes at least one byte,
   * so a length above the bytes left is refused before anything is allocated.
   */
  private length(): number {
    const at = this.pos;
    const n = this.uint("u64");
    if (n > this.remaining) {
      this.fail(`length ${n} exceeds the ${this.remaining} bytes left`, at);
    }
    return n;
  }

  string(): string {
    const at = this.pos;
    const raw = this.take(this.length());
    try {
      return utf8Strict.decode(raw);
    } catch {
      this.fail("string is not valid UTF-8", at);
    }
  }

  bytesField(): Uint8Array {
    return this.take(this.length()).slice();
  }

  /** `Vec<T>`: every element takes at least one byte, so the length is bounded by the frame. */
  list<T>(read: (r: Reader) => T): T[] {
    const n = this.length();
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }

  variant(type: string, count: number): number {
    const at = this.pos;
    const index = this.uint("u32");
    if (index >= count) this.fail(`unknown ${type} variant ${index}`, at);
    return index;
  }

  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} bytes after the message`);
  }
}

export class Writer {
  private buf = new Uint8Array(64);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  u8(v: number): void {
    checkInt(v, 0, 0xff, "u8");
    this.reserve(1);
    this.buf[this.len++] = v;
  }

  i8(v: number): void {
    checkInt(v, -128, 127, "i8");
    this.reserve(1);
    this.buf[this.len++] = v & 0xff;
  }

  /** The shortest varint form, as the server writes it. */
  uint(v: number, width: UInt): void {
    checkInt(v, 0, MAX[width], width);
    if (v <= SINGLE_BYTE_MAX) return this.u8(v);
    if (v <= 0xffff) return this.raw([U16_MARKER, v & 0xff, v >>> 8]);
    if (v <= 0xffff_ffff) return this.raw([U32_MARKER, ...le32(v)]);
    this.raw([U64_MARKER, ...le32(v % 2 ** 32), ...le32(Math.floor(v / 2 ** 32))]);
  }

  string(v: string): void {
    this.bytesField(utf8.encode(v));
  }

  bytesField(v: Uint8Array): void {
    this.uint(v.length, "u64");
    this.reserve(v.length);
    this.buf.set(v, this.len);
    this.len += v.length;
  }

  list<T>(items: readonly T[], write: (w: Writer, item: T) => void): void {
    this.uint(items.length, "u64");
    for (const item of items) write(this, item);
  }

  variant(index: number): void {
    this.uint(index, "u32");
  }

  private raw(bytes: number[]): void {
    this.reserve(bytes.length);
    for (const b of bytes) this.buf[this.len++] = b;
  }
}

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

function checkInt(v: number, min: number, max: number, type: string): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new EncodeError(`${String(v)} is not a ${type} (${min}..=${max})`);
  }
}

/** Bytes from the hex the docs and protocol/frames.json use: `"01 00 ff"`. */
export function fromHex(hex: string): Uint8Array {
  const clean = hex.replace(/\s+/g, "");
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) throw new DecodeError("not hex", "input");
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}
