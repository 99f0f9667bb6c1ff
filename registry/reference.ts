import { isDigest, type Digest } from './digest.js';
import { RegfsError } from '../util/errors.js';

/** RemoteReference names a repository on a registry, optionally a tag and/or a digest. */
export interface RemoteReference {
  kind: 'remote';
  registry: string;
  repository: string;
  tag?: string;
  digest?: Digest;
}

/** LayoutReference names an OCI image layout directory, optionally a tag and/or a digest. */
export interface LayoutReference {
  kind: 'layout';
  path: string;
  tag?: string;
  digest?: Digest;
}

/** Reference is where an artifact lives: on a registry or in an OCI layout directory. */
export type Reference = RemoteReference | LayoutReference;

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const COMPONENT_RE = new RegExp(`^${COMPONENT}$`);
const DOMAIN_COMPONENT = '(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9A-Fa-f:.]+\\])(?::[0-9]{1,5})?$`);

/** DOCKER_HUB is Docker Hub's canonical registry name in references, as docker, skopeo and oras write it. */
export const DOCKER_HUB = 'docker.io';
/** DOCKER_HUB_API_HOST is the host that serves Docker Hub's registry API (`docker.io` itself does not). */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
/** DOCKER_HUB_LIBRARY is the namespace of Docker Hub's official images: `docker.io/alpine` is `library/alpine`. */
export const DOCKER_HUB_LIBRARY = 'library';
const DOCKER_HUB_ALIASES = new Set([DOCKER_HUB, 'index.docker.io', DOCKER_HUB_API_HOST]);

/** isDockerHub tells whether a registry host is one of Docker Hub's names (docker.io, index.docker.io, registry-1.docker.io). */
export function isDockerHub(host: string): boolean {
  return DOCKER_HUB_ALIASES.has(host.toLowerCase());
}

/** canonicalRegistry spells Docker Hub's aliases as `docker.io`; every other host is returned unchanged. */
export function canonicalRegistry(host: string): string {
  return isDockerHub(host) ? DOCKER_HUB : host;
}

/** registryApiHost is the host to send API requests to: `registry-1.docker.io` for Docker Hub, else the host itself. */
export function registryApiHost(host: string): string {
  return isDockerHub(host) ? DOCKER_HUB_API_HOST : host;
}

/** normaliseRepository applies Docker Hub's rule that a one-component repository means `library/NAME`; other hosts are unchanged. */
export function normaliseRepository(registry: string, repository: string): string {
  return isDockerHub(registry) && !repository.includes('/') ? `${DOCKER_HUB_LIBRARY}/${repository}` : repository;
}

/** isTag tells whether s is a valid tag (distribution grammar). */
export function isTag(s: string): boolean {
  return TAG_RE.test(s);
}

/** isRepositoryName tells whether s is a valid repository path (lowercase components separated by '/'). */
export function isRepositoryName(s: string): boolean {
  return s.length <= 255 && REPOSITORY_RE.test(s);
}

/** parseRegistryHost validates a bare `host[:port]` (no scheme, no path). */
export function parseRegistryHost(input: string): string {
  const s = input.replace(/^(https?:\/\/)/, '').replace(/\/+$/, '');
  if (!HOST_RE.test(s)) throw new RegfsError('INVALID_REFERENCE', `invalid registry ${JSON.stringify(input)}: expected host[:port], e.g. localhost:5000`);
  const port = /:(\d+)$/.exec(s.startsWith('[') ? s.slice(s.indexOf(']')) : s);
  if (port && Number(port[1]) > 65535) throw new RegfsError('INVALID_REFERENCE', `invalid registry ${JSON.stringify(input)}: port out of range`);
  return s;
}

function bad(input: string, part: string, hint: string, what = 'reference'): RegfsError {
  return new RegfsError('INVALID_REFERENCE', `invalid ${what} ${JSON.stringify(input)}: ${part} ${hint}`);
}

