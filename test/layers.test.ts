/**
 * The layering rule of docs/architecture.md, read from the code: each layer imports only the layers below it
 * (util ← registry ← cache ← staging ← mount ← daemon ← cli), and product code never imports lab/, test/ or bench/.
 */
import test from 'ava';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../lab/cli.js';

const LAYERS = ['util', 'registry', 'cache', 'staging', 'mount', 'daemon', 'cli'] as const;

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await sources(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** importsOf lists the relative module specifiers a TypeScript file imports or re-exports (static and dynamic). */
function importsOf(text: string): string[] {
  const specs: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/g)) specs.push(m[1]!);
  for (const m of text.matchAll(/import\(\s*'([^']+)'\s*\)/g)) specs.push(m[1]!);
  return specs.filter((s) => s.startsWith('.'));
}

test('every layer imports only the layers below it, and product code never imports lab/, test/ or bench/', async (t) => {
  const violations: string[] = [];
  let files = 0;
  for (const [rank, layer] of LAYERS.entries()) {
    for (const file of await sources(path.join(REPO_ROOT, layer))) {
      files++;
      const text = await fsp.readFile(file, 'utf8');
      for (const spec of importsOf(text)) {
        const target = path.relative(REPO_ROOT, path.resolve(path.dirname(file), spec)).split(path.sep)[0]!;
        const targetRank = (LAYERS as readonly string[]).indexOf(target);
        if (targetRank < 0 || targetRank > rank) violations.push(`${path.relative(REPO_ROOT, file)} imports ${spec} (${target})`);
      }
    }
  }
  t.true(files > 50, `read ${files} source files`);
  t.deepEqual(violations, []);
});

test('no product source file is over 500 lines (one concept per file)', async (t) => {
  const over: string[] = [];
  for (const layer of LAYERS) {
    for (const file of await sources(path.join(REPO_ROOT, layer))) {
      const lines = (await fsp.readFile(file, 'utf8')).split('\n').length - 1;
      if (lines > 500) over.push(`${path.relative(REPO_ROOT, file)}: ${lines} lines`);
    }
  }
  t.deepEqual(over, []);
});
