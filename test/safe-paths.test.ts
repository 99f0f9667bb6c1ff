import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import { checkTitle, mkdirInside, resolveInside } from '../registry/safe-path.js';
import { extractTar, extractTarAtomic } from '../registry/tar-extract.js';
import { packDirectory, packDirectoryGzip } from '../registry/tar-pack.js';

// ---------- helpers ----------

async function tmpDir(t: ExecutionContext): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'regfs-safe-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function collect(src: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of src) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(file)) h.update(c as Buffer);
  return h.digest('hex');
}

interface TarSpec {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'fifo' | 'character-device';
  linkname?: string;
  content?: string;
  mode?: number;
}

/** tarOf builds a (possibly malicious) tar in memory with tar-stream. */
async function tarOf(entries: TarSpec[]): Promise<Buffer> {
  const pack = tar.pack();
  const out = collect(Readable.from(pack, { objectMode: false }));
  for (const e of entries) {
    const type = e.type ?? 'file';
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (type === 'file') pack.entry({ name: e.name, type, mode: e.mode ?? 0o644 }, e.content ?? 'x', cb);
      else pack.entry({ name: e.name, type, linkname: e.linkname, mode: e.mode ?? 0o755 }, cb);
    });
  }
  pack.finalize();
  return out;
}

interface TreeEntry {
  type: 'dir' | 'file' | 'symlink';
  mode: number;
  mtime: number;
  content?: string;
  link?: string;
}

/** tree lists everything under dir (not following symlinks), keyed by slash-separated relative path. */
async function tree(dir: string, withContent = true): Promise<Record<string, TreeEntry>> {
  const out: Record<string, TreeEntry> = {};
  const walk = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await fsp.readdir(abs)).sort()) {
      const a = path.join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await fsp.lstat(a);
      const base = { mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000) };
      if (st.isSymbolicLink()) out[r] = { type: 'symlink', ...base, link: await fsp.readlink(a) };
      else if (st.isDirectory()) {
        out[r] = { type: 'dir', ...base };
        await walk(a, r);
      } else out[r] = { type: 'file', ...base, content: withContent ? sha256(await fsp.readFile(a)) : undefined };
    }
  };
  await walk(dir, '');
  return out;
}

async function listEntries(buf: Buffer): Promise<tar.Header[]> {
  const ex = tar.extract();
  const it = ex[Symbol.asyncIterator]();
  Readable.from([buf]).pipe(ex);
  const headers: tar.Header[] = [];
  for await (const e of { [Symbol.asyncIterator]: () => it }) {
    headers.push(e.header);
    e.resume();
  }
  return headers;
}

const FIXED = new Date('2024-01-02T03:04:05Z');

/** makeProject builds a small tree with nested files, an empty dir, an in-tree symlink and varied modes. */
async function makeProject(parent: string, name = 'proj'): Promise<string> {
  const root = path.join(parent, name);
  await fsp.mkdir(path.join(root, 'sub', 'deep'), { recursive: true });
  await fsp.mkdir(path.join(root, 'bin'));
  await fsp.mkdir(path.join(root, 'empty'));
  await fsp.writeFile(path.join(root, 'a.txt'), 'hello\n');
  await fsp.writeFile(path.join(root, 'bin', 'run.sh'), '#!/bin/sh\necho hi\n');
  await fsp.writeFile(path.join(root, 'secret'), 'shh');
  await fsp.writeFile(path.join(root, 'sub', 'deep', 'nested.txt'), 'nested');
  await fsp.writeFile(path.join(root, 'unicodé-名前.txt'), 'ü');
  const longDir = path.join(root, 'l'.repeat(90), 'm'.repeat(90));
  await fsp.mkdir(longDir, { recursive: true });
  await fsp.writeFile(path.join(longDir, 'n'.repeat(120)), 'long names need pax');
  await fsp.writeFile(path.join(root, 'a-b'), 'sorts between a.txt and bin bytewise');
  await fsp.symlink('sub/deep/nested.txt', path.join(root, 'link'));
  await fsp.symlink('../a.txt', path.join(root, 'sub', 'up-link'));
  await fsp.chmod(path.join(root, 'bin', 'run.sh'), 0o755);
  await fsp.chmod(path.join(root, 'secret'), 0o600);
  await fsp.chmod(path.join(root, 'empty'), 0o750);
  // Everything gets a fixed mtime, deepest first, so directory times are not disturbed afterwards.
  const all = Object.keys(await tree(root, false)).sort((a, b) => b.split('/').length - a.split('/').length);
  for (const rel of all) await fsp.lutimes(path.join(root, rel), FIXED, FIXED);
  await fsp.utimes(root, FIXED, FIXED);
  return root;
}

