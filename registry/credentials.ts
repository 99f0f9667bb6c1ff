import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RegfsError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';

/** Credential is what regfs presents to a registry: a username and password, or a refresh (identity) token. */
export interface Credential {
  username?: string;
  password?: string;
  /** refreshToken is an OAuth2 refresh token (docker's identitytoken, ACR's token login). */
  refreshToken?: string;
}

/** CredentialProvider returns the credential for a registry host, or undefined for anonymous access. */
export type CredentialProvider = (host: string) => Promise<Credential | undefined>;

/** ACR_TOKEN_USERNAME is the username under which ACR (`az acr login`) stores a refresh token. */
export const ACR_TOKEN_USERNAME = '00000000-0000-0000-0000-000000000000';

interface DockerConfig {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
  [k: string]: unknown;
}

/** defaultConfigPath is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as docker and oras use. */
export function defaultConfigPath(): string {
  const dir = process.env.DOCKER_CONFIG || path.join(os.homedir(), '.docker');
  return path.join(dir, 'config.json');
}

/** hostKeys returns the spellings a config file may use for a host (docker writes some with a scheme). */
function hostKeys(host: string): string[] {
  const keys = [host, `https://${host}`, `http://${host}`, `https://${host}/v1/`, `https://${host}/v2/`];
  if (host === 'docker.io' || host === 'registry-1.docker.io') keys.push('https://index.docker.io/v1/');
  return keys;
}

/** CredentialStore reads and writes a docker-compatible config file, including credential helpers. */
export class CredentialStore {
  constructor(readonly configPath: string = defaultConfigPath()) {}

  private async load(): Promise<DockerConfig> {
    let text: string;
    try {
      text = await fsp.readFile(this.configPath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
      throw new RegfsError('IO', `cannot read registry config ${this.configPath}: ${(err as Error).message}`);
    }
    try {
      const cfg = JSON.parse(text) as unknown;
      if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new Error('not an object');
      return cfg as DockerConfig;
    } catch (err) {
      throw new RegfsError('INVALID_ARGUMENT', `registry config ${this.configPath} is not valid JSON (${(err as Error).message}); fix or remove it`);
    }
  }

  private helperFor(cfg: DockerConfig, host: string): string | undefined {
    return cfg.credHelpers?.[host] ?? cfg.credsStore;
  }

  /** get returns the stored credential for host, or undefined. */
  async get(host: string): Promise<Credential | undefined> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      const out = await runHelper(helper, 'get', host);
      if (out === undefined) return undefined;
      const parsed = JSON.parse(out) as { Username?: string; Secret?: string };
      if (!parsed.Secret) return undefined;
      if (parsed.Username === '<token>') return { refreshToken: parsed.Secret };
      return normalise({ username: parsed.Username, password: parsed.Secret });
    }
    for (const key of hostKeys(host)) {
      const entry = cfg.auths?.[key];
      if (!entry) continue;
      if (entry.identitytoken) return { username: entry.username, refreshToken: entry.identitytoken };
      let { username, password } = entry;
      if (entry.auth) {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        if (i < 0) throw new RegfsError('INVALID_ARGUMENT', `registry config ${this.configPath}: auth for ${host} is not base64 of user:password`);
        username = decoded.slice(0, i);
        password = decoded.slice(i + 1);
      }
      if (username !== undefined || password !== undefined) return normalise({ username, password });
    }
    return undefined;
  }

  /** put stores a credential for host: in the configured helper, else base64 in `auths` (file written 0600 atomically). */
  async put(host: string, cred: Credential): Promise<void> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      const payload = cred.refreshToken
        ? { ServerURL: host, Username: '<token>', Secret: cred.refreshToken }
        : { ServerURL: host, Username: cred.username ?? '', Secret: cred.password ?? '' };
      await runHelper(helper, 'store', JSON.stringify(payload));
      return;
    }
    cfg.auths ??= {};
    for (const key of hostKeys(host)) delete cfg.auths[key];
    cfg.auths[host] = cred.refreshToken
      ? { auth: '', identitytoken: cred.refreshToken }
      : { auth: Buffer.from(`${cred.username ?? ''}:${cred.password ?? ''}`).toString('base64') };
    await this.save(cfg);
  }

  /** remove forgets the credential for host; it returns false when none was stored. */
  async remove(host: string): Promise<boolean> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      await runHelper(helper, 'erase', host);
      return true;
    }
    let found = false;
    for (const key of hostKeys(host)) {
      if (cfg.auths && key in cfg.auths) {
        delete cfg.auths[key];
        found = true;
      }
    }
    if (found) await this.save(cfg);
    return found;
  }

  private async save(cfg: DockerConfig): Promise<void> {
    await fsp.mkdir(path.dirname(this.configPath), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.configPath, JSON.stringify(cfg, null, '\t') + '\n', 0o600);
  }

  /** provider adapts the store to a CredentialProvider. */
  provider(): CredentialProvider {
    return (host) => this.get(host);
  }
}

/** normalise turns ACR's token-login convention into a refresh token. */
function normalise(c: Credential): Credential {
  if (c.username === ACR_TOKEN_USERNAME && c.password) return { username: c.username, refreshToken: c.password };
  return c;
}

/** runHelper runs `docker-credential-<name> <action>` with input on stdin; undefined when it has no credential. */
function runHelper(name: string, action: 'get' | 'store' | 'erase', input: string): Promise<string | undefined> {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) {
    return Promise.reject(new RegfsError('INVALID_ARGUMENT', `invalid credential helper name ${JSON.stringify(name)}`));
  }
  const bin = `docker-credential-${name}`;
  return new Promise((resolve, reject) => {
    const child = spawn(bin, [action], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new RegfsError('IO', `credential helper ${bin} could not run: ${e.message}`)));
    child.on('close', (code) => {
      if (code === 0) return resolve(out);
      const msg = (out + err).trim();
      if (action === 'get' && /credentials not found/i.test(msg)) return resolve(undefined);
      reject(new RegfsError('UNAUTHORIZED', `credential helper ${bin} ${action} failed (exit ${code})`));
    });
    child.stdin.end(input);
  });
}
