import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** SkopeoManifest is what skopeo (an independent OCI client) reads of a manifest: its digest and layers. */
export interface SkopeoManifest {
  Digest: string;
  LayersData: Array<{ Digest: string; Size: number; MediaType: string; Annotations: Record<string, string> }>;
}

/** skopeoInspect reads `host/ref` over plain HTTP with skopeo; undefined when skopeo cannot (no such tag, registry down). */
export async function skopeoInspect(host: string, ref: string): Promise<SkopeoManifest | undefined> {
  try {
    const { stdout } = await exec('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', `docker://${host}/${ref}`]);
    const m = JSON.parse(stdout) as { layers: Array<{ digest: string; size: number; mediaType: string; annotations?: Record<string, string> }> };
    return {
      Digest: `sha256:${createHash('sha256').update(stdout).digest('hex')}`,
      LayersData: m.layers.map((l) => ({ Digest: l.digest, Size: l.size, MediaType: l.mediaType, Annotations: l.annotations ?? {} })),
    };
  } catch {
    return undefined;
  }
}

/** skopeoTags lists a repository's tags with skopeo; [] when the repository does not exist. */
export async function skopeoTags(host: string, repository: string): Promise<string[]> {
  try {
    const { stdout } = await exec('skopeo', ['--insecure-policy', 'list-tags', '--tls-verify=false', `docker://${host}/${repository}`]);
    return ((JSON.parse(stdout) as { Tags?: string[] }).Tags ?? []).sort();
  } catch {
    return [];
  }
}