// ---------- checkTitle ----------

test('checkTitle accepts and normalises relative paths', (t) => {
  const cases: [string, string][] = [
    ['a', 'a'],
    ['a/b/c.txt', 'a/b/c.txt'],
    ['./a', 'a'],
    ['a/./b', 'a/b'],
    ['././a/./././b', 'a/b'],
    ['a//b', 'a/b'],
    ['a///b//c', 'a/b/c'],
    ['a/b/', 'a/b'],
    ['dir/', 'dir'],
    ['./dir//sub/./', 'dir/sub'],
    ['...', '...'],
    ['..a/b..', '..a/b..'],
    ['.hidden/.x', '.hidden/.x'],
    ['unicodé/名前/🙂', 'unicodé/名前/🙂'],
    ['with space/and:colon', 'with space/and:colon'],
    ['a'.repeat(255), 'a'.repeat(255)],
    ['é'.repeat(127), 'é'.repeat(127)],
  ];
  for (const [input, want] of cases) t.is(checkTitle(input), want, JSON.stringify(input));
});

test('checkTitle accepts a path of exactly 4096 bytes, counting the normalised form', (t) => {
  const p = Array.from({ length: 40 }, () => 'x'.repeat(100)).join('/') + '/' + 'y'.repeat(56);
  t.is(Buffer.byteLength(p), 4096);
  t.is(checkTitle(p), p);
  t.is(checkTitle('./' + p.replace(/\//g, '//') + '/'), p);
});

test('checkTitle rejects every unsafe form with UNSAFE_PATH', (t) => {
  const longPath = Array.from({ length: 40 }, () => 'x'.repeat(100)).join('/') + '/' + 'y'.repeat(57);
  const cases: [string, RegExp][] = [
    ['', /empty/],
    ['.', /'\.'/],
    ['./', /'\.'/],
    ['./.', /'\.'/],
    ['.//./', /'\.'/],
    ['..', /'\.\.'/],
    ['../a', /'\.\.'/],
    ['a/..', /'\.\.'/],
    ['a/../b', /'\.\.'/],
    ['a/b/../../..', /'\.\.'/],
    ['./../x', /'\.\.'/],
    ['/x', /absolute/],
    ['//x', /absolute/],
    ['/', /absolute/],
    ['/etc/passwd', /absolute/],
    ['a\\b', /backslash/],
    ['..\\..\\evil', /backslash/],
    ['C:\\evil', /backslash/],
    ['a\u0000b', /control/],
    ['\u0000', /control/],
    ['a\nb', /control/],
    ['a\rb', /control/],
    ['tab\there', /control/],
    ['a\u001bb', /control/],
    ['a\u007fb', /control/],
    ['a\u0085b', /control/],
    ['a\ud800b', /surrogate/],
    ['x/' + 'a'.repeat(256), /segment.*255/],
    ['é'.repeat(128), /segment.*255/],
    [longPath, /4096/],
  ];
  for (const [input, reason] of cases) {
    const err = t.throws(() => checkTitle(input), { instanceOf: RegfsError }, JSON.stringify(input));
    t.is(err?.code, 'UNSAFE_PATH', JSON.stringify(input));
    t.regex(err?.message ?? '', reason, JSON.stringify(input));
    t.false((err?.message ?? '').includes('\n'), 'message is one line');
    t.true((err?.message ?? '').includes(JSON.stringify(input.slice(0, 80)).slice(0, -1)), `message names ${JSON.stringify(input.slice(0, 20))}`);
  }
});

test('checkTitle error message truncates the title to 80 characters', (t) => {
  const title = 'q'.repeat(300);
  const err = t.throws(() => checkTitle(title), { code: 'UNSAFE_PATH' });
  const msg = err?.message ?? '';
  t.true(msg.includes('"' + 'q'.repeat(80) + '…"'));
  t.false(msg.includes('q'.repeat(81)));
});

// ---------- resolveInside / mkdirInside ----------

test('resolveInside joins paths and tolerates missing components', async (t) => {
  const root = await tmpDir(t);
  await fsp.mkdir(path.join(root, 'a'));
  t.is(await resolveInside(root, 'a/b/c'), path.join(root, 'a', 'b', 'c'));
  t.is(await resolveInside(root, './a//b/'), path.join(root, 'a', 'b'));
  t.is(await resolveInside(root, '.'), path.resolve(root));
  await t.throwsAsync(resolveInside(root, '../x'), { code: 'UNSAFE_PATH' });
  await t.throwsAsync(resolveInside(root, '/etc'), { code: 'UNSAFE_PATH' });
});

test('resolveInside and mkdirInside refuse a symlinked parent pointing outside; nothing is written outside', async (t) => {
  const base = await tmpDir(t);
  const root = path.join(base, 'root');
  const outside = path.join(base, 'outside');
  await fsp.mkdir(root);
  await fsp.mkdir(outside);
  await fsp.symlink(outside, path.join(root, 'a'));
  await fsp.mkdir(path.join(root, 'ok'));
  await fsp.symlink('../a', path.join(root, 'ok', 'rel'));

  await t.throwsAsync(resolveInside(root, 'a/b/c'), { code: 'UNSAFE_PATH', message: /"a" is a symbolic link/ });
  await t.throwsAsync(resolveInside(root, 'a'), { code: 'UNSAFE_PATH' });
  await t.throwsAsync(resolveInside(root, 'ok/rel/x'), { code: 'UNSAFE_PATH' });
  await t.throwsAsync(mkdirInside(root, 'a/b'), { code: 'UNSAFE_PATH' });
  await t.throwsAsync(mkdirInside(root, 'ok/rel/b'), { code: 'UNSAFE_PATH' });
  // An extraction whose entry goes through the pre-existing link is refused too.
  const evil = await tarOf([{ name: 'a/passwd', content: 'pwned' }]);
  await t.throwsAsync(extractTar(Readable.from([evil]), root), { code: 'UNSAFE_PATH' });
  t.deepEqual(await fsp.readdir(outside), []);
});

test('mkdirInside creates one component at a time and refuses non-directories', async (t) => {
  const root = await tmpDir(t);
  t.is(await mkdirInside(root, 'x/y/z'), path.join(root, 'x', 'y', 'z'));
  t.true((await fsp.stat(path.join(root, 'x', 'y', 'z'))).isDirectory());
  t.is(await mkdirInside(root, 'x/y'), path.join(root, 'x', 'y')); // existing is fine
  t.is(await mkdirInside(root, ''), path.resolve(root));
  await fsp.writeFile(path.join(root, 'file'), '');
  await t.throwsAsync(mkdirInside(root, 'file/sub'), { code: 'IO' });
  await t.throwsAsync(mkdirInside(root, 'x/../../up'), { code: 'UNSAFE_PATH' });
});

// ---------- pack / extract ----------

test('packDirectory names entries <basename>/... like ORAS, depth-first and bytewise sorted, with clean ownership', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  try {
    const { execFileSync } = await import('node:child_process');
    execFileSync('mkfifo', [path.join(root, 'fifo')]);
    await fsp.utimes(root, FIXED, FIXED);
  } catch {
    // no mkfifo: the skip is still covered by the tar-side test below
  }
  const headers = await listEntries(await collect(packDirectory(root)));
  const names = headers.map((h) => h.name);
  const L = 'l'.repeat(90);
  t.deepEqual(names, [
    'proj',
    'proj/a-b', // '-' (0x2d) sorts before '.' (0x2e)
    'proj/a.txt',
    'proj/bin',
    'proj/bin/run.sh', // depth-first: a directory's children follow it
    'proj/empty',
    'proj/link',
    `proj/${L}`,
    `proj/${L}/${'m'.repeat(90)}`,
    `proj/${L}/${'m'.repeat(90)}/${'n'.repeat(120)}`,
    'proj/secret',
    'proj/sub',
    'proj/sub/deep',
    'proj/sub/deep/nested.txt',
    'proj/sub/up-link',
    'proj/unicodé-名前.txt',
  ]);
  t.true(names.every((n) => n === 'proj' || n.startsWith('proj/')));
  t.false(names.includes('proj/fifo'));
  t.true(names.includes(`proj/${'l'.repeat(90)}/${'m'.repeat(90)}/${'n'.repeat(120)}`));
  for (const h of headers) {
    t.is(h.uid, 0);
    t.is(h.gid, 0);
    t.is(h.uname, '');
    t.is(h.gname, '');
    t.is(h.mtime.getTime(), FIXED.getTime(), h.name);
  }
  const byName = new Map(headers.map((h) => [h.name, h]));
  t.is(byName.get('proj')?.type, 'directory');
  t.is(byName.get('proj/link')?.type, 'symlink');
  t.is(byName.get('proj/link')?.linkname, 'sub/deep/nested.txt');
  t.is((byName.get('proj/bin/run.sh')?.mode ?? 0) & 0o777, 0o755);
  t.is((byName.get('proj/secret')?.mode ?? 0) & 0o777, 0o600);
  t.is((byName.get('proj/empty')?.mode ?? 0) & 0o777, 0o750);
  t.is(byName.get('proj/a.txt')?.size, 6);
});

test('pack -> extract round trip (stripPrefix) preserves files, empty dirs, symlinks, modes and mtimes', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  const want = await tree(root);
  const out = path.join(base, 'out');
  const res = await extractTar(packDirectory(root), out, { stripPrefix: 'proj' });
  t.deepEqual(await tree(out), want);
  t.is(res.files, 7);
  t.is(await fsp.readFile(path.join(out, 'link'), 'utf8'), 'nested');
  // Without a prefix the directory comes out under its own name, as `oras pull` does.
  const out2 = path.join(base, 'out2');
  await extractTar(packDirectory(root), out2);
  t.deepEqual(await fsp.readdir(out2), ['proj']);
  t.deepEqual(await tree(path.join(out2, 'proj')), want);
});

test('packDirectory honours an explicit prefix (the layer title)', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  const names = (await listEntries(await collect(packDirectory(root, { prefix: 'models/v1' })))).map((h) => h.name);
  t.is(names[0], 'models/v1');
  t.true(names.every((n) => n === 'models/v1' || n.startsWith('models/v1/')));
  const out = path.join(base, 'out');
  await extractTar(packDirectory(root, { prefix: 'models/v1' }), out, { stripPrefix: 'models/v1' });
  t.deepEqual(await tree(out), await tree(root));
  await t.throwsAsync(collect(packDirectory(root, { prefix: '../x' })), { code: 'UNSAFE_PATH' });
});

