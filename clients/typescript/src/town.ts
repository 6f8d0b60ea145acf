/**
 * The reference world, the town (docs/protocol.md §6, "The reference world"): its types,
 * their codecs (`townCodec`, to pass to the envelope functions and to `GaiaClient`), and the
 * pure helpers a client needs: `applyChanges` keeps a snapshot current, `isWall` and
 * `legalMoves` say which `Move`s make sense.
 *
 * The types are the generated ones (src/generated/town.ts, the JSON form) but for two
 * changes that make them easier to use: a snapshot's `walls` are a `Uint8Array`, and a
 * `joined` change holds its entity in `entity` rather than beside its tag. The JSON codecs
 * write and read the generated types themselves.
 */
import type { Reader, Writer } from "./bincode.js";
import { EncodeError, DecodeError } from "./errors.js";
import type * as wire from "./generated/town.js";
import type { Action, Entity, EntityKind } from "./generated/town.js";
import { Fields, int, tags } from "./json.js";
import type { TypeCodec, WorldCodec } from "./protocol.js";

export type { Action, Entity, EntityKind };

export interface Snapshot extends Omit<wire.Snapshot, "walls"> {
  /** Row-major bitmap: cell (x, y) is a wall when bit `y * width + x` is set, bit 0 the lowest of byte 0. */
  walls: Uint8Array;
}

export type Change = Exclude<wire.Change, { type: "joined" }> | { type: "joined"; entity: Entity };

/** A `Say` holds at most this many bytes of UTF-8. */
export const MAX_SAY_BYTES = 200;

const ACTION_TYPES = tags<Action["type"]>()(["move", "say"]);
const KINDS = tags<EntityKind>()(["bot", "player"]);
const CHANGE_TYPES = tags<Change["type"]>()(["joined", "moved", "left", "said", "greeted", "parted"]);

const utf8 = new TextEncoder();

export const action: TypeCodec<Action> = {
  write(w, a) {
    w.variant(ACTION_TYPES.indexOf(a.type));
    if (a.type === "move") {
      w.i8(a.dx);
      w.i8(a.dy);
    } else {
      checkSay(a.text);
      w.string(a.text);
    }
  },
  read(r) {
    return r.variant("Action", ACTION_TYPES.length) === 0
      ? { type: "move", dx: r.i8(), dy: r.i8() }
      : { type: "say", text: r.string() };
  },
  toJson(a): wire.Action {
    if (a.type === "say") checkSay(a.text);
    else for (const d of [a.dx, a.dy]) if (!Number.isInteger(d) || d < -128 || d > 127) throw new EncodeError(`${d} is not an i8`);
    return { ...a };
  },
  fromJson(v, path) {
    const f = Fields.of<wire.Action>(v, path);
    const a: Action =
      f.tag(ACTION_TYPES, "action") === "move"
        ? { type: "move", dx: f.int("dx", "i8"), dy: f.int("dy", "i8") }
        : { type: "say", text: f.string("text") };
    f.done();
    return a;
  },
};

function checkSay(text: string): void {
  const n = utf8.encode(text).length;
  if (n > MAX_SAY_BYTES) throw new EncodeError(`a Say holds at most ${MAX_SAY_BYTES} bytes, this one ${n}`);
}

function writeEntity(w: Writer, e: Entity): void {
  w.uint(e.id, "u32");
  w.variant(KINDS.indexOf(e.kind));
  w.string(e.name);
  w.uint(e.x, "u16");
  w.uint(e.y, "u16");
}

function readEntity(r: Reader): Entity {
  return { id: r.uint("u32"), kind: KINDS[r.variant("EntityKind", KINDS.length)]!, name: r.string(), x: r.uint("u16"), y: r.uint("u16") };
}

function entityJson(e: Entity): wire.Entity {
  if (!KINDS.includes(e.kind)) throw new EncodeError(`unknown entity kind ${String(e.kind)}`);
  return { id: e.id, kind: e.kind, name: e.name, x: e.x, y: e.y };
}

/** Reads an entity's fields from `f`, which may hold others (`Joined` has `type` beside them). */
function entityFields(f: Fields<wire.Entity>): Entity {
  const kind = f.string("kind");
  if (!(KINDS as readonly string[]).includes(kind)) throw new DecodeError(`unknown entity kind \`${kind}\``, f.at("kind"));
  return { id: f.int("id", "u32"), kind: kind as EntityKind, name: f.string("name"), x: f.int("x", "u16"), y: f.int("y", "u16") };
}

