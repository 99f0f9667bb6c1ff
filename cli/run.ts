import type { Command } from 'commander';
import { exitCodeFor } from './exit-codes.js';
import { Context, type CommonOptions } from './context.js';

/** exitState carries the exit code of the command that ran, for main() to return. */
export const exitState = { code: 0 };

/**
 * action wraps a command body: it builds the Context from the command's options, prints any error
 * as one line on stderr, sets the documented exit code and releases connections.
 */
export function action<A extends unknown[]>(body: (ctx: Context, ...args: A) => Promise<void>): (...args: unknown[]) => Promise<void> {
  return async (...raw: unknown[]) => {
    const cmd = raw[raw.length - 1] as Command;
    const args = raw.slice(0, -2) as A;
    let ctx: Context;
    try {
      ctx = new Context(cmd.opts<CommonOptions>());
    } catch (err) {
      // A bad --format/--template combination: one line, its exit code (usage).
      process.stderr.write(`Error: ${err instanceof Error ? err.message : String(err)}\n`);
      exitState.code = exitCodeFor(err);
      return;
    }
    try {
      await body(ctx, ...args);
    } catch (err) {
      ctx.out.error(err);
      if (ctx.opts.debug && err instanceof Error && err.stack) process.stderr.write(err.stack.split('\n').slice(1, 6).join('\n') + '\n');
      exitState.code = exitCodeFor(err);
    } finally {
      await ctx.close();
    }
  };
}