test('gzip round trip through extractTarAtomic replaces an existing target and leaves no temp dirs', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  const target = path.join(base, 'target');
  await fsp.mkdir(target);
  await fsp.writeFile(path.join(target, 'stale'), 'old');
  const res = await extractTarAtomic(packDirectoryGzip(root), target, { gzip: true, stripPrefix: 'proj' });
  t.is(res.files, 7);
  t.deepEqual(await tree(target), await tree(root));
  t.deepEqual((await fsp.readdir(base)).sort(), ['proj', 'target']);
});

test('packing is deterministic: same content twice gives identical bytes (tar and gzip)', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  const a = await collect(packDirectory(root));
  const b = await collect(packDirectory(root));
  t.true(a.equals(b));
  t.is(sha256(a), sha256(b));
  const ga = await collect(packDirectoryGzip(root));
  const gb = await collect(packDirectoryGzip(root));
  t.true(ga.equals(gb));
  t.is(sha256(ga), sha256(gb));
  // The same tree elsewhere (same basename, modes, mtimes) packs to the same bytes.
  const other = await makeProject(path.join(base, 'elsewhere'));
  t.is(sha256(await collect(packDirectoryGzip(other))), sha256(ga));
  t.is(ga[4] | ga[5] | ga[6] | ga[7], 0, 'gzip header mtime is 0');
});