export const snapshot: TypeCodec<Snapshot> = {
  write(w, s) {
    w.uint(s.width, "u16");
    w.uint(s.height, "u16");
    w.bytesField(s.walls);
    w.list(s.entities, writeEntity);
  },
  read(r) {
    return { width: r.uint("u16"), height: r.uint("u16"), walls: r.bytesField(), entities: r.list(readEntity) };
  },
  toJson(s): wire.Snapshot {
    return { width: s.width, height: s.height, walls: Array.from(s.walls), entities: s.entities.map(entityJson) };
  },
  fromJson(v, path) {
    const f = Fields.of<wire.Snapshot>(v, path);
    const s: Snapshot = {
      width: f.int("width", "u16"),
      height: f.int("height", "u16"),
      walls: Uint8Array.from(f.array("walls"), (b, i) => int(b, "u8", `${f.at("walls")}[${i}]`)),
      entities: f.array("entities").map((e, i) => {
        const ef = Fields.of<wire.Entity>(e, `${f.at("entities")}[${i}]`);
        const entity = entityFields(ef);
        ef.done();
        return entity;
      }),
    };
    f.done();
    return s;
  },
};

export const change: TypeCodec<Change> = {
  write(w, c) {
    w.variant(CHANGE_TYPES.indexOf(c.type));
    switch (c.type) {
      case "joined":
        return writeEntity(w, c.entity);
      case "moved":
        w.uint(c.id, "u32");
        w.uint(c.x, "u16");
        return w.uint(c.y, "u16");
      case "left":
        return w.uint(c.id, "u32");
      case "said":
        w.uint(c.id, "u32");
        return w.string(c.text);
      case "greeted":
      case "parted":
        w.uint(c.id, "u32");
        return w.uint(c.other, "u32");
    }
  },
  read(r) {
    const type = CHANGE_TYPES[r.variant("Change", CHANGE_TYPES.length)]!;
    switch (type) {
      case "joined":
        return { type, entity: readEntity(r) };
      case "moved":
        return { type, id: r.uint("u32"), x: r.uint("u16"), y: r.uint("u16") };
      case "left":
        return { type, id: r.uint("u32") };
      case "said":
        return { type, id: r.uint("u32"), text: r.string() };
      case "greeted":
      case "parted":
        return { type, id: r.uint("u32"), other: r.uint("u32") };
    }
  },
  toJson(c): wire.Change {
    return c.type === "joined" ? { type: c.type, ...entityJson(c.entity) } : { ...c };
  },
  fromJson(v, path) {
    const f = Fields.of<wire.Change>(v, path);
    const type = f.tag(CHANGE_TYPES, "change");
    let c: Change;
    switch (type) {
      case "joined":
        c = { type, entity: entityFields(f.variant<Extract<wire.Change, { type: "joined" }>>()) };
        break;
      case "moved":
        c = { type, id: f.int("id", "u32"), x: f.int("x", "u16"), y: f.int("y", "u16") };
        break;
      case "left":
        c = { type, id: f.int("id", "u32") };
        break;
      case "said":
        c = { type, id: f.int("id", "u32"), text: f.string("text") };
        break;
      case "greeted":
      case "parted":
        c = { type, id: f.int("id", "u32"), other: f.int("other", "u32") };
        break;
    }
    f.done();
    return c;
  },
};

/** The town, for `GaiaClient` and the envelope codecs. */
export const townCodec: WorldCodec<Action, Snapshot, Change> = { action, view: snapshot, change };

/** Cells outside the map count as walls. */
export function isWall(s: Snapshot, x: number, y: number): boolean {
  if (!Number.isInteger(x) || !Number.isInteger(y) || x < 0 || y < 0 || x >= s.width || y >= s.height) return true;
  const bit = y * s.width + x;
  return ((s.walls[bit >> 3] ?? 0) & (1 << (bit & 7))) !== 0;
}

const STEPS: ReadonlyArray<readonly [number, number]> = [
  [1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [1, -1], [-1, 1], [-1, -1],
];

/**
 * The steps from (x, y) onto a cell that is not a wall, straight ones first. The page does not
 * say whether an occupied cell or a diagonal between two walls is refused; this does not guess.
 */
export function legalMoves(s: Snapshot, x: number, y: number): Array<{ dx: number; dy: number }> {
  return STEPS.filter(([dx, dy]) => !isWall(s, x + dx, y + dy)).map(([dx, dy]) => ({ dx, dy }));
}

/** The snapshot after `changes`, in order. Pure: `s` is not modified. */
export function applyChanges(s: Snapshot, changes: readonly Change[]): Snapshot {
  let entities = s.entities;
  for (const c of changes) {
    switch (c.type) {
      case "joined":
        entities = [...entities.filter((e) => e.id !== c.entity.id), { ...c.entity }];
        break;
      case "moved":
        entities = entities.map((e) => (e.id === c.id ? { ...e, x: c.x, y: c.y } : e));
        break;
      case "left":
        entities = entities.filter((e) => e.id !== c.id);
        break;
      // Said, Greeted and Parted are events: a snapshot has no field for them.
    }
  }
  return entities === s.entities ? s : { ...s, entities };
}
