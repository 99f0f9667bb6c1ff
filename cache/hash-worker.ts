/**
 * hash-worker runs in a worker thread and hashes cache files by reading them back (from the page
 * cache, as they were just written), so sha256 of a blob being fetched never runs on the main thread,
 * where the FUSE handlers and HTTP streams live. Jobs are driven by messages from hash-service.ts.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync, readSync, constants as C } from 'node:fs';
import { parentPort } from 'node:worker_threads';

/** Request is a message to the worker. */
export type Request =
  /** advance: the file's bytes [0, end) are written; hash them in the background. */
  | { type: 'advance'; id: number; path: string; algorithm: string; end: number }
  /** reset: bytes already hashed were rewritten; start over. */
  | { type: 'reset'; id: number }
  /** result: hash [0, end) now (end Infinity: to the end of the file) and reply with the digest of exactly those bytes (the job ends). */
  | { type: 'result'; id: number; path: string; algorithm: string; end: number }
  /** stop: forget the job. */
  | { type: 'stop'; id: number };

/** Reply answers a `result` request. */
export type Reply = { id: number; hex: string; size: number } | { id: number; error: string; code?: string };

interface Job {
  path: string;
  algorithm: string;
  fd?: number;
  hash: Hash;
  hashed: number;
  target: number;
}

const CHUNK = 1024 * 1024;
/** SLICE bounds the bytes hashed before the worker looks at its messages again. */
const SLICE = 8 * CHUNK;
const jobs = new Map<number, Job>();
const buf = Buffer.allocUnsafe(CHUNK);
let scheduled = false;

function job(id: number, path: string, algorithm: string): Job {
  let j = jobs.get(id);
  if (!j) {
    j = { path, algorithm, hash: createHash(algorithm), hashed: 0, target: 0 };
    jobs.set(id, j);
  }
  return j;
}

function close(j: Job): void {
  if (j.fd !== undefined) closeSync(j.fd);
  j.fd = undefined;
}

/** hashUpTo hashes j's file from where it is to `end` (at most `limit` bytes); false when the file ended early. */
function hashUpTo(j: Job, end: number, limit = Infinity): boolean {
  j.fd ??= openSync(j.path, C.O_RDONLY | C.O_NOFOLLOW);
  let budget = limit;
  while (j.hashed < end && budget > 0) {
    const n = readSync(j.fd, buf, 0, Math.min(CHUNK, end - j.hashed, budget), j.hashed);
    if (n === 0) return false;
    j.hash.update(buf.subarray(0, n));
    j.hashed += n;
    budget -= n;
  }
  return true;
}

function work(): void {
  scheduled = false;
  let more = false;
  for (const [id, j] of jobs) {
    if (j.hashed >= j.target) continue;
    try {
      if (!hashUpTo(j, j.target, SLICE)) j.target = j.hashed; // shorter than told: wait for the result request to say more
    } catch {
      close(j);
      jobs.delete(id); // the result request starts over and reports the error
      continue;
    }
    if (j.hashed < j.target) more = true;
  }
  if (more) schedule();
}

function schedule(): void {
  if (scheduled) return;
  scheduled = true;
  setImmediate(work);
}

parentPort!.on('message', (m: Request) => {
  switch (m.type) {
    case 'advance': {
      const j = job(m.id, m.path, m.algorithm);
      j.target = Math.max(j.target, m.end);
      schedule();
      break;
    }
    case 'reset': {
      const j = jobs.get(m.id);
      if (j) {
        j.hash = createHash(j.algorithm);
        j.hashed = 0;
      }
      break;
    }
    case 'result': {
      const j = job(m.id, m.path, m.algorithm);
      let reply: Reply;
      try {
        if (j.hashed > m.end) throw new Error(`asked for the digest of ${m.end} bytes after hashing ${j.hashed}`);
        // end Infinity: the whole file, however long it is.
        if (!hashUpTo(j, m.end) && m.end !== Infinity) throw new Error(`${m.path} ended at ${j.hashed} bytes, before ${m.end}`);
        reply = { id: m.id, hex: j.hash.digest('hex'), size: j.hashed };
      } catch (err) {
        reply = { id: m.id, error: err instanceof Error ? err.message : String(err), code: (err as NodeJS.ErrnoException).code };
      }
      close(j);
      jobs.delete(m.id);
      parentPort!.postMessage(reply);
      break;
    }
    case 'stop': {
      const j = jobs.get(m.id);
      if (j) close(j);
      jobs.delete(m.id);
      break;
    }
  }
});