test('extractTar verifies the uncompressed tar digest when asked', async (t) => {
  const base = await tmpDir(t);
  const root = await makeProject(base);
  const tarBytes = await collect(packDirectory(root));
  const good = `sha256:${sha256(tarBytes)}` as Digest;
  const bad = `sha256:${'0'.repeat(64)}` as Digest;
  await extractTar(Readable.from([gzipSync(tarBytes)]), path.join(base, 'ok'), { gzip: true, tarDigest: good });
  const target = path.join(base, 'target');
  await fsp.mkdir(target);
  await fsp.writeFile(path.join(target, 'keep'), 'k');
  await t.throwsAsync(extractTarAtomic(Readable.from([tarBytes]), target, { tarDigest: bad }), { code: 'DIGEST_MISMATCH' });
  t.deepEqual(await fsp.readdir(target), ['keep']);
  t.deepEqual((await fsp.readdir(base)).sort(), ['ok', 'proj', 'target']);
});

test('extractTar handles ./ names, copies safe hard links, skips devices and fifos', async (t) => {
  const dest = path.join(await tmpDir(t), 'dest');
  const buf = await tarOf([
    { name: './', type: 'directory' },
    { name: './d/', type: 'directory' },
    { name: './d/a', content: 'AAA', mode: 0o4755 },
    { name: './d/b', type: 'link', linkname: './d/a' },
    { name: 'c', type: 'link', linkname: 'd/a' },
    { name: 'fifo', type: 'fifo' },
    { name: 'tty', type: 'character-device' },
    { name: 'rel', type: 'symlink', linkname: 'd/a' },
  ]);
  const res = await extractTar(Readable.from([buf]), dest);
  t.deepEqual(res, { files: 3, bytes: 9 });
  t.deepEqual((await fsp.readdir(dest)).sort(), ['c', 'd', 'rel']);
  t.is(await fsp.readFile(path.join(dest, 'd', 'b'), 'utf8'), 'AAA');
  const a = await fsp.stat(path.join(dest, 'd', 'a'));
  const b = await fsp.stat(path.join(dest, 'd', 'b'));
  t.not(a.ino, b.ino, 'hard links are copied, never linked');
  t.is(a.mode & 0o7777, 0o755, 'setuid bit dropped');
  t.is(await fsp.readFile(path.join(dest, 'rel'), 'utf8'), 'AAA');
});

