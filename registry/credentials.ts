import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RegfsError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { DOCKER_HUB, DOCKER_HUB_API_HOST, isDockerHub } from './reference.js';

/** Credential is what regfs presents to a registry: a username and password, or a refresh (identity) token. */
export interface Credential {
  username?: string;
  password?: string;
  /** refreshToken is an OAuth2 refresh token (docker's identitytoken, ACR's token login). */
  refreshToken?: string;
}

/** CredentialProvider returns the credential for a registry host, or undefined for anonymous access. */
export type CredentialProvider = (host: string) => Promise<Credential | undefined>;

let allGeneration = 0;
const hostGeneration = new Map<string, number>();

/**
 * invalidateCredentials tells every transport of this process to read its credential again (and
 * drop the tokens it got with the old one) before its next request: for one host, or for all.
 * The daemon calls it on SIGHUP and on `regfs retry`, so a `regfs login` takes effect without a restart.
 */
export function invalidateCredentials(host?: string): void {
  if (host === undefined) allGeneration++;
  else hostGeneration.set(host, (hostGeneration.get(host) ?? 0) + 1);
}

/** credentialGeneration changes whenever invalidateCredentials covers host; an Authorizer compares it with the one its credential was read at. */
export function credentialGeneration(host: string): string {
  return `${allGeneration}.${hostGeneration.get(host) ?? 0}`;
}

/** ACR_TOKEN_USERNAME is the username under which ACR (`az acr login`) stores a refresh token. */
export const ACR_TOKEN_USERNAME = '00000000-0000-0000-0000-000000000000';

/** DOCKER_HUB_SERVER is the key docker writes (and helpers are asked about) for Docker Hub. */
export const DOCKER_HUB_SERVER = 'https://index.docker.io/v1/';

type AuthEntry = { auth?: string; username?: string; password?: string; identitytoken?: string };

interface DockerConfig {
  auths?: Record<string, AuthEntry>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
  [k: string]: unknown;
}

/** defaultConfigPath is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as docker and oras use. */
export function defaultConfigPath(): string {
  const dir = process.env.DOCKER_CONFIG || path.join(os.homedir(), '.docker');
  return path.join(dir, 'config.json');
}

/**
 * containersAuthPaths lists podman/skopeo's auth files in the order skopeo reads them
 * (containers-auth.json(5)): `$XDG_RUNTIME_DIR/containers/auth.json`, then
 * `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config/containers/auth.json`).
 */
export function containersAuthPaths(env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  if (env.XDG_RUNTIME_DIR) out.push(path.join(env.XDG_RUNTIME_DIR, 'containers', 'auth.json'));
  out.push(path.join(env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), '.config'), 'containers', 'auth.json'));
  return out;
}

/** serverAddress is what docker stores a host's credential under and asks helpers about (`https://index.docker.io/v1/` for Docker Hub). */
export function serverAddress(host: string): string {
  return isDockerHub(host) ? DOCKER_HUB_SERVER : host;
}

/**
 * hostKeys returns the spellings a config file may use for a host (docker writes some with a
 * scheme); for Docker Hub every alias: `https://index.docker.io/v1/` first, then docker.io
 * (podman's key), index.docker.io and registry-1.docker.io.
 */
export function hostKeys(host: string): string[] {
  const spell = (h: string): string[] => [h, `https://${h}`, `http://${h}`, `https://${h}/v1/`, `https://${h}/v2/`];
  if (!isDockerHub(host)) return spell(host);
  const keys = [DOCKER_HUB_SERVER, ...spell(DOCKER_HUB), ...spell('index.docker.io'), ...spell(DOCKER_HUB_API_HOST)];
  return [...new Set(keys)];
}

/** CredentialStore reads and writes a docker-compatible config file, including credential helpers. */
export class CredentialStore {
  /** configPath is the docker-compatible file read first and the only one written. */
  readonly configPath: string;
  /** fallbackPaths are read (never written), in order, when configPath has no entry for a host. */
  readonly fallbackPaths: readonly string[];

