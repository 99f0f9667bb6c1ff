/**
 * The permission bits of what regfs creates in a staging folder: staging inherits the mount's privacy.
 * A private mount (the default, no allow-other) gets 0600 files in 0700 folders, so what is written
 * through it is no more visible to other users in staging than in the mount; a shared mount
 * (allow-other) gets 0644 / 0755.
 */
/** StagingModes are the modes for new staged files and folders. */
export interface StagingModes {
  /** shared is true for an allow-other mount. */
  shared: boolean;
  file: number;
  dir: number;
}

/** stagingModes returns the modes for a private (default) or shared (allow-other) mount's staging. */
export function stagingModes(shared: boolean): StagingModes {
  return shared ? { shared, file: 0o644, dir: 0o755 } : { shared, file: 0o600, dir: 0o700 };
}