test('stripPrefix refuses entries outside the prefix', async (t) => {
  const base = await tmpDir(t);
  for (const name of ['other/x', 'projx/y', 'x', 'proj/../x']) {
    const dest = path.join(base, `d${randomBytes(4).toString('hex')}`);
    const buf = await tarOf([{ name: 'proj', type: 'directory' }, { name }]);
    await t.throwsAsync(extractTar(Readable.from([buf]), dest, { stripPrefix: 'proj' }), { code: 'UNSAFE_PATH' }, name);
  }
  await t.throwsAsync(extractTar(Readable.from([]), path.join(base, 'z'), { stripPrefix: '../x' }), { code: 'INVALID_ARGUMENT' });
});

// ---------- malicious archives ----------

const MALICIOUS: [string, TarSpec[]][] = [
  ['../../evil', [{ name: '../../evil', content: 'pwned' }]],
  ['/abs/evil', [{ name: '/abs/evil', content: 'pwned' }]],
  ['a/../../evil', [{ name: 'a/', type: 'directory' }, { name: 'a/../../evil', content: 'pwned' }]],
  ['symlink link -> /etc then link/passwd', [{ name: 'link', type: 'symlink', linkname: '/etc' }, { name: 'link/passwd', content: 'pwned' }]],
  ['symlink link -> ../outside then link/x', [{ name: 'link', type: 'symlink', linkname: '../outside' }, { name: 'link/x', content: 'pwned' }]],
  ['symlink up -> ../..', [{ name: 'up', type: 'symlink', linkname: '../..' }]],
  ['nested symlink d/up -> ../../x', [{ name: 'd/', type: 'directory' }, { name: 'd/up', type: 'symlink', linkname: '../../x' }]],
  ['symlink s -> . then t -> s/../x', [{ name: 's', type: 'symlink', linkname: '.' }, { name: 't', type: 'symlink', linkname: 's/../x' }]],
  ['in-tree symlink then a write through it', [{ name: 'sub/', type: 'directory' }, { name: 'in', type: 'symlink', linkname: 'sub' }, { name: 'in/x', content: 'through' }]],
  ['symlink then a file of the same name', [{ name: 'f', type: 'symlink', linkname: 'target' }, { name: 'f', content: 'over' }]],
  ['hardlink to /etc/passwd', [{ name: 'h', type: 'link', linkname: '/etc/passwd' }]],
  ['hardlink to ../outside', [{ name: 'h', type: 'link', linkname: '../outside' }]],
  ['hardlink to an entry not extracted yet', [{ name: 'h', type: 'link', linkname: 'later' }, { name: 'later', content: 'x' }]],
  ['hardlink to a symlink', [{ name: 'l', type: 'symlink', linkname: 'x' }, { name: 'h', type: 'link', linkname: 'l' }]],
  ['control character in a name', [{ name: 'x\ny', content: 'x' }]],
  ['backslash traversal', [{ name: '..\\..\\evil', content: 'x' }]],
  ['long pax name with ..', [{ name: 'a'.repeat(120) + '/../../../evil', content: 'x' }]],
];

