import { Worker } from 'node:worker_threads';
import { digestAlgorithm, type Digest } from '../registry/digest.js';
import { RegfsError } from '../util/errors.js';
import type { Reply, Request } from './hash-worker.js';

/** FileDigest is what hashing a file found: its digest (same algorithm as asked) and its length. */
export interface FileDigest {
  digest: Digest;
  size: number;
}

/**
 * HashService hands sha256/sha512 of cache files to one worker thread (shared by every cache in the
 * process, started on first use, never keeping the process alive), so hashing a 1 GiB blob costs the
 * main thread nothing but a few messages. Every job hashes a file by reading it back from disk.
 */
class HashService {
  private worker?: Worker;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(r: Reply): void }>();

  /** newJob returns a fresh job id. */
  newJob(): number {
    return this.nextId++;
  }

  /** advance tells job `id` that [0, end) of `path` is written and may be hashed in the background. */
  advance(id: number, path: string, like: Digest, end: number): void {
    this.post({ type: 'advance', id, path, algorithm: digestAlgorithm(like), end });
  }

  /** reset makes job `id` start over (bytes it may have hashed were rewritten). */
  reset(id: number): void {
    if (this.worker) this.post({ type: 'reset', id });
  }

  /** stop forgets job `id`. */
  stop(id: number): void {
    if (this.worker) this.post({ type: 'stop', id });
  }

  /** result hashes [0, end) of `path` (end Infinity: the whole file), continuing job `id`, and returns the digest; the job ends. */
  result(id: number, path: string, like: Digest, end: number): Promise<FileDigest> {
    const alg = digestAlgorithm(like);
    const reply = new Promise<Reply>((resolve) => this.waiting.set(id, { resolve }));
    this.post({ type: 'result', id, path, algorithm: alg, end });
    this.worker?.ref(); // someone waits for an answer: the process must not exit under it
    return reply.then((r) => {
      if ('error' in r) {
        // A file system error keeps its errno (callers tell a vanished file from a failing disk).
        if (r.code) throw Object.assign(new Error(`cannot hash ${path}: ${r.error}`), { code: r.code });
        throw new RegfsError('IO', `cannot hash ${path}: ${r.error}`);
      }
      return { digest: `${alg}:${r.hex}` as Digest, size: r.size };
    });
  }

  private post(m: Request): void {
    this.start().postMessage(m);
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./hash-worker.js', import.meta.url));
    w.on('message', (r: Reply) => {
      const waiter = this.waiting.get(r.id);
      this.waiting.delete(r.id);
      if (this.waiting.size === 0) w.unref();
      waiter?.resolve(r);
    });
    const fail = (why: string): void => {
      if (this.worker === w) this.worker = undefined; // the next job starts a new worker
      for (const [id, waiter] of this.waiting) waiter.resolve({ id, error: why });
      this.waiting.clear();
    };
    w.on('error', (err) => fail(`hash worker failed: ${err.message}`));
    w.on('exit', (code) => fail(`hash worker exited with code ${code}`));
    w.unref(); // after the listeners (adding one refs the port again): an idle hasher never keeps the process alive; result() refs it while an answer is awaited
    this.worker = w;
    return w;
  }
}

/** hashService is the process's one hashing worker. */
export const hashService = new HashService();

/** hashFileInWorker hashes a whole file off the main thread (to its end, never following a symlink). */
export async function hashFileInWorker(file: string, like: Digest): Promise<FileDigest> {
  return hashService.result(hashService.newJob(), file, like, Infinity);
}
