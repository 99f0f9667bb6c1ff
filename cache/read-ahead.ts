/** SEQUENTIAL_SLACK is how far from the expected next offset a read may land and still count as sequential (parallel kernel reads arrive slightly out of order). */
export const SEQUENTIAL_SLACK = 1024 * 1024;

/**
 * ReadAhead is a per-blob sequential-access detector: the window starts at `min`, doubles on each read
 * that extends a sequential run, up to `max`, and drops back to `min` on a random jump.
 */
export class ReadAhead {
  private window: number;
  private next = -1;

  constructor(private readonly min: number, private readonly max: number) {
    this.window = min;
  }

  /** advance records a read of [start, end) and returns the read-ahead window to use from `start`. */
  advance(start: number, end: number): number {
    if (this.next < 0) {
      this.window = this.min;
      this.next = end;
    } else if (Math.abs(start - this.next) <= SEQUENTIAL_SLACK) {
      // Near the frontier: a read that extends it is sequential; one just behind it (an out-of-order
      // parallel read, or a re-read) neither grows nor resets the window.
      if (end > this.next) {
        this.window = Math.min(this.window * 2, this.max);
        this.next = end;
      }
    } else {
      this.window = this.min;
      this.next = end;
    }
    return this.window;
  }

  /** current returns the window without recording a read. */
  current(): number {
    return this.window;
  }
}