async function sandbox(t: ExecutionContext): Promise<{ base: string; dest: string; outside: string }> {
  const base = await tmpDir(t);
  const dest = path.join(base, 'x', 'y', 'dest');
  const outside = path.join(base, 'outside');
  await fsp.mkdir(path.join(base, 'x', 'y'), { recursive: true });
  await fsp.mkdir(outside);
  return { base, dest, outside };
}

/** assertNothingOutside checks that base holds only x/y/<allowed>, outside/ (empty) and what is inside those. */
async function assertNothingOutside(t: ExecutionContext, base: string, allowed: string[]): Promise<void> {
  t.deepEqual((await fsp.readdir(base)).sort(), ['outside', 'x']);
  t.deepEqual(await fsp.readdir(path.join(base, 'outside')), []);
  t.deepEqual(await fsp.readdir(path.join(base, 'x')), ['y']);
  t.deepEqual((await fsp.readdir(path.join(base, 'x', 'y'))).sort(), allowed.sort());
  t.false(existsSync('/abs'));
}

for (const [title, entries] of MALICIOUS) {
  test(`malicious tar refused by extractTar: ${title}`, async (t) => {
    const { base, dest } = await sandbox(t);
    const buf = await tarOf(entries);
    await t.throwsAsync(extractTar(Readable.from([buf]), dest), { code: 'UNSAFE_PATH' });
    await assertNothingOutside(t, base, ['dest']);
    // nothing under dest is a link that leads out
    for (const [rel, e] of Object.entries(await tree(dest))) {
      if (e.type === 'symlink') t.false(path.isAbsolute(e.link ?? '') || (e.link ?? '').startsWith('..'), rel);
    }
  });

  test(`malicious tar refused by extractTarAtomic (gzip): ${title}`, async (t) => {
    const { base } = await sandbox(t);
    const target = path.join(base, 'x', 'y', 'target');
    await fsp.mkdir(target);
    await fsp.writeFile(path.join(target, 'keep.txt'), 'original');
    const before = await tree(target);
    const buf = gzipSync(await tarOf(entries));
    await t.throwsAsync(extractTarAtomic(Readable.from([buf]), target, { gzip: true }), { code: 'UNSAFE_PATH' });
    t.deepEqual(await tree(target), before);
    await assertNothingOutside(t, base, ['target']);
  });
}

