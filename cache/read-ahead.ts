/** SEQUENTIAL_SLACK is how far from the expected next offset a read may land and still count as sequential (parallel kernel reads arrive slightly out of order). */
export const SEQUENTIAL_SLACK = 1024 * 1024;

/** SMALL_READ is the request size under which a random read is taken as a small random reader (fetch about what it asked). */
export const SMALL_READ = 64 * 1024;

/** SMALL_WINDOW is the least a small random read fetches (a registry answers 64 KiB as fast as 4 KiB). */
const SMALL_WINDOW = 64 * 1024;

/**
 * ReadAhead is a per-blob sequential-access detector. A run starts at the blob's first read or at a
 * random jump; its first window is `min` (a small random read after a jump: about the request), and
 * nothing is read ahead past that window until a read goes beyond it, so one random block (a 1 MiB
 * read the kernel splits into 128 KiB requests) fetches about its own size. After that the window is
 * twice the run's bytes, up to `max`: it grows with what the reader has shown it reads, not with the
 * number of requests.
 */
export class ReadAhead {
  private window: number;
  private next = -1;
  private runStart = 0;
  /** firstEnd is the end of the run's first window; 0 once a read went past it. */
  private firstEnd = 0;

  constructor(private readonly min: number, private readonly max: number) {
    this.window = min;
  }

  /** advance records a read of [start, end) and returns the read-ahead window to use from `start` (0: only the read itself). */
  advance(start: number, end: number): number {
    if (this.next < 0 || Math.abs(start - this.next) > SEQUENTIAL_SLACK) {
      const first = this.next < 0;
      this.runStart = start;
      this.next = end;
      // The blob's first read always gets the full first window (a reader of a file's head usually goes on).
      this.window = !first && end - start < SMALL_READ ? Math.max(SMALL_WINDOW, end - start) : this.min;
      this.firstEnd = start + this.window;
      return this.window;
    }
    // Near the frontier: a read that extends it is sequential; one just behind it (an out-of-order
    // parallel read, or a re-read) neither grows nor resets the run.
    if (end > this.next) this.next = end;
    if (this.firstEnd > 0) {
      if (end <= this.firstEnd) return Math.max(0, this.firstEnd - start);
      this.firstEnd = 0; // past the first window: a sequential reader
    }
    this.window = Math.min(this.max, Math.max(this.min, 2 * (this.next - this.runStart)));
    return this.window;
  }

  /** current returns the window without recording a read. */
  current(): number {
    return this.window;
  }
}
