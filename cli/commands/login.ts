import type { Command } from 'commander';
import { CredentialStore } from '../../registry/credentials.js';
import { RegfsError } from '../../util/errors.js';
import { parseRegistryHost, registryApiHost } from '../../registry/reference.js';
import { RemoteRegistry } from '../../registry/remote.js';
import { addFormatOption, addRemoteOptions } from '../context.js';
import { action } from '../run.js';

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** registerLogin adds `regfs login` and `regfs logout`. */
export function registerLogin(program: Command): void {
  const login = program
    .command('login')
    .description('log in to a registry; credentials are checked, then stored in the docker-compatible config file (0600)')
    .argument('<registry>', 'registry host[:port], e.g. myregistry.azurecr.io or localhost:5000')
    .option('--password-stdin', 'read the password or token from standard input')
    .option('--identity-token <token>', 'log in with an OAuth2 refresh (identity) token instead of a password');
  addRemoteOptions(login);
  login.addHelpText('after', '\nExample:\n  echo "$PASS" | regfs login localhost:5000 -u alice --password-stdin\n');
  login.action(
    action(async (ctx, registry: string) => {
      const host = parseRegistryHost(registry);
      const o = ctx.opts as typeof ctx.opts & { passwordStdin?: boolean; identityToken?: string };
      if (o.passwordStdin && o.password !== undefined) throw new RegfsError('INVALID_ARGUMENT', '--password and --password-stdin are mutually exclusive');
      let password = o.password;
      let username = o.username;
      if (o.passwordStdin) password = await readStdin();
      else if (password !== undefined) ctx.out.warn('using --password on the command line is insecure; use --password-stdin');
      else if (!o.identityToken && process.stdin.isTTY) {
        // On a terminal, ask as docker and oras login do (the password is not echoed).
        const { prompt } = await import('../prompt.js');
        if (username === undefined) username = (await prompt('Username: ')).trim();
        password = await prompt('Password: ', { hidden: true });
      }
      if (!o.identityToken && (!username || password === undefined)) {
        throw new RegfsError('INVALID_ARGUMENT', 'login needs -u USER with -p PASS or --password-stdin (or --identity-token); on a terminal it asks for them');
      }
      const cred = o.identityToken ? { refreshToken: o.identityToken } : { username: username!, password: password! };
      const reg = new RemoteRegistry(registryApiHost(host), {
        plainHttp: o.plainHttp,
        insecure: o.insecure,
        caFile: o.caFile,
        credentials: async () => cred,
        log: ctx.log,
      });
      try {
        await reg.ping();
      } finally {
        await reg.close();
      }
      await new CredentialStore(o.registryConfig).put(host, cred);
      ctx.out.result({ registry: host, status: 'Login Succeeded' }, 'Login Succeeded');
    }),
  );

  const logout = program
    .command('logout')
    .description('forget the stored credentials for a registry')
    .argument('<registry>', 'registry host[:port]')
    .option('--registry-config <file>', 'docker-compatible credentials file');
  addFormatOption(logout);
  logout.addHelpText('after', '\nExample:\n  regfs logout localhost:5000\n');
  logout.action(
    action(async (ctx, registry: string) => {
      const host = parseRegistryHost(registry);
      const removed = await new CredentialStore(ctx.opts.registryConfig).remove(host);
      ctx.out.result({ registry: host, removed }, removed ? `Removed login credentials for ${host}` : `Not logged in to ${host}`);
    }),
  );
}
