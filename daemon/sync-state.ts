import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { errorMessage } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import type { Logger } from '../util/log.js';
import type { SyncConflict } from './protocol.js';
import type { SyncConfig } from './settings.js';

/** SyncBase is the common base of one tag: what both sides held when they were last in step. */
export interface SyncBase {
  digest: string;
  fingerprint: string;
  at: string;
}

/** PairState is a pair's file `<state>/sync/<pair>.json`: the base of every synced tag and the recent conflicts. */
export interface PairState {
  version: 1;
  local: string;
  repository: string;
  tags: Record<string, SyncBase>;
  conflicts: SyncConflict[];
}

/** StatePair is what the state functions need of a pair: its state, where it is saved, and the chain of saves. */
export interface StatePair {
  state: PairState;
  statePath: string;
  /** saving is the last save; saves of a pair run one after another. */
  saving: Promise<void>;
  display: string;
}

/** pairId names a pair's state file: a hash of its local folder and repository. */
export function pairId(c: SyncConfig): string {
  return createHash('sha256').update(`${c.local}\n${c.repository}`).digest('hex').slice(0, 16);
}

/** sameConfig tells whether two pair configurations are equal (key order aside). */
export function sameConfig(a: SyncConfig, b: SyncConfig): boolean {
  const norm = (c: SyncConfig): string => JSON.stringify(Object.entries(c).sort(([x], [y]) => (x < y ? -1 : 1)));
  return norm(a) === norm(b);
}

/** loadState reads a pair's state; a missing file is a fresh state, an unreadable one too (with a warning). */
export async function loadState(file: string, c: SyncConfig, log: Logger): Promise<PairState> {
  const fresh: PairState = { version: 1, local: c.local, repository: c.repository, tags: {}, conflicts: [] };
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return fresh;
  }
  try {
    const s = JSON.parse(text) as PairState;
    if (s.version !== 1 || typeof s.tags !== 'object' || !Array.isArray(s.conflicts)) throw new Error('unknown format');
    return s;
  } catch (err) {
    // Without a base the next round compares contents: equal tags are recorded again, different ones kept as conflicts.
    log.warn(`sync: ignoring unreadable state ${file} (${errorMessage(err)}); the next round starts from the contents`);
    return fresh;
  }
}

/** saveState queues an atomic write of the pair's state after the writes before it; a failure is logged. */
export function saveState(pair: StatePair, log: Logger): Promise<void> {
  pair.saving = pair.saving
    .then(() => writeFileAtomic(pair.statePath, JSON.stringify(pair.state, null, 1), 0o600))
    .catch((err: unknown) => log.error(`sync ${pair.display}: cannot save ${pair.statePath}: ${errorMessage(err)}`));
  return pair.saving;
}

/** setBase records that both sides of `tag` are in step: the registry on `digest`, the folder on fingerprint `fp`. */
export function setBase(pair: StatePair, log: Logger, tag: string, digest: string, fp: string): Promise<void> {
  pair.state.tags[tag] = { digest, fingerprint: fp, at: new Date().toISOString() };
  return saveState(pair, log);
}

/** dropBase forgets the base of `tag` (it is no longer synced). */
export function dropBase(pair: StatePair, log: Logger, tag: string): Promise<void> {
  delete pair.state.tags[tag];
  return saveState(pair, log);
}

/** recordConflict keeps a conflict in the state (the last 50). */
export function recordConflict(pair: StatePair, log: Logger, c: SyncConflict): Promise<void> {
  pair.state.conflicts.push(c);
  if (pair.state.conflicts.length > 50) pair.state.conflicts.splice(0, pair.state.conflicts.length - 50);
  return saveState(pair, log);
}
