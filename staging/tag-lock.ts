/**
 * Per-tag-folder locks and holds, keyed by the tag folder's path in staging.
 *
 * Ordering rules: `locked` runs its functions for one key strictly one after another, in call order
 * (a failure does not break the chain). A hold is taken under the key's lock: the first hold of a key
 * runs its `prepare` (which may copy the tag in from the registry) before it counts, so every later
 * holder finds the folder prepared; the key stays held until the last release. A release never waits
 * for the lock, and releasing twice is harmless.
 */

/** TagLocks serialises work on a tag folder and counts the changes in progress in it (holds). */
export class TagLocks {
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly holds = new Map<string, number>();

  /** locked runs fn once every earlier fn for key has settled, and settles as fn does. */
  locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.chains.set(key, tail);
    void tail.then(() => {
      if (this.chains.get(key) === tail) this.chains.delete(key);
    });
    return next;
  }

  /** held tells whether a change is in progress in the tag folder (some hold not released yet). */
  held(key: string): boolean {
    return (this.holds.get(key) ?? 0) > 0;
  }

  /**
   * hold takes a hold on key under its lock, running prepare first when the key is not held yet; it
   * returns the release, which calls onRelease after the count went down.
   */
  hold(key: string, prepare: () => Promise<void>, onRelease: () => void): Promise<() => void> {
    return this.locked(key, async () => {
      if (!this.holds.get(key)) await prepare();
      this.holds.set(key, (this.holds.get(key) ?? 0) + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const n = (this.holds.get(key) ?? 1) - 1;
        if (n > 0) this.holds.set(key, n);
        else this.holds.delete(key);
        onRelease();
      };
    });
  }
}
