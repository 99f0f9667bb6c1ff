/**
 * The types the CLI shares with the daemon: what the control socket's routes answer (daemon/daemon.ts routes,
 * cli/commands/*.ts render them). The daemon builds these values; the CLI only reads them.
 */
import type { CacheStats } from '../cache/blob-cache.js';
import type { MetadataCacheStats } from '../cache/metadata-cache.js';
import type { RunningMount } from '../mount/serve.js';
import type { TransportStats } from '../registry/http-client.js';
import type { QueueItem } from './queue-store.js';
import type { SyncConfig } from './settings.js';

export type { QueueItem, QueueState } from './queue-store.js';

/** SyncConflict records one conflict and where each version went. */
export interface SyncConflict {
  tag: string;
  /** kept is the `<tag>-conflict-<12 hex>` name the losing version was kept under. */
  kept: string;
  at: string;
  registryDigest: string;
  /** localDigest is the manifest digest of the local version (its fingerprint for a down-only pair). */
  localDigest: string;
}

/** RoundReport is what one sync round did, as `regfs sync now` prints it. */
export interface RoundReport {
  local: string;
  repository: string;
  pulled: string[];
  queued: string[];
  conflicts: string[];
  deletedLocal: string[];
  deletedRemote: string[];
  error?: string;
}

/** SyncPairStatus is one pair as `regfs status` and `regfs sync ls` show it. */
export interface SyncPairStatus extends SyncConfig {
  id: string;
  lastRound: string | null;
  lastError: string | null;
  syncedTags: number;
  conflicts: SyncConflict[];
}

/** LoggedEvent is a warning or error the daemon keeps for `regfs status`. */
export interface LoggedEvent {
  time: string;
  level: 'warn' | 'error';
  msg: string;
}

/** MountStatus is one mount as `GET /status` and `GET /mounts` report it, with what it knows of its registry (catalog, repositories found). */
export type MountStatus = {
  source: string;
  mountpoint: string;
  staging: string | null;
  allowDelete: boolean;
  /** registry holds the transport counters (requests, 429s, 503s, time waited) of a registry mount; null for an OCI layout. */
  registry: TransportStats | null;
  /** allowOther tells whether other users may use the mount (FUSE allow_other, modes enforced). */
  allowOther: boolean;
} & ReturnType<RunningMount['view']>;

/** ReloadResult is the outcome of the last SIGHUP reload, shown by `regfs status`. */
export interface ReloadResult {
  time: string;
  ok: boolean;
  /** error is the first problem: an unreadable or invalid config file, or a mount that could not be added. */
  error?: string;
  mounts: number;
}

/** DaemonStatus is what `GET /status` answers (`regfs status`). */
export interface DaemonStatus {
  pid: number;
  startedAt: string;
  socket: string;
  cacheDir: string;
  stateDir: string;
  mounts: MountStatus[];
  cache: CacheStats;
  metadata: MetadataCacheStats;
  queue: QueueItem[];
  sync: SyncPairStatus[];
  recentErrors: LoggedEvent[];
  /** lastReload is the result of the last SIGHUP, null before the first. */
  lastReload: ReloadResult | null;
}

/** RoundsReply is what `POST /syncs/now` answers (`regfs sync now`). */
export interface RoundsReply {
  rounds: RoundReport[];
}