/** splitTagDigest separates `name[:tag][@digest]` and validates tag and digest. */
function splitTagDigest(input: string, rest: string, what = 'reference'): { name: string; tag?: string; digest?: Digest } {
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    if (!isDigest(d)) throw bad(input, `digest ${JSON.stringify(d)}`, 'is not sha256:<64 lowercase hex>', what);
    digest = d;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isTag(tag)) throw bad(input, `tag ${JSON.stringify(tag)}`, 'must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}', what);
  }
  return { name: rest, tag, digest };
}

/**
 * parseReference parses `host[:port]/repo/path[:tag][@digest]` or `oci:DIR[:tag][@digest]`.
 * With `layout: true` (the `--oci-layout` flag) the input is `DIR[:tag][@digest]`.
 */
export function parseReference(input: string, opts: { layout?: boolean } = {}): Reference {
  if (input.length === 0) throw new RegfsError('INVALID_REFERENCE', 'empty reference: expected host[:port]/repository[:tag]');
  if (opts.layout || input.startsWith('oci:')) {
    const body = opts.layout && !input.startsWith('oci:') ? input : input.slice(4);
    const { name, tag, digest } = splitTagDigest(input, body);
    if (!name) throw bad(input, 'layout directory', 'is empty');
    return { kind: 'layout', path: name, tag, digest };
  }
  if (/[\s]/.test(input)) throw bad(input, 'it', 'contains whitespace');
  const slash = input.indexOf('/');
  if (slash < 0) throw bad(input, 'registry', 'is missing: expected host[:port]/repository[:tag], e.g. localhost:5000/hello:v1');
  const host = input.slice(0, slash);
  if (!host.includes('.') && !host.includes(':') && host !== 'localhost' && !host.startsWith('[')) {
    throw bad(input, `registry ${JSON.stringify(host)}`, 'is not a host: include the registry, e.g. localhost:5000/' + input);
  }
  try {
    parseRegistryHost(host);
  } catch {
    throw bad(input, `registry ${JSON.stringify(host)}`, 'is not a valid host[:port]');
  }
  const { name, tag, digest } = splitTagDigest(input, input.slice(slash + 1));
  if (!name) throw bad(input, 'repository', 'is empty');
  if (!isRepositoryName(name)) {
    throw bad(input, `repository ${JSON.stringify(name)}`, 'must be lowercase [a-z0-9] components separated by "/", ".", "_", "__" or "-"');
  }
  return { kind: 'remote', registry: canonicalRegistry(host), repository: normaliseRepository(host, name), tag, digest };
}

/** MountSource is what a mount shows at its root, parsed from `HOST[/NAMESPACE|/REPOSITORY[:TAG|@DIGEST]]` or `oci:DIR[:TAG|@DIGEST]`. */
export type MountSource =
  /** registry (`HOST`): every repository of the registry. */
  | { kind: 'registry'; registry: string }
  /**
   * path (`HOST/a/b`): a namespace (the repositories below `path/`) or a repository (its tags);
   * only the registry can tell, so the mount resolves it. `repository` is the name it has if it is
   * a repository (on Docker Hub a one-component path means `library/NAME`; elsewhere it equals `path`).
   */
  | { kind: 'path'; registry: string; path: string; repository: string }
  /** artifact (`HOST/REPO:TAG`, `HOST/REPO@DIGEST`, or both: the digest pins): one artifact's files, read-only. */
  | { kind: 'artifact'; registry: string; repository: string; tag?: string; digest?: Digest }
  /** layout (`oci:DIR`): a folder of OCI layouts, or one layout (DIR holds `oci-layout`); DIR may name a sub-folder. */
  | { kind: 'layout'; dir: string }
  /** layout-artifact (`oci:DIR:TAG`, `oci:DIR@DIGEST`): one artifact of the layout at DIR. */
  | { kind: 'layout-artifact'; dir: string; tag?: string; digest?: Digest };

