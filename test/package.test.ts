import test from 'ava';
import { execFile, spawn } from 'node:child_process';
import { cp, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT, cliEnv, runCli, tempDir } from '../lab/cli.js';
import { fusermount, isMounted } from '../lab/mount.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** run executes a program without a shell and collects its output and exit code. */
function run(file: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 240_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * npmEnv is this process's environment without what `npm test` adds for its own script (npm_package_*,
 * npm_lifecycle_*, the global/prefix settings), so the inner npm runs as if typed at a shell.
 */
function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_(package|lifecycle)_/i.test(k) || /^npm_config_(global|prefix|location)$/i.test(k) || k === 'INIT_CWD') continue;
    env[k] = v;
  }
  return env;
}

// A clean clone is what a user packs: the files git tracks (and new ones not ignored), without dist/,
// with the checkout's node_modules (the packages `npm ci` installed) linked in for the prepack build.
// Packing in place would rebuild the dist/ these tests run from.
test('npm pack builds the package (prepack), ships only what runs, and npm install -g of the tarball gives a working regfs', async (t) => {
  const base = await tempDir(t, 'regfs-pack-');
  const src = path.join(base, 'src');
  const listed = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: REPO_ROOT });
  t.is(listed.code, 0, listed.stderr);
  const files = listed.stdout.split('\0').filter((f) => f && !/^(node_modules|dist)(\/|$)/.test(f));
  for (const f of files) {
    await mkdir(path.dirname(path.join(src, f)), { recursive: true });
    await cp(path.join(REPO_ROOT, f), path.join(src, f)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOENT') throw e; // deleted in the work tree but not yet in the index
    });
  }
  await symlink(path.join(REPO_ROOT, 'node_modules'), path.join(src, 'node_modules'));
  const env = npmEnv();

  const packed = await run('npm', ['pack', '--pack-destination', base, '--json'], { cwd: src, env });
  t.is(packed.code, 0, packed.stderr);
  const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
  const inside = info!.files.map((f) => f.path);
  const pkg = JSON.parse(await readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };

  // What runs is there: the CLI, the compiled program, the units, the licence.
  for (const f of ['bin/regfs', 'dist/cli/main.js', 'dist/mount/serve.js', 'dist/daemon/daemon.js', 'dist/cache/hash-worker.js', 'systemd/regfs.service', 'systemd/regfs-unmount-all', 'LICENSE', 'README.md', 'package.json']) {
    t.true(inside.includes(f), `${f} is in the tarball`);
  }
  // And nothing else: no tests, benchmarks, lab, sources, source maps or developer scripts.
  const extra = inside.filter((f) => /^(dist\/(test|bench|lab)\/|test\/|bench\/|lab\/|scripts\/|docs\/)/.test(f) || /\.(map|ts|tsbuildinfo)$/.test(f));
  t.deepEqual(extra, []);
  t.regex(await readFile(path.join(src, 'LICENSE'), 'utf8'), /Apache License\s+Version 2\.0/);

  // A global install into a temporary prefix, as README says (dependencies from npm's cache when there).
  const prefix = path.join(base, 'prefix');
  const tgz = path.join(base, info!.filename);
  const installed = await run('npm', ['install', '-g', '--prefix', prefix, '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', tgz], { cwd: base, env });
  t.is(installed.code, 0, installed.stderr);
  t.notRegex(installed.stderr, /allowScripts|ERR!/);
  const regfs = path.join(prefix, 'bin', 'regfs');
  const version = await run(regfs, ['--version'], { cwd: base, env });
  t.is(version.code, 0, version.stderr);
  t.is(version.stdout.trim(), pkg.version);
  const help = await run(regfs, ['--help'], { cwd: base, env });
  t.is(help.code, 0, help.stderr);
  t.regex(help.stdout, /Usage: regfs/);

  // The installed tree loads the FUSE binding (the prebuilt one: its install script is not run) and mounts.
  const { env: cfg } = await cliEnv(t);
  const work = await tempDir(t, 'regfs-pack-work-');
  await writeFile(path.join(work, 'a.txt'), 'from the installed package\n');
  const store = path.join(work, 'store');
  const pushed = await runCli(['push', `oci:${store}/demo:1`, 'a.txt'], { cwd: work, env: cfg });
  t.is(pushed.code, 0, pushed.stderr);
  const mnt = path.join(work, 'mnt');
  await mkdir(mnt);
  const child = spawn(regfs, ['mount', `oci:${store}`, mnt, '--cache-dir', path.join(work, 'cache')], { cwd: base, env: { ...env, ...cfg }, stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  child.stderr.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await fusermount(mnt);
  });
  const until = Date.now() + 30_000;
  while (!/ mounted \S+ at /.test(logs) || !(await isMounted(mnt))) {
    if (child.exitCode !== null) t.fail(`installed regfs mount exited ${child.exitCode}: ${logs}`);
    if (Date.now() > until || child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.is(await readFile(path.join(mnt, 'demo', '1', 'a.txt'), 'utf8'), 'from the installed package\n');
  child.kill('SIGTERM');
  t.is(await exited, 0, logs);
  t.false(await isMounted(mnt));
});
