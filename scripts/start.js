// `npm start`: the main job on the embedded default store. It creates an OCI layout store holding the
// sample artifact of the Azure walk-through (samples/artifact:1.0) and runs the daemon in the
// foreground with that store mounted at ./mnt and its staging folder at ./publish, then prints what to try.
// Ctrl-C unmounts. `npm start -- --source HOST` uses a real registry instead.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// `npm start | tee log` and the tee is gone: printing must not kill this process before the daemon unmounts.
process.stdout.on('error', () => undefined);
process.stderr.on('error', () => undefined);
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bin = path.join(root, 'bin', 'regfs');
const args = process.argv.slice(2);
const at = args.indexOf('--source');
const demo = path.join(root, '.regfs-demo');
const store = path.join(demo, 'store');
const source = at >= 0 ? args[at + 1] : `oci:${store}`;
if (at >= 0 && !source) {
  console.error('npm start: --source needs a registry host, e.g. npm start -- --source localhost:5000');
  process.exit(2);
}
const mnt = path.join(root, 'mnt');

if (at < 0 && !existsSync(path.join(store, 'samples/artifact/index.json'))) {
  const work = path.join(demo, 'sample');
  mkdirSync(work, { recursive: true });
  writeFileSync(path.join(work, 'artifact.txt'), 'Here is an artifact!\n');
  const r = spawnSync(process.execPath, [bin, 'push', `oci:${store}/samples/artifact:1.0`, '--manifest-config', '/dev/null:application/vnd.unknown.config.v1+json', 'artifact.txt:application/vnd.unknown.layer.v1+txt'], { cwd: work, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
mkdirSync(mnt, { recursive: true });

const staging = path.join(root, 'publish');
mkdirSync(staging, { recursive: true });
const child = spawn(
  process.execPath,
  [bin, 'daemon', '--source', source, '--mountpoint', mnt, '--staging', staging, '--cache-dir', path.join(demo, 'cache'), '--state-dir', path.join(demo, 'state'), '--socket', path.join(demo, 'run', 'control.sock')],
  { stdio: ['ignore', 'inherit', 'inherit'] },
);
const mounted = () => readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mnt);
const started = Date.now();
const poll = setInterval(() => {
  if (mounted()) {
    clearInterval(poll);
    const rel = path.relative(process.cwd(), mnt) || '.';
    const sample = at < 0 ? `${rel}/samples/artifact/1.0` : rel;
    console.log(`\nregfs: ${source} is mounted at ${rel}. Try, in another terminal:`);
    console.log(`  ls -lR ${sample}`);
    console.log(at < 0 ? `  cat ${sample}/artifact.txt` : `  find ${rel} -maxdepth 3`);
    const srel = path.relative(process.cwd(), staging) || '.';
    console.log(`  mkdir -p ${srel}/samples/artifact/2.0 && cp README.md ${srel}/samples/artifact/2.0/   # published as samples/artifact:2.0, then visible under ${rel}`);
    console.log(`  (status: ${path.relative(process.cwd(), bin)} status --socket ${path.relative(process.cwd(), path.join(demo, 'run', 'control.sock'))})`);
    console.log('Press Ctrl-C to unmount.\n');
  } else if (child.exitCode !== null || Date.now() - started > 30_000) {
    clearInterval(poll);
  }
}, 100);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code) => process.exit(code ?? 1));
