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
const DOMAIN_COMPONENT = '(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])';
const HOST_RE = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9A-Fa-f:.]+\\])(?::[0-9]{1,5})?$`);

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

function bad(input: string, part: string, hint: string): RegfsError {
  return new RegfsError('INVALID_REFERENCE', `invalid reference ${JSON.stringify(input)}: ${part} ${hint}`);
}

/** splitTagDigest separates `name[:tag][@digest]` and validates tag and digest. */
function splitTagDigest(input: string, rest: string): { name: string; tag?: string; digest?: Digest } {
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    const d = rest.slice(at + 1);
    if (!isDigest(d)) throw bad(input, `digest ${JSON.stringify(d)}`, 'is not sha256:<64 lowercase hex>');
    digest = d;
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isTag(tag)) throw bad(input, `tag ${JSON.stringify(tag)}`, 'must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}');
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
  return { kind: 'remote', registry: host, repository: name, tag, digest };
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