const SOURCE_FORMS = 'expected HOST[/NAMESPACE|/REPOSITORY[:TAG|@DIGEST]] or oci:DIR[:TAG|@DIGEST]';

/** looksLikeHost tells whether the first component of a path can only be a registry (a dot, a port, localhost or [IPv6]). */
function looksLikeHost(s: string): boolean {
  return s.includes('.') || s.includes(':') || s === 'localhost' || s.startsWith('[');
}

function withTagDigest<T extends object>(o: T, tag: string | undefined, digest: Digest | undefined): T & { tag?: string; digest?: Digest } {
  return { ...o, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/**
 * parseMountSource parses a mount source without asking anything (pure). Errors are
 * INVALID_REFERENCE (exit 2) with one line naming the wrong part and what is expected.
 * A leading http(s):// and trailing slashes are ignored, as parseRegistryHost does.
 */
export function parseMountSource(input: string): MountSource {
  const what = 'mount source';
  const fail = (part: string, hint: string): RegfsError => bad(input, part, hint, what);
  if (input.length === 0) throw new RegfsError('INVALID_REFERENCE', `empty mount source: ${SOURCE_FORMS}`);
  if (input.includes('\0')) throw fail('it', 'contains a NUL byte');
  if (input.startsWith('oci:')) {
    const { name, tag, digest } = splitTagDigest(input, input.slice(4), what);
    if (!name) throw fail('layout directory', 'is empty: expected oci:DIR[:TAG|@DIGEST]');
    if (tag === undefined && digest === undefined) return { kind: 'layout', dir: name };
    return withTagDigest({ kind: 'layout-artifact' as const, dir: name }, tag, digest);
  }
  if (/\s/.test(input)) throw fail('it', 'contains whitespace');
  const rest = input.replace(/^https?:\/\//i, '').replace(/\/+$/, '');
  const slash = rest.indexOf('/');
  const hostPart = slash < 0 ? rest : rest.slice(0, slash);
  if (hostPart.includes('@')) throw fail('digest', `needs a repository: ${SOURCE_FORMS}`);
  let host: string;
  try {
    host = parseRegistryHost(hostPart);
  } catch {
    throw fail(`registry ${JSON.stringify(hostPart)}`, `is not a valid host[:port]: ${SOURCE_FORMS}`);
  }
  if (slash < 0) return { kind: 'registry', registry: canonicalRegistry(host) };
  if (!looksLikeHost(hostPart)) throw fail(`registry ${JSON.stringify(hostPart)}`, `is not a host: a mount source starts with the registry, e.g. localhost:5000/${rest}`);
  const { name, tag, digest } = splitTagDigest(input, rest.slice(slash + 1), what);
  const pinned = tag !== undefined || digest !== undefined;
  const label = pinned ? 'repository' : 'namespace or repository';
  if (!name) throw fail(label, 'is empty');
  for (const c of name.split('/')) {
    if (c === '') throw fail(`${label} ${JSON.stringify(name)}`, 'has an empty component ("//")');
    if (!COMPONENT_RE.test(c)) throw fail(`component ${JSON.stringify(c)} of ${label} ${JSON.stringify(name)}`, 'must be lowercase [a-z0-9] runs joined by ".", "_", "__" or "-"');
  }
  if (name.length > 255) throw fail(label, 'is longer than 255 characters');
  const registry = canonicalRegistry(host);
  const repository = normaliseRepository(host, name);
  if (!pinned) return { kind: 'path', registry, path: name, repository };
  return withTagDigest({ kind: 'artifact' as const, registry, repository }, tag, digest);
}

/** referenceString renders a reference the way a user would type it. */
export function referenceString(ref: Reference): string {
  const base = ref.kind === 'remote' ? `${ref.registry}/${ref.repository}` : `oci:${ref.path}`;
  return `${base}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** isLoopbackHost tells whether a registry host is local (plain HTTP allowed by default). */
export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '');
  return h === 'localhost' || h === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}
