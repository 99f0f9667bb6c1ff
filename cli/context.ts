import { Command, InvalidArgumentError, Option } from 'commander';
import { CredentialStore, type Credential, type CredentialProvider } from '../registry/credentials.js';
import { RegfsError } from '../util/errors.js';
import { OciLayoutRepository } from '../registry/oci-layout.js';
import { openSource } from '../registry/open.js';
import { openMountSource, type OpenedMountSource } from '../registry/open-mount.js';
import { parseReference, type Reference } from '../registry/reference.js';
import type { Registry, Repository } from '../registry/storage.js';
import { createLogger, nullLogger, type Logger } from '../util/log.js';
import { Output, parseFormat } from './output.js';

/** CommonOptions are the flags every registry command accepts (ORAS spellings). */
export interface CommonOptions {
  plainHttp?: boolean;
  insecure?: boolean;
  caFile?: string;
  registryConfig?: string;
  username?: string;
  password?: string;
  ociLayout?: boolean;
  format?: string;
  template?: string;
  debug?: boolean;
}

/** addRemoteOptions adds the connection and credential flags to a command. */
export function addRemoteOptions(cmd: Command, opts: { layout?: boolean; credentials?: boolean } = {}): Command {
  cmd
    .option('--plain-http', 'use plain HTTP for a non-loopback registry (loopback hosts use HTTP unless --ca-file or --no-plain-http is given)')
    .option('--no-plain-http', 'use HTTPS even for a loopback registry (ORAS spells it --plain-http=false)')
    .option('--insecure', 'skip TLS certificate verification where HTTPS is used')
    .option('--ca-file <file>', 'trust the CA certificates in this PEM file (selects HTTPS for loopback hosts too)')
    .option('--registry-config <file>', 'docker-compatible credentials file (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)')
    .option('-d, --debug', 'log HTTP requests to stderr (credentials are never printed)');
  if (opts.credentials !== false) {
    cmd.option('-u, --username <user>', 'registry username (overrides stored credentials)').option('-p, --password <password>', 'registry password or token (prefer stored credentials from regfs login)');
  }
  if (opts.layout) cmd.option('--oci-layout', 'treat the reference as an OCI image layout directory DIR[:tag] (same as oci:DIR[:tag])');
  return addFormatOption(cmd);
}

/** addFormatOption adds `--format text|json|go-template=TEMPLATE`. */
export function addFormatOption(cmd: Command): Command {
  return cmd.addOption(new Option('--format <format>', 'output format: text, json or go-template=TEMPLATE (see docs/oras.md)').argParser(formatArg).default('text'))
    .option('--template <template>', 'Go template for --format go-template (same as --format go-template=TEMPLATE)');
}

/** formatArg is parseFormat as commander wants it: a bad value is a usage error (exit 2). */
function formatArg(v: string): string {
  try {
    return parseFormat(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** Context is what a command needs: output, logging, and a way to open registries and repositories. */
export class Context {
  readonly out: Output;
  readonly log: Logger;
  private readonly opened: Registry[] = [];

  constructor(readonly opts: CommonOptions) {
    this.out = new Output(opts.format ?? 'text', process.stdout, process.stderr, opts.template);
    this.log = opts.debug ? createLogger({ level: 'debug' }) : nullLogger;
  }

  /** credentials returns the provider for this command: explicit -u/-p first, then the config file. */
  credentials(): CredentialProvider {
    const store = new CredentialStore(this.opts.registryConfig);
    const { username, password } = this.opts;
    if (username !== undefined || password !== undefined) {
      if (username === undefined) throw new RegfsError('INVALID_ARGUMENT', '--password given without --username');
      const cred: Credential = { username, password: password ?? '' };
      return async () => cred;
    }
    return store.provider();
  }

  /** reference parses a reference, honouring --oci-layout. */
  reference(input: string): Reference {
    return parseReference(input, { layout: this.opts.ociLayout });
  }

  /** repository opens the repository a reference names (remote or OCI layout). */
  repository(ref: Reference, opts: { create?: boolean } = {}): Repository {
    if (ref.kind === 'layout') return new OciLayoutRepository(ref.path, layoutName(ref.path), { create: opts.create });
    return this.registry(ref.registry).repository(ref.repository);
  }

  /**
   * registry opens a registry host, or a folder of OCI layouts given as oci:DIR (or with --oci-layout).
   * With `mount`, registry calls get the mount's short deadlines.
   */
  registry(input: string, opts: { mount?: boolean; log?: Logger } = {}): Registry {
    const source = this.opts.ociLayout && !input.startsWith('oci:') ? `oci:${input}` : input;
    const r = openSource(source, { ...this.opts, credentials: this.credentials(), log: opts.log ?? this.log, forMount: opts.mount });
    this.opened.push(r);
    return r;
  }

  /** mountSource parses and opens `HOST[/NAMESPACE|/REPO[:TAG|@DIGEST]]` or `oci:DIR[:TAG|@DIGEST]` with the mount's deadlines. */
  async mountSource(input: string, opts: { log?: Logger } = {}): Promise<OpenedMountSource> {
    const source = this.opts.ociLayout && !input.startsWith('oci:') ? `oci:${input}` : input;
    const m = await openMountSource(source, { ...this.opts, credentials: this.credentials(), log: opts.log ?? this.log, forMount: true });
    this.opened.push(m.registry);
    return m;
  }

  /** close releases every connection pool the command opened. */
  async close(): Promise<void> {
    await Promise.all(this.opened.map((r) => r.close().catch(() => undefined)));
  }
}

function layoutName(dir: string): string {
  const base = dir.replace(/\/+$/, '').split('/').pop() ?? 'layout';
  return base.toLowerCase().replace(/[^a-z0-9._-]/g, '-') || 'layout';
}

/** requireTagOrDigest refuses a reference without a tag or digest where one is needed. */
export function requireTagOrDigest(ref: Reference, input: string): string {
  const r = ref.digest ?? ref.tag;
  if (!r) throw new RegfsError('INVALID_REFERENCE', `reference ${JSON.stringify(input)} needs a tag or digest, e.g. ${input}:latest`);
  return r;
}
