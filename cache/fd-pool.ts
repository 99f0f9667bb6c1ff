import type { FileHandle } from 'node:fs/promises';

/** FdLease is one borrowed open file; call release() exactly once when done with it. */
export interface FdLease {
  fh: FileHandle;
  release(): void;
}

interface Slot {
  open: Promise<FileHandle>;
  refs: number;
  dropped: boolean;
}

/**
 * FdPool keeps a small LRU of open files by key. A leased file is never closed under its borrower:
 * idle files beyond `max` are closed, and a dropped key closes when its last lease is released.
 */
export class FdPool {
  private readonly slots = new Map<string, Slot>();
  private readonly closing = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly max: number) {}

  /** acquire leases the file for key, opening it with `open` when it is not open yet. */
  async acquire(key: string, open: () => Promise<FileHandle>): Promise<FdLease> {
    if (this.closed) throw new Error('file pool is closed');
    let slot = this.slots.get(key);
    if (slot) {
      this.slots.delete(key); // re-insert: most recently used last
      this.slots.set(key, slot);
    } else {
      slot = { open: open(), refs: 0, dropped: false };
      this.slots.set(key, slot);
      const s = slot;
      s.open.catch(() => {
        if (this.slots.get(key) === s) this.slots.delete(key);
      });
    }
    slot.refs++;
    let fh: FileHandle;
    try {
      fh = await slot.open;
    } catch (err) {
      slot.refs--;
      throw err;
    }
    this.trim();
    const s = slot;
    let released = false;
    return {
      fh,
      release: () => {
        if (released) return;
        released = true;
        s.refs--;
        if (s.refs === 0 && s.dropped) this.closeSlot(s);
        else this.trim();
      },
    };
  }

  /** drop forgets key: its file closes now if idle, else when its last lease is released. */
  drop(key: string): void {
    const slot = this.slots.get(key);
    if (!slot) return;
    this.slots.delete(key);
    slot.dropped = true;
    if (slot.refs === 0) this.closeSlot(slot);
  }

  /** size returns how many files are open or opening. */
  size(): number {
    return this.slots.size;
  }

  /** closeAll drops every key, refuses further leases, and waits until every file (idle ones now, leased ones on release) is closed. */
  async closeAll(): Promise<void> {
    this.closed = true;
    for (const key of [...this.slots.keys()]) this.drop(key);
    while (this.closing.size > 0) await Promise.allSettled([...this.closing]);
  }

  private trim(): void {
    if (this.slots.size <= this.max) return;
    for (const [key, slot] of this.slots) {
      if (this.slots.size <= this.max) break;
      if (slot.refs > 0) continue;
      this.slots.delete(key);
      slot.dropped = true;
      this.closeSlot(slot);
    }
  }

  private closeSlot(slot: Slot): void {
    const p = slot.open.then(
      (fh) => fh.close(),
      () => undefined,
    ).catch(() => undefined);
    this.closing.add(p);
    void p.finally(() => this.closing.delete(p));
  }
}
