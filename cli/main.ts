import { Command, CommanderError } from 'commander';
import { registerLogin } from './commands/login.js';
import { registerMount } from './commands/mount.js';
import { registerControl, registerDaemon } from './commands/daemon.js';
import { registerPull, registerPush } from './commands/push.js';
import { registerInspect, registerRepo } from './commands/repo.js';
import { registerSync } from './commands/sync.js';
import { registerAttach, registerDiscover } from './commands/attach.js';
import { registerBackup, registerCopy, registerRestore } from './commands/copy.js';
import { registerManifest } from './commands/manifest.js';
import { registerBlob } from './commands/blob.js';
import { registerTag, registerVersion } from './commands/tag.js';
import { registerCompletion } from './completion.js';
import { ExitCode } from './exit-codes.js';
import { exitState } from './run.js';

import { VERSION } from './version.js';

export { VERSION };

/** buildProgram assembles the commander program with every command. */
export function buildProgram(): Command {
  const program = new Command('regfs')
    .description('Mount an OCI registry as a directory tree, and push/pull artifacts the ORAS way')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .enablePositionalOptions(false);
  registerLogin(program);
  registerPush(program);
  registerPull(program);
  registerRepo(program);
  registerInspect(program);
  registerManifest(program);
  registerBlob(program);
  registerTag(program);
  registerVersion(program);
  registerMount(program);
  registerDaemon(program);
  registerControl(program);
  registerSync(program);
  registerAttach(program);
  registerDiscover(program);
  registerCopy(program);
  registerBackup(program);
  registerRestore(program);
  registerCompletion(program);
  const exit = (cmd: Command): void => {
    cmd.exitOverride();
    // A group (repo, manifest, ...) answers an unknown subcommand with its own help on stderr (exit 2).
    if (cmd.commands.length && cmd !== program) cmd.showHelpAfterError(true);
    cmd.commands.forEach(exit);
  };
  exit(program);
  return program;
}

/** main runs the CLI with argv and resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  exitState.code = 0;
  const program = buildProgram();
  try {
    // ORAS spells the boolean flag --plain-http=false / =true; commander knows --no-plain-http / --plain-http.
    await program.parseAsync(argv.map((a) => (a === '--plain-http=false' ? '--no-plain-http' : a === '--plain-http=true' ? '--plain-http' : a)));
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return ExitCode.ok;
      return ExitCode.usage;
    }
    process.stderr.write(`Error: ${(err as Error).message}\n`);
    return ExitCode.failure;
  }
  return exitState.code;
}
