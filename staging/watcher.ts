import chokidar from 'chokidar';

/** FolderWatcher is a running watch of one folder tree. */
export interface FolderWatcher {
  /** close stops watching and releases the inotify watches. */
  close(): Promise<void>;
}

/** WatchOptions say what to skip and whom to tell. */
export interface WatchOptions {
  /** ignored tells whether a path (absolute, under the root) is skipped, with everything below it. */
  ignored(p: string): boolean;
  /** onChange is called on every event under the root (add, change, unlink, addDir, unlinkDir). */
  onChange(): void;
  /** onError is called when watching fails (inotify limits, a vanished root). */
  onError(err: Error): void;
}

/**
 * watchFolder is the one chokidar watcher of regfs (staging folders and sync folders alike): events after
 * the start only (the caller scans once itself), symlinks not followed, and no awaitWriteFinish: the caller
 * decides when a folder is quiet (from file mtimes), so a file moved in whole is seen at once.
 */
export function watchFolder(root: string, o: WatchOptions): FolderWatcher {
  const w = chokidar.watch(root, { ignoreInitial: true, followSymlinks: false, ignored: (p: string) => o.ignored(p) });
  w.on('all', () => o.onChange());
  w.on('error', (e: unknown) => o.onError(e as Error));
  return { close: () => w.close() };
}
