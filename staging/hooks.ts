/**
 * What a writable mount tells the staging side about its changes, and asks it: the mount calls these,
 * the daemon implements them over its push queue. Calls are cheap and synchronous except
 * recordPublished, which the mount awaits before it shows the tag folder it just copied.
 */

/** StagingHooks connect a writable mount to the daemon's push queue. */
export interface StagingHooks {
  /** landed tells whether a tag folder with this fingerprint is what was last pushed (or recorded) for repository:tag. */
  landed(repository: string, tag: string, fingerprint: string): boolean;
  /** recordPublished notes that a tag folder (by fingerprint) matches the registry's manifest `digest`, so it is not pushed as is. */
  recordPublished(repository: string, tag: string, fingerprint: string, digest: string): Promise<void>;
  /** touched is called with the staging folder of every change through the mount: pushes near it wait another quiet period. */
  touched(stagingPath: string): void;
  /**
   * changed asks for a rescan of the staging folder soon (a file landed, a folder came or went); with
   * tagDir, the change was in that tag folder, so queued pushes of folders below it are stale.
   */
  changed(tagDir?: string): void;
}