test('extractTarAtomic into a missing target leaves nothing when refused, and refuses a symlink target', async (t) => {
  const { base, outside } = await sandbox(t);
  const target = path.join(base, 'x', 'y', 'new');
  const evil = await tarOf([{ name: 'ok', content: 'fine' }, { name: '../../evil', content: 'pwned' }]);
  await t.throwsAsync(extractTarAtomic(Readable.from([evil]), target), { code: 'UNSAFE_PATH' });
  await assertNothingOutside(t, base, []);
  await fsp.symlink(outside, target);
  const fine = await tarOf([{ name: 'ok', content: 'fine' }]);
  await t.throwsAsync(extractTarAtomic(Readable.from([fine]), target), { code: 'UNSAFE_PATH' });
  await assertNothingOutside(t, base, ['new']);
});

test('corrupt and truncated input fail with IO and leave the target untouched', async (t) => {
  const { base } = await sandbox(t);
  const target = path.join(base, 'x', 'y', 'target');
  await fsp.mkdir(target);
  await fsp.writeFile(path.join(target, 'keep.txt'), 'original');
  const good = await tarOf([{ name: 'big', content: 'z'.repeat(5000) }]);
  await t.throwsAsync(extractTarAtomic(Readable.from([good.subarray(0, 1500)]), target), { code: 'IO' });
  await t.throwsAsync(extractTarAtomic(Readable.from([Buffer.from('not gzip at all')]), target, { gzip: true }), { code: 'IO' });
  const garbage = Buffer.alloc(1024, 0x41);
  await t.throwsAsync(extractTarAtomic(Readable.from([garbage]), target), { code: 'IO' });
  t.deepEqual(await fsp.readdir(target), ['keep.txt']);
  await assertNothingOutside(t, base, ['target']);
});

// ---------- large file ----------

test('a 50 MiB file streams through pack and extract intact', async (t) => {
  const base = await tmpDir(t);
  const src = path.join(base, 'big');
  await fsp.mkdir(src);
  const file = path.join(src, 'blob.bin');
  const h = createHash('sha256');
  const ws = createWriteStream(file);
  const chunk = randomBytes(1024 * 1024);
  for (let i = 0; i < 50; i++) {
    chunk.writeUInt32BE(i, 0); // make every MiB different
    h.update(chunk);
    if (!ws.write(Buffer.from(chunk))) await new Promise<void>((r) => ws.once('drain', () => r()));
  }
  await new Promise<void>((resolve, reject) => ws.end((err?: Error | null) => (err ? reject(err) : resolve())));
  const want = h.digest('hex');
  const out = path.join(base, 'out');
  const started = Date.now();
  const res = await extractTar(packDirectory(src), out, { stripPrefix: 'big' });
  t.log(`50 MiB pack+extract: ${Date.now() - started} ms`);
  t.deepEqual(res, { files: 1, bytes: 50 * 1024 * 1024 });
  t.is(await sha256File(path.join(out, 'blob.bin')), want);
});
