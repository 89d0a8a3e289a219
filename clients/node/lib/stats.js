// Statistics a masking party uploads, computed elsewhere (by Python) and read from a folder:
//
//   manifest.json              {"format": "collabedit-stats/1", "layers": {"<L>": {"d_in": D, "d_out": O}, ...}}
//   layer-<L>-s_kk_upper.f64   S_KK's packed upper triangle, row-major (0,0),(0,1)..(0,D-1),(1,1)..,
//                              D(D+1)/2 float64 little-endian (the order of kernels.pack_upper)
//   layer-<L>-s_rk.f64         S_RK, O x D row-major, float64 little-endian
//
// tests/clients/node_stats.py writes this format from numpy arrays.

import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const STATS_FORMAT = 'collabedit-stats/1';

export class StatisticsError extends Error {
  constructor(message) {
    super(message);
    this.name = 'StatisticsError';
  }
}

export function packedSize(d) {
  return (d * (d + 1)) / 2;
}

export function statsFiles(folder, layer) {
  return {
    sKkUpper: join(folder, `layer-${layer}-s_kk_upper.f64`),
    sRk: join(folder, `layer-${layer}-s_rk.f64`),
  };
}

function readF64(path, count, what) {
  if (!existsSync(path)) throw new StatisticsError(`${what}: ${path} is missing`);
  const size = statSync(path).size;
  if (size !== 8 * count) {
    throw new StatisticsError(`${what}: ${path} has ${size} bytes, expected ${8 * count} (${count} float64 values)`);
  }
  const out = new Float64Array(count);
  Buffer.from(out.buffer).set(readFileSync(path));
  return out;
}

function dimension(value, what) {
  if (!Number.isSafeInteger(value) || value < 1) throw new StatisticsError(`${what} must be an integer >= 1, got ${JSON.stringify(value)}`);
  return value;
}

/** A statistics folder: layers() and read(layer) -> {sKkUpper, sRk, dIn, dOut}. */
export class StatisticsFolder {
  constructor(folder) {
    this.folder = resolve(folder);
    const manifestPath = join(this.folder, 'manifest.json');
    let manifest;
    try {
      manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    } catch (error) {
      throw new StatisticsError(`statistics ${manifestPath}: ${error.code === 'ENOENT' ? 'missing' : error.message}`);
    }
    if (manifest === null || typeof manifest !== 'object' || typeof manifest.layers !== 'object' || manifest.layers === null) {
      throw new StatisticsError(`statistics ${manifestPath}: expected {"format": "${STATS_FORMAT}", "layers": {...}}`);
    }
    if (manifest.format !== undefined && manifest.format !== STATS_FORMAT) {
      throw new StatisticsError(`statistics ${manifestPath}: format ${JSON.stringify(manifest.format)}, this reader knows ${STATS_FORMAT}`);
    }
    this.shapes = new Map();
    for (const [key, spec] of Object.entries(manifest.layers)) {
      if (!/^[0-9]+$/.test(key)) throw new StatisticsError(`statistics ${manifestPath}: layer ${JSON.stringify(key)} is not a layer number`);
      const where = `statistics ${manifestPath}: layer ${key}`;
      this.shapes.set(Number(key), { dIn: dimension(spec && spec.d_in, `${where} d_in`), dOut: dimension(spec && spec.d_out, `${where} d_out`) });
    }
  }

  layers() {
    return [...this.shapes.keys()].sort((a, b) => a - b);
  }

  /** The layer's statistics; checks them against the round's d_in / d_out when given. */
  read(layer, expected = null) {
    const shape = this.shapes.get(Number(layer));
    if (!shape) throw new StatisticsError(`statistics ${this.folder} have no layer ${layer} (they have ${this.layers().join(', ') || 'none'})`);
    if (expected && (expected.dIn !== shape.dIn || expected.dOut !== shape.dOut)) {
      throw new StatisticsError(`statistics of layer ${layer} are ${shape.dOut} x ${shape.dIn}, the round expects ` +
        `${expected.dOut} x ${expected.dIn}`);
    }
    const files = statsFiles(this.folder, layer);
    return {
      ...shape,
      sKkUpper: readF64(files.sKkUpper, packedSize(shape.dIn), `layer ${layer} S_KK upper triangle`),
      sRk: readF64(files.sRk, shape.dOut * shape.dIn, `layer ${layer} S_RK`),
    };
  }
}