  /**
   * Without configPath the store reads `$DOCKER_CONFIG/config.json` and then podman/skopeo's auth
   * files (containersAuthPaths); an explicit configPath (--registry-config) is read alone unless
   * fallbackPaths are given.
   */
  constructor(configPath?: string, opts: { fallbackPaths?: readonly string[] } = {}) {
    this.configPath = configPath ?? defaultConfigPath();
    this.fallbackPaths = opts.fallbackPaths ?? (configPath === undefined ? containersAuthPaths() : []);
  }

  private load(): Promise<DockerConfig> {
    return loadConfig(this.configPath);
  }

  private helperFor(cfg: DockerConfig, host: string): string | undefined {
    for (const key of hostKeys(host)) {
      const h = cfg.credHelpers?.[key];
      if (h) return h;
    }
    return cfg.credsStore;
  }

  /** get returns the stored credential for host, or undefined: docker's config (helper or auths), then the fallback files. */
  async get(host: string): Promise<Credential | undefined> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      const out = await runHelper(helper, 'get', serverAddress(host));
      if (out !== undefined) {
        const parsed = JSON.parse(out) as { Username?: string; Secret?: string };
        if (parsed.Secret) {
          if (parsed.Username === '<token>') return { refreshToken: parsed.Secret };
          return normalise({ username: parsed.Username, password: parsed.Secret });
        }
      }
    } else {
      const found = fromAuths(cfg, host, this.configPath);
      if (found) return found;
    }
    for (const file of this.fallbackPaths) {
      const found = fromAuths(await loadConfig(file), host, file);
      if (found) return found;
    }
    return undefined;
  }

  /** put stores a credential for host: in the configured helper, else base64 in `auths` (file written 0600 atomically). */
  async put(host: string, cred: Credential): Promise<void> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      const server = serverAddress(host);
      const payload = cred.refreshToken
        ? { ServerURL: server, Username: '<token>', Secret: cred.refreshToken }
        : { ServerURL: server, Username: cred.username ?? '', Secret: cred.password ?? '' };
      await runHelper(helper, 'store', JSON.stringify(payload));
      return;
    }
    cfg.auths ??= {};
    for (const key of hostKeys(host)) delete cfg.auths[key];
    cfg.auths[serverAddress(host)] = cred.refreshToken
      ? { auth: '', identitytoken: cred.refreshToken }
      : { auth: Buffer.from(`${cred.username ?? ''}:${cred.password ?? ''}`).toString('base64') };
    await this.save(cfg);
  }

  /** remove forgets the credential for host; it returns false when none was stored. */
  async remove(host: string): Promise<boolean> {
    const cfg = await this.load();
    const helper = this.helperFor(cfg, host);
    if (helper) {
      await runHelper(helper, 'erase', serverAddress(host));
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

/** loadConfig reads a docker config or containers auth.json; a missing file is empty. */
async function loadConfig(file: string): Promise<DockerConfig> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return {};
    throw new RegfsError('IO', `cannot read registry config ${file}: ${(err as Error).message}`);
  }
  try {
    const cfg = JSON.parse(text) as unknown;
    if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new Error('not an object');
    return cfg as DockerConfig;
  } catch (err) {
    throw new RegfsError('INVALID_ARGUMENT', `registry config ${file} is not valid JSON (${(err as Error).message}); fix or remove it`);
  }
}

/** fromAuths returns the credential the `auths` section holds for host under any of its keys, or undefined. */
function fromAuths(cfg: DockerConfig, host: string, file: string): Credential | undefined {
  for (const key of hostKeys(host)) {
    const entry = cfg.auths?.[key];
    if (!entry) continue;
    if (entry.identitytoken) return { username: entry.username, refreshToken: entry.identitytoken };
    let { username, password } = entry;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      if (i < 0) throw new RegfsError('INVALID_ARGUMENT', `registry config ${file}: auth for ${host} is not base64 of user:password`);
      username = decoded.slice(0, i);
      password = decoded.slice(i + 1);
    }
    if (username !== undefined || password !== undefined) return normalise({ username, password });
  }
  return undefined;
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
